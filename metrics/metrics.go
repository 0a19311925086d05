// Package metrics holds smtpbridge's Prometheus collectors and the HTTP
// handler that serves them with the health endpoint.
//
// It knows Prometheus and nothing about SMTP sessions: the bridge and the
// token store report events through small observer methods. Metric names
// carry the smtpbridge_ prefix, counters end in _total, and every label set
// the config defines is initialised to zero so that rate() sees the first
// event. Labels never carry addresses, usernames or message data.
package metrics

import (
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtpbridge/smtpbridge/tokenstore"
)

const namespace = "smtpbridge"

// Metrics is the bridge's registry and collectors.
type Metrics struct {
	Registry *prometheus.Registry

	connections   *prometheus.CounterVec
	authAttempts  *prometheus.CounterVec
	tokenRequests *prometheus.CounterVec
	tokenExpiry   *prometheus.GaugeVec
}

// Label values of auth_attempts_total's result.
var authResults = []string{"success", "bad_credentials", "unknown_user", "network_denied"}

// New registers the collectors. listeners and tenants are the configured
// names, used to pre-set label combinations to zero.
func New(version string, listeners, tenants []string) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "connections_total",
			Help: "SMTP sessions started by devices, per listener.",
		}, []string{"listener"}),
		authAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "auth_attempts_total",
			Help: "Device AUTH attempts, per listener, mechanism and result.",
		}, []string{"listener", "mechanism", "result"}),
		tokenRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "token_requests_total",
			Help: "Access token requests, per tenant, source (cache, identity_provider) and result (success, failure).",
		}, []string{"tenant", "source", "result"}),
		tokenExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "token_expiry_timestamp_seconds",
			Help: "When the tenant's current access token expires (Unix time).",
		}, []string{"tenant"}),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Always 1; the labels say which build is running.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	r.MustRegister(m.connections, m.authAttempts, m.tokenRequests, m.tokenExpiry, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	for _, l := range listeners {
		m.connections.WithLabelValues(l)
		for _, mech := range []string{"PLAIN", "LOGIN"} {
			for _, res := range authResults {
				m.authAttempts.WithLabelValues(l, mech, res)
			}
		}
	}
	for _, t := range tenants {
		for _, src := range []string{"cache", "identity_provider"} {
			m.tokenRequests.WithLabelValues(t, src, "success")
		}
		m.tokenRequests.WithLabelValues(t, "identity_provider", "failure")
	}
	return m
}

// Connection counts a device session.
func (m *Metrics) Connection(listener string) { m.connections.WithLabelValues(listener).Inc() }

// AuthAttempt counts a device login attempt.
func (m *Metrics) AuthAttempt(listener, mechanism, result string) {
	m.authAttempts.WithLabelValues(listener, mechanism, result).Inc()
}

// ObserveToken implements tokenstore.Observer.
func (m *Metrics) ObserveToken(tenant string, tok tokenstore.Token, err error) {
	switch {
	case err != nil:
		m.tokenRequests.WithLabelValues(tenant, "identity_provider", "failure").Inc()
	case tok.FromCache:
		m.tokenRequests.WithLabelValues(tenant, "cache", "success").Inc()
	default:
		m.tokenRequests.WithLabelValues(tenant, "identity_provider", "success").Inc()
		m.tokenExpiry.WithLabelValues(tenant).Set(float64(tok.ExpiresOn.Unix()))
	}
}

// Handler serves /metrics and /healthz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	return mux
}
