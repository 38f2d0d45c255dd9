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

// publish sends one sealed response and waits for the broker's confirm.
func (p *publisher) publish(ctx context.Context, queue, body string) error {
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, p.cfg.AMQP.Exchange, envelope.ResponseRoutingKey(queue),
		true, false, amqp.Publishing{ContentType: "text/plain", DeliveryMode: amqp.Persistent, Timestamp: time.Now(),
			Body: []byte(body)})
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

// respond seals and publishes the job's report to <queue>_response, when
// that queue exists and a response key matches it. Only broker failures are
// errors (transient).
func (r *Runner) respond(ctx context.Context, p *publisher, job Job, res *Result) error {
	keys := r.respKeys.Load()
	if keys == nil {
		r.m.responses.WithLabelValues("no_key").Inc()
		return nil
	}
	if _, _, ok := keys.Lookup(envelope.ResponseQueue(job.Queue)); !ok {
		r.m.responses.WithLabelValues("no_key").Inc()
		return nil
	}
	ok, err := p.responseQueue(job.Queue)
	if err != nil {
		return err
	}
	if !ok {
		r.m.responses.WithLabelValues("no_queue").Inc()
		return nil
	}
	body, err := envelope.SealResponse(keys, job.Queue, r.report(job, res))
	if err != nil {
		return fmt.Errorf("seal response: %w", err)
	}
	if err := p.publish(ctx, job.Queue, body); err != nil {
		return err
	}
	r.m.responses.WithLabelValues("sent").Inc()
	return nil
}
