package status

import (
	"cmp"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/message"
)

// The page lists devices and tenants a page at a time, problems first,
// so that it stays small and quick whatever the fleet's size: 10,000
// devices are 200 pages of 50, and only the rows shown get their
// sparkline.
const (
	devicesPerPage = 50
	tenantsPerPage = 20
	// maxQuotasShown and maxBlocksShown bound the other lists; their
	// counts are always complete.
	maxQuotasShown = 20
	maxBlocksShown = 50
	// maxQueryLen bounds the search text.
	maxQueryLen = 100
)

// Device list states (the state parameter).
const (
	stateAll      = ""
	stateProblems = "problems" // failing or silent
	stateFailing  = "failing"  // a failure in the last hour, not recovered
	stateSilent   = "silent"   // quieter than its expect_every
	stateNever    = "never"    // never seen
	stateOK       = "ok"
)

// Device list orders (the sort parameter).
const (
	sortProblems = "problems" // the default
	sortName     = "name"
	sortSeen     = "seen"   // last seen, latest first
	sortFailed   = "failed" // most failed first
)

// listQuery is what the visitor asked of the lists: the page's GET
// parameters, checked and bounded.
type listQuery struct {
	Q, State, Sort string
	Page, TPage    int // 1-based
}

func parseListQuery(v url.Values) listQuery {
	q := listQuery{Q: strings.TrimSpace(v.Get("q")), State: v.Get("state"), Sort: v.Get("sort"), Page: 1, TPage: 1}
	if len(q.Q) > maxQueryLen {
		q.Q = q.Q[:maxQueryLen]
	}
	switch q.State {
	case stateProblems, stateFailing, stateSilent, stateNever, stateOK:
	default:
		q.State = stateAll
	}
	switch q.Sort {
	case sortName, sortSeen, sortFailed:
	default:
		q.Sort = sortProblems
	}
	if n, err := strconv.Atoi(v.Get("page")); err == nil && n > 1 && n <= 1_000_000 {
		q.Page = n
	}
	if n, err := strconv.Atoi(v.Get("tpage")); err == nil && n > 1 && n <= 1_000_000 {
		q.TPage = n
	}
	return q
}

// link is the page's URL with the query changed by set (an empty value
// drops the parameter), anchored at the list.
func (q listQuery) link(anchor string, set ...string) string {
	v := url.Values{}
	put := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	put("q", q.Q)
	put("state", q.State)
	if q.Sort != sortProblems {
		put("sort", q.Sort)
	}
	if q.Page > 1 {
		put("page", strconv.Itoa(q.Page))
	}
	if q.TPage > 1 {
		put("tpage", strconv.Itoa(q.TPage))
	}
	for i := 0; i+1 < len(set); i += 2 {
		v.Del(set[i])
		put(set[i], set[i+1])
	}
	s := "./"
	if len(v) > 0 {
		s += "?" + v.Encode()
	}
	return s + "#" + anchor
}

// pager is a list's page links.
type pager struct {
	Page, Pages, Total, First, Last int // First, Last: 1-based rows shown
	Prev, Next                      string
}

func pagerOf(total, page, per int, link func(page int) string) (pager, int, int) {
	pages := max(1, (total+per-1)/per)
	page = min(max(page, 1), pages)
	from, to := (page-1)*per, min(page*per, total)
	p := pager{Page: page, Pages: pages, Total: total, First: from + 1, Last: to}
	if total == 0 {
		p.First = 0
	}
	if page > 1 {
		p.Prev = link(page - 1)
	}
	if page < pages {
		p.Next = link(page + 1)
	}
	return p, from, to
}

// deviceRank is what the list needs of a device to filter and sort it,
// without building its row.
type deviceRank struct {
	d     *inventory.Device // in b.inv, not copied: 10,000 of them per view
	st    *deviceState
	class string
	note  string
}

// classRank orders the classes problems first.
func classRank(c string) int {
	switch c {
	case classBad:
		return 0
	case classWarn:
		return 1
	case classOK:
		return 2
	}
	return 3
}

// deviceStatus is how worried to look at a device, and why: silent past
// its expect_every (bad), a failure in the last hour that nothing has
// since set right (warn), never seen (none). b.mu is held.
func (b *Board) deviceStatus(d *inventory.Device, st *deviceState, now time.Time) (class, note string) {
	class = classOK
	if st.LastSeen.IsZero() {
		class = classNone
	}
	if f := st.lastFailure; f != nil && now.Sub(f.Time) < time.Hour && !st.recovered(f) {
		class = classWarn
	}
	if d.ExpectEvery > 0 {
		// A device never seen counts from the bridge's start, as the
		// alert rule does.
		since := cmp.Or(st.LastSeen, b.started)
		if silent := now.Sub(since); silent > d.ExpectEvery {
			class = classBad
			note = "silent for " + human(silent) + ", expected every " + human(d.ExpectEvery)
		}
	}
	return class, note
}

// recovered says whether what failed has worked since: a login after a
// failed one, a message taken after a rejected one, a delivery after a
// failed one.
func (st *deviceState) recovered(f *Failure) bool {
	switch f.Kind {
	case "auth":
		return st.LastSeen.After(f.Time)
	case "rejected":
		return st.LastMessage.After(f.Time)
	}
	return st.lastDelivered.After(f.Time)
}

