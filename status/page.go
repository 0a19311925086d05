package status

import (
	"cmp"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/cluster"
	"github.com/smtpbridge/smtpbridge/guard"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/queue"
)

// QueueView is what the page reads of the queue; *queue.Queue is one.
type QueueView interface {
	Stats() queue.Stats
	Dead() ([]queue.Item, error)
}

// Sources are what the page shows besides the board's own records; a
// nil field leaves its part of the page out.
type Sources struct {
	Queue QueueView
	// Blocks lists the addresses blocked for failed logins.
	Blocks func() []guard.Block
	// Spool says how full the spool is.
	Spool func() SpoolUsage
	// Quotas are the mailboxes' recipients in the last day.
	Quotas func() []MailboxQuota
	// Replicas are the accounts of the replicas sharing limits
	// (cluster.redis), this one's included.
	Replicas func() []Replica
	// Holds are the mailboxes Exchange refuses now (queue.Holds).
	Holds func() []queue.HoldState
}

// Replica is one replica's account of its own spool: each delivers only
// what it holds.
type Replica struct {
	cluster.Replica
	This bool `json:"this"` // the replica serving the page
}

// SpoolUsage is what the spool holds against its bounds.
type SpoolUsage struct {
	Bytes, MaxBytes int64 // MaxBytes 0: no bound
	Free, MinFree   int64 // Free -1: unknown
	// Devices are the bytes each device's messages take, and its share.
	Devices map[string]int64
	Share   func(device string) int64
}

// MailboxQuota is a mailbox's recipients in the last 24 hours.
type MailboxQuota struct {
	Tenant, Mailbox string
	Used, Limit     int // Limit 0: none
}

// PageInfo names the bridge on the page.
type PageInfo struct {
	Version  string
	Hostname string
}

// replicaSilent is how long a replica may go unheard before the page
// says it is gone: it publishes every few seconds.
const replicaSilent = time.Minute

// maxDeadShown bounds the dead letters listed on the page; the count is
// always complete, and `smtpbridge queue dead` lists them all.
const maxDeadShown = 20

//go:embed page.html
var pageHTML string

//go:embed device.html
var deviceHTML string

var (
	pageTmpl       = template.Must(template.Must(template.New("page").Parse(pageHTML)).Parse(styleHTML))
	devicePageTmpl = template.Must(template.Must(template.New("device").Parse(deviceHTML)).Parse(styleHTML))
)

// Handler serves the status page: one server-rendered HTML page with its
// styles inline, no script and no external asset, so that it works on a
// phone and in a browser with no network beyond the bridge.
//
// "/" is the page: what needs attention, the summaries, the charts, and
// the devices and tenants a page at a time (GET parameters q, state,
// sort, page, tpage); "/device/NAME" is one device's page.
func (b *Board) Handler(info PageInfo, src Sources) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var (
			tmpl = pageTmpl
			data any
		)
		switch name, isDevice := strings.CutPrefix(r.URL.Path, "/device/"); {
		case r.URL.Path == "/":
			data = b.view(info, src, parseListQuery(r.URL.Query()), time.Now())
		case isDevice && name != "":
			dv, ok := b.devicePage(info, name, time.Now())
			if !ok {
				http.NotFound(w, r)
				return
			}
			tmpl, data = devicePageTmpl, dv
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		// Nothing on the page needs a script, a frame or a remote asset.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if err := tmpl.Execute(w, data); err != nil {
			http.Error(w, "rendering the status page failed", http.StatusInternalServerError)
		}
	})
}

// Classes of a row or a value: how worried to look.
const (
	classOK   = "ok"
	classWarn = "warn"
	classBad  = "bad"
	classNone = "none"
)

// holdView is a mailbox Exchange refuses now.
type holdView struct {
	Tenant, Mailbox, Reason, Words, Reply, Fix string
	Since, Next                                stamp
}

