package vaultauth

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are shared by every Session of a process (a proxy may hold one for
// KV and one for Transit), labelled by login method.
type metrics struct {
	ttl      *prometheus.GaugeVec
	renewals *prometheus.CounterVec
	logins   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		ttl: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sealrun_vault_token_ttl_seconds",
			Help: "TTL of the Vault token as of its last login or renewal; -1 for a token that never expires.",
		}, []string{"method"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sealrun_vault_token_renewals_total",
			Help: "Vault token renewals by result (ok, error).",
		}, []string{"method", "result"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sealrun_vault_logins_total",
			Help: "Vault logins by method and result (ok, error).",
		}, []string{"method", "result"}),
	}
	if reg != nil {
		m.ttl = register(reg, m.ttl)
		m.renewals = register(reg, m.renewals)
		m.logins = register(reg, m.logins)
	}
	return m
}

// register registers c, or returns the collector already registered under
// its name so that several Sessions share one set of series.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}
