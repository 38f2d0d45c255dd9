package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sealrun/sealrun/internal/wait"

	"github.com/sealrun/sealrun/envelope"
)

// Discover finds queues to consume by name through RabbitMQ's management
// HTTP API (the rabbitmq_management plugin), as StudioML's runners do: a
// queue created after the runner started is consumed within Interval, with
// no restart. Discovered queues are consumed, never declared: whoever made
// them owns their arguments.
type Discover struct {
	// ManagementURL is the API's base URL, e.g. http://127.0.0.1:15672.
	// The user and password are the AMQP URL's; the user needs the
	// "monitoring" or "management" tag to list queues.
	ManagementURL string `yaml:"management_url"`
	// Patterns are Go regular expressions, each matched against the whole
	// bare queue name (implicitly anchored). Response queues (<q>_response)
	// and dead-letter queues (<q><dead_letter.queue_suffix>) never match.
	Patterns []string `yaml:"patterns"`
	// Interval is how often the API is asked (default 30s).
	Interval time.Duration `yaml:"interval"`
}

func (d *Discover) validate() error {
	u, err := url.Parse(d.ManagementURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("discover.management_url: want http(s)://host:port of the RabbitMQ management API")
	}
	if u.User != nil {
		return errors.New("discover.management_url: put no credentials in it; the AMQP URL's are used")
	}
	if len(d.Patterns) == 0 {
		return errors.New("discover.patterns: list at least one queue name pattern")
	}
	for _, p := range d.Patterns {
		if _, err := regexp.Compile(p); err != nil {
			return fmt.Errorf("discover.patterns: %q: %w", p, err)
		}
	}
	return nil
}

// matcher reports whether a queue name is one to consume.
func (d *Discover) matcher(deadSuffix string) func(string) bool {
	res := make([]*regexp.Regexp, len(d.Patterns))
	for i, p := range d.Patterns {
		res[i] = regexp.MustCompile(`^(?:` + p + `)$`) // validated
	}
	return func(q string) bool {
		if strings.HasSuffix(q, envelope.ResponseQueue("")) || (deadSuffix != "" && strings.HasSuffix(q, deadSuffix)) ||
			strings.HasPrefix(q, "amq.") {
			return false
		}
		for _, re := range res {
			if re.MatchString(q) {
				return true
			}
		}
		return false
	}
}

// queueSet is the queues a runner consumes: the configured ones and those
// discovered so far. changed is signalled when discovery adds or drops one.
type queueSet struct {
	mu       sync.Mutex
	explicit []string
	found    []string // sorted, disjoint from explicit
	changed  chan struct{}
	// problems: queues of the set not consumed, and why.
	problems map[string]string
}

func newQueueSet(explicit []string) *queueSet {
	return &queueSet{explicit: slices.Clone(explicit), changed: make(chan struct{}, 1), problems: map[string]string{}}
}

// setProblem records why q is not consumed; "" clears it.
func (s *queueSet) setProblem(q, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if why == "" {
		delete(s.problems, q)
	} else {
		s.problems[q] = why
	}
}

type queueProblem struct{ name, why string }

// unconsumed lists the queues of the set not consumed, by name.
func (s *queueSet) unconsumed() []queueProblem {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []queueProblem
	for q, why := range s.problems {
		out = append(out, queueProblem{q, why})
	}
	slices.SortFunc(out, func(a, b queueProblem) int { return strings.Compare(a.name, b.name) })
	return out
}

// all returns the configured queues, then the discovered ones.
func (s *queueSet) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(slices.Clone(s.explicit), s.found...)
}

// discovered says whether q was found by discovery (not configured).
func (s *queueSet) discovered(q string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := slices.BinarySearch(s.found, q)
	return ok
}

// drop forgets a discovered queue whose consumer the broker cancelled, so
// the next discovery round consumes it again if it was re-created.
func (s *queueSet) drop(q string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := slices.BinarySearch(s.found, q); ok {
		s.found = slices.Delete(s.found, i, i+1)
	}
	delete(s.problems, q)
}