// holdFix is what ends a hold of each reason (EXCHANGE.md,
// "Mailbox-level rules").
var holdFix = map[message.Hold]string{
	message.HoldThrottled:     "Microsoft blocks the mailbox from SMTP AUTH for a time it decides, for every application, after its submissions kept failing; support cannot lift it. Fix what kept failing (a Send As grant, a full mailbox, unknown recipients) and wait, or point the devices at another mailbox.",
	message.HoldMailboxFull:   "Exchange keeps a copy of every message sent in the mailbox's Sent Items: empty them (or give the mailbox a retention policy that deletes them), then smtpbridge queue retry --mailbox MAILBOX.",
	message.HoldDailyQuota:    "The mailbox sent to its 10,000 recipients of the last 24 hours; room comes back as the day rolls on. Spread the devices over more mailboxes.",
	message.HoldSenderBlocked: "Exchange blocks the mailbox as a sender, usually after it sent spam: release it under Restricted entities in the Microsoft 365 Defender portal, find out why, then smtpbridge queue retry --mailbox MAILBOX.",
	message.HoldSetup:         "Exchange refuses the bridge's login for the mailbox: SMTP AUTH disabled (Set-CASMailbox -Identity MAILBOX -SmtpClientAuthenticationDisabled $false), the service principal or the mailbox permission missing (smtpbridge exchange-script prints them); then smtpbridge queue retry --mailbox MAILBOX.",
}

// signInView is a delegated mailbox that needs a new sign-in.
type signInView struct {
	Tenant, Mailbox string
	Since           stamp
}

type view struct {
	Info    PageInfo
	Now     string
	Started stamp
	Reload  ReloadState
	// Cluster is "shared" or "fallback" with cluster.redis, else "".
	Cluster     string
	ClusterAt   stamp
	ReloadAt    stamp
	Query       listQuery
	Fleet       fleetCounts
	Devices     []deviceView // the page shown
	DevicePager pager
	// StateLinks are the device list's filters, the one in use marked.
	StateLinks  []stateLink
	SortLinks   []stateLink
	Tenants     []tenantView // the page shown
	TenantPager pager
	TenantCount int
	Queue       queue.Stats
	// QueueWaiting is queued and deferred together.
	QueueWaiting int
	QueueClass   string
	Oldest       string
	Dead         []deadView
	DeadMore     int
	DeadErr      string
	Recent       []failureView
	Overdue      int
	TenantIssue  int
	Blocks       []blockView
	BlocksMore   int
	Waiting      []waitView
	Spool        *spoolView
	Quotas       []quotaView
	QuotasMore   int
	Replicas     []replicaView
	SignIns      []signInView
	Holds        []holdView
	// The last 24 hours, as inline SVG.
	Messages, QueueChart, Replies template.HTML
}

type replicaView struct {
	Instance, Oldest, Class string
	This                    bool
	Queued, Deferred, Dead  int
	Heard                   stamp
}

type waitView struct {
	Reply, Next string
	Count       int
}

type spoolView struct {
	Used, Free, Class string
	Devices           []spoolDeviceView
}

type spoolDeviceView struct {
	Name, Used, Share, Class string
}

type quotaView struct {
	Tenant, Mailbox, Class string
	Used, Limit            int
}

type blockView struct {
	Addr, Until, Username string
	Replica               string // the replica that blocked it, when they share blocks
	Since                 stamp
	Failures              int
}

// stamp is a time shown as "3m ago" with the exact time on hover.
type stamp struct {
	Rel, Abs string
}

func stampOf(t, now time.Time) stamp {
	if t.IsZero() {
		return stamp{Rel: "never"}
	}
	return stamp{Rel: ago(now.Sub(t)), Abs: t.UTC().Format("2006-01-02 15:04:05 UTC")}
}

// stateLink is a filter or an order of the device list.
type stateLink struct {
	Label, Href string
	On          bool
}

