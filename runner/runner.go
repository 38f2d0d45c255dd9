// Package runner consumes sealed work from RabbitMQ queues, opens each
// message with the envelope package, records it as a JobRecord in etcd, runs
// it with an Executor, answers on the response queue and acknowledges only
// once the outcome is durable.
//
// Files: config.go (YAML), keys.go (KeySource), supervisor.go (connections
// and reconnects), consumer.go (one message), respond.go (responses),
// jobs.go (JobRecords), executor.go (running a job), metrics.go (metrics and
// health), heartbeat.go (RunnerRecord and systemd).
package runner

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/sealrun/sealrun/internal/wait"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/storage"
)

// DefaultExchange is the StudioML request exchange (spec §5b).
const DefaultExchange = "StudioML.topic"

// Options are a Runner's dependencies. Config, Keys and Store are required.
type Options struct {
	Config *Config
	Keys   KeySource
	// Store holds JobRecords and RunnerRecords (its state backend).
	Store *storage.Service
	// Executor runs jobs; nil builds one from Config.Executor.
	Executor Executor
	// Logger receives JSON-able structured logs; nil uses slog.Default.
	Logger *slog.Logger
	// Version goes into the RunnerRecord.
	Version string
}

// Runner is one runner process's consuming side. Build it with New and
// start it with Run.
type Runner struct {
	cfg     *Config
	log     *slog.Logger
	keys    KeySource
	jobs    *Jobs
	store   *storage.Service
	exec    Executor
	m       *metrics
	version string

	opener   atomic.Pointer[envelope.Opener]
	respKeys atomic.Pointer[envelope.ResponseKeys]
	keysOK   atomic.Bool // the last key load succeeded
	// connected is true while a session is consuming.
	connected atomic.Bool
	gate      gate
	slots     chan struct{} // bounded concurrency across sessions
	inflight  inflight
	ready     chan struct{} // closed when the first session consumes
	queues    *queueSet
	readyOnce sync.Once
	pubs      publishers // the current session's publisher
	// execFailing is why the executor last could not start a job, until
	// one starts again.
	execFailing atomic.Pointer[string]
}

// instanceName names this runner process in JobRecord claims: the runner
// id plus a random suffix, so a restarted runner with the same id does not
// mistake its predecessor's claims for its own.
func instanceName(runnerID string) string {
	b := make([]byte, 6)
	_, _ = crand.Read(b)
	return runnerID + "." + hex.EncodeToString(b)
}

// New checks the options and builds a Runner; it starts nothing.
func New(o Options) (*Runner, error) {
	if o.Config == nil || o.Keys == nil || o.Store == nil {
		return nil, errors.New("runner: Config, Keys and Store are required")
	}
	r := &Runner{cfg: o.Config, log: o.Logger, keys: o.Keys, jobs: &Jobs{Store: o.Store, Owner: instanceName(o.Config.RunnerID), Lease: o.Config.ClaimLease}, store: o.Store,
		exec: o.Executor, m: newMetrics(), version: o.Version,
		slots: make(chan struct{}, o.Config.Concurrency), ready: make(chan struct{}),
		queues: newQueueSet(o.Config.Queues)}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.gate.min, r.gate.max = o.Config.AMQP.ReconnectMin, o.Config.AMQP.ReconnectMax
	if r.exec == nil {
		switch o.Config.Executor.Type {
		case "noop":
			r.exec = NoopExecutor{}
		default:
			e, err := NewCommandExecutor(o.Config.Executor)
			if err != nil {
				return nil, err
			}
			r.exec = e
		}
	}
	return r, nil
}

// Ready is closed once the runner consumes its queues for the first time.
func (r *Runner) Ready() <-chan struct{} { return r.ready }

// Run loads the keys (failing if they are missing), then consumes until ctx
// ends, reconnecting to the broker forever. On ctx's end it stops consuming,
// gives running jobs Config.ShutdownGrace to finish, kills the rest and
// requeues their messages, and returns nil.
func (r *Runner) Run(ctx context.Context) error {
	// Watch before the first load, so a change in between is not missed.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	changes := r.keys.Changes(wctx)
	k, err := r.keys.Load(ctx)
	if err != nil {
		return fmt.Errorf("load keys before consuming: %w", err)
	}
	r.install(k)
	r.keysOK.Store(true)
	r.log.Info("keys loaded", "rsa_keys", len(k.MessageKeys), "hpke_keys", len(k.HPKEKeys),
		"signing_prefixes", k.SigningKeys.Prefixes(), "response_prefixes", prefixes(k.ResponseKeys))

	// Jobs get a context that outlives ctx by the grace period.
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.NewTimer(r.cfg.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelJobs()
		case <-jobCtx.Done():
		}
	})
	defer stopGrace()

	var bg sync.WaitGroup
	bg.Go(func() { r.watchKeys(ctx, changes) })
	bg.Go(func() { r.heartbeat(ctx) })
	if r.cfg.Discover != nil {
		bg.Go(func() { r.discover(ctx) })
	}
	if r.cfg.JobRetention > 0 {
		bg.Go(func() { r.collectJobs(ctx) })
	}
	var handlers sync.WaitGroup
	r.supervise(ctx, jobCtx, &handlers)
	r.log.Info("stopped consuming; waiting for running jobs", "grace", r.cfg.ShutdownGrace)
	handlers.Wait()
	cancelJobs()
	bg.Wait()
	r.log.Info("runner stopped")
	return nil
}

func prefixes(k *envelope.ResponseKeys) []string {
	if k == nil {
		return nil
	}
	return k.Prefixes()
}

