package metrics

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/queue"
)

// stateCollector reads the queue's, upstream's and devices' state when
// Prometheus scrapes, so that these gauges are never stale and never
// drift from what they count.
type stateCollector struct {
	m                                                 *Metrics
	queue, oldest, upstream, lastSeen, blocked, quota *prometheus.Desc
	spoolBytes, spoolFree, deviceSpool                *prometheus.Desc
	startTime                                         time.Time

	mu  sync.Mutex
	src Sources
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.queue
	ch <- c.oldest
	ch <- c.upstream
	ch <- c.lastSeen
	ch <- c.blocked
	ch <- c.quota
	ch <- c.spoolBytes
	ch <- c.spoolFree
	ch <- c.deviceSpool
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	src := c.src
	c.mu.Unlock()
	c.m.mu.Lock()
	inv, perDevice := c.m.inv, c.m.o.PerDevice
	c.m.mu.Unlock()

	var qs queue.Stats
	if src.Queue != nil {
		qs = src.Queue()
	}
	for state, n := range map[string]int{"queued": qs.Queued, "deferred": qs.Deferred, "dead": qs.Dead} {
		ch <- prometheus.MustNewConstMetric(c.queue, prometheus.GaugeValue, float64(n), state)
	}
	age := 0.0
	if !qs.Oldest.IsZero() {
		age = max(time.Since(qs.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)

	var conns map[string]int
	if src.UpstreamConnections != nil {
		conns = src.UpstreamConnections()
	}
	seen := map[string]bool{}
	for _, t := range inv.Tenants {
		seen[t.Name] = true
		if conns[t.Name] > 0 {
			ch <- prometheus.MustNewConstMetric(c.upstream, prometheus.GaugeValue, float64(conns[t.Name]), t.Name)
		}
	}
	for t, n := range conns {
		if !seen[t] && n > 0 {
			// A tenant removed by a reload whose connections are still
			// open.
			ch <- prometheus.MustNewConstMetric(c.upstream, prometheus.GaugeValue, float64(n), t)
		}
	}

	blocked := 0
	if src.BlockedAddresses != nil {
		blocked = src.BlockedAddresses()
	}
	ch <- prometheus.MustNewConstMetric(c.blocked, prometheus.GaugeValue, float64(blocked))
	if perDevice {
		c.devices(ch, c.lastSeen, src.DeviceLastSeen, inv)
	}
	if src.Spool != nil {
		st := src.Spool()
		ch <- prometheus.MustNewConstMetric(c.spoolBytes, prometheus.GaugeValue, float64(st.Bytes))
		if st.Free >= 0 {
			ch <- prometheus.MustNewConstMetric(c.spoolFree, prometheus.GaugeValue, float64(st.Free))
		}
		for _, d := range inv.Devices {
			if n := st.Devices[d.Name]; perDevice && n > 0 && (n >= deviceSpoolShown || d.MaxQueuedBytes > 0 && n >= d.MaxQueuedBytes/2) {
				ch <- prometheus.MustNewConstMetric(c.deviceSpool, prometheus.GaugeValue, float64(n), d.Name)
			}
		}
	}
	if src.MailboxRecipients != nil {
		for mb, n := range src.MailboxRecipients() {
			ch <- prometheus.MustNewConstMetric(c.quota, prometheus.GaugeValue, float64(n), mb.Tenant, mb.Address)
		}
	}
}

// deviceSpoolShown is the least a device holds in the spool for its
// device_spool_bytes to be exported (or half its share, if smaller): a
// device nearing its share shows, the 10,000 devices of a fleet each
// with a few messages queued do not.
const deviceSpoolShown = 1 << 20

// devices sends one timestamp per configured device, 0 for never.
func (c *stateCollector) devices(ch chan<- prometheus.Metric, desc *prometheus.Desc, src func() map[string]time.Time, inv inventory.Inventory) {
	var last map[string]time.Time
	if src != nil {
		last = src()
	}
	for _, d := range inv.Devices {
		v := 0.0
		if t := last[d.Name]; !t.IsZero() {
			v = float64(t.Unix())
		}
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, d.Name)
	}
}

// knownReplies are the (code class, enhanced code) pairs of the replies
// Exchange Online gives SMTP AUTH submissions that an admin acts on
// (EXCHANGE.md); upstream_replies_total names them, and lumps the rest
// into "other", so that the label set stays small.
var knownReplies = [][2]string{
	{"2xx", "2.0.0"}, // accepted
	{"4xx", "4.3.2"}, // STOREDRV.ClientSubmit; sender thread limit exceeded
	{"4xx", "4.7.0"}, // temporary server error
	{"4xx", "4.7.66"},
	{"5xx", "5.7.3"},   // authentication unsuccessful
	{"5xx", "5.7.139"}, // SMTP AUTH disabled for the tenant or mailbox
	{"5xx", "5.7.57"},  // client not authenticated to send mail
	{"5xx", "5.7.60"},  // no SendAs for the envelope sender
	{"5xx", "5.2.252"}, // SendAsDenied for the header From
	{"5xx", "5.2.0"},   // SubmissionQuotaExceededException
	{"5xx", "5.2.2"},   // mailbox full
	{"5xx", "5.3.4"},   // message too large
	{"5xx", "5.7.67"},  // TLS version not supported
	{"5xx", "5.7.233"}, // tenant external recipient rate limit
	{"5xx", "5.1.8"},   // sender blocked (bad outbound sender)
	{"5xx", "5.7.708"}, // tenant's outbound traffic restricted
	{"5xx", "5.2.251"}, // continuous-error throttling: mailbox full errors
	{"5xx", "5.2.255"}, // continuous-error throttling: invalid recipients errors
	{"5xx", "5.1.10"},  // recipient not found
	{"4xx", "4.5.3"},   // too many recipients
	{"2xx", "other"}, {"4xx", "other"}, {"5xx", "other"},
}

// alertedReplies are the replies the example alerts watch from the
// first: their series exist before one comes, so that increase() sees
// the first.
var alertedReplies = [][2]string{{"5xx", "5.7.3"}, {"5xx", "5.7.139"}}

var known = func() map[string]bool {
	m := map[string]bool{}
	for _, k := range knownReplies {
		m[k[1]] = true
	}
	return m
}()

// replyLabels returns upstream_replies_total's code_class and enhanced
// labels for a reply.
func replyLabels(code int, enh [3]int) (class, enhanced string) {
	class = fmt.Sprintf("%dxx", code/100)
	if code < 200 || code > 599 {
		class = "other"
	}
	enhanced = fmt.Sprintf("%d.%d.%d", enh[0], enh[1], enh[2])
	if !known[enhanced] || enhanced == "other" || enh[0] != code/100 {
		enhanced = "other"
	}
	return class, enhanced
}
