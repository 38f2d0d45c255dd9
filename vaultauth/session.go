package vaultauth

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sealrun/sealrun/internal/wait"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"
)

// Options tune a Session. The zero value is usable.
type Options struct {
	// Logger receives login and renewal events (never credentials).
	Logger *slog.Logger
	// Metrics, if set, receives the token TTL, renewal and login metrics.
	Metrics prometheus.Registerer
	// Timeout bounds each login (default DefaultTimeout).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the jittered, doubling wait between
	// failed logins (defaults 1s and 1m). MinBackoff is also the least time
	// between two logins, so a token that expires at once cannot cause a
	// hot loop.
	MinBackoff, MaxBackoff time.Duration
}

// Session owns a client's token: it logs in, renews the token while Vault
// allows, and logs in again at max TTL or when renewal fails.
type Session struct {
	client  *api.Client
	method  Method
	opts    Options
	metrics *metrics
	log     *slog.Logger

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Start logs in with m and sets the token on client, then keeps it valid in
// the background until Close. The first login must succeed (the client's
// own retries cover a Vault that is briefly sealed or busy), so a
// misconfiguration stops start-up with a clear error.
func Start(ctx context.Context, client *api.Client, m Method, o Options) (*Session, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Minute, o.MinBackoff)
	}
	s := &Session{client: client, method: m, opts: o, metrics: newMetrics(o.Metrics),
		log: o.Logger.With("vault_auth", m.Name()), done: make(chan struct{})}
	secret, err := s.login(ctx, true)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(runCtx, secret)
	return s, nil
}

// Close stops renewing. The token is not revoked: it may be shared with a
// Vault Agent, and it expires on its own.
func (s *Session) Close() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
	})
	return nil
}

// login obtains a token and switches the client to it.
func (s *Session) login(ctx context.Context, first bool) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	secret, err := s.method.Login(ctx, s.client)
	if err != nil {
		s.metrics.logins.WithLabelValues(s.method.Name(), "error").Inc()
		return nil, err
	}
	s.metrics.logins.WithLabelValues(s.method.Name(), "ok").Inc()
	s.client.SetToken(secret.Auth.ClientToken)
	s.setTTL(secret.Auth.LeaseDuration)
	// Debug for the first login: one-shot CLI commands log in too.
	level := slog.LevelInfo
	if first {
		level = slog.LevelDebug
	}
	s.log.Log(ctx, level, "vault: logged in", "ttl", time.Duration(secret.Auth.LeaseDuration)*time.Second, "renewable", secret.Auth.Renewable)
	return secret, nil
}

func (s *Session) setTTL(seconds int) {
	v := float64(seconds)
	if seconds == 0 {
		v = -1
	}
	s.metrics.ttl.WithLabelValues(s.method.Name()).Set(v)
}

// run alternates keeping a token alive and replacing it.
func (s *Session) run(ctx context.Context, secret *api.Secret) {
	defer close(s.done)
	for {
		lastLogin := time.Now()
		s.keepAlive(ctx, secret)
		if ctx.Err() != nil {
			return
		}
		// Never log in twice within MinBackoff, whatever the token's TTL.
		if !wait.Sleep(ctx, time.Until(lastLogin.Add(s.opts.MinBackoff))) {
			return
		}
		if secret = s.relogin(ctx); secret == nil {
			return
		}
	}
}

// keepAlive renews secret's token until it reaches its max TTL, renewal
// fails, or ctx ends.
func (s *Session) keepAlive(ctx context.Context, secret *api.Secret) {
	a := secret.Auth
	if a.LeaseDuration == 0 {
		<-ctx.Done() // a token without TTL (root, or an Agent's periodic token) never needs replacing
		return
	}
	if !a.Renewable {
		// Replace it with a third of its life left, jittered so a fleet
		// does not log in in step.
		ttl := time.Duration(a.LeaseDuration) * time.Second
		wait.Sleep(ctx, jitter(ttl*2/3, ttl/10))
		return
	}
	w, err := s.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{
		Secret: secret,
		// Give up on the first failed renewal and log in again, rather than
		// keep renewing a token that may be gone (e.g. revoked).
		RenewBehavior: api.RenewBehaviorErrorOnErrors,
	})
	if err != nil {
		s.log.Error("vault: cannot renew token; logging in again", "err", err)
		return
	}
	go w.Start()
	defer w.Stop() // Start returns soon after Stop; DoneCh is buffered
	// Once a renewal comes back shorter than the token's TTL, the max TTL
	// caps it and no renewal can help. The watcher would only give up with
	// 10-20% of that last lease left, which a slow login can overrun (then
	// requests fail with an expired token), so log in again at half of it.
	var capped <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-capped:
			s.log.Info("vault: token is near its max TTL; logging in again")
			return
		case r := <-w.RenewCh():
			s.metrics.renewals.WithLabelValues(s.method.Name(), "ok").Inc()
			if r.Secret != nil && r.Secret.Auth != nil {
				s.setTTL(r.Secret.Auth.LeaseDuration)
				if lease := r.Secret.Auth.LeaseDuration; lease < a.LeaseDuration && capped == nil {
					capped = time.After(time.Duration(lease) * time.Second / 2)
				}
			}
		case err := <-w.DoneCh():
			if err != nil {
				s.metrics.renewals.WithLabelValues(s.method.Name(), "error").Inc()
				s.log.Warn("vault: token renewal failed; logging in again", "err", Explain(err))
			} else {
				s.log.Info("vault: token reached its max TTL; logging in again")
			}
			return
		}
	}
}

// relogin logs in until it succeeds, waiting a jittered, doubling backoff
// after each failure: a Vault outage longer than the token's TTL ends in one
// fresh login once Vault is back. It returns nil when ctx ends.
func (s *Session) relogin(ctx context.Context) *api.Secret {
	var secret *api.Secret
	err := wait.Retry(ctx, wait.Backoff(s.opts.MinBackoff, s.opts.MaxBackoff), 0, func(err error, d time.Duration) {
		s.log.Warn("vault: login failed; retrying", "err", err, "in", d.Round(time.Millisecond))
	}, func() (err error) {
		secret, err = s.login(ctx, false)
		return err
	})
	if err != nil {
		return nil // ctx ended
	}
	return secret
}

// jitter returns d minus up to spread, at random.
func jitter(d, spread time.Duration) time.Duration {
	if spread <= 0 {
		return d
	}
	return d - rand.N(spread)
}

// Connect is NewClient, NewMethod and Start in one: a client logged in per
// c, with its token kept alive until the Session is closed.
func Connect(ctx context.Context, c Config, o Options) (*api.Client, *Session, error) {
	m, err := NewMethod(c.Auth)
	if err != nil {
		return nil, nil, err
	}
	client, err := NewClient(c, o.Logger)
	if err != nil {
		return nil, nil, err
	}
	if o.Timeout == 0 {
		o.Timeout = c.Timeout
	}
	s, err := Start(ctx, client, m, o)
	if err != nil {
		return nil, nil, fmt.Errorf("vault at %s: %w", client.Address(), err)
	}
	return client, s, nil
}
