package runner

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
)

// ProxyKeySource loads the runner's keys through the secrets proxy, from the
// typed models under /secrets/sealrun/<kind>/. The proxy's watch stream
// drives Changes, and parsed private keys are kept by content hash so a
// reload re-parses only what changed (an OpenSSH key costs ~150 ms to open).
type ProxyKeySource struct {
	Client *client.Client

	mu     sync.Mutex
	parsed map[[32]byte]any // sha256(pem || 0 || passphrase) -> parsed key

	// observe, if set, sees every watch event before it is coalesced (the
	// zero Event: a watch was established or broke); tests wait on it.
	observe func(client.Event)
}

// Kinds the runner reads, as proxy paths.
var proxyKeyKinds = []string{
	"sealrun/" + secrets.KindMessagePrivateKey,
	"sealrun/" + secrets.KindMessagePassphrase,
	"sealrun/" + secrets.KindSigningKey,
	"sealrun/" + secrets.KindResponseKey,
}

// getModel reads one typed model through the (cached) client.
func (s *ProxyKeySource) getModel(ctx context.Context, kind, key string, m any) error {
	v, err := s.Client.Get(ctx, "sealrun/"+kind+"/"+key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(v, m); err != nil {
		return fmt.Errorf("proxy: %s %q is not a valid model", kind, key)
	}
	return nil
}

func (s *ProxyKeySource) list(ctx context.Context, kind string) ([]string, error) {
	names, err := s.Client.List(ctx, "sealrun/"+kind)
	if err != nil {
		return nil, fmt.Errorf("proxy: list %s: %w", kind, err)
	}
	sort.Strings(names)
	return names, nil
}

// Load implements KeySource.
func (s *ProxyKeySource) Load(ctx context.Context) (*Keys, error) {
	k := &Keys{}
	ids, err := s.list(ctx, secrets.KindMessagePrivateKey)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		var mk secrets.MessagePrivateKey
		if err := s.getModel(ctx, secrets.KindMessagePrivateKey, id, &mk); err != nil {
			return nil, err
		}
		var pass secrets.MessagePassphrase
		if err := s.getModel(ctx, secrets.KindMessagePassphrase, id, &pass); err != nil && !errors.Is(err, client.ErrNotFound) {
			return nil, err
		}
		parsed, err := s.parse(mk.PEM.Reveal(), pass.Passphrase.Reveal())
		if err != nil {
			return nil, fmt.Errorf("message private key %q from the proxy: %w", id, err)
		}
		switch p := parsed.(type) {
		case *envelope.MessagePrivateKey:
			k.MessageKeys = append(k.MessageKeys, p)
		case *envelope.HPKEPrivateKey:
			k.HPKEKeys = append(k.HPKEKeys, p)
		}
	}
	if len(k.MessageKeys) == 0 && len(k.HPKEKeys) == 0 {
		return nil, fmt.Errorf("no message private key under /secrets/sealrun/%s/ (load one with sealrun secrets put --kind %s)", secrets.KindMessagePrivateKey, secrets.KindMessagePrivateKey)
	}
	prefixes, err := s.list(ctx, secrets.KindSigningKey)
	if err != nil {
		return nil, err
	}
	signing := map[string]envelope.SigningPublicKey{}
	for _, p := range prefixes {
		var sk secrets.SigningKey
		if err := s.getModel(ctx, secrets.KindSigningKey, p, &sk); err != nil {
			return nil, err
		}
		pub, err := envelope.ParseSigningPublicKey([]byte(sk.PublicKey))
		if err != nil {
			return nil, fmt.Errorf("signing key for prefix %q from the proxy: %w", p, err)
		}
		signing[p] = pub
	}
	if k.SigningKeys, err = envelope.NewPrefixMap(signing); err != nil {
		return nil, err
	}
	prefixes, err = s.list(ctx, secrets.KindResponseKey)
	if err != nil {
		return nil, err
	}
	resp := map[string]*envelope.MessagePublicKey{}
	for _, p := range prefixes {
		var rk secrets.ResponseKey
		if err := s.getModel(ctx, secrets.KindResponseKey, p, &rk); err != nil {
			return nil, err
		}
		pub, err := envelope.ParseMessagePublicKey([]byte(rk.PublicKeyPEM))
		if err != nil {
			return nil, fmt.Errorf("response key for prefix %q from the proxy: %w", p, err)
		}
		resp[p] = pub
	}
	if k.ResponseKeys, err = envelope.NewPrefixMap(resp); err != nil {
		return nil, err
	}
	return k, nil
}

// parse parses a private key once per distinct (key, passphrase) content.
func (s *ProxyKeySource) parse(pem, pass []byte) (any, error) {
	h := sha256.New()
	h.Write(pem)
	h.Write([]byte{0})
	h.Write(pass)
	var id [32]byte
	copy(id[:], h.Sum(nil))
	s.mu.Lock()
	if s.parsed == nil {
		s.parsed = map[[32]byte]any{}
	}
	p, ok := s.parsed[id]
	s.mu.Unlock()
	if ok {
		return p, nil
	}
	var err error
	if envelope.IsHPKEPrivateKeyPEM(pem) {
		p, err = envelope.ParseHPKEPrivateKey(pem)
	} else {
		p, err = envelope.ParseMessagePrivateKey(pem, pass)
	}
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.parsed[id] = p
	s.mu.Unlock()
	return p, nil
}

// ClientConfig is how the runner's proxy client is configured from p.
func (p *ProxyKeys) ClientConfig() client.Config {
	return client.Config{Socket: p.Socket, ID: p.APIID, KeyFile: p.APIKeyFile,
		IDHeader: p.IDHeader, KeyHeader: p.KeyHeader, CacheTTL: p.CacheTTL}
}

// Changes implements KeySource: the proxy's watch streams on the key kinds,
// coalesced; a re-established watch also signals (something may have been
// missed while it was down).
func (s *ProxyKeySource) Changes(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	go func() {
		defer close(ch)
		s.Client.KeepCacheFresh(ctx, func(ev client.Event) {
			if s.observe != nil {
				s.observe(ev)
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}, proxyKeyKinds...)
	}()
	return ch
}