type deviceView struct {
	Name, Tenant, Mailbox, Mode           string
	LastSeen, LastMessage                 stamp
	Received, Delivered, Failed, Rejected int
	AuthFailures                          int
	// The last failure: its code ("550 5.7.60", "login") and reason for
	// the row, the whole text on hover and on the device's page, and
	// the message it was about.
	LastFailure                 string
	FailureCode, FailureReason  string
	FailureMsgID                string
	LastFailureAt               stamp
	LastUpstreamID              string
	Class                       string
	Expect                      string
	Note                        string
	HasFailure, FailureRecovers bool
	Spark                       template.HTML // its last 24 hours
}

type tenantView struct {
	Class                                          string
	Name, TenantID, ClientID, Credential, SMTPHost string
	CredExpiry, CredClass                          string
	Token, TokenClass                              string
	Exchange, ExchangeClass                        string
}

type deadView struct {
	ID, Device, Reason string
	Received           stamp
	Rcpts              int
}

type failureView struct {
	At                        stamp
	Kind, Device, MsgID, Text string
}

func (b *Board) view(info PageInfo, src Sources, q listQuery, now time.Time) view {
	v := view{Info: info, Now: now.UTC().Format("2006-01-02 15:04:05 UTC"), Started: stampOf(b.started, now), Query: q}
	for _, s := range []struct{ label, state string }{{"all", stateAll}, {"problems", stateProblems}, {"failing", stateFailing},
		{"silent", stateSilent}, {"never seen", stateNever}, {"OK", stateOK}} {
		v.StateLinks = append(v.StateLinks, stateLink{Label: s.label, Href: q.link("devices", "state", s.state, "page", ""), On: q.State == s.state})
	}
	for _, s := range []struct{ label, sort string }{{"problems first", sortProblems}, {"name", sortName},
		{"last seen", sortSeen}, {"most failed", sortFailed}} {
		v.SortLinks = append(v.SortLinks, stateLink{Label: s.label, Href: q.link("devices", "sort", s.sort, "page", ""), On: q.Sort == s.sort})
	}
	v.fromSources(src, now)
	b.mu.Lock()
	b.charts(&v, now)
	v.Reload = b.reload
	v.ReloadAt = stampOf(b.reload.At, now)
	v.Cluster, v.ClusterAt = b.shared, stampOf(b.sharedAt, now)
	for k, since := range b.signIns {
		v.SignIns = append(v.SignIns, signInView{Tenant: k[0], Mailbox: k[1], Since: stampOf(since, now)})
	}
	slices.SortFunc(v.SignIns, func(a, b signInView) int { return strings.Compare(a.Tenant+" "+a.Mailbox, b.Tenant+" "+b.Mailbox) })
	b.deviceList(&v, q, now)
	b.tenantList(&v, q, now)
	for i := len(b.recent) - 1; i >= 0; i-- {
		f := b.recent[i]
		v.Recent = append(v.Recent, failureView{At: stampOf(f.Time, now), Kind: f.Kind, Device: f.Device, MsgID: f.MsgID, Text: f.Text})
	}
	b.mu.Unlock()
	if src.Queue != nil {
		v.queue(src.Queue, now)
	}
	return v
}

