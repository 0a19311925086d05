// Package metrics holds smtpbridge's Prometheus collectors and the handler
// that serves them.
//
// It knows Prometheus and nothing about SMTP sessions: the bridge, the
// queue and the token store report events through small observer methods
// (and audit events), and the queue's and upstream's state is read at
// scrape time through Sources. Metric names carry the smtpbridge_ prefix,
// counters end in _total, and every label set the config defines is
// initialised to zero so that rate() sees the first event. Labels carry
// configured names (listeners, tenants, devices) and fixed values, never
// addresses, usernames or message data.
package metrics

import (
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/queue"
	"github.com/smtpbridge/smtpbridge/spool"
	"github.com/smtpbridge/smtpbridge/tokenstore"
	"github.com/smtpbridge/smtpbridge/upstream"
)

const namespace = "smtpbridge"

// Label values.
var (
	// AuthResults are auth_attempts_total's result values.
	AuthResults = []string{"success", "bad_credentials", "unknown_user", "blocked", "network_denied", "documented_password"}
	// Mechanisms are the AUTH mechanisms devices use.
	Mechanisms = []string{"PLAIN", "LOGIN"}
	// RejectReasons are messages_rejected_total's reason values.
	RejectReasons = []string{audit.ReasonPolicy, audit.ReasonSize, audit.ReasonRecipients, audit.ReasonMalformed, audit.ReasonRate}
	// FailReasons are messages_failed_total's reason values.
	FailReasons = []string{audit.ReasonPermanent, audit.ReasonExpired}
	// UpstreamStages are upstream_duration_seconds' stage values.
	UpstreamStages = []string{"token", "connect", "auth", "mail", "rcpt", "data"}
	// RefuseReasons are connections_refused_total's reason values.
	RefuseReasons = []string{"network", "blocked", "limit", "limit_ip"}
	// QueueStates are queue_messages' state values.
	QueueStates = []string{"queued", "deferred", "dead"}
)

// Sources are read at scrape time. Any may be nil.
type Sources struct {
	Queue               func() queue.Stats
	UpstreamConnections func() map[string]int // by tenant
	DeviceLastSeen      func() map[string]time.Time
	BlockedAddresses    func() int
	// MailboxRecipients are the recipients each mailbox sent to in the
	// rolling day of its quota.
	MailboxRecipients func() map[upstream.Mailbox]int
	// Spool is what the spool holds, in all and per device.
	Spool func() spool.Usage
}

// Metrics is the bridge's registry and collectors.
type Metrics struct {
	Registry *prometheus.Registry

	connections       *prometheus.CounterVec
	connectionsActive *prometheus.GaugeVec
	connsRefused      *prometheus.CounterVec
	connsSilent       *prometheus.CounterVec
	authAttempts      *prometheus.CounterVec

	received  *prometheus.CounterVec
	delivered *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	failed    *prometheus.CounterVec
	refused   *prometheus.CounterVec
	size      prometheus.Histogram
	latency   *prometheus.HistogramVec

	upstreamReplies  *prometheus.CounterVec
	upstreamDuration *prometheus.HistogramVec
	upstreamErrors   *prometheus.CounterVec

	tokenRequests    *prometheus.CounterVec
	tokenExpiry      *prometheus.GaugeVec
	signInRequired   *prometheus.GaugeVec
	credentialExpiry *prometheus.GaugeVec
	deviceExpected   *prometheus.GaugeVec
	quotaLimit       *prometheus.GaugeVec
	mailboxHeld      *prometheus.GaugeVec
	repeated         *prometheus.CounterVec

	reloadSuccess prometheus.Gauge
	sharedLimits  prometheus.Gauge
	sharedOnce    sync.Once
	reloadTime    prometheus.Gauge

	state *stateCollector

	mu  sync.Mutex
	inv inventory.Inventory
	o   Options
}

// Options are the metrics' settings (the config's metrics section).
type Options struct {
	// PerDevice labels the message counters with each device and keeps
	// its last-seen time; without it they are per tenant only (device
	// ""), for fleets that want aggregates.
	PerDevice bool
}

