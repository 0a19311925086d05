package doctor

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// Sender is a mailbox that sent over SMTP AUTH in the period, as
// Microsoft recorded it.
type Sender struct {
	Mailbox string `json:"mailbox"`
	// Mapped: a device in the config already sends as the mailbox
	// (Devices).
	Mapped  bool     `json:"mapped"`
	Devices []string `json:"devices,omitempty"`
	// InReport: the email apps usage report marks the mailbox's SMTP
	// App; LastActivity is the report's last activity date.
	InReport     bool   `json:"in_usage_report"`
	LastActivity string `json:"last_activity,omitempty"`
	// SignIns are its Authenticated SMTP sign-ins in the logs (Failed
	// of them refused), from Addresses (the public addresses Microsoft
	// saw: a site's, not the device's), the last at LastSeen.
	SignIns   int        `json:"sign_ins"`
	Failed    int        `json:"failed_sign_ins"`
	Addresses []string   `json:"addresses"`
	LastSeen  *time.Time `json:"last_seen,omitempty"`
}

// Discovery is what discover found for one tenant.
type Discovery struct {
	Tenant  string   `json:"tenant"`
	Days    int      `json:"days"`
	Senders []Sender `json:"senders"`
	// Report and SignInLogs say whether each source could be read
	// ("ok"), or what it needs.
	Report     string `json:"usage_report"`
	SignInLogs string `json:"sign_in_logs"`
}

// Bounds of a discovery: what Graph's answers may make it read.
const (
	maxReportBytes = 64 << 20
	maxReportRows  = 1_000_000
	maxSignInPages = 500
	maxPageBytes   = 16 << 20
)

// Graph's application permissions discover needs.
const (
	roleReports  = "Reports.Read.All"
	roleAuditLog = "AuditLog.Read.All"
)

// reportPeriod is the report's period for days: the shortest of Graph's
// (D7, D30, D90, D180) that covers them.
func reportPeriod(days int) (string, int) {
	for _, p := range []int{7, 30, 90, 180} {
		if days <= p {
			return fmt.Sprintf("D%d", p), p
		}
	}
	return "D180", 180
}