// fromSources fills what the page reads from the other parts: the
// spool, the replicas, the quotas, the blocks and the holds.
func (v *view) fromSources(src Sources, now time.Time) {
	if src.Spool != nil {
		v.Spool = spoolViewOf(src.Spool())
	}
	if src.Replicas != nil {
		for _, r := range src.Replicas() {
			v.Replicas = append(v.Replicas, replicaViewOf(r, now))
		}
	}
	if src.Quotas != nil {
		for _, mq := range src.Quotas() {
			v.Quotas = append(v.Quotas, quotaView{Tenant: mq.Tenant, Mailbox: mq.Mailbox, Used: mq.Used, Limit: mq.Limit,
				Class: fullness(int64(mq.Used), int64(mq.Limit))})
		}
		// The fullest first.
		slices.SortFunc(v.Quotas, func(a, b quotaView) int {
			return cmp.Or(cmp.Compare(share(b), share(a)), cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Mailbox, b.Mailbox))
		})
		if len(v.Quotas) > maxQuotasShown {
			v.QuotasMore = len(v.Quotas) - maxQuotasShown
			v.Quotas = v.Quotas[:maxQuotasShown]
		}
	}
	if src.Blocks != nil {
		for _, bl := range src.Blocks() {
			v.Blocks = append(v.Blocks, blockView{Addr: bl.Addr, Since: stampOf(bl.Since, now),
				Until: "in " + human(bl.Until.Sub(now)), Failures: bl.Failures, Username: shownUsername(bl.Username), Replica: bl.Replica})
		}
		if len(v.Blocks) > maxBlocksShown {
			v.BlocksMore = len(v.Blocks) - maxBlocksShown
			v.Blocks = v.Blocks[:maxBlocksShown]
		}
	}
	if src.Holds != nil {
		for _, h := range src.Holds() {
			v.Holds = append(v.Holds, holdView{Tenant: h.Tenant, Mailbox: h.Mailbox, Reason: string(h.Reason), Words: h.Reason.Words(),
				Reply: h.Reply, Fix: strings.ReplaceAll(holdFix[h.Reason], "MAILBOX", h.Mailbox),
				Since: stampOf(h.Since, now), Next: stampOf(h.NextProbe, now)})
		}
	}
}

func replicaViewOf(r Replica, now time.Time) replicaView {
	rv := replicaView{Instance: r.Instance, This: r.This, Queued: r.Queued, Deferred: r.Deferred, Dead: r.Dead,
		Heard: stampOf(r.At, now), Class: classOK}
	if !r.Oldest.IsZero() {
		rv.Oldest = ago(now.Sub(r.Oldest))
	}
	switch {
	case now.Sub(r.At) > replicaSilent:
		rv.Class = classBad // gone, with mail in its spool
	case r.Deferred > 0 || r.Dead > 0:
		rv.Class = classWarn
	}
	return rv
}

// charts draws the last day's messages, queue depth and replies; b.mu is
// held.
func (b *Board) charts(v *view, now time.Time) {
	series := func(h *history, f func(*bucket) int) []int { return h.series(now, f) }
	v.Messages = chart("chart-messages", 720, 160, []line{
		{"received", "#0969da", series(&b.hist, func(x *bucket) int { return x.Received })},
		{"delivered", "#1a7f37", series(&b.hist, func(x *bucket) int { return x.Delivered })},
		{"failed", "#cf222e", series(&b.hist, func(x *bucket) int { return x.Failed })},
	}, true)
	v.QueueChart = chart("chart-queue", 720, 100, []line{
		{"queue depth", "#9a6700", series(&b.hist, func(x *bucket) int { return x.Queue })},
	}, true)
	v.Replies = chart("chart-replies", 720, 100, []line{
		{"2xx", "#1a7f37", series(&b.hist, func(x *bucket) int { return x.R2xx })},
		{"4xx", "#9a6700", series(&b.hist, func(x *bucket) int { return x.R4xx })},
		{"5xx", "#cf222e", series(&b.hist, func(x *bucket) int { return x.R5xx })},
	}, true)
}

// queue describes the queue: why messages wait, how old the oldest is,
// the newest dead letters.
func (v *view) queue(q QueueView, now time.Time) {
	v.Queue = q.Stats()
	v.QueueWaiting = v.Queue.Queued + v.Queue.Deferred
	for _, w := range v.Queue.Waiting {
		next := "now"
		if d := w.Next.Sub(now); d > 0 {
			next = "in " + human(d)
		}
		v.Waiting = append(v.Waiting, waitView{Reply: w.Reply, Count: w.Count, Next: next})
	}
	v.QueueClass = classOK
	if !v.Queue.Oldest.IsZero() {
		age := now.Sub(v.Queue.Oldest)
		v.Oldest = ago(age)
		switch {
		case age > 30*time.Minute:
			v.QueueClass = classBad
		case age > 5*time.Minute:
			v.QueueClass = classWarn
		}
	}
	dead, err := q.Dead()
	if err != nil {
		v.DeadErr = err.Error()
	}
	slices.SortFunc(dead, func(a, b queue.Item) int { return b.Received.Compare(a.Received) })
	if len(dead) > maxDeadShown {
		v.DeadMore = len(dead) - maxDeadShown
		dead = dead[:maxDeadShown]
	}
	for _, it := range dead {
		v.Dead = append(v.Dead, deadView{ID: it.ID, Device: it.Device, Reason: it.DeadReason,
			Received: stampOf(it.Received, now), Rcpts: len(it.To)})
	}
}

