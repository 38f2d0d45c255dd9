package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
)

// responseQueueTTL is how long the answer to "does <queue>_response exist"
// is cached; a response queue created later is used within this delay.
const responseQueueTTL = 30 * time.Second

// publisher sends sealed responses on a confirm-mode channel of a session.
type publisher struct {
	conn     *amqp.Connection
	ch       *amqp.Channel
	closed   chan *amqp.Error
	cfg      *Config
	log      *slog.Logger
	returned chan amqp.Return
	stop     chan struct{}
	done     chan struct{}

	// probe is a separate channel for passive declares: a 404 closes the
	// channel it happens on.
	probeMu sync.Mutex
	probe   *amqp.Channel
	exists  map[string]time.Time // response queue → checked at (exists)
	missing map[string]time.Time // response queue → checked at (absent)
}

func newPublisher(conn *amqp.Connection, cfg *Config, log *slog.Logger) (*publisher, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open publishing channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	p := &publisher{conn: conn, ch: ch, cfg: cfg, log: log, closed: ch.NotifyClose(make(chan *amqp.Error, 1)),
		returned: ch.NotifyReturn(make(chan amqp.Return, 16)), stop: make(chan struct{}), done: make(chan struct{}),
		exists: map[string]time.Time{}, missing: map[string]time.Time{}}
	// Returns must be drained or the library blocks; a mandatory response
	// that no queue takes is logged (the queue vanished after our check).
	go func() {
		defer close(p.done)
		for {
			select {
			case ret, ok := <-p.returned:
				if !ok {
					return
				}
				p.log.Warn("response returned unroutable", "routing_key", ret.RoutingKey, "reply", ret.ReplyText)
			case <-p.stop:
				return
			}
		}
	}()
	return p, nil
}

func (p *publisher) close() {
	close(p.stop)
	<-p.done
	_ = p.ch.Close()
	p.probeMu.Lock()
	if p.probe != nil {
		_ = p.probe.Close()
	}
	p.probeMu.Unlock()
}

// responseQueue reports whether queue's response queue exists, binding it to
// the exchange (idempotent) so the StudioML.<queue>_response key reaches it.
func (p *publisher) responseQueue(queue string) (bool, error) {
	rq := envelope.ResponseQueue(queue)
	p.probeMu.Lock()
	defer p.probeMu.Unlock()
	if t, ok := p.exists[rq]; ok && time.Since(t) < responseQueueTTL {
		return true, nil
	}
	if t, ok := p.missing[rq]; ok && time.Since(t) < responseQueueTTL {
		return false, nil
	}
	if p.probe == nil || p.probe.IsClosed() {
		ch, err := p.conn.Channel()
		if err != nil {
			return false, fmt.Errorf("open probe channel: %w", err)
		}
		p.probe = ch
	}
	_, err := p.probe.QueueDeclarePassive(rq, true, false, false, false, nil)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.NotFound {
		p.probe = nil // the broker closed it
		p.missing[rq] = time.Now()
		return false, nil
	}
	if err != nil {
		p.probe = nil
		return false, fmt.Errorf("check response queue %s: %w", rq, err)
	}
	if *p.cfg.AMQP.Declare {
		if err := p.probe.QueueBind(rq, envelope.ResponseRoutingKey(queue), p.cfg.AMQP.Exchange, false, nil); err != nil {
			p.probe = nil
			return false, fmt.Errorf("bind response queue %s: %w", rq, err)
		}
	}
	p.exists[rq] = time.Now()
	return true, nil
}

// publish sends one sealed response under messageID and waits for the
// broker's confirm.
func (p *publisher) publish(ctx context.Context, queue, messageID, body string) error {
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, p.cfg.AMQP.Exchange, envelope.ResponseRoutingKey(queue),
		true, false, amqp.Publishing{ContentType: "text/plain", DeliveryMode: amqp.Persistent, Timestamp: time.Now(),
			MessageId: messageID, Body: []byte(body)})
	if err != nil {
		return fmt.Errorf("publish response for %s: %w", queue, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("confirm response for %s: %w", queue, err)
	}
	if !ok {
		return fmt.Errorf("broker nacked the response for %s", queue)
	}
	return nil
}

// publishers hands the current session's publisher to handlers whose own
// session ended while their job ran. The zero value is ready.
type publishers struct {
	mu      sync.Mutex
	cur     *publisher
	changed chan struct{} // closed and replaced when cur is set
}

func (s *publishers) set(p *publisher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = p
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
}

func (s *publishers) unset(p *publisher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == p {
		s.cur = nil
	}
}

