package runner

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/sealrun/sealrun/internal/configfile"
	"github.com/sealrun/sealrun/internal/credpath"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

// Config is the runner's configuration file (YAML, strictly decoded: an
// unknown field is an error naming it).
type Config struct {
	// RunnerID names this runner in JobRecords, RunnerRecords and reports
	// (default: hostname-pid).
	RunnerID string `yaml:"runner_id"`
	AMQP     AMQP   `yaml:"amqp"`
	// Queues are the bare queue names to consume (without "StudioML.").
	// The queue name selects the signing key and the response key.
	Queues []string `yaml:"queues"`
	// Discover adds the queues whose names match patterns, found through
	// RabbitMQ's management API while the runner runs (see Discover).
	Discover *Discover `yaml:"discover"`
	// DeadLetter, when set, makes sealrun declare a dead-letter exchange and
	// one dead-letter queue per consumed queue, and declare the consumed
	// queues with it. Without it, rejected messages go wherever the queue's
	// own policy sends them (or are dropped).
	DeadLetter *DeadLetter `yaml:"dead_letter"`
	Keys       KeysConfig  `yaml:"keys"`
	// ClearText lists queue prefixes on which unencrypted requests are
	// accepted; empty refuses clear text everywhere (spec §6).
	ClearText []string `yaml:"clear_text"`
	// ReplayWindow bounds the age of HPKE messages (default 15m).
	ReplayWindow time.Duration `yaml:"replay_window"`
	// JobRetention is how long the JobRecords of answered or rejected
	// messages are kept (default 168h); every runner deletes older ones
	// hourly. It must exceed replay_window, since a record is what refuses a
	// replayed HPKE message within the window. Negative keeps them forever.
	JobRetention time.Duration `yaml:"job_retention"`
	// Concurrency is how many messages run at once (default 4).
	Concurrency int            `yaml:"concurrency"`
	Executor    ExecutorConfig `yaml:"executor"`
	// ShutdownGrace is how long running jobs may finish after SIGTERM before
	// they are killed and their messages requeued (default 30s).
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	HTTP          HTTP          `yaml:"http"`
	// Heartbeat is how often the RunnerRecord is refreshed in etcd
	// (default 10s; negative disables it).
	Heartbeat time.Duration `yaml:"heartbeat"`
	// ClaimLease is how long a job's claim outlives its runner's last
	// renewal (default 30s; renewed every third of it). It is how long a
	// SIGKILLed runner's in-flight jobs wait before another runner takes
	// them over; shorter means faster takeover but a runner cut off from
	// etcd for longer than the lease loses its running jobs to another
	// runner, which runs them again (docs/scale.md).
	ClaimLease time.Duration `yaml:"claim_lease"`
	// Storage is sealrun's storage configuration (see storage/config); the
	// runner keeps JobRecords and RunnerRecords in its state backend.
	Storage yaml.Node `yaml:"storage"`

	storage *storageconfig.Config
}

// AMQP is the broker connection.
type AMQP struct {
	// URL is an amqp:// or amqps:// URL. Prefer URLFile: a password in the
	// config file is readable by whoever can read the config.
	URL string `yaml:"url"`
	// URLs are the nodes of a RabbitMQ cluster (same user and vhost on
	// each): the runner connects to one and, when that connection is lost,
	// to the next, round-robin, with the reconnect backoff. Set one of url,
	// urls and url_file.
	URLs []string `yaml:"urls"`
	// URLFile holds the URL, or one URL per line for a cluster, e.g. a
	// mounted secret. It is read again at each connection attempt.
	URLFile string `yaml:"url_file"`
	// QueueType is the type the runner declares its request and
	// dead-letter queues with: "classic" (default: what existing
	// deployments and StudioML clients declare) or "quorum" (replicated on
	// a cluster's nodes; survives the loss of a minority of them). Quorum
	// queues get a delivery limit the runner's own hand-backs never reach
	// and at-least-once dead-lettering (docs/scale.md).
	QueueType string `yaml:"queue_type"`
	// Exchange is the topic exchange requests are published to (default
	// "StudioML.topic", spec §5b).
	Exchange string `yaml:"exchange"`
	// Prefetch is the channel QoS (default 2 × concurrency).
	Prefetch int `yaml:"prefetch"`
	// Declare makes sealrun declare the exchange, the queues (durable) and
	// their bindings (default true). With false, they must exist.
	Declare *bool `yaml:"declare"`
	// Heartbeat is the AMQP heartbeat (default 10s).
	Heartbeat time.Duration `yaml:"heartbeat"`
	// ReconnectMin and ReconnectMax bound the jittered reconnect backoff
	// (defaults 500ms and 30s).
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// ConsumerTimeout is the broker's consumer_timeout for the consumed
	// queues (default 30m, RabbitMQ's default). A delivery still unsettled
	// after half of it (a long job, or a copy waiting for one) is handed
	// back to the broker, so the broker never closes the channel over it;
	// the job goes on under its JobRecord claim and the copy that comes
	// back is acked when it is answered (docs/runner.md). Negative
	// disables the hand-back.
	ConsumerTimeout time.Duration `yaml:"consumer_timeout"`
	TLS             *TLS          `yaml:"tls"`
}

