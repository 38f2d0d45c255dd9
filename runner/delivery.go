package runner

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Delivery bookkeeping: each delivery settles at most once, and goes back
// to the broker before its consumer_timeout.

// holdDelivery makes d settle at most once, and hands it back to the broker
// (requeue) before the broker's consumer_timeout would close the whole
// channel over it. The job goes on under its claim; the copy that comes
// back waits for it. The returned channel closes when d was handed back;
// done must be called when the handler returns, so a stale delivery tag is
// never settled later.
func (r *Runner) holdDelivery(log *slog.Logger, d *amqp.Delivery) (handedBack <-chan struct{}, done func()) {
	once := &settleOnce{Acknowledger: d.Acknowledger}
	d.Acknowledger = once
	back := make(chan struct{})
	after := r.cfg.AMQP.ConsumerTimeout / 2
	if after <= 0 || once.Acknowledger == nil {
		return back, func() { once.take() }
	}
	tag := d.DeliveryTag
	t := time.AfterFunc(after, func() {
		if err := once.Nack(tag, false, true); err == nil {
			r.m.messages.WithLabelValues(outcomeHandedBack, "", "").Inc()
			log.Info("handed the delivery back before the broker's consumer timeout; the job claim keeps it from running twice",
				"consumer_timeout", r.cfg.AMQP.ConsumerTimeout)
		}
		close(back)
	})
	once.mu.Lock()
	once.stop = func() { t.Stop() }
	once.mu.Unlock()
	return back, func() { once.take() }
}

// errSettled: the delivery was already acked, rejected or handed back.
var errSettled = errors.New("delivery already settled")

// settleOnce lets the first ack, nack or reject of a delivery through.
type settleOnce struct {
	amqp.Acknowledger
	mu      sync.Mutex
	settled bool
	stop    func() // stops the hand-back timer
}

func (s *settleOnce) take() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settled {
		return false
	}
	s.settled = true
	if s.stop != nil {
		s.stop()
	}
	return true
}

func (s *settleOnce) Ack(tag uint64, multiple bool) error {
	if !s.take() {
		return errSettled
	}
	return s.Acknowledger.Ack(tag, multiple)
}

func (s *settleOnce) Nack(tag uint64, multiple, requeue bool) error {
	if !s.take() {
		return errSettled
	}
	return s.Acknowledger.Nack(tag, multiple, requeue)
}

func (s *settleOnce) Reject(tag uint64, requeue bool) error {
	if !s.take() {
		return errSettled
	}
	return s.Acknowledger.Reject(tag, requeue)
}