// wait returns the current publisher, waiting for a session to have one.
func (s *publishers) wait(ctx context.Context) (*publisher, error) {
	for {
		s.mu.Lock()
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		p, changed := s.cur, s.changed
		s.mu.Unlock()
		if p != nil && !p.ch.IsClosed() {
			return p, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// ResponseMessageID is the AMQP message id of the response to job id: the
// same for every publish of it, so a consumer drops a copy the runner
// published again because the broker's confirm was lost (AMQP publishing
// is at-least-once).
func ResponseMessageID(jobID string) string { return "response-" + jobID }

// jobSummary is the Progress JSON a response carries.
type jobSummary struct {
	ExitStatus      int    `json:"exit_status"`
	TimedOut        bool   `json:"timed_out,omitempty"`
	DurationSeconds string `json:"duration_seconds"`
	Output          string `json:"output,omitempty"`
	OutputTruncated bool   `json:"output_truncated,omitempty"`
}

// report builds the final Progress report of a job.
func (r *Runner) report(job Job, res *Result) *envelope.Report {
	sum := jobSummary{ExitStatus: res.ExitStatus, TimedOut: res.TimedOut,
		DurationSeconds: fmt.Sprintf("%.3f", res.Duration.Seconds()),
		Output:          string(res.Output), OutputTruncated: res.Truncated}
	js, _ := json.Marshal(sum)
	now := time.Now().UTC()
	pr := &envelope.Progress{Time: now, JSON: string(js), State: "success"}
	if res.ExitStatus != 0 || res.TimedOut {
		pr.State = "failed"
		msg := fmt.Sprintf("exit status %d", res.ExitStatus)
		if res.TimedOut {
			msg = "timed out"
		}
		pr.Error = &envelope.ProgressError{Msg: msg, Code: int32(res.ExitStatus)}
	}
	return &envelope.Report{Time: now, ExperimentID: experimentID(job.Request), UniqueID: job.ID,
		ExecutorID: r.cfg.RunnerID, Progress: pr}
}

// experimentID picks the experiment key out of a StudioML request, if any.
func experimentID(req []byte) string {
	var r struct {
		Experiment struct {
			Key string `json:"key"`
		} `json:"experiment"`
	}
	_ = json.Unmarshal(req, &r)
	return r.Experiment.Key
}

// respond seals the job's report once and publishes it to <queue>_response
// under ResponseMessageID, when that queue exists and a response key matches
// it. Broker failures are retried on whichever session is current until
// the broker confirms, so a job whose connection died under it is still
// answered; every retry publishes the same body. It gives up only when
// shutdown ended ctx and finishTimeout has passed. It returns the response's
// message id, or "" when no response was due.
func (r *Runner) respond(ctx context.Context, p *publisher, log *slog.Logger, job Job, res *Result) (string, error) {
	keys := r.respKeys.Load()
	if keys == nil {
		r.m.responses.WithLabelValues("no_key").Inc()
		return "", nil
	}
	if _, _, ok := keys.Lookup(envelope.ResponseQueue(job.Queue)); !ok {
		r.m.responses.WithLabelValues("no_key").Inc()
		return "", nil
	}
	body, err := envelope.SealResponse(keys, job.Queue, r.report(job, res))
	if err != nil {
		return "", fmt.Errorf("seal response: %w", err)
	}
	id := ResponseMessageID(job.ID)
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := r.publishResponse(ctx, p, job.Queue, id, body)
		if err == nil {
			return id, nil
		}
		if errors.Is(err, errNoResponseQueue) {
			return "", nil
		}
		if ctx.Err() != nil && time.Since(start) > finishTimeout {
			return "", err
		}
		p = nil // the session may be gone: use the current one
		d := backoff(attempt, 200*time.Millisecond, 5*time.Second)
		log.Warn("publishing the response failed; retrying on the current broker session", "error", err, "retry_in", d)
		time.Sleep(d)
	}
}

var errNoResponseQueue = errors.New("no response queue")

// publishResponse is one attempt of respond, on p or the current session's
// publisher.
func (r *Runner) publishResponse(ctx context.Context, p *publisher, queue, id, body string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if p == nil || p.ch.IsClosed() {
		var err error
		if p, err = r.pubs.wait(ctx); err != nil {
			return fmt.Errorf("no broker session to publish the response on: %w", err)
		}
	}
	ok, err := p.responseQueue(queue)
	if err != nil {
		return err
	}
	if !ok {
		r.m.responses.WithLabelValues("no_queue").Inc()
		return errNoResponseQueue
	}
	if err := p.publish(ctx, queue, id, body); err != nil {
		return err
	}
	r.m.responses.WithLabelValues("sent").Inc()
	return nil
}