func (r deviceRank) matches(q listQuery) bool {
	switch q.State {
	case stateProblems:
		if r.class != classBad && r.class != classWarn {
			return false
		}
	case stateFailing:
		if r.class != classWarn && !(r.class == classBad && r.note == "") {
			return false
		}
	case stateSilent:
		if r.note == "" {
			return false
		}
	case stateNever:
		if !r.st.LastSeen.IsZero() {
			return false
		}
	case stateOK:
		if r.class != classOK {
			return false
		}
	}
	if q.Q == "" {
		return true
	}
	return containsFold(r.d.Name, q.Q) || containsFold(r.d.Tenant, q.Q) || containsFold(r.d.Mailbox.String(), q.Q)
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

func compareRanks(sortBy string) func(a, b deviceRank) int {
	byName := func(a, b deviceRank) int { return strings.Compare(a.d.Name, b.d.Name) }
	switch sortBy {
	case sortName:
		return byName
	case sortSeen:
		return func(a, b deviceRank) int { return cmp.Or(b.st.LastSeen.Compare(a.st.LastSeen), byName(a, b)) }
	case sortFailed:
		return func(a, b deviceRank) int { return cmp.Or(cmp.Compare(b.st.failed, a.st.failed), byName(a, b)) }
	}
	return func(a, b deviceRank) int {
		return cmp.Or(cmp.Compare(classRank(a.class), classRank(b.class)), byName(a, b))
	}
}

// rankPool keeps deviceList's slice between views.
var rankPool sync.Pool

// fleetCounts are the summary's counts over every device.
type fleetCounts struct {
	Devices, Failing, Silent, Never int
}

// deviceList fills the page's devices: the counts over all, and the rows
// of the page asked for; b.mu is held.
func (b *Board) deviceList(v *view, q listQuery, now time.Time) {
	// The ranks are the view's biggest garbage (half a megabyte at
	// 10,000 devices): kept for the next view.
	rp, _ := rankPool.Get().(*[]deviceRank)
	if rp == nil {
		rp = new([]deviceRank)
	}
	defer func() {
		clear(*rp)
		*rp = (*rp)[:0]
		rankPool.Put(rp)
	}()
	ranks := (*rp)[:0]
	defer func() { *rp = ranks }()
	for i := range b.inv.Devices {
		d := &b.inv.Devices[i]
		st := b.devices[d.Name]
		if st == nil {
			st = &deviceState{}
		}
		r := deviceRank{d: d, st: st}
		r.class, r.note = b.deviceStatus(d, st, now)
		v.Fleet.Devices++
		switch {
		case r.note != "":
			v.Fleet.Silent++
		case r.class == classWarn:
			v.Fleet.Failing++
		}
		if st.LastSeen.IsZero() {
			v.Fleet.Never++
		}
		if r.matches(q) {
			ranks = append(ranks, r)
		}
	}
	slices.SortFunc(ranks, compareRanks(q.Sort))
	var from, to int
	v.DevicePager, from, to = pagerOf(len(ranks), q.Page, devicesPerPage, func(p int) string {
		return q.link("devices", "page", strconv.Itoa(p))
	})
	for _, r := range ranks[from:to] {
		dv := b.deviceView(r, now)
		h := b.devHist[r.d.Name]
		if h == nil {
			h = &history{}
		}
		dv.Spark = chart("spark-"+r.d.Name, 120, 24, []line{
			{"received", "#0969da", coarse(h.series(now, func(x *bucket) int { return x.Received }), 3)},
			{"failed", "#cf222e", coarse(h.series(now, func(x *bucket) int { return x.Failed }), 3)},
		}, false)
		v.Devices = append(v.Devices, dv)
	}
}

// tenantList fills the page's tenants, problems first, a page of them;
// b.mu is held.
func (b *Board) tenantList(v *view, q listQuery, now time.Time) {
	var all []tenantView
	for _, t := range b.inv.Tenants {
		tv := b.tenantView(t, now)
		bad := tv.TokenClass == classBad || tv.ExchangeClass == classBad || tv.CredClass == classBad
		if bad {
			v.TenantIssue++
		}
		tv.Class = classOK
		if bad {
			tv.Class = classBad
		}
		if q.Q == "" || containsFold(t.Name, q.Q) || containsFold(t.TenantID, q.Q) {
			all = append(all, tv)
		}
	}
	v.TenantCount = len(b.inv.Tenants)
	slices.SortStableFunc(all, func(a, b tenantView) int {
		return cmp.Or(cmp.Compare(classRank(a.Class), classRank(b.Class)), strings.Compare(a.Name, b.Name))
	})
	var from, to int
	v.TenantPager, from, to = pagerOf(len(all), q.TPage, tenantsPerPage, func(p int) string {
		return q.link("tenants", "tpage", strconv.Itoa(p))
	})
	v.Tenants = all[from:to]
}

// shortFailure is a failure's code and the start of its reason, for a
// row: the whole story is on the device's page and the message's.
func shortFailure(f *Failure) (code, reason string) {
	if f.Kind == "auth" {
		return "login", f.Text
	}
	if r, ok := message.ParseReply(f.Reply); ok {
		return replyCode(r), f.Kind + ": " + r.Text
	}
	return f.Kind, f.Text
}

func replyCode(r message.Reply) string {
	s := strconv.Itoa(r.Code)
	if r.Enhanced[0] != 0 {
		s += " " + strconv.Itoa(r.Enhanced[0]) + "." + strconv.Itoa(r.Enhanced[1]) + "." + strconv.Itoa(r.Enhanced[2])
	}
	return s
}