// maxOldKeys bounds how many replaced private keys stay usable for messages
// sealed before a rotation.
const maxOldKeys = 3

// install swaps in a new Opener built from k, keeping the previous private
// keys after the new ones so in-flight messages still open.
func (r *Runner) install(k *Keys) {
	mk := append([]*envelope.MessagePrivateKey(nil), k.MessageKeys...)
	hk := append([]*envelope.HPKEPrivateKey(nil), k.HPKEKeys...)
	if old := r.opener.Load(); old != nil {
		kept := 0
		for _, o := range old.MessageKeys {
			dup := false
			for _, n := range k.MessageKeys {
				dup = dup || n.Equal(o)
			}
			if !dup && kept < maxOldKeys {
				mk = append(mk, o)
				kept++
			}
		}
		kept = 0
		for _, o := range old.HPKEKeys {
			dup := false
			for _, n := range k.HPKEKeys {
				dup = dup || n.KeyID() == o.KeyID()
			}
			if !dup && kept < maxOldKeys {
				hk = append(hk, o)
				kept++
			}
		}
	}
	r.opener.Store(&envelope.Opener{MessageKeys: mk, HPKEKeys: hk, SigningKeys: k.SigningKeys,
		ClearText: r.cfg.ClearText, Window: r.cfg.ReplayWindow, Known: r.claimed})
	r.respKeys.Store(k.ResponseKeys)
}

// watchKeys reloads the keys on every change signal, and retries with
// backoff while the source is unreachable. Until a reload succeeds, key
// lookups that fail are treated as transient (see consumer.go).
func (r *Runner) watchKeys(ctx context.Context, changes <-chan struct{}) {
	var retry <-chan time.Time
	b := wait.Backoff(500*time.Millisecond, 30*time.Second)
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				changes = nil
				continue
			}
		case <-retry:
		}
		retry = nil
		k, err := r.keys.Load(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.keysOK.Store(false)
			r.m.keyReloads.WithLabelValues("error").Inc()
			d := b.NextBackOff()
			r.log.Warn("key reload failed; keeping the current keys and retrying", "error", err, "retry_in", d)
			retry = time.After(d)
			continue
		}
		b.Reset()
		r.install(k)
		r.keysOK.Store(true)
		r.m.keyReloads.WithLabelValues("ok").Inc()
		r.log.Info("keys reloaded", "rsa_keys", len(k.MessageKeys), "hpke_keys", len(k.HPKEKeys),
			"signing_prefixes", k.SigningKeys.Prefixes(), "response_prefixes", prefixes(k.ResponseKeys))
	}
}

// notReady says why the runner is not ready, or "" when it is.
func (r *Runner) notReady() string {
	switch {
	case r.opener.Load() == nil:
		return "keys not loaded"
	case !r.connected.Load():
		return "not connected to the broker"
	case !r.keysOK.Load():
		return "key source unreachable"
	case r.gate.paused():
		return "paused: a dependency failed"
	}
	return ""
}

// degraded says what the runner does not do although it runs: queues it
// does not consume, an executor that cannot start jobs. /readyz reports it;
// the systemd watchdog does not (a restart would not cure it).
func (r *Runner) degraded() []string {
	var out []string
	for _, q := range r.queues.unconsumed() {
		out = append(out, fmt.Sprintf("queue %s not consumed: %s", q.name, q.why))
	}
	if why := r.execFailing.Load(); why != nil {
		out = append(out, "executor failing: "+*why)
	}
	return out
}

// noteExecutor records whether the executor could start the last job.
func (r *Runner) noteExecutor(err error) {
	if errors.Is(err, ErrStart) {
		why := err.Error()
		r.execFailing.Store(&why)
	} else if err == nil {
		r.execFailing.Store(nil)
	}
}

// gate pauses message processing after a transient failure. Each failure
// pushes the pause further out, exponentially; a success resets it.
type gate struct {
	mu       sync.Mutex
	min, max time.Duration
	fails    int
	b        *backoff.ExponentialBackOff // from min to max, built at the first failure
	until    time.Time
}

// wait blocks until the pause is over.
func (g *gate) wait(ctx context.Context) error {
	for {
		g.mu.Lock()
		d := time.Until(g.until)
		g.mu.Unlock()
		if d <= 0 {
			return nil
		}
		if !wait.Sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

// fail records a transient failure and returns the pause it causes.
func (g *gate) fail() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fails++
	if g.b == nil {
		g.b = wait.Backoff(g.min, g.max)
	}
	d := g.b.NextBackOff()
	if u := time.Now().Add(d); u.After(g.until) {
		g.until = u
	}
	return d
}

// ok records a success.
func (g *gate) ok() {
	g.mu.Lock()
	g.fails = 0
	if g.b != nil {
		g.b.Reset()
	}
	g.mu.Unlock()
}

func (g *gate) paused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return time.Now().Before(g.until)
}

// inflight tracks the message ids this process is running, so a redelivery
// of a message still running here (after a broker connection loss) waits
// for it instead of running it a second time.
type inflight struct {
	mu  sync.Mutex
	ids map[string]chan struct{}
}

// enter marks id as running; if it already is, it returns the channel that
// closes when the other run ends, and ok false.
func (f *inflight) enter(id string) (done chan struct{}, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ids == nil {
		f.ids = map[string]chan struct{}{}
	}
	if ch, busy := f.ids[id]; busy {
		return ch, false
	}
	ch := make(chan struct{})
	f.ids[id] = ch
	return ch, true
}

func (f *inflight) leave(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.ids[id]; ok {
		close(ch)
		delete(f.ids, id)
	}
}
