package secrets

import (
	"log/slog"
	"time"
)

// Kinds of the built-in models, as registered in Default.
const (
	KindMessagePrivateKey = "message-private-key"
	KindMessagePassphrase = "message-passphrase"
	KindSigningKey        = "signing-key"
	KindResponseKey       = "response-key"
	KindAPICredential     = "api-credential"
	KindHostCreds         = "host-creds"
	KindRaw               = "raw"
	KindContainer         = "custodia-container"
	KindRunnerRecord      = "runner"
	KindJobRecord         = "job"
)

// MessagePrivateKey is the RSA or HPKE private key that opens queue messages.
type MessagePrivateKey struct {
	Confidential
	KeyID string `json:"key_id"`
	PEM   Secret `json:"pem"`
}

// MessagePassphrase is the passphrase protecting an encrypted private key.
type MessagePassphrase struct {
	Confidential
	KeyID      string `json:"key_id"`
	Passphrase Secret `json:"passphrase"`
}

// SigningKey binds an ssh-ed25519 public key line to a queue prefix. It is
// public, but secret-routed: whoever can change it decides who may run work.
type SigningKey struct {
	Confidential
	QueuePrefix string `json:"queue_prefix"`
	PublicKey   string `json:"public_key"`
}

// ResponseKey is the RSA public key (PEM) responses under a prefix are sealed
// to; secret-routed for the same integrity reason as SigningKey.
type ResponseKey struct {
	Confidential
	ResponsePrefix string `json:"response_prefix"`
	PublicKeyPEM   string `json:"public_key_pem"`
}

// APICredential is a proxy API client: its id, the hash of its key and what it
// may do. The key itself is never stored.
type APICredential struct {
	Confidential
	ID       string   `json:"id"`
	KeyHash  Secret   `json:"key_hash"`
	Prefixes []string `json:"prefixes"`
	Verbs    []string `json:"verbs"`
}

// HostCreds is how to reach a worker host over ssh (the CPD-101 example).
type HostCreds struct {
	Confidential
	Address    string `json:"address"`
	SSHKey     Secret `json:"ssh_private_key"`
	RemoteUser string `json:"remote_user"`
}

// Raw is an ad-hoc secret value under a free-form name.
type Raw struct {
	Confidential
	Name  string `json:"name"`
	Value Secret `json:"value"`
}

// Container marks that a Custodia container exists; secret-routed like the
// values whose names it reveals.
type Container struct {
	Confidential
	Path string `json:"path"`
}

// RunnerRecord is plain state about a runner process.
type RunnerRecord struct {
	ID            string    `json:"id"`
	Host          string    `json:"host"`
	Version       string    `json:"version"`
	Queues        []string  `json:"queues"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// Instance is the owner name this process writes into the JobRecords it
	// claims (runner id plus a per-start suffix).
	Instance string `json:"instance,omitempty"`
}

// JobRecord is plain state about one queued message's execution. It never
// holds the payload, the job's output or any key, which may be secret: only
// ids, times, the exit status and short reason codes.
type JobRecord struct {
	MessageID  string    `json:"message_id"`
	Queue      string    `json:"queue"`
	State      string    `json:"state"`
	Received   time.Time `json:"received"`
	Started    time.Time `json:"started,omitzero"`
	Finished   time.Time `json:"finished,omitzero"`
	ExitStatus *int      `json:"exit_status,omitempty"`
	TimedOut   bool      `json:"timed_out,omitempty"`
	// Owner is the runner process (runner id and a per-process instance)
	// holding the claim; LeaseUntil is how long the claim stays its owner's
	// without a renewal. A running claim past its lease belongs to a dead
	// runner and may be taken over.
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	// Responded is set once the response was confirmed by the broker (or
	// none was due): a redelivery after that is only acked. ResponseID is
	// the response's AMQP message id, empty when none was published.
	Responded  time.Time `json:"responded,omitzero"`
	ResponseID string    `json:"response_id,omitempty"`
	// Reason is the rejection code of a rejected message (e.g.
	// "bad_signature"), never message contents.
	Reason string `json:"reason,omitempty"`
}

// Kind and Key implement Model for each built-in model: the kind is fixed,
// the key is the model's natural identifier.
func (*MessagePrivateKey) Kind() string  { return KindMessagePrivateKey }
func (m *MessagePrivateKey) Key() string { return m.KeyID }
func (*MessagePassphrase) Kind() string  { return KindMessagePassphrase }
func (m *MessagePassphrase) Key() string { return m.KeyID }
func (*SigningKey) Kind() string         { return KindSigningKey }
func (m *SigningKey) Key() string        { return m.QueuePrefix }
func (*ResponseKey) Kind() string        { return KindResponseKey }
func (m *ResponseKey) Key() string       { return m.ResponsePrefix }
func (*APICredential) Kind() string      { return KindAPICredential }
func (m *APICredential) Key() string     { return m.ID }
func (*HostCreds) Kind() string          { return KindHostCreds }
func (m *HostCreds) Key() string         { return m.Address }
func (*Raw) Kind() string                { return KindRaw }
func (m *Raw) Key() string               { return m.Name }
func (*Container) Kind() string          { return KindContainer }
func (m *Container) Key() string         { return m.Path }
func (*RunnerRecord) Kind() string       { return KindRunnerRecord }
func (m *RunnerRecord) Key() string      { return m.ID }
func (*JobRecord) Kind() string          { return KindJobRecord }
func (m *JobRecord) Key() string         { return m.MessageID }

// LogValue implements slog.LogValuer for each built-in model: kind and key
// only, never contents.
func (m *MessagePrivateKey) LogValue() slog.Value { return logValue(m) }
func (m *MessagePassphrase) LogValue() slog.Value { return logValue(m) }
func (m *SigningKey) LogValue() slog.Value        { return logValue(m) }
func (m *ResponseKey) LogValue() slog.Value       { return logValue(m) }
func (m *APICredential) LogValue() slog.Value     { return logValue(m) }
func (m *HostCreds) LogValue() slog.Value         { return logValue(m) }
func (m *Raw) LogValue() slog.Value               { return logValue(m) }
func (m *Container) LogValue() slog.Value         { return logValue(m) }
func (m *RunnerRecord) LogValue() slog.Value      { return logValue(m) }
func (m *JobRecord) LogValue() slog.Value         { return logValue(m) }

// Default returns a registry holding every built-in model.
func Default() *Registry {
	r := NewRegistry()
	r.Register(KindMessagePrivateKey, func(k string) Model { return &MessagePrivateKey{KeyID: k} })
	r.Register(KindMessagePassphrase, func(k string) Model { return &MessagePassphrase{KeyID: k} })
	r.Register(KindSigningKey, func(k string) Model { return &SigningKey{QueuePrefix: k} })
	r.Register(KindResponseKey, func(k string) Model { return &ResponseKey{ResponsePrefix: k} })
	r.Register(KindAPICredential, func(k string) Model { return &APICredential{ID: k} })
	r.Register(KindHostCreds, func(k string) Model { return &HostCreds{Address: k} })
	r.Register(KindRaw, func(k string) Model { return &Raw{Name: k} })
	r.Register(KindContainer, func(k string) Model { return &Container{Path: k} })
	r.Register(KindRunnerRecord, func(k string) Model { return &RunnerRecord{ID: k} })
	r.Register(KindJobRecord, func(k string) Model { return &JobRecord{MessageID: k} })
	return r
}