// New registers the collectors and initialises the label sets of inv.
//
// The series made up front are the ones an operator watches before
// anything happens: per device received, delivered, failed (permanent)
// and last seen (with PerDevice), per tenant its token requests, the
// two login refusals the alerts watch, its quota and connections. The
// rest (a rejection's reason, a reply's code, a stage's histogram)
// appear at their first occurrence, so that a fleet of 10,000 devices
// and 200 tenants is about 42,000 series, not 160,000.
func New(version string, inv inventory.Inventory, o Options) *Metrics {
	r := prometheus.NewRegistry()
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	m := &Metrics{
		Registry:          r,
		connections:       counter("connections_total", "TCP connections devices opened, per listener.", "listener"),
		connectionsActive: gauge("connections_active", "Device connections open now, per listener.", "listener"),
		connsSilent: counter("connections_silent_total",
			"Device connections closed before the client sent anything (TCP health checks of load balancers and Kubernetes), per listener.", "listener"),
		connsRefused: counter("connections_refused_total",
			"Device connections refused at the greeting, per listener and reason (network: not in allowed_networks; blocked: too many failed logins; limit, limit_ip: max_connections, max_connections_per_ip).",
			"listener", "reason"),
		authAttempts: counter("auth_attempts_total",
			"Device AUTH attempts, per listener, mechanism and result (success, bad_credentials, unknown_user, blocked, network_denied, documented_password).",
			"listener", "mechanism", "result"),
		received: counter("messages_received_total",
			"Messages the bridge took from devices (spooled, or in sync mode handed to Exchange whole); device is empty with metrics.per_device: false.", "device", "tenant"),
		delivered: counter("messages_delivered_total", "Messages Exchange Online accepted (250).", "device", "tenant"),
		rejected: counter("messages_rejected_total",
			"Messages or recipients the bridge refused itself, per reason (policy, size, recipients, malformed, rate).", "device", "reason"),
		failed: counter("messages_failed_total",
			"Messages that will not be delivered: refused by Exchange for good (permanent) or older than max_age (expired).",
			"device", "tenant", "reason"),
		refused: counter("recipients_refused_total",
			"Recipients Exchange refused for good while it took the message for others (each named in a report to bounce_to).",
			"device", "tenant"),
		size: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "message_size_bytes",
			Help: "Size of the messages received, as submitted to Exchange.", Buckets: prometheus.ExponentialBuckets(1024, 4, 10)}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "delivery_latency_seconds",
			Help:    "Time from the bridge taking a message to Exchange's 250, per tenant.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400}}, []string{"tenant"}),
		upstreamReplies: counter("upstream_replies_total",
			"Exchange Online's final reply to each submission attempt, per tenant, code class (2xx, 4xx, 5xx) and enhanced code (known Exchange codes, else other).",
			"tenant", "code_class", "enhanced"),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "upstream_duration_seconds",
			Help:    "Time each step of a submission to Exchange took, per tenant and stage (token, connect, auth, mail, rcpt, data).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}}, []string{"tenant", "stage"}),
		upstreamErrors: counter("upstream_errors_total",
			"Submission attempts that ended without a reply from Exchange (unreachable, TLS failure, connection lost), per tenant and stage.",
			"tenant", "stage"),
		tokenRequests: counter("token_requests_total",
			"Access token requests, per tenant, source (cache, identity_provider) and result (success, failure).", "tenant", "source", "result"),
		tokenExpiry: gauge("token_expiry_timestamp_seconds", "When the tenant's current access token expires (Unix time).", "tenant"),
		signInRequired: gauge("mailbox_sign_in_required",
			"1 while a mailbox of a tenant with auth: delegated needs someone to sign in for it again (smtpbridge tenant login); its messages wait.", "tenant", "mailbox"),
		credentialExpiry: gauge("credential_expiry_timestamp_seconds",
			"When the tenant's client certificate (NotAfter) or client secret (client_secret_expires) expires (Unix time); absent when unknown.", "tenant"),
		quotaLimit: gauge("mailbox_recipients_per_day_limit",
			"The tenant's max_recipients_per_day: each of its mailboxes may send to this many recipients in any 24 hours.", "tenant"),
		mailboxHeld: gauge("mailbox_held",
			"1 while Exchange Online refuses the mailbox itself (reason: throttled, mailbox_full, daily_quota, sender_blocked, setup): its messages wait for one probe at a time.",
			"tenant", "mailbox", "reason"),
		repeated: counter("refusals_repeated_total",
			"Messages (or recipients) the bridge refused itself without submitting them, repeating a refusal Exchange gave within delivery.remember_refusals (reason: send_as, unknown_recipient).",
			"tenant", "reason"),
		deviceExpected: gauge("device_expected_interval_seconds",
			"The device's expect_every: it should send at least this often; absent for devices without one.", "device"),
		sharedLimits: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "cluster_shared_limits",
			Help: "1 while the mailboxes' limits are shared with the other replicas through Redis, 0 while Redis is out of reach and this replica keeps its conservative share; absent without cluster.redis."}),
		reloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "config_reload_success",
			Help: "1 if the last configuration load (start or reload) succeeded, 0 if the last reload failed and the previous config is in use."}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "config_reload_timestamp_seconds",
			Help: "When the configuration was last loaded or a reload was last tried (Unix time)."}),
	}
	m.state = &stateCollector{m: m,
		queue:      prometheus.NewDesc(namespace+"_queue_messages", "Messages in the spool, per state (queued, deferred, dead).", []string{"state"}, nil),
		oldest:     prometheus.NewDesc(namespace+"_queue_oldest_message_age_seconds", "Age of the oldest message waiting in the queue; 0 when empty.", nil, nil),
		upstream:   prometheus.NewDesc(namespace+"_upstream_connections", "Connections to Exchange Online open or being opened, per tenant; present while there are some.", []string{"tenant"}, nil),
		lastSeen:   prometheus.NewDesc(namespace+"_device_last_seen_timestamp_seconds", "When the device last logged in or sent (Unix time); 0 if never.", []string{"device"}, nil),
		blocked:    prometheus.NewDesc(namespace+"_blocked_addresses", "Source addresses blocked now for too many failed logins.", nil, nil),
		spoolBytes: prometheus.NewDesc(namespace+"_spool_bytes", "Bytes of the messages in the spool, queued and dead.", nil, nil),
		spoolFree:  prometheus.NewDesc(namespace+"_spool_free_bytes", "Free space on the spool's filesystem.", nil, nil),
		deviceSpool: prometheus.NewDesc(namespace+"_device_spool_bytes", "Bytes of the device's messages in the spool, queued and dead (its share is max_queued_bytes); present while it holds 1 MiB or half its share, whichever is less.",
			[]string{"device"}, nil),
		quota: prometheus.NewDesc(namespace+"_mailbox_recipients_day", "Recipients the mailbox sent to in the last 24 hours, as its quota counts them.",
			[]string{"tenant", "mailbox"}, nil),
		startTime: time.Now(),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Always 1; the labels say which build is running.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	r.MustRegister(m.connections, m.connectionsActive, m.connsRefused, m.connsSilent, m.authAttempts,
		m.received, m.delivered, m.rejected, m.failed, m.refused, m.size, m.latency,
		m.upstreamReplies, m.upstreamDuration, m.upstreamErrors,
		m.tokenRequests, m.tokenExpiry, m.signInRequired, m.credentialExpiry, m.deviceExpected, m.quotaLimit,
		m.mailboxHeld, m.repeated,
		m.reloadSuccess, m.reloadTime, m.state, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Configure(inv, o)
	m.reloadSuccess.Set(1)
	m.reloadTime.Set(float64(time.Now().Unix()))
	return m
}

// Configure initialises the label sets of a (new) configuration and
// deletes those of devices and tenants it no longer has, so that a
// removed device stops showing as silent.
func (m *Metrics) Configure(inv inventory.Inventory, o Options) {
	m.mu.Lock()
	old, oldOpts := m.inv, m.o
	m.inv, m.o = inv, o
	m.mu.Unlock()
	type deviceKey struct{ name, tenant string }
	devices := make(map[deviceKey]bool, len(inv.Devices))
	mailboxes := map[upstream.Mailbox]bool{}
	for _, d := range inv.Devices {
		devices[deviceKey{d.Name, d.Tenant}] = true
		mailboxes[upstream.MailboxOf(d.Tenant, d.Mailbox.String())] = true
	}
	for _, d := range old.Devices {
		// A mailbox no device sends as any more needs no sign-in.
		if !mailboxes[upstream.MailboxOf(d.Tenant, d.Mailbox.String())] {
			m.signInRequired.DeleteLabelValues(d.Tenant, d.Mailbox.String())
		}
	}

	for _, l := range inv.Listeners {
		m.connections.WithLabelValues(l)
		m.connectionsActive.WithLabelValues(l)
		for _, r := range RefuseReasons {
			m.connsRefused.WithLabelValues(l, r)
		}
		m.connsSilent.WithLabelValues(l)
		for _, mech := range Mechanisms {
			for _, res := range AuthResults {
				m.authAttempts.WithLabelValues(l, mech, res)
			}
		}
	}
	for _, t := range old.Tenants {
		if !slices.ContainsFunc(inv.Tenants, func(n inventory.Tenant) bool { return n.Name == t.Name }) {
			m.deleteTenant(t.Name)
		}
	}
	for _, t := range inv.Tenants {
		// The grants the alerts watch; cache hits come with the first.
		m.tokenRequests.WithLabelValues(t.Name, "identity_provider", "failure")
		m.tokenRequests.WithLabelValues(t.Name, "identity_provider", "success")
		// The login refusals the alerts watch; the other replies'
		// series appear with their first.
		for _, k := range alertedReplies {
			m.upstreamReplies.WithLabelValues(t.Name, k[0], k[1])
		}
		if t.CredentialExpiry.IsZero() {
			m.credentialExpiry.DeleteLabelValues(t.Name)
		} else {
			m.credentialExpiry.WithLabelValues(t.Name).Set(float64(t.CredentialExpiry.Unix()))
		}
		if t.RecipientsPerDay > 0 {
			m.quotaLimit.WithLabelValues(t.Name).Set(float64(t.RecipientsPerDay))
		} else {
			m.quotaLimit.DeleteLabelValues(t.Name)
		}
	}
	if oldOpts.PerDevice && !o.PerDevice {
		// All at once: deleting 10,000 devices one by one scans every
		// series each time.
		for _, v := range m.deviceVecs() {
			v.Reset()
		}
	}
	for _, d := range old.Devices {
		if o.PerDevice && !devices[deviceKey{d.Name, d.Tenant}] {
			m.deleteDevice(d.Name)
		}
	}
	if !o.PerDevice {
		for _, t := range inv.Tenants {
			m.received.WithLabelValues("", t.Name)
			m.delivered.WithLabelValues("", t.Name)
			m.failed.WithLabelValues("", t.Name, audit.ReasonPermanent)
		}
		return
	}
	if !oldOpts.PerDevice {
		m.deleteDevice("") // the per-tenant series of per_device: false
	}
	for _, d := range inv.Devices {
		m.received.WithLabelValues(d.Name, d.Tenant)
		m.delivered.WithLabelValues(d.Name, d.Tenant)
		m.failed.WithLabelValues(d.Name, d.Tenant, audit.ReasonPermanent)
		if d.ExpectEvery > 0 {
			m.deviceExpected.WithLabelValues(d.Name).Set(d.ExpectEvery.Seconds())
		} else {
			m.deviceExpected.DeleteLabelValues(d.Name)
		}
	}
}

// device is the device label of a message's series: its name, or ""
// without per-device metrics.
func (m *Metrics) device(name string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.o.PerDevice {
		return ""
	}
	return name
}

func (m *Metrics) deleteTenant(name string) {
	l := prometheus.Labels{"tenant": name}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.tokenRequests, m.tokenExpiry, m.signInRequired, m.credentialExpiry, m.latency, m.upstreamReplies, m.upstreamDuration, m.upstreamErrors,
		m.quotaLimit, m.mailboxHeld, m.repeated,
	} {
		v.DeletePartialMatch(l)
	}
}