// deviceView describes a device's row; b.mu is held.
func (b *Board) deviceView(r deviceRank, now time.Time) deviceView {
	d, st := r.d, r.st
	dv := deviceView{Name: d.Name, Tenant: d.Tenant, Mailbox: d.Mailbox.String(), Mode: d.Mode,
		LastSeen: stampOf(st.LastSeen, now), LastMessage: stampOf(st.LastMessage, now),
		Received: st.received, Delivered: st.delivered, Failed: st.failed, Rejected: st.rejected,
		AuthFailures: st.authFailures, Class: r.class, Note: r.note, LastUpstreamID: st.lastUpstreamID}
	if f := st.lastFailure; f != nil {
		dv.HasFailure = true
		dv.LastFailure, dv.LastFailureAt, dv.FailureMsgID = f.Text, stampOf(f.Time, now), f.MsgID
		dv.FailureCode, dv.FailureReason = shortFailure(f)
		dv.FailureRecovers = st.recovered(f)
	}
	if d.ExpectEvery > 0 {
		dv.Expect = "every " + human(d.ExpectEvery)
	}
	return dv
}

// devicePageView is one device's page.
type devicePageView struct {
	Info   PageInfo
	Now    string
	Device deviceView
	Chart  template.HTML
}

// devicePage describes the device named name; false if there is none.
func (b *Board) devicePage(info PageInfo, name string, now time.Time) (devicePageView, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.IndexFunc(b.inv.Devices, func(d inventory.Device) bool { return d.Name == name })
	if i < 0 {
		return devicePageView{}, false
	}
	d := &b.inv.Devices[i]
	st := b.devices[d.Name]
	if st == nil {
		st = &deviceState{}
	}
	r := deviceRank{d: d, st: st}
	r.class, r.note = b.deviceStatus(d, st, now)
	h := b.devHist[d.Name]
	if h == nil {
		h = &history{}
	}
	return devicePageView{Info: info, Now: now.UTC().Format("2006-01-02 15:04:05 UTC"), Device: b.deviceView(r, now),
		Chart: chart("chart-device", 720, 120, []line{
			{"received", "#0969da", h.series(now, func(x *bucket) int { return x.Received })},
			{"delivered", "#1a7f37", h.series(now, func(x *bucket) int { return x.Delivered })},
			{"failed", "#cf222e", h.series(now, func(x *bucket) int { return x.Failed })},
		}, true)}, true
}

// share is how full a mailbox's daily quota is, in thousandths.
func share(q quotaView) int {
	if q.Limit <= 0 {
		return 0
	}
	return q.Used * 1000 / q.Limit
}