// TLS configures amqps:// connections.
type TLS struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// DeadLetter names the dead-letter exchange sealrun declares.
type DeadLetter struct {
	// Exchange is the DLX name (default "sealrun.dlx", a direct exchange).
	Exchange string `yaml:"exchange"`
	// QueueSuffix names each dead-letter queue: <queue><suffix>
	// (default ".dead").
	QueueSuffix string `yaml:"queue_suffix"`
}

// KeysConfig selects where the runner's keys come from.
type KeysConfig struct {
	// Source is "proxy" (the secrets proxy, see ProxyKeySource) or "dir"
	// (the StudioML Kubernetes secret layout, see DirKeySource).
	Source string `yaml:"source"`
	// Dir is the layout's root for source "dir".
	Dir string `yaml:"dir"`
	// Proxy is how source "proxy" reaches the secrets proxy: the keys are
	// the typed models under /secrets/sealrun/, and its watch stream
	// delivers changes.
	Proxy *ProxyKeys `yaml:"proxy"`
	// PollInterval is how often source "dir" checks for changed files
	// (default 2s).
	PollInterval time.Duration `yaml:"poll_interval"`
}

// ProxyKeys locates the secrets proxy and this runner's API credential
// (a credential granted get, list and watch on /secrets/sealrun/).
type ProxyKeys struct {
	Socket string `yaml:"socket"` // unix socket (default /run/sealrun/secrets.sock)
	APIID  string `yaml:"api_id"`
	// APIKeyFile holds the API key (a systemd credential, a Kubernetes
	// Secret); without it the key is read from $SEALRUN_API_KEY.
	APIKeyFile string `yaml:"api_key_file"`
	// IDHeader and KeyHeader name the headers carrying the API id and key
	// (default CUSTODIA_AUTH_ID and CUSTODIA_AUTH_KEY): the proxy's
	// auth.id_header and auth.key_header, which a Custodia deployment may
	// have renamed (e.g. CUSTODIA_KEY_ID).
	IDHeader  string `yaml:"id_header"`
	KeyHeader string `yaml:"key_header"`
	// CacheTTL bounds how long a key read is trusted without a watch event
	// (default 30s).
	CacheTTL time.Duration `yaml:"cache_ttl"`
}

// ExecutorConfig configures the executor that runs each request.
type ExecutorConfig struct {
	// Type is "command" (default) or "noop" (acknowledges without running
	// anything; for tests and benchmarks).
	Type string `yaml:"type"`
	// Command is the argv template; each element is a Go text/template with
	// .Queue, .ID, .Suite and .WorkDir.
	Command []string `yaml:"command"`
	// WorkRoot holds one working directory per job (default: the system
	// temp dir). Job directories are removed when the job ends.
	WorkRoot string `yaml:"work_root"`
	// Env lists the environment variables passed through from the runner;
	// nothing else is inherited.
	Env []string `yaml:"env"`
	// Timeout bounds one job (default 1h).
	//
	// A job may outlive RabbitMQ's consumer_timeout: see
	// AMQP.ConsumerTimeout and docs/runner.md.
	Timeout time.Duration `yaml:"timeout"`
	// OutputLimit caps the captured output in bytes (default 64 KiB); the
	// rest is discarded and the report says so.
	OutputLimit int `yaml:"output_limit"`
}

// HTTP is the operations endpoint: /healthz, /readyz and /metrics.
type HTTP struct {
	// Listen is a host:port; empty disables the endpoint.
	Listen string `yaml:"listen"`
}

// LoadConfig reads and validates the file at path.
func LoadConfig(path string) (*Config, error) {
	return configfile.Load(path, "runner", DecodeConfig)
}

