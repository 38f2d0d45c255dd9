package runner

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	neturl "net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sealrun/sealrun/internal/wait"

	amqp "github.com/rabbitmq/amqp091-go"
)

// supervise keeps a consuming session alive until ctx ends. amqp091-go has
// no recovery of its own worth relying on, so every loss (connection,
// channel, consumer cancelled by the broker) ends the session and a new one
// is dialled after a jittered, growing delay, forever. With several broker
// URLs (a cluster's nodes) each new session dials the next one,
// round-robin: the node that was lost is the last one tried again.
func (r *Runner) supervise(ctx, jobCtx context.Context, handlers *sync.WaitGroup) {
	fails := 0
	b := wait.Backoff(r.cfg.AMQP.ReconnectMin, r.cfg.AMQP.ReconnectMax)
	everConnected := false
	for next := 0; ; next++ {
		started := time.Now()
		err := r.session(ctx, jobCtx, handlers, next, func(broker string) {
			if everConnected {
				r.m.reconnects.Inc()
				r.log.Info("reconnected to the broker", "broker", broker)
			}
			everConnected = true
		})
		r.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			fails = 0 // a long session: the broker was fine, start over
			b.Reset()
		}
		fails++
		d := b.NextBackOff()
		r.log.Warn("broker session ended; reconnecting", "error", err, "attempt", fails, "retry_in", d)
		if !wait.Sleep(ctx, d) {
			return
		}
	}
}

