package status

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/audit"
	"github.com/smtpbridge/smtpbridge/internal/inventory"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/message"
)

// fleet is a managed-service provider's board: tenants tenants, devices
// devices each sending as a mailbox of its own, every tenth device with
// a failure, every hundredth silent past its expect_every.
func fleet(t testing.TB, tenants, devices int) *Board {
	t.Helper()
	b := NewBoard()
	b.started = time.Now().Add(-48 * time.Hour)
	var inv inventory.Inventory
	for i := range tenants {
		inv.Tenants = append(inv.Tenants, inventory.Tenant{Name: fmt.Sprintf("t%03d", i), TenantID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)})
	}
	for i := range devices {
		d := inventory.Device{Name: fmt.Sprintf("mfp-%05d", i), Tenant: fmt.Sprintf("t%03d", i%tenants),
			Mailbox: mailaddr.MustParse(fmt.Sprintf("mfp-%05d@t%03d.example", i, i%tenants))}
		if i%100 == 99 {
			d.ExpectEvery = time.Hour
		}
		inv.Devices = append(inv.Devices, d)
	}
	b.Configure(inv)
	for i := range devices {
		name := fmt.Sprintf("mfp-%05d", i)
		if i%100 == 99 {
			continue // silent
		}
		b.Observe(audit.Event{Kind: audit.Received, MsgID: "m" + name, Device: name, Tenant: fmt.Sprintf("t%03d", i%tenants)})
		if i%10 == 3 {
			b.Observe(audit.Event{Kind: audit.Deferred, MsgID: "m" + name, Device: name, Tenant: fmt.Sprintf("t%03d", i%tenants),
				RetryBy: audit.RetryByQueue, NextAttempt: time.Now().Add(time.Minute),
				Reply: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded <" + strings.Repeat("0123456789ABCDEF", 8) + "@FAKE0PR01MB0001.namprd01.prod.outlook.com>"})
		} else {
			b.Observe(audit.Event{Kind: audit.Delivered, MsgID: "m" + name, Device: name, Tenant: fmt.Sprintf("t%03d", i%tenants),
				UpstreamID: strings.Repeat("0123456789ABCDEF", 6) + "@FAKE0PR01MB0001.namprd01.prod.outlook.com"})
		}
	}
	return b
}

func get(t testing.TB, b *Board, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(b.Handler(PageInfo{Version: "1.2.3", Hostname: "bridge.test"}, Sources{}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

var deviceRow = regexp.MustCompile(`<tr class="(\w+)" id="device-(mfp-\d+)">`)

// At 10,000 devices and 200 tenants the page is a page of 50 devices,
// problems first, with a sparkline each, and 20 tenants: well under
// 300 KB (it was 46.5 MB with every device and a sparkline each). The
// filters, the order and the pages work from the GET parameters.
func TestPageAtScale(t *testing.T) {
	b := fleet(t, 200, 10000)
	_, page := get(t, b, "/")
	t.Logf("the page: %.1f KB", float64(len(page))/1e3)
	if len(page) > 300e3 {
		t.Errorf("the page is %d bytes at 10,000 devices, want under 300 KB", len(page))
	}
	rows := deviceRow.FindAllStringSubmatch(page, -1)
	if len(rows) != devicesPerPage {
		t.Fatalf("%d device rows, want a page of %d", len(rows), devicesPerPage)
	}
	if n := strings.Count(page, `id="spark-`); n != devicesPerPage {
		t.Errorf("%d sparklines, want one per row shown (%d)", n, devicesPerPage)
	}
	if rows[0][1] != classBad || rows[0][2] != "mfp-00099" {
		t.Errorf("problems first: the silent ones first; got %v", rows[0][1:])
	}
	_, p3 := get(t, b, "/?page=3")
	if r := deviceRow.FindAllStringSubmatch(p3, -1); len(r) == 0 || r[0][1] != classWarn {
		t.Errorf("after the 100 silent devices, the failing ones")
	}
	if n := strings.Count(page, `<tr class="bad" id="tenant-`) + strings.Count(page, `<tr class="" id="tenant-`); n != tenantsPerPage {
		t.Errorf("%d tenant rows, want %d", n, tenantsPerPage)
	}
	for _, want := range []string{"10000</b>", "1000 failing · 100 silent", "1–50 of 10000", "page 1 of 200", `rel="next"`, "1–20 of 200"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}

	_, p2 := get(t, b, "/?page=2")
	if r := deviceRow.FindAllStringSubmatch(p2, -1); len(r) != devicesPerPage || r[0][2] == rows[0][2] || !strings.Contains(p2, "51–100 of 10000") {
		t.Errorf("page 2 does not go on from page 1")
	}
	_, last := get(t, b, "/?page=999999")
	if pg := regexp.MustCompile(`<p class="meta pager" id="device-pager">[^\n]*`).FindString(last); !strings.Contains(pg, "9951–10000 of 10000") || strings.Contains(pg, `rel="next"`) {
		t.Errorf("a page past the end shows the last one: %s", pg)
	}
	_, q := get(t, b, "/?q=MFP-0123")
	if r := deviceRow.FindAllStringSubmatch(q, -1); len(r) != 10 || !strings.Contains(q, "1–10 of 10") {
		t.Errorf("the search for MFP-0123 shows %d rows, want mfp-01230 to mfp-01239", len(r))
	}
	_, silent := get(t, b, "/?state=silent&sort=name")
	if r := deviceRow.FindAllStringSubmatch(silent, -1); len(r) != 50 || !strings.Contains(silent, "1–50 of 100") || r[0][2] != "mfp-00099" || r[1][2] != "mfp-00199" {
		t.Errorf("state=silent&sort=name: %d rows", len(r))
	}
	if !strings.Contains(silent, `href="./?page=2&amp;sort=name&amp;state=silent#devices"`) {
		t.Errorf("the next page's link loses the filter:\n%s", regexp.MustCompile(`<p class="meta pager".*</p>`).FindString(silent))
	}
	_, ok := get(t, b, "/?state=ok&sort=seen")
	if r := deviceRow.FindAllStringSubmatch(ok, -1); len(r) != 50 || r[0][1] != classOK || !strings.Contains(ok, "of 8900") {
		t.Errorf("state=ok: %d rows", len(r))
	}
	// Long input is cut, unknown values ignored.
	if code, _ := get(t, b, "/?q="+strings.Repeat("x", 5000)+"&state=<script>&sort=1&page=-3"); code != 200 {
		t.Errorf("odd parameters: %d", code)
	}
}

// A row is at most two lines: long values (Exchange's message IDs, the
// replies) are cut in the row with the whole value on hover; the
// device's page has them whole.
func TestRowsCutLongValues(t *testing.T) {
	b := fleet(t, 2, 20)
	_, page := get(t, b, "/?q=mfp-00003")
	row := regexp.MustCompile(`(?s)<tr class="warn" id="device-mfp-00003">.*?</tr>`).FindString(page)
	if row == "" {
		t.Fatal("no row for the failing device")
	}
	if !strings.Contains(row, `<b class="text-warn">432 4.3.2</b> deferred: STOREDRV.ClientSubmit`) {
		t.Errorf("the failure shows no code and short reason:\n%s", row)
	}
	if !strings.Contains(row, `<a href="message/mmfp-00003">story</a>`) {
		t.Errorf("the failure does not link its story:\n%s", row)
	}
	for _, cell := range regexp.MustCompile(`(?s)<td.*?</td>`).FindAllString(row, -1) {
		if lines := strings.Count(cell, `class="cut`); lines > 2 {
			t.Errorf("a cell of %d lines: %s", lines, cell)
		}
	}
	code, dev := get(t, b, "/device/mfp-00004")
	if code != 200 || !strings.Contains(dev, strings.Repeat("0123456789ABCDEF", 6)+"@FAKE0PR01MB0001") {
		t.Errorf("the device's page lacks its last delivery's ID (%d)", code)
	}
	_, dev3 := get(t, b, "/device/mfp-00003")
	if !strings.Contains(dev3, "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded &lt;"+strings.Repeat("0123456789ABCDEF", 8)) {
		t.Error("the device's page lacks the whole failure")
	}
	if code, _ := get(t, b, "/device/nope"); code != 404 {
		t.Errorf("an unknown device's page: %d, want 404", code)
	}
}

// After a recovery the failing rows turn neutral: a delivery after the
// failure, a login after a failed one.
func TestRecoveredRowsNeutral(t *testing.T) {
	b := fleet(t, 1, 10)
	b.AuthAttempt("lan", "LOGIN", "bad_credentials", "mfp-00005", netipLoopback)
	_, before := get(t, b, "/")
	for _, id := range []string{"mfp-00003", "mfp-00005"} {
		if !strings.Contains(before, `<tr class="warn" id="device-`+id+`">`) {
			t.Errorf("%s is not amber while failing", id)
		}
	}
	time.Sleep(2 * time.Millisecond)
	b.Observe(audit.Event{Kind: audit.Delivered, MsgID: "m2", Device: "mfp-00003", Tenant: "t000"})
	b.AuthAttempt("lan", "LOGIN", "success", "mfp-00005", netipLoopback)
	_, after := get(t, b, "/")
	for _, id := range []string{"mfp-00003", "mfp-00005"} {
		if !strings.Contains(after, `<tr class="ok" id="device-`+id+`">`) {
			t.Errorf("%s stays amber after it works again", id)
		}
	}
	if !strings.Contains(after, "works again") {
		t.Error("the old failure does not say it works again")
	}
}

// The replies chart counts Exchange's replies, not the 451 the bridge
// gives when Exchange cannot be reached, nor a refusal it repeated.
func TestRepliesChartExchangeOnly(t *testing.T) {
	b := NewBoard()
	b.Configure(inventory.Inventory{Devices: []inventory.Device{{Name: "d", Tenant: "t", Mailbox: mailaddr.MustParse("d@x")}}})
	own := message.ReplyOf(&message.Error{Class: message.Temporary, Err: errors.New("dial tcp: connection refused")})
	b.Observe(audit.Event{Kind: audit.Deferred, Device: "d", Tenant: "t", Reply: own.String(),
		Err: &message.Error{Class: message.Temporary, Err: errors.New("dial tcp: connection refused")}})
	b.Observe(audit.Event{Kind: audit.Bounced, Device: "d", Tenant: "t", Reply: "550 5.7.60 SMTP; Client does not have permissions",
		Err: &message.Error{Class: message.Permanent, Reply: message.Reply{Code: 550, Enhanced: [3]int{5, 7, 60}}, Note: "repeated from memory"}})
	b.Observe(audit.Event{Kind: audit.Deferred, Device: "d", Tenant: "t", Reply: "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
		Err: &message.Error{Class: message.Temporary, Reply: message.Reply{Code: 432, Enhanced: [3]int{4, 3, 2}}}})
	x := b.hist.at(time.Now())
	if x.R4xx != 1 || x.R5xx != 0 {
		t.Errorf("replies chart: %d 4xx, %d 5xx; want Exchange's one 432 only", x.R4xx, x.R5xx)
	}
}

var netipLoopback = netip.MustParseAddr("127.0.0.1")

// BenchmarkPage renders the page of a 10,000-device fleet.
func BenchmarkPage(b *testing.B) {
	board := fleet(b, 200, 10000)
	srv := httptest.NewServer(board.Handler(PageInfo{}, Sources{}))
	defer srv.Close()
	for b.Loop() {
		resp, err := srv.Client().Get(srv.URL + "/")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		b.ReportMetric(float64(n)/1e3, "KB/page")
	}
}