// DecodeConfig strictly decodes one YAML document, applies defaults and
// validates. It touches no files.
func DecodeConfig(r io.Reader) (*Config, error) {
	var c Config
	if err := configfile.DecodeStrict(r, &c); err != nil {
		return nil, err
	}
	if c.Storage.Kind != 0 {
		sc, err := storageconfig.DecodeSection(&c.Storage)
		if err != nil {
			return nil, err
		}
		c.storage = sc
	}
	c.setDefaults()
	if err := c.expandCredentials(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// StorageConfig returns the decoded storage section (nil if absent).
func (c *Config) StorageConfig() *storageconfig.Config { return c.storage }

func (c *Config) setDefaults() {
	if c.RunnerID == "" {
		host, _ := os.Hostname()
		c.RunnerID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	a := &c.AMQP
	if a.Exchange == "" {
		a.Exchange = DefaultExchange
	}
	if a.QueueType == "" {
		a.QueueType = QueueClassic
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if a.Prefetch <= 0 {
		a.Prefetch = 2 * c.Concurrency
	}
	if a.Declare == nil {
		t := true
		a.Declare = &t
	}
	if a.Heartbeat <= 0 {
		a.Heartbeat = 10 * time.Second
	}
	if a.ReconnectMin <= 0 {
		a.ReconnectMin = 500 * time.Millisecond
	}
	if a.ReconnectMax <= 0 {
		a.ReconnectMax = 30 * time.Second
	}
	if a.ConsumerTimeout == 0 {
		a.ConsumerTimeout = 30 * time.Minute
	}
	if d := c.DeadLetter; d != nil {
		if d.Exchange == "" {
			d.Exchange = "sealrun.dlx"
		}
		if d.QueueSuffix == "" {
			d.QueueSuffix = ".dead"
		}
	}
	if c.Keys.PollInterval <= 0 {
		c.Keys.PollInterval = 2 * time.Second
	}
	if c.ReplayWindow <= 0 {
		c.ReplayWindow = 15 * time.Minute
	}
	if c.JobRetention == 0 {
		c.JobRetention = 7 * 24 * time.Hour
	}
	e := &c.Executor
	if e.Type == "" {
		e.Type = "command"
	}
	if e.Timeout <= 0 {
		e.Timeout = time.Hour
	}
	if e.OutputLimit <= 0 {
		e.OutputLimit = 64 << 10
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 30 * time.Second
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.ClaimLease == 0 {
		c.ClaimLease = DefaultClaimLease
	}
	if d := c.Discover; d != nil && d.Interval <= 0 {
		d.Interval = 30 * time.Second
	}
}

// Validate checks the configuration for consistency.
func (c *Config) Validate() error {
	set := 0
	for _, given := range []bool{c.AMQP.URL != "", len(c.AMQP.URLs) > 0, c.AMQP.URLFile != ""} {
		if given {
			set++
		}
	}
	if set != 1 {
		return errors.New("amqp: set exactly one of url, urls and url_file")
	}
	if c.AMQP.URL != "" {
		if err := checkAMQPURLs("amqp.url", []string{c.AMQP.URL}); err != nil {
			return err
		}
	}
	if err := checkAMQPURLs("amqp.urls", c.AMQP.URLs); err != nil {
		return err
	}
	switch c.AMQP.QueueType {
	case QueueClassic, QueueQuorum:
	default:
		return fmt.Errorf("amqp.queue_type %q: want classic or quorum", c.AMQP.QueueType)
	}
	if len(c.Queues) == 0 && c.Discover == nil {
		return errors.New("queues: list at least one queue to consume, or set discover.patterns")
	}
	if c.Discover != nil {
		if err := c.Discover.validate(); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for _, q := range c.Queues {
		switch {
		case q == "" || len(q) > 200:
			return fmt.Errorf("queues: %q is not a usable queue name", q)
		case strings.HasPrefix(q, "StudioML."):
			return fmt.Errorf("queues: %q: give the bare queue name, without the StudioML. routing prefix", q)
		case strings.HasPrefix(q, "amq."):
			return fmt.Errorf("queues: %q: names starting with amq. are reserved by RabbitMQ", q)
		case seen[q]:
			return fmt.Errorf("queues: %q is listed twice", q)
		}
		seen[q] = true
	}
	switch c.Keys.Source {
	case "dir":
		if c.Keys.Dir == "" {
			return errors.New("keys.dir is required for keys.source dir")
		}
	case "proxy":
		if c.Keys.Proxy == nil || c.Keys.Proxy.APIID == "" {
			return errors.New("keys.proxy.api_id is required for keys.source proxy")
		}
		if c.Keys.Proxy.Socket == "" {
			c.Keys.Proxy.Socket = "/run/sealrun/secrets.sock"
		}
	case "":
		return errors.New("keys.source is required (proxy or dir)")
	default:
		return fmt.Errorf("keys.source %q: want proxy or dir", c.Keys.Source)
	}
	switch c.Executor.Type {
	case "command":
		if len(c.Executor.Command) == 0 {
			return errors.New("executor.command: give the argv to run for each job")
		}
		if _, err := parseArgv(c.Executor.Command); err != nil {
			return fmt.Errorf("executor.command: %w", err)
		}
	case "noop":
	default:
		return fmt.Errorf("executor.type %q: want command or noop", c.Executor.Type)
	}
	if c.ClaimLease < MinClaimLease {
		return fmt.Errorf("claim_lease %s: must be at least %s (it is renewed every third of it, and each renewal is an etcd write that must fit in that time)", c.ClaimLease, MinClaimLease)
	}
	if c.JobRetention > 0 && c.JobRetention <= c.ReplayWindow {
		return fmt.Errorf("job_retention %s: must exceed replay_window (%s), or a replayed HPKE message could run again", c.JobRetention, c.ReplayWindow)
	}
	for _, p := range c.ClearText {
		if len(p) < 4 {
			return fmt.Errorf("clear_text: prefix %q is shorter than 4 characters", p)
		}
	}
	return nil
}

// Queue types amqp.queue_type accepts (RabbitMQ's x-queue-type values).
const (
	QueueClassic = "classic"
	QueueQuorum  = "quorum"
)

// deliveryMargin is how many returns of a message beyond its hand-backs
// the delivery limit allows: connection losses and runner restarts (each
// returns every unsettled delivery), shutdown hand-backs and transient
// requeues (key source or state store down, paused up to reconnect_max
// apart).
const deliveryMargin = 100

// DeliveryLimit is the x-delivery-limit of quorum request queues: how
// many times the broker may get a message back before it dead-letters it
// instead of delivering it again.
//
// The limit is there to stop a message that kills its runner from killing
// every runner in turn forever (each crash returns it), not to judge
// messages: the runner rejects what it can tell is bad itself. So it must
// exceed what the runner's own rules can return in a message's life. A
// delivery unsettled after consumer_timeout/2 is handed back (holdDelivery);
// that happens to a message while it waits in the prefetch for a slot (at
// most about one job's length: returned messages are delivered first) and
// again while it runs or while its copy waits for the run's claim (the
// job's timeout, plus the claim lease and the bookkeeping after it). Each
// of those two phases is bounded by the same number of hand-backs; the
// margin covers reconnects and transient requeues. Without hand-backs
// (consumer_timeout negative) only the margin is needed.
func (c *Config) DeliveryLimit() int {
	perPhase := 0
	if half := c.AMQP.ConsumerTimeout / 2; half > 0 {
		lease := c.ClaimLease
		if lease <= 0 { // a Config built without DecodeConfig
			lease = DefaultClaimLease
		}
		life := c.Executor.Timeout + lease + finishTimeout
		perPhase = int((life + half - 1) / half)
	}
	return 2*perPhase + deliveryMargin
}

// checkAMQPURLs checks each URL of field; errors name the URL by its place
// in the list, never its text (it may hold a password).
func checkAMQPURLs(field string, urls []string) error {
	seen := map[string]bool{}
	for i, raw := range urls {
		name := field
		if len(urls) > 1 || field != "amqp.url" {
			name = fmt.Sprintf("%s[%d]", field, i)
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" {
			return fmt.Errorf("%s: not an amqp:// or amqps:// URL with a host", name)
		}
		if seen[raw] {
			return fmt.Errorf("%s: listed twice", name)
		}
		seen[raw] = true
	}
	return nil
}

// amqpURLs returns the broker URLs from url, urls or url_file (one per
// line; blank lines and # comments skipped).
func (c *Config) amqpURLs() ([]string, error) {
	switch {
	case c.AMQP.URL != "":
		return []string{c.AMQP.URL}, nil
	case len(c.AMQP.URLs) > 0:
		return c.AMQP.URLs, nil
	}
	b, err := os.ReadFile(c.AMQP.URLFile)
	if err != nil {
		return nil, fmt.Errorf("amqp.url_file: %w", err)
	}
	var urls []string
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			urls = append(urls, line)
		}
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("amqp.url_file %s: no URL in it; write the broker URL on its first line", c.AMQP.URLFile)
	}
	if err := checkAMQPURLs("amqp.url_file", urls); err != nil {
		return nil, err
	}
	return urls, nil
}

// amqpURL returns the first broker URL (the one discovery logs in with:
// every node of a cluster has the same users and vhosts).
func (c *Config) amqpURL() (string, error) {
	urls, err := c.amqpURLs()
	if err != nil {
		return "", err
	}
	return urls[0], nil
}

// expandCredentials resolves ${CREDENTIALS_DIRECTORY} in the path options
// that may name a secret file (systemd LoadCredential=).
func (c *Config) expandCredentials() error {
	fs := []credpath.Field{{Name: "amqp.url_file", Path: &c.AMQP.URLFile}}
	if t := c.AMQP.TLS; t != nil {
		fs = append(fs, credpath.Field{Name: "amqp.tls.ca_file", Path: &t.CAFile},
			credpath.Field{Name: "amqp.tls.cert_file", Path: &t.CertFile},
			credpath.Field{Name: "amqp.tls.key_file", Path: &t.KeyFile})
	}
	if p := c.Keys.Proxy; p != nil {
		fs = append(fs, credpath.Field{Name: "keys.proxy.api_key_file", Path: &p.APIKeyFile})
	}
	return credpath.ExpandFields(fs...)
}