// session is one connection: it declares the topology, consumes every queue
// and dispatches deliveries to handlers until the connection or a channel
// closes (error) or ctx ends (nil, after consumers are cancelled).
//
// It dials the URL at index next (modulo the number of URLs).
func (r *Runner) session(ctx, jobCtx context.Context, handlers *sync.WaitGroup, next int, consumingNow func(broker string)) error {
	urls, err := r.cfg.amqpURLs()
	if err != nil {
		return err
	}
	url := urls[next%len(urls)]
	broker := brokerHost(url)
	cfg := amqp.Config{Heartbeat: r.cfg.AMQP.Heartbeat, Properties: amqp.NewConnectionProperties(),
		Dial: amqp.DefaultDial(10 * time.Second)}
	cfg.Properties.SetClientConnectionName("sealrun-runner " + r.cfg.RunnerID)
	if r.cfg.AMQP.TLS != nil {
		if cfg.TLSClientConfig, err = tlsConfig(r.cfg.AMQP.TLS); err != nil {
			return err
		}
	}
	conn, err := amqp.DialConfig(url, cfg)
	if err != nil {
		// amqp091 errors name the host, never the URL's password.
		return fmt.Errorf("dial broker %s: %w", broker, err)
	}
	defer conn.Close()
	// Buffered: the library blocks on unbuffered notification channels.
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))

	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	// Buffered beyond the queue count: discovery may add consumers.
	cancelled := ch.NotifyCancel(make(chan string, 64))
	if err := ch.Qos(r.cfg.AMQP.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	if err := r.declareExchanges(conn); err != nil {
		return err
	}
	pub, err := newPublisher(conn, r.cfg, r.log)
	if err != nil {
		return err
	}
	defer pub.close()
	// Handlers whose own session died under a job answer through this one.
	r.pubs.set(pub)
	defer r.pubs.unset(pub)

	consumeCtx, stopConsuming := context.WithCancel(ctx)
	defer stopConsuming()
	type queued struct {
		queue string
		d     amqp.Delivery
	}
	var feeders sync.WaitGroup
	consumers := map[string]string{} // consumer tag -> queue
	consume := func(q string) error {
		tag := fmt.Sprintf("sealrun-%s-%s-%d", r.cfg.RunnerID, q, time.Now().UnixNano())
		deliveries, err := ch.ConsumeWithContext(consumeCtx, q, tag, false, false, false, false, nil)
		if err != nil {
			return fmt.Errorf("consume queue %s: %w", q, err)
		}
		consumers[tag] = q
		// One feeder per queue hands each delivery to a goroutine that takes
		// a concurrency slot first, so prefetch fills the channel but at
		// most Concurrency messages run.
		feeders.Go(func() {
			for d := range deliveries {
				log := r.log.With("queue", q, "delivery_tag", d.DeliveryTag, "redelivered", d.Redelivered)
				// The broker's consumer timeout runs from delivery, so the
				// hand-back timer starts here, and each delivery waits for a
				// concurrency slot in its own goroutine (at most prefetch of
				// them): a feeder blocked on one delivery would leave the
				// next without a timer.
				handedBack, settled := r.holdDelivery(log, &d)
				handlers.Go(func() {
					defer settled()
					select {
					case r.slots <- struct{}{}:
					case <-handedBack:
						// Handed back while it waited: the broker delivers it
						// again, and nothing was started for it.
						return
					case <-consumeCtx.Done():
						// Not started: give it back now rather than at close.
						_ = d.Nack(false, true)
						return
					}
					defer func() { <-r.slots }()
					r.handle(jobCtx, pub, q, d, log, handedBack)
				})
			}
		})
		return nil
	}
	consuming := func(q string) bool {
		for _, c := range consumers {
			if c == q {
				return true
			}
		}
		return false
	}
	// consumeNew consumes every queue of the set not consumed yet. Each
	// queue is declared and checked on a channel of its own first: a
	// refused one (403, 405 locked, 406 other arguments) would close the
	// consuming channel and end the session for every queue, again at each
	// retry. A queue that cannot be consumed is reported (log, /readyz) and
	// tried again every queueRetry; the others are consumed meanwhile.
	consumeNew := func() error {
		for _, q := range r.queues.all() {
			if consuming(q) {
				continue
			}
			if !r.queues.discovered(q) && *r.cfg.AMQP.Declare {
				if err := r.declareQueue(conn, q); err != nil {
					r.notConsumed(q, err)
					continue
				}
			}
			if err := probeQueue(conn, q); err != nil {
				r.notConsumed(q, err)
				continue
			}
			if err := consume(q); err != nil {
				return err
			}
			r.queues.setProblem(q, "")
		}
		return nil
	}
	retry := time.NewTicker(queueRetry)
	defer retry.Stop()
	if err := consumeNew(); err != nil {
		return err
	}
	r.connected.Store(true)
	consumingNow(broker)
	r.readyOnce.Do(func() { close(r.ready) })
	r.log.Info("consuming", "broker", broker, "queues", r.queues.all(), "prefetch", r.cfg.AMQP.Prefetch, "concurrency", r.cfg.Concurrency)

	var end error
	for end == nil && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case e := <-connClosed:
			end = fmt.Errorf("connection closed: %v", e)
		case e := <-chClosed:
			end = fmt.Errorf("channel closed: %v", e)
		case e := <-pub.closed:
			end = fmt.Errorf("publishing channel closed: %v", e)
		case <-retry.C:
			if len(r.queues.unconsumed()) > 0 {
				end = consumeNew()
			}
		case <-r.queues.changed:
			// A queue that vanished between discovery and consume closes
			// the channel (404): the session ends and the next one consumes
			// what discovery then finds.
			end = consumeNew()
		case tag := <-cancelled:
			q := consumers[tag]
			if q != "" && r.queues.discovered(q) {
				// A discovered queue was deleted: drop it, keep the rest.
				delete(consumers, tag)
				r.queues.drop(q)
				r.log.Info("broker cancelled the consumer of a discovered queue (deleted?)", "queue", q)
				continue
			}
			end = fmt.Errorf("broker cancelled consumer %s (queue deleted?)", tag)
		}
	}
	stopConsuming()
	feeders.Wait()
	if end == nil {
		// Shutdown: handlers still ack on this channel, so keep the
		// connection open until they are done (bounded by the grace
		// period, after which the jobs are killed and requeued).
		handlers.Wait()
		return nil
	}
	return end
}

