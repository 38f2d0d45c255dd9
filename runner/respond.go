package runner

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/wait"
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

	bounceMu sync.Mutex
	bounced  map[string]bool // exchange NUL message id → returned unroutable

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
		returned: ch.NotifyReturn(make(chan amqp.Return, 64)), stop: make(chan struct{}), done: make(chan struct{}),
		exists: map[string]time.Time{}, missing: map[string]time.Time{}, bounced: map[string]bool{}}
	// Returns must be drained or the library blocks. Each publisher drains
	// them itself once its confirm arrived (the broker sends basic.return
	// before basic.ack, and the library queues it in order, so it is in the
	// channel by then); this loop drains what a waiter that gave up left.
	go func() {
		defer close(p.done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.drainReturns()
			case <-p.stop:
				return
			}
		}
	}()
	return p, nil
}

// drainReturns moves the returned (unroutable) publishings into bounced.
func (p *publisher) drainReturns() {
	p.bounceMu.Lock()
	defer p.bounceMu.Unlock()
	if len(p.bounced) > 1024 {
		clear(p.bounced) // ids whose waiter gave up
	}
	for {
		select {
		case ret, ok := <-p.returned:
			if !ok {
				return
			}
			p.bounced[ret.Exchange+"\x00"+ret.MessageId] = true
		default:
			return
		}
	}
}