// deviceVec is a metric vector with a device label.
type deviceVec interface {
	DeletePartialMatch(prometheus.Labels) int
	Reset()
}

func (m *Metrics) deviceVecs() []deviceVec {
	return []deviceVec{m.received, m.delivered, m.rejected, m.failed, m.refused, m.deviceExpected}
}

func (m *Metrics) deleteDevice(name string) {
	l := prometheus.Labels{"device": name}
	for _, v := range m.deviceVecs() {
		v.DeletePartialMatch(l)
	}
}

// SetSources sets what the state metrics are read from.
func (m *Metrics) SetSources(s Sources) {
	m.state.mu.Lock()
	m.state.src = s
	m.state.mu.Unlock()
}

// SharedLimits records whether the limits are shared through Redis (the
// gauge appears with the first call: only with cluster.redis).
func (m *Metrics) SharedLimits(ok bool) {
	m.sharedOnce.Do(func() { m.Registry.MustRegister(m.sharedLimits) })
	v := 0.0
	if ok {
		v = 1
	}
	m.sharedLimits.Set(v)
}

// Reloaded records the outcome of a configuration reload.
func (m *Metrics) Reloaded(ok bool) {
	v := 0.0
	if ok {
		v = 1
	}
	m.reloadSuccess.Set(v)
	m.reloadTime.Set(float64(time.Now().Unix()))
}