// brokerHost names a broker URL in logs and errors: host:port, never the
// user or password.
func brokerHost(raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Host
}

// queueRetry is how often a session tries again the queues it could not
// consume.
var queueRetry = 30 * time.Second

// declareExchanges creates the exchange and the dead-letter exchange (spec
// §5b) unless the configuration says they are managed elsewhere.
func (r *Runner) declareExchanges(conn *amqp.Connection) error {
	if !*r.cfg.AMQP.Declare {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	ex := r.cfg.AMQP.Exchange
	if err := ch.ExchangeDeclare(ex, "topic", true, true, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", ex, err)
	}
	if dl := r.cfg.DeadLetter; dl != nil {
		if err := ch.ExchangeDeclare(dl.Exchange, "direct", true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare dead-letter exchange %s: %w", dl.Exchange, err)
		}
	}
	return nil
}

// declareQueue creates a configured queue, its dead-letter queue and its
// binding, on a throwaway channel (a refusal closes the channel it happens
// on). A queue that exists with other arguments (a StudioML client declared
// it first: non-durable, no dead-lettering, classic) is left as it is,
// bound, and consumed as it is, with a warning naming the argument; nil
// means q may be consumed.
func (r *Runner) declareQueue(conn *amqp.Connection, q string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer func() { _ = ch.Close() }()
	args := r.queueArgs()
	if dl := r.cfg.DeadLetter; dl != nil {
		args["x-dead-letter-exchange"], args["x-dead-letter-routing-key"] = dl.Exchange, q
		if r.cfg.AMQP.QueueType == QueueQuorum {
			// At-least-once: a dead-lettered message leaves q only once the
			// dead-letter queue has it, so a poison message is kept for an
			// operator's look even when the dead-letter queue's leader is
			// on a node that just died (at-most-once would drop it then).
			// The price: a copy may reach the dead-letter queue twice if
			// q's leader dies between the two steps. RabbitMQ requires
			// reject-publish overflow for it (which only matters with a
			// max-length policy: a full queue refuses new messages instead
			// of dropping its oldest).
			args["x-dead-letter-strategy"], args["x-overflow"] = "at-least-once", "reject-publish"
		}
		dq := q + dl.QueueSuffix
		if ch, err = r.declareOrAccept(conn, ch, dq, r.queueArgs()); err != nil {
			return fmt.Errorf("declare dead-letter queue %s: %w", dq, err)
		}
		if err := ch.QueueBind(dq, q, dl.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind dead-letter queue %s: %w", dq, err)
		}
	}
	if r.cfg.AMQP.QueueType == QueueQuorum {
		args["x-delivery-limit"] = int64(r.cfg.DeliveryLimit())
	}
	if ch, err = r.declareOrAccept(conn, ch, q, args); err != nil {
		return fmt.Errorf("declare queue %s: %w", q, err)
	}
	if err := ch.QueueBind(q, "StudioML."+q, r.cfg.AMQP.Exchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", q, r.cfg.AMQP.Exchange, err)
	}
	return nil
}

// queueArgs are the arguments every queue the runner declares gets: its
// type, for quorum. Classic queues are declared without one, exactly as
// before queue_type existed, so existing queues stay equivalent.
func (r *Runner) queueArgs() amqp.Table {
	if r.cfg.AMQP.QueueType == QueueQuorum {
		return amqp.Table{"x-queue-type": QueueQuorum}
	}
	return amqp.Table{}
}

// declareOrAccept declares q (durable) with args on ch. If q exists with
// other arguments (406), it warns naming the argument and accepts q as it
// is. It returns the channel to go on with: the broker closes a channel
// that refused, so it is then a fresh one.
func (r *Runner) declareOrAccept(conn *amqp.Connection, ch *amqp.Channel, q string, args amqp.Table) (*amqp.Channel, error) {
	_, err := ch.QueueDeclare(q, true, false, false, false, args)
	if err == nil {
		return ch, nil
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return ch, err
	}
	reason := ae.Reason
	if args["x-queue-type"] == QueueQuorum && mismatchedArg(reason) != "x-queue-type" {
		// The broker names the first argument that differs, often the
		// dead-letter exchange; on a classic queue its type is the point.
		if why, classic := r.classicAlready(conn, q); classic {
			reason = why
		}
	}
	arg := mismatchedArg(reason)
	r.log.Warn("queue exists with other arguments than the runner declares; consuming it as it is",
		"queue", q, "argument", arg, "broker_says", reason, "fix", mismatchFix(arg))
	return conn.Channel()
}

// classicAlready reports whether existing queue q is not a quorum queue,
// and the broker's words for it, by declaring it with the type alone on a
// throwaway channel. A non-durable queue is classic: quorum queues are
// always durable.
func (r *Runner) classicAlready(conn *amqp.Connection, q string) (string, bool) {
	ch, err := conn.Channel()
	if err != nil {
		return "", false
	}
	defer func() { _ = ch.Close() }()
	_, err = ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": QueueQuorum})
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		return "", false
	}
	switch mismatchedArg(ae.Reason) {
	case "x-queue-type":
		return ae.Reason, true
	case "durable":
		return "inequivalent arg 'x-queue-type' for queue '" + q + "': the queue is not durable, so not a quorum queue (" + ae.Reason + ")", true
	}
	return "", false
}