// setFound replaces the discovered queues and reports what was added.
func (s *queueSet) setFound(names []string) (added, removed []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var found []string
	for _, q := range names {
		if !slices.Contains(s.explicit, q) {
			found = append(found, q)
		}
	}
	slices.Sort(found)
	found = slices.Compact(found)
	for _, q := range found {
		if _, ok := slices.BinarySearch(s.found, q); !ok {
			added = append(added, q)
		}
	}
	for _, q := range s.found {
		if _, ok := slices.BinarySearch(found, q); !ok {
			removed = append(removed, q)
		}
	}
	s.found = found
	for _, q := range removed {
		delete(s.problems, q)
	}
	if len(added)+len(removed) > 0 {
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
	return added, removed
}

// listQueues asks the management API for the names of the queues in the
// AMQP URL's vhost that another connection may consume (not exclusive).
func listQueues(ctx context.Context, hc *http.Client, base, amqpURL string) ([]string, error) {
	au, err := url.Parse(amqpURL)
	if err != nil {
		return nil, errors.New("amqp url: cannot parse it") // never echo it: it may hold a password
	}
	vhost := strings.TrimPrefix(au.Path, "/")
	if vhost == "" {
		vhost = "/"
	}
	if v, err := url.PathUnescape(vhost); err == nil {
		vhost = v
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		strings.TrimSuffix(base, "/")+"/api/queues/"+url.PathEscape(vhost)+"?columns=name,exclusive", nil)
	if err != nil {
		return nil, err
	}
	user, pass := "guest", "guest" // AMQP's default, as amqp091 assumes too
	if au.User != nil {
		user = au.User.Username()
		pass, _ = au.User.Password()
	}
	req.SetBasicAuth(user, pass)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		hint := ""
		if resp.StatusCode == http.StatusUnauthorized {
			hint = " (give the AMQP user the monitoring tag: rabbitmqctl set_user_tags USER monitoring)"
		}
		return nil, fmt.Errorf("list queues: management API answered %s: %s%s", resp.Status, strings.TrimSpace(string(b)), hint)
	}
	var qs []struct {
		Name      string `json:"name"`
		Exclusive bool   `json:"exclusive"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&qs); err != nil {
		return nil, fmt.Errorf("list queues: bad answer from the management API: %w", err)
	}
	names := make([]string, 0, len(qs))
	for _, q := range qs {
		// Only its owner connection may consume an exclusive queue.
		if !q.Exclusive {
			names = append(names, q.Name)
		}
	}
	return names, nil
}

// discover keeps r.queues' discovered part current until ctx ends. A failing
// API keeps the queues found so far: consumers of a deleted queue are
// cancelled by the broker anyway.
func (r *Runner) discover(ctx context.Context) {
	d := r.cfg.Discover
	match := d.matcher(r.deadSuffix())
	hc := &http.Client{Timeout: 10 * time.Second}
	if r.cfg.AMQP.TLS != nil && strings.HasPrefix(d.ManagementURL, "https:") {
		if tc, err := tlsConfig(r.cfg.AMQP.TLS); err == nil {
			hc.Transport = &http.Transport{TLSClientConfig: tc}
		}
	}
	if u, err := url.Parse(d.ManagementURL); err == nil && u.Scheme == "http" && !loopback(u.Hostname()) {
		r.log.Warn("discover.management_url is plain http to another host: the AMQP user's password crosses the network in the clear; use https")
	}
	b := wait.Backoff(time.Second, d.Interval)
	for {
		pause := d.Interval
		if err := r.discoverOnce(ctx, hc, match); err != nil {
			if ctx.Err() != nil {
				return
			}
			pause = b.NextBackOff()
			r.log.Warn("queue discovery failed; keeping the queues found so far", "error", err, "retry_in", pause)
		} else {
			b.Reset()
		}
		if !wait.Sleep(ctx, pause) {
			return
		}
	}
}

func (r *Runner) discoverOnce(ctx context.Context, hc *http.Client, match func(string) bool) error {
	amqpURL, err := r.cfg.amqpURL()
	if err != nil {
		return err
	}
	names, err := listQueues(ctx, hc, r.cfg.Discover.ManagementURL, amqpURL)
	if err != nil {
		return err
	}
	var keep []string
	for _, q := range names {
		if match(q) {
			keep = append(keep, q)
		}
	}
	added, removed := r.queues.setFound(keep)
	if len(added)+len(removed) > 0 {
		r.log.Info("queues discovered", "added", added, "removed", removed)
	}
	return nil
}

func (r *Runner) deadSuffix() string {
	if r.cfg.DeadLetter != nil {
		return r.cfg.DeadLetter.QueueSuffix
	}
	return ""
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
