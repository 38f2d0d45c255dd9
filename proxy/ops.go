package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// OpsHandler serves /healthz (the process answers), /readyz (the secret
// backend answers within 2s) and /metrics from reg. It is meant for a
// separate listener: it carries no secrets and needs no API key.
func OpsHandler(store Store, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		// A read of a name that never exists: NotFound proves the backend
		// answered (and, for the overlay, that nothing needed decrypting).
		_, err := store.Get(ctx, &Container{Path: "sealrun-readiness-probe"})
		if c := storage.Code(err); c != driver.NotFound && c != driver.OK {
			http.Error(w, "secret backend unavailable: "+c.String()+"\n", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// NewMetricsRegistry returns a private registry with the Go and process
// collectors: sealrun never registers on the global default.
func NewMetricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}