// Discover asks Microsoft, through tenant t's app on Graph, which
// mailboxes sent over SMTP AUTH in the last days: the email apps usage
// report (Reports.Read.All, any licence) and the Authenticated SMTP
// sign-ins (AuditLog.Read.All, Entra ID P1 or P2). A source it may not
// read is said in Report or SignInLogs, with the grant it needs; the
// other still answers.
func Discover(ctx context.Context, t Tenant, days int) (Discovery, error) {
	d := Discovery{Tenant: t.Name, Days: days, Senders: []Sender{}}
	if t.Graph == nil {
		return d, errors.New("the tenant has no Graph route")
	}
	tt := t.Tenant
	tt.Scope, tt.DelegatedScope = t.Graph.Scope, ""
	if t.Credential.Delegated() {
		return d, fmt.Errorf("tenant %s signs in per mailbox (auth: delegated): discover needs an app credential (client secret, certificate or managed identity) with %s and %s", t.Name, roleReports, roleAuditLog)
	}
	store, err := tokenstore.New([]tokenstore.Tenant{tt}, nil)
	if err != nil {
		return d, err
	}
	tok, err := store.Token(ctx, t.Name, "")
	if err != nil {
		s := tokenFailure(Step{}, &t, err)
		return d, fmt.Errorf("a Graph token for tenant %s: %s %s %s", t.Name, s.Detail, s.Meaning, s.Fix)
	}
	g := &graphReader{base: strings.TrimRight(t.Graph.Route.Host, "/"), token: tok.AccessToken,
		client: &http.Client{Transport: t.Graph.Route.Egress.Transport(t.Graph.Route.RootCAs), Timeout: 2 * time.Minute,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	by := map[string]*Sender{}
	sender := func(upn string) *Sender {
		k := strings.ToLower(upn)
		if by[k] == nil {
			by[k] = &Sender{Mailbox: k, Addresses: []string{}}
		}
		return by[k]
	}

	d.Report = "ok"
	if rows, err := g.usage(ctx, days); err != nil {
		d.Report = explainGraph(err, roleReports, "")
	} else {
		for _, r := range rows {
			s := sender(r.upn)
			s.InReport, s.LastActivity = true, r.last
		}
	}
	d.SignInLogs = "ok"
	since := time.Now().UTC().Add(-time.Duration(days) * 24 * time.Hour).Truncate(time.Second)
	if err := g.signIns(ctx, since, func(upn, ip string, at time.Time, code int) {
		s := sender(upn)
		s.SignIns++
		if code != 0 {
			s.Failed++
		}
		if ip != "" && !slices.Contains(s.Addresses, ip) && len(s.Addresses) < 20 {
			s.Addresses = append(s.Addresses, ip)
		}
		if s.LastSeen == nil || at.After(*s.LastSeen) {
			at := at
			s.LastSeen = &at
		}
	}); err != nil {
		d.SignInLogs = explainGraph(err, roleAuditLog, "Entra ID P1 or P2")
	}
	if d.Report != "ok" && d.SignInLogs != "ok" {
		return d, fmt.Errorf("neither source could be read: usage report: %s; sign-in logs: %s", d.Report, d.SignInLogs)
	}

	mapped := map[string][]string{}
	for _, dev := range t.Devices {
		k := strings.ToLower(dev.Mailbox.String())
		mapped[k] = append(mapped[k], dev.Name)
	}
	for _, s := range by {
		slices.Sort(s.Addresses)
		s.Devices = mapped[s.Mailbox]
		s.Mapped = len(s.Devices) > 0
		d.Senders = append(d.Senders, *s)
	}
	slices.SortFunc(d.Senders, func(a, b Sender) int {
		if a.Mapped != b.Mapped {
			if a.Mapped {
				return 1
			}
			return -1
		}
		return strings.Compare(a.Mailbox, b.Mailbox)
	})
	return d, nil
}

// graphError is Graph's refusal.
type graphError struct {
	status  int
	code    string
	message string
}

func (e *graphError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.status, e.code, e.message)
}

// explainGraph says what a refused source needs: the permission, or
// the licence.
func explainGraph(err error, role, licence string) string {
	var ge *graphError
	if errors.As(err, &ge) {
		switch {
		case ge.code == "Authentication_RequestFromNonPremiumTenantOrB2CTenant":
			return fmt.Sprintf("the tenant has no %s licence, which the sign-in logs need; the usage report alone lists the mailboxes, without the addresses", licence)
		case ge.status == 403 || ge.status == 401:
			return fmt.Sprintf("the app lacks the application permission %s (Microsoft Graph) with admin consent (%s); smtpbridge exchange-script --discover prints the grant", role, ge.code)
		}
	}
	return err.Error()
}

type graphReader struct {
	base   string
	token  string
	client *http.Client
}

// get GETs u (with the token when auth) and returns its body, at most
// limit bytes; a 302's Location is returned as next.
func (g *graphReader) get(ctx context.Context, u string, auth bool, limit int64) (body []byte, next string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", err
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+g.token)
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusFound || resp.StatusCode == http.StatusSeeOther || resp.StatusCode == http.StatusTemporaryRedirect {
		return nil, resp.Header.Get("Location"), nil
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, "", err
	}
	if int64(len(body)) > limit {
		return nil, "", fmt.Errorf("%s: the answer is larger than %d bytes", u, limit)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		json.Unmarshal(body, &e)
		return nil, "", &graphError{status: resp.StatusCode, code: e.Error.Code, message: e.Error.Message}
	}
	return body, "", nil
}

type usageRow struct{ upn, last string }

// usage reads the email apps usage report: Graph answers with a
// redirect to the CSV, fetched without the token (the URL carries its
// own authorization, and may be another host).
func (g *graphReader) usage(ctx context.Context, days int) ([]usageRow, error) {
	period, _ := reportPeriod(days)
	_, loc, err := g.get(ctx, g.base+"/v1.0/reports/getEmailAppUsageUserDetail(period='"+period+"')", true, maxPageBytes)
	if err != nil {
		return nil, err
	}
	if loc == "" {
		return nil, errors.New("the usage report did not redirect to its CSV")
	}
	if u, err := url.Parse(loc); err != nil || u.Scheme != "https" {
		return nil, fmt.Errorf("the usage report redirected to %q, not an https URL", loc)
	}
	data, _, err := g.get(ctx, loc, false, maxReportBytes)
	if err != nil {
		return nil, fmt.Errorf("the usage report's CSV: %w", err)
	}
	r := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(data, []byte("\ufeff"))))
	r.FieldsPerRecord = -1
	head, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("the usage report's CSV: %w", err)
	}
	col := map[string]int{}
	for i, h := range head {
		col[strings.TrimSpace(h)] = i
	}
	upnCol, ok1 := col["User Principal Name"]
	smtpCol, ok2 := col["SMTP App"]
	lastCol, ok3 := col["Last Activity Date"]
	if !ok1 || !ok2 || !ok3 {
		return nil, fmt.Errorf("the usage report's CSV has no User Principal Name, SMTP App or Last Activity Date column (columns: %s)", strings.Join(head, ", "))
	}
	var rows []usageRow
	for n := 0; ; n++ {
		if n >= maxReportRows {
			return nil, fmt.Errorf("the usage report has more than %d rows", maxReportRows)
		}
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("the usage report's CSV: %w", err)
		}
		if max(upnCol, smtpCol, lastCol) >= len(rec) || !strings.EqualFold(rec[smtpCol], "Yes") {
			continue
		}
		rows = append(rows, usageRow{upn: rec[upnCol], last: rec[lastCol]})
	}
	return rows, nil
}