// wasReturned reports (and forgets) whether the publishing of messageID to
// exchange came back unroutable.
func (p *publisher) wasReturned(exchange, messageID string) bool {
	p.drainReturns()
	p.bounceMu.Lock()
	defer p.bounceMu.Unlock()
	k := exchange + "\x00" + messageID
	b := p.bounced[k]
	delete(p.bounced, k)
	return b
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

// errUnroutable: the broker returned the response from both the exchange
// and the default exchange (no queue took it).
var errUnroutable = errors.New("response unroutable")

// publish sends one sealed response under messageID and waits for the
// broker's confirm. A response the exchange cannot route (the response
// queue is not bound to it) is sent again through the default exchange,
// which routes by queue name; it reports which way it went.
func (p *publisher) publish(ctx context.Context, queue, messageID, body string) (fallback bool, err error) {
	routed, err := p.publishOnce(ctx, p.cfg.AMQP.Exchange, envelope.ResponseRoutingKey(queue), queue, messageID, body)
	if err != nil || routed {
		return false, err
	}
	routed, err = p.publishOnce(ctx, "", envelope.ResponseQueue(queue), queue, messageID, body)
	if err != nil {
		return true, err
	}
	if !routed {
		return true, errUnroutable
	}
	return true, nil
}

// publishOnce publishes mandatory and reports whether a queue took it.
func (p *publisher) publishOnce(ctx context.Context, exchange, key, queue, messageID, body string) (bool, error) {
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key,
		true, false, amqp.Publishing{ContentType: "text/plain", DeliveryMode: amqp.Persistent, Timestamp: time.Now(),
			MessageId: messageID, Body: []byte(body)})
	if err != nil {
		return false, fmt.Errorf("publish response for %s: %w", queue, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return false, fmt.Errorf("confirm response for %s: %w", queue, err)
	}
	if !ok {
		return false, fmt.Errorf("broker nacked the response for %s", queue)
	}
	return !p.wasReturned(exchange, messageID), nil
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

// ResponseMessageID is the AMQP message id of the final report of job id:
// the same for every publish of it, so a consumer drops a copy the runner
// published again because the broker's confirm was lost (AMQP publishing
// is at-least-once).
func ResponseMessageID(jobID string) string { return "response-" + jobID }

// logMessageID is the message id of a job's "stop" log report.
func logMessageID(jobID string) string { return "response-" + jobID + "-log" }

// startedMessageID is the message id of one run's Started report: a run
// taken over or run again is a new attempt, so its report is a new message.
func startedMessageID(jobID string) string {
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	return "response-" + jobID + "-started-" + hex.EncodeToString(b)
}

// StudioML report states and log severities: the enum value names of
// dev.studio_go_runner.reports (proto/reports.proto of studio-go-runner),
// which is what protojson writes and accepts.
const (
	stateStarted = "Started"
	stateFailed  = "Failed"
	stateSuccess = "Success"

	severityInfo  = "Info"
	severityError = "Error"
)

func (r *Runner) newReport(job Job) envelope.Report {
	return envelope.Report{Time: time.Now().UTC(), ExperimentID: experimentID(job.Request), UniqueID: job.ID,
		ExecutorID: r.cfg.RunnerID}
}

// startedReport is the Progress report StudioML runners send as a job starts.
func (r *Runner) startedReport(job Job) *envelope.Report {
	rep := r.newReport(job)
	rep.Progress = &envelope.Progress{Time: rep.Time, State: stateStarted}
	return &rep
}

// stopReport is the "stop" log entry StudioML runners send when a job ends,
// carrying what the runner knows of the run: its console output (stdout and
// stderr, capped), exit status and duration.
func (r *Runner) stopReport(job Job, res *Result) *envelope.Report {
	rep := r.newReport(job)
	fields := map[string]string{"success": "True", "exit_status": strconv.Itoa(res.ExitStatus),
		"duration": res.Duration.String()}
	sev := severityInfo
	if msg := failure(res); msg != "" {
		fields["success"], fields["error"], sev = "False", msg, severityError
	}
	if res.TimedOut {
		fields["timed_out"] = "True"
	}
	if len(res.Output) > 0 {
		fields["output"] = string(res.Output)
	}
	if res.Truncated {
		fields["output_truncated"] = "True"
	}
	rep.Logging = &envelope.LogEntry{Time: rep.Time, Severity: sev, Message: "stop", Fields: fields}
	return &rep
}

// finalReport is the job's terminal Progress report. Its json is the last
// single-line JSON fragment the experiment printed, where StudioML puts
// experiment output (interface.md, "report ↠ progress ↠ json").
func (r *Runner) finalReport(job Job, res *Result) *envelope.Report {
	rep := r.newReport(job)
	rep.Progress = &envelope.Progress{Time: rep.Time, JSON: experimentJSON(res.Output), State: stateSuccess}
	if msg := failure(res); msg != "" {
		rep.Progress.State = stateFailed
		rep.Progress.Error = &envelope.ProgressError{Msg: msg, Code: int32(res.ExitStatus)}
	}
	return &rep
}

// failure says why a run failed, or "" if it succeeded.
func failure(res *Result) string {
	switch {
	case res.TimedOut:
		return "timed out"
	case res.ExitStatus != 0:
		return fmt.Sprintf("exit status %d", res.ExitStatus)
	}
	return ""
}

// experimentJSON is the last line of output that is a well-formed JSON
// object or array (StudioML's "single line JSON fragment"), or "".
func experimentJSON(output []byte) string {
	last := ""
	for line := range strings.Lines(string(output)) {
		line = strings.TrimSpace(line)
		if (strings.HasPrefix(line, "{") || strings.HasPrefix(line, "[")) && json.Valid([]byte(line)) {
			last = line
		}
	}
	return last
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

// sealed is one report ready to publish.
type sealed struct {
	id, body string
	role     reportRole
}

// responseDue says whether queue's reports can be sealed; if not it counts
// and warns with what the operator must create.
func (r *Runner) responseDue(log *slog.Logger, queue string) (*envelope.ResponseKeys, bool) {
	keys := r.respKeys.Load()
	rq := envelope.ResponseQueue(queue)
	if keys == nil {
		r.m.responses.WithLabelValues("no_key").Inc()
		log.Warn("no report sent: no response keys are loaded; store a response key for a prefix of the response queue (sealrun secrets put --kind response-key)",
			"response_queue", rq)
		return nil, false
	}
	if _, _, ok := keys.Lookup(rq); !ok {
		r.m.responses.WithLabelValues("no_key").Inc()
		log.Warn("no report sent: no response key matches the response queue; store one for a prefix of it (sealrun secrets put --kind response-key)",
			"response_queue", rq, "response_prefixes", keys.Prefixes())
		return nil, false
	}
	return keys, true
}

// started sends a job's Started report, once and without retrying: like
// the StudioML runner's, it is informational and never holds the job up.
func (r *Runner) started(ctx context.Context, p *publisher, log *slog.Logger, job Job) {
	keys := r.respKeys.Load()
	if keys == nil {
		return
	}
	if _, _, ok := keys.Lookup(envelope.ResponseQueue(job.Queue)); !ok {
		return // respond warns once the job is done
	}
	body, err := envelope.SealResponse(keys, job.Queue, r.startedReport(job))
	if err != nil {
		log.Warn("sealing the Started report failed", "error", err)
		return
	}
	if err := r.publishResponse(ctx, p, log, job.Queue, startedMessageID(job.ID), body, roleStarted); err != nil &&
		!errors.Is(err, errNoResponseQueue) {
		log.Warn("the Started report was not sent; the final report still is", "error", err)
	}
}

// respond seals the job's "stop" log report and its final Progress report
// once, and publishes them in that order to <queue>_response, when that
// queue exists and a response key matches it. Broker failures are retried
// on whichever session is current until the broker confirms, so a job whose
// connection died under it is still answered; every retry publishes the
// same bodies. It gives up only when shutdown ended ctx and finishTimeout
// has passed. It returns the final report's message id, or "" when no
// response was due; errUnroutable when no queue took a report.
func (r *Runner) respond(ctx context.Context, p *publisher, log *slog.Logger, job Job, res *Result) (string, error) {
	keys, ok := r.responseDue(log, job.Queue)
	if !ok {
		return "", nil
	}
	var out []sealed
	for _, m := range []struct {
		id   string
		rep  *envelope.Report
		role reportRole
	}{{logMessageID(job.ID), r.stopReport(job, res), roleLog}, {ResponseMessageID(job.ID), r.finalReport(job, res), roleFinal}} {
		body, err := envelope.SealResponse(keys, job.Queue, m.rep)
		if err != nil {
			return "", fmt.Errorf("seal response: %w", err)
		}
		out = append(out, sealed{m.id, body, m.role})
	}
	gctx, cancel := afterShutdown(ctx, time.Now())
	defer cancel()
	for _, m := range out {
		err := wait.Retry(gctx, bookkeepingBackoff(), 0, func(err error, d time.Duration) {
			log.Warn("publishing the response failed; retrying on the current broker session", "error", err, "retry_in", d)
		}, func() error {
			err := r.publishResponse(ctx, p, log, job.Queue, m.id, m.body, m.role)
			if errors.Is(err, errNoResponseQueue) || errors.Is(err, errUnroutable) {
				return backoff.Permanent(err)
			}
			if err != nil {
				p = nil // the session may be gone: use the current one
			}
			return err
		})
		switch {
		case errors.Is(err, errNoResponseQueue):
			return "", nil
		case err != nil:
			return "", err
		}
	}
	return ResponseMessageID(job.ID), nil
}

var errNoResponseQueue = errors.New("no response queue")

// Which report of a job publishResponse sends: a job's outcome is counted
// in sealrun_runner_responses_total once, by the report it ends with.
type reportRole int

const (
	roleStarted reportRole = iota // never counted
	roleLog                       // counted if there is no queue
	roleFinal                     // counted
)

// publishResponse is one attempt of publishing a report, on p or the
// current session's publisher.
func (r *Runner) publishResponse(ctx context.Context, p *publisher, log *slog.Logger, queue, id, body string, role reportRole) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	if p == nil || p.ch.IsClosed() {
		var err error
		if p, err = r.pubs.wait(ctx); err != nil {
			return fmt.Errorf("no broker session to publish the response on: %w", err)
		}
	}
	rq := envelope.ResponseQueue(queue)
	inc := func(result string) {
		if role == roleFinal || (role == roleLog && result == "no_queue") {
			r.m.responses.WithLabelValues(result).Inc()
		}
	}
	ok, err := p.responseQueue(queue)
	if err != nil {
		return err
	}
	if !ok {
		inc("no_queue")
		if role != roleStarted {
			log.Warn("no report sent: the response queue does not exist; declare it (durable) and bind it to the exchange with its routing key",
				"response_queue", rq, "exchange", r.cfg.AMQP.Exchange, "routing_key", envelope.ResponseRoutingKey(queue))
		}
		return errNoResponseQueue
	}
	fallback, err := p.publish(ctx, queue, id, body)
	switch {
	case errors.Is(err, errUnroutable) && role == roleStarted:
		return err
	case errors.Is(err, errUnroutable):
		r.m.responses.WithLabelValues("unroutable").Inc()
		log.Warn("report lost: the broker routed it to no queue, through the exchange nor by queue name (was the response queue deleted?); the job is not recorded as answered",
			"response_queue", rq, "message_id", id)
		return err
	case err != nil:
		return err
	case fallback:
		inc("sent_default_exchange")
		log.Warn("report sent through the default exchange: the response queue is not bound to the exchange; bind it so StudioML routing reaches it",
			"response_queue", rq, "exchange", r.cfg.AMQP.Exchange, "routing_key", envelope.ResponseRoutingKey(queue))
		return nil
	}
	inc("sent")
	return nil
}