// tenantView describes a tenant; b.mu is held.
func (b *Board) tenantView(t inventory.Tenant, now time.Time) tenantView {
	st := b.tenants[t.Name]
	if st == nil {
		st = &tenantState{}
	}
	tv := tenantView{Name: t.Name, TenantID: t.TenantID, ClientID: t.ClientID, Credential: t.CredentialLabel(), SMTPHost: t.SMTPHost,
		CredExpiry: "not known (set client_secret_expires)", CredClass: classNone,
		Token: "not requested yet", TokenClass: classNone, Exchange: "no delivery yet", ExchangeClass: classNone}
	if exp := t.CredentialExpiry; !exp.IsZero() {
		left := exp.Sub(now)
		tv.CredExpiry = exp.UTC().Format(time.DateOnly)
		switch {
		case left <= 0:
			tv.CredExpiry += " (expired " + ago(-left) + ")"
			tv.CredClass = classBad
		case left < 30*24*time.Hour:
			tv.CredExpiry += " (in " + human(left) + ")"
			tv.CredClass = classWarn
		default:
			tv.CredExpiry += " (in " + human(left) + ")"
			tv.CredClass = classOK
		}
	}
	switch {
	case !st.tokenFailed.IsZero() && st.tokenFailed.After(st.tokenOK):
		tv.Token, tv.TokenClass = "failing since "+ago(now.Sub(st.tokenFailed))+": "+st.tokenError, classBad
	case !st.tokenOK.IsZero():
		tv.Token, tv.TokenClass = "OK, valid until "+st.tokenExpires.UTC().Format("15:04 UTC"), classOK
	}
	switch {
	case !st.problem.IsZero() && st.problem.After(st.delivered):
		tv.Exchange, tv.ExchangeClass = "failing since "+ago(now.Sub(st.problem))+": "+st.problemText, classBad
	case !st.delivered.IsZero():
		tv.Exchange, tv.ExchangeClass = "last delivery "+ago(now.Sub(st.delivered)), classOK
	}
	return tv
}

// ago says how long ago, coarsely: "12s ago", "5m ago", "3h ago", "2d ago".
func ago(d time.Duration) string {
	switch {
	case d <= -time.Second:
		return "in " + human(-d)
	case d < time.Second:
		return "just now"
	}
	return human(d) + " ago"
}

// human is a duration for people: 45s, 12m, 3h 5m, 4d 2h.
func human(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		h, m := int(d.Hours()), int(d.Minutes())%60
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh %dm", h, m)
	}
	days, h := int(d.Hours())/24, int(d.Hours())%24
	if h == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd %dh", days, h)
}

// shownUsername is a block's last username: none for one no device has,
// which may be a password typed in the wrong field.
func shownUsername(u string) string {
	if u == "" {
		return "(not a device's; not shown)"
	}
	return u
}

// fullness is how worried to look at used of limit: warn from 80%.
func fullness(used, limit int64) string {
	switch {
	case limit <= 0:
		return classNone
	case used >= limit:
		return classBad
	case used*5 >= limit*4:
		return classWarn
	}
	return classOK
}

// maxSpoolDevicesShown bounds the devices listed by their spool use.
const maxSpoolDevicesShown = 10

func spoolViewOf(u SpoolUsage) *spoolView {
	sv := &spoolView{Used: bytesOf(u.Bytes), Class: fullness(u.Bytes, u.MaxBytes)}
	if u.MaxBytes > 0 {
		sv.Used += " of " + bytesOf(u.MaxBytes)
	}
	switch {
	case u.Free < 0:
		sv.Free = "unknown"
	default:
		sv.Free = bytesOf(u.Free) + " free"
		if u.MinFree > 0 {
			sv.Free += ", " + bytesOf(u.MinFree) + " kept free"
			if u.Free <= u.MinFree {
				sv.Class = classBad
			}
		}
	}
	for name, n := range u.Devices {
		dv := spoolDeviceView{Name: name, Used: bytesOf(n), Class: classOK}
		if u.Share != nil {
			if share := u.Share(name); share > 0 {
				dv.Share, dv.Class = bytesOf(share), fullness(n, share)
			}
		}
		sv.Devices = append(sv.Devices, dv)
	}
	slices.SortFunc(sv.Devices, func(a, b spoolDeviceView) int {
		return cmp.Or(cmp.Compare(u.Devices[b.Name], u.Devices[a.Name]), cmp.Compare(a.Name, b.Name))
	})
	if len(sv.Devices) > maxSpoolDevicesShown {
		sv.Devices = sv.Devices[:maxSpoolDevicesShown]
	}
	return sv
}

// bytesOf shows a size in binary units.
func bytesOf(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