// inequivalentArg finds the argument RabbitMQ names in a 406 reply:
// "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' ...".
var inequivalentArg = regexp.MustCompile(`inequivalent arg '([^']+)'`)

func mismatchedArg(reason string) string {
	if m := inequivalentArg.FindStringSubmatch(reason); m != nil {
		return m[1]
	}
	return "unknown"
}

// mismatchFix says what to do about a queue declared with other arguments.
func mismatchFix(arg string) string {
	switch {
	case arg == "durable":
		return "the queue is not durable, so it and its messages do not survive a broker restart; to have it durable, delete it when empty and let the runner declare it, or declare it durable in the client"
	case arg == "x-queue-type":
		return "the queue exists with another type than amqp.queue_type: a classic queue lives on one node and is unavailable while that node is down; to change its type, stop publishing, drain and delete it and let the runner declare it, or set amqp.queue_type to match"
	case arg == "x-delivery-limit":
		return "the queue was declared with another delivery limit (executor.timeout or amqp.consumer_timeout changed?): a long job handed back more often than the queue's limit is dead-lettered; set a delivery-limit policy, or drain and delete the queue and let the runner declare it"
	case strings.HasPrefix(arg, "x-dead-letter"):
		return "rejected messages of this queue are dropped, not dead-lettered; delete the queue when empty and let the runner declare it, declare it with the runner's dead-letter arguments, or set dead_letter to match"
	}
	return "delete the queue when empty and let the runner declare it, or set amqp.declare: false if another tool owns the topology"
}

// notConsumed records and logs that q cannot be consumed now.
func (r *Runner) notConsumed(q string, err error) {
	why := err.Error()
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.NotFound:
			why += "; declare the queue, or set amqp.declare: true"
		case amqp.AccessRefused:
			why += "; grant the runner's AMQP user configure, read and write on it"
		case amqp.ResourceLocked:
			why += "; another connection holds it exclusively"
		}
	}
	r.queues.setProblem(q, why)
	r.log.Warn("not consuming a queue; the others are consumed, and it is tried again", "queue", q, "error", why,
		"retry_in", queueRetry)
}

func tlsConfig(t *TLS) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("amqp.tls.ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("amqp.tls.ca_file %s: no PEM certificates", t.CAFile)
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("amqp.tls client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// probeQueue checks, on a throwaway channel, that queue exists and this
// connection may use it.
func probeQueue(conn *amqp.Connection, queue string) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	return err
}