// Connection counts a device connection.
func (m *Metrics) Connection(listener string) {
	m.connections.WithLabelValues(listener).Inc()
	m.connectionsActive.WithLabelValues(listener).Inc()
}

// ConnectionClosed counts a device connection's end, and a silent one.
func (m *Metrics) ConnectionClosed(listener string, silent bool) {
	m.connectionsActive.WithLabelValues(listener).Dec()
	if silent {
		m.connsSilent.WithLabelValues(listener).Inc()
	}
}

// ConnectionRefused counts a connection refused at the greeting.
func (m *Metrics) ConnectionRefused(listener, reason string) {
	m.connsRefused.WithLabelValues(listener, reason).Inc()
}

// AuthAttempt counts a device login attempt.
func (m *Metrics) AuthAttempt(listener, mechanism, result, _ string, _ netip.Addr) {
	m.authAttempts.WithLabelValues(listener, mechanism, result).Inc()
}

// Observe implements audit.Observer: it counts message events.
func (m *Metrics) Observe(e audit.Event) {
	if e.DSNFor != "" {
		return // the bridge's own report, not a device's message
	}
	dev := m.device(e.Device)
	switch e.Kind {
	case audit.Received:
		m.received.WithLabelValues(dev, e.Tenant).Inc()
		m.size.Observe(float64(e.Size))
	case audit.Delivered:
		m.delivered.WithLabelValues(dev, e.Tenant).Inc()
		if !e.Accepted.IsZero() {
			m.latency.WithLabelValues(e.Tenant).Observe(time.Since(e.Accepted).Seconds())
		}
	case audit.Rejected:
		m.rejected.WithLabelValues(dev, e.Reason).Inc()
	case audit.Bounced:
		if e.Recipient != "" {
			m.refused.WithLabelValues(dev, e.Tenant).Inc()
			return
		}
		m.failed.WithLabelValues(dev, e.Tenant, audit.ReasonPermanent).Inc()
	case audit.Dead:
		// A refusal was counted as it happened (Bounced); a poison
		// message's series is made at its first, not for every device.
		if e.Reason == audit.ReasonExpired || e.Reason == audit.ReasonPoison {
			m.failed.WithLabelValues(dev, e.Tenant, e.Reason).Inc()
		}
	}
}

