package runner

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Outcomes of a message, the "outcome" label of sealrun_runner_messages_total.
const (
	outcomeDone      = "done"      // ran, response sent if any, recorded, acked
	outcomeDuplicate = "duplicate" // already finished: acked without running
	outcomeRejected  = "rejected"  // permanent failure: nacked without requeue
	outcomeRequeued  = "requeued"  // transient failure: given back with backoff
	outcomeShutdown  = "shutdown"  // stopped by shutdown: given back
	// handed_back: given back before the broker's consumer timeout while its
	// job (or the claim it waits for) goes on; the copy is settled later.
	outcomeHandedBack = "handed_back"
)

// metrics are the runner's collectors, on a private registry so tests and
// several runners in one process never collide.
type metrics struct {
	reg        *prometheus.Registry
	messages   *prometheus.CounterVec
	open       *prometheus.HistogramVec
	job        prometheus.Histogram
	reconnects prometheus.Counter
	keyReloads *prometheus.CounterVec
	responses  *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.messages = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sealrun_runner_messages_total",
		Help: "Messages handled, by outcome, suite and (for rejections) reason.",
	}, []string{"outcome", "suite", "reason"})
	m.open = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sealrun_runner_open_seconds",
		Help:    "Time to classify, verify and decrypt a message, by suite.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
	}, []string{"suite"})
	m.job = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "sealrun_runner_job_seconds",
		Help:    "Executor run time per job.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 12),
	})
	m.reconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sealrun_runner_reconnects_total",
		Help: "AMQP connections re-established after a loss.",
	})
	m.keyReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sealrun_runner_key_reloads_total",
		Help: "Key reloads from the key source, by result (ok or error).",
	}, []string{"result"})
	m.responses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sealrun_runner_responses_total",
		Help: "Jobs' reports, by result (sent, sent_default_exchange, unroutable, no_queue, no_key).",
	}, []string{"result"})
	m.reg.MustRegister(m.messages, m.open, m.job, m.reconnects, m.keyReloads, m.responses,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Registry returns the runner's private registry (storage metrics may be
// registered on it too).
func (r *Runner) Registry() *prometheus.Registry { return r.m.reg }

// Handler serves /healthz (the process is alive), /readyz (connected to the
// broker, keys loaded, no dependency down, every queue consumed, the
// executor starting jobs; else 503 with one reason a line) and /metrics.
func (r *Runner) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		why := r.degraded()
		if nr := r.notReady(); nr != "" {
			why = append([]string{nr}, why...)
		}
		if len(why) > 0 {
			http.Error(w, strings.Join(why, "\n"), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(r.m.reg, promhttp.HandlerOpts{}))
	return mux
}