// signIns reads the Authenticated SMTP sign-ins since, page by page,
// calling each for each; the next page's link must stay on Graph's host
// (the token goes with it).
func (g *graphReader) signIns(ctx context.Context, since time.Time, each func(upn, ip string, at time.Time, code int)) error {
	q := url.Values{"$filter": {"clientAppUsed eq 'Authenticated SMTP' and createdDateTime ge " + since.Format(time.RFC3339)}}
	u := g.base + "/v1.0/auditLogs/signIns?" + q.Encode()
	for page := 0; u != ""; page++ {
		if page >= maxSignInPages {
			return fmt.Errorf("more than %d pages of sign-ins; use a shorter --days", maxSignInPages)
		}
		if !strings.HasPrefix(u, g.base+"/") {
			return fmt.Errorf("the sign-in logs' next page %q is not on %s", u, g.base)
		}
		body, _, err := g.get(ctx, u, true, maxPageBytes)
		if err != nil {
			return err
		}
		var p struct {
			Value []struct {
				UPN     string    `json:"userPrincipalName"`
				IP      string    `json:"ipAddress"`
				Created time.Time `json:"createdDateTime"`
				Status  struct {
					ErrorCode int `json:"errorCode"`
				} `json:"status"`
			} `json:"value"`
			Next string `json:"@odata.nextLink"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return fmt.Errorf("the sign-in logs: %w", err)
		}
		for _, v := range p.Value {
			if v.UPN != "" {
				each(v.UPN, v.IP, v.Created, v.Status.ErrorCode)
			}
		}
		u = p.Next
	}
	return nil
}

// DiscoverScript is the grant discover needs for tenant t's app: the
// Graph application permissions, with Microsoft Graph PowerShell.
func DiscoverScript(tenants []Tenant, tenant string) (string, error) {
	var b strings.Builder
	n := 0
	for i := range tenants {
		t := &tenants[i]
		if tenant != "" && t.Name != tenant {
			continue
		}
		n++
		fmt.Fprintf(&b, "# Tenant %s: let app %s read who sends over SMTP AUTH (smtpbridge discover).\n", t.Name, appID(t))
		fmt.Fprintf(&b, "# %s: the email apps usage report (any licence). %s: the sign-in logs (Entra ID P1 or P2).\n", roleReports, roleAuditLog)
		b.WriteString("# In the Entra admin center instead: App registrations > the app > API permissions > Add > Microsoft Graph >\n")
		b.WriteString("# Application permissions > Reports.Read.All and AuditLog.Read.All > Grant admin consent.\n")
		fmt.Fprintf(&b, "Connect-MgGraph -TenantId %s -Scopes 'AppRoleAssignment.ReadWrite.All','Application.Read.All'\n", psQuote(t.TenantID))
		b.WriteString("$graph = Get-MgServicePrincipal -Filter \"appId eq '00000003-0000-0000-c000-000000000000'\"\n")
		fmt.Fprintf(&b, "$app = Get-MgServicePrincipal -Filter \"appId eq '%s'\"\n", appID(t))
		fmt.Fprintf(&b, "foreach ($perm in '%s','%s') {\n", roleReports, roleAuditLog)
		b.WriteString("  $role = $graph.AppRoles | Where-Object { $_.Value -eq $perm -and $_.AllowedMemberTypes -contains 'Application' }\n")
		b.WriteString("  New-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $app.Id -PrincipalId $app.Id -ResourceId $graph.Id -AppRoleId $role.Id\n")
		b.WriteString("}\n\n")
	}
	if n == 0 {
		return "", fmt.Errorf("tenant %q: %w", tenant, ErrNoSuch)
	}
	return b.String(), nil
}