// MailboxHold records a mailbox held (Exchange refuses the mailbox
// itself) or released.
func (m *Metrics) MailboxHold(tenant, mailbox, reason string, held bool) {
	m.mailboxHeld.DeletePartialMatch(prometheus.Labels{"tenant": tenant, "mailbox": mailbox})
	if held {
		m.mailboxHeld.WithLabelValues(tenant, mailbox, reason).Set(1)
	}
}

// RefusedLocally counts a message (or recipient) the bridge refused
// itself, repeating Exchange's refusal.
func (m *Metrics) RefusedLocally(tenant, reason string) {
	m.repeated.WithLabelValues(tenant, reason).Inc()
}

// UpstreamStage records how long a step of a submission took.
func (m *Metrics) UpstreamStage(tenant, stage string, took time.Duration) {
	m.upstreamDuration.WithLabelValues(tenant, stage).Observe(took.Seconds())
}

// UpstreamReply counts Exchange's final reply to a submission attempt.
func (m *Metrics) UpstreamReply(tenant string, code int, enhanced [3]int) {
	class, enh := replyLabels(code, enhanced)
	m.upstreamReplies.WithLabelValues(tenant, class, enh).Inc()
}

// UpstreamError counts a submission attempt that got no reply.
func (m *Metrics) UpstreamError(tenant, stage string) {
	m.upstreamErrors.WithLabelValues(tenant, stage).Inc()
}

// ObserveSignIn implements tokenstore.SignInObserver.
func (m *Metrics) ObserveSignIn(tenant, mailbox string, needed bool) {
	if needed {
		m.signInRequired.WithLabelValues(tenant, mailbox).Set(1)
		return
	}
	m.signInRequired.DeleteLabelValues(tenant, mailbox)
}

// ObserveToken implements tokenstore.Observer.
func (m *Metrics) ObserveToken(tenant string, tok tokenstore.Token, err error) {
	switch {
	case err != nil:
		m.tokenRequests.WithLabelValues(tenant, "identity_provider", "failure").Inc()
		return
	case tok.FromCache:
		m.tokenRequests.WithLabelValues(tenant, "cache", "success").Inc()
	default:
		m.tokenRequests.WithLabelValues(tenant, "identity_provider", "success").Inc()
	}
	m.tokenExpiry.WithLabelValues(tenant).Set(float64(tok.ExpiresOn.Unix()))
}

// Handler serves the registry in Prometheus' text (or OpenMetrics) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Timeout: 10 * time.Second})
}
