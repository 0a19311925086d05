package fakegraph

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeentra"
)

// Activity is what Microsoft records of a tenant's mail clients, as
// Graph's reports and sign-in logs give it.
type Activity struct {
	// Premium: the tenant has Entra ID P1 or P2, which the sign-in logs
	// need.
	Premium bool
	Usage   []Usage
	SignIns []SignIn
}

// Usage is one user's row of the email apps usage report.
type Usage struct {
	UPN          string
	LastActivity time.Time // a date
	SMTP, IMAP   bool
}

// SignIn is one entry of the sign-in logs.
type SignIn struct {
	UPN       string
	IP        string
	Time      time.Time
	ClientApp string // "Authenticated SMTP", "Browser", ...
	ErrorCode int    // 0: success
}

// SetActivity gives a tenant its usage report and sign-in logs.
func (s *Server) SetActivity(tenantID string, a Activity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.activity[strings.ToLower(tenantID)] = &a
}

// SetPageSize makes the sign-in logs come in pages of n (Graph's own are
// up to 1,000), to exercise @odata.nextLink.
func (s *Server) SetPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageSize = n
}

var (
	reReport   = regexp.MustCompile(`^/v1\.0/reports/getEmailAppUsageUserDetail\(period='([^']*)'\)$`)
	reDownload = regexp.MustCompile(`^/reports/download/([0-9a-f]+)$`)
	reFilter   = regexp.MustCompile(`^clientAppUsed eq '([^']*)'(?: and createdDateTime ge (\S+))?$`)
)

// serveDirectory answers the tenant-wide endpoints: the email apps usage
// report (a 302 to a CSV, as Graph answers it), the CSV itself (a
// pre-authenticated URL: no token), and the sign-in logs (paged with
// @odata.nextLink). It says whether the request was one of them.
func (s *Server) serveDirectory(w http.ResponseWriter, r *http.Request) bool {
	if m := reDownload.FindStringSubmatch(r.URL.Path); m != nil {
		s.mu.Lock()
		data, ok := s.reports[m[1]]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return true
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(data)
		return true
	}
	report := reReport.FindStringSubmatch(r.URL.Path)
	if report == nil && r.URL.Path != "/v1.0/auditLogs/signIns" {
		return false
	}
	if r.Method != http.MethodGet {
		writeError(w, 405, "Request_BadRequest", "Unsupported request: "+r.Method+" "+r.URL.Path)
		return true
	}
	claims, ok := s.tenantToken(w, r)
	if !ok {
		return true
	}
	s.mu.Lock()
	a := s.activity[strings.ToLower(claims.TenantID)]
	page := cmpOr(s.pageSize, 1000)
	s.mu.Unlock()
	if a == nil {
		a = &Activity{}
	}
	if report != nil {
		if !slices.Contains(claims.Roles, fakeentra.RoleReportsRead) {
			writeError(w, 403, "UnknownError", "")
			return true
		}
		days, ok := map[string]int{"D7": 7, "D30": 30, "D90": 90, "D180": 180}[report[1]]
		if !ok {
			writeError(w, 400, "BadRequest", "Invalid value for 'period': "+report[1]+". Supported values: D7, D30, D90, D180.")
			return true
		}
		key := randomHex(16)
		s.mu.Lock()
		s.reports[key] = usageCSV(a.Usage, days)
		s.mu.Unlock()
		w.Header().Set("Location", s.url+"/reports/download/"+key)
		w.WriteHeader(http.StatusFound)
		return true
	}
	if !slices.Contains(claims.Roles, fakeentra.RoleAuditLogRead) {
		writeError(w, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
		return true
	}
	if !a.Premium {
		writeError(w, 403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant", "Neither tenant is B2C or tenant doesn't have premium license")
		return true
	}
	q := r.URL.Query()
	filter := q.Get("$filter")
	f := reFilter.FindStringSubmatch(filter)
	if len(filter) > 1000 || filter != "" && f == nil {
		writeError(w, 400, "BadRequest", "Invalid filter clause")
		return true
	}
	var since time.Time
	if f != nil && f[2] != "" {
		var err error
		if since, err = time.Parse(time.RFC3339, f[2]); err != nil {
			writeError(w, 400, "BadRequest", "Invalid filter clause: "+f[2])
			return true
		}
	}
	var match []SignIn
	for _, si := range a.SignIns {
		if (f == nil || si.ClientApp == f[1]) && !si.Time.Before(since) {
			match = append(match, si)
		}
	}
	// Newest first, as the logs list them.
	slices.SortFunc(match, func(x, y SignIn) int { return y.Time.Compare(x.Time) })
	skip, _ := strconv.Atoi(q.Get("$skiptoken"))
	skip = min(max(skip, 0), len(match))
	end := min(skip+page, len(match))
	value := []map[string]any{}
	for _, si := range match[skip:end] {
		value = append(value, map[string]any{
			"id": newGUID(), "createdDateTime": si.Time.UTC().Format(time.RFC3339), "userPrincipalName": si.UPN,
			"ipAddress": si.IP, "clientAppUsed": si.ClientApp, "status": map[string]any{"errorCode": si.ErrorCode},
		})
	}
	out := map[string]any{"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#auditLogs/signIns", "value": value}
	if end < len(match) {
		next := q
		next.Set("$skiptoken", strconv.Itoa(end))
		out["@odata.nextLink"] = s.url + "/v1.0/auditLogs/signIns?" + next.Encode()
	}
	writeJSON(w, 200, out)
	return true
}

// tenantToken checks an app token for Graph and returns its claims.
func (s *Server) tenantToken(w http.ResponseWriter, r *http.Request) (fakeentra.Claims, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		writeError(w, 401, "InvalidAuthenticationToken", "Access token is empty.")
		return fakeentra.Claims{}, false
	}
	claims, err := s.verifier.Verify(tok)
	if err != nil || claims.Audience != fakeentra.GraphResource {
		writeError(w, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
		return fakeentra.Claims{}, false
	}
	return claims, true
}

// usageCSV is the report as Graph's CSV gives it: a byte-order mark,
// Microsoft's column names, one row per user active in the period.
func usageCSV(rows []Usage, days int) []byte {
	var b bytes.Buffer
	b.WriteString("\ufeff")
	cw := csv.NewWriter(&b)
	cw.Write([]string{"Report Refresh Date", "User Principal Name", "Display Name", "Is Deleted", "Deleted Date", "Last Activity Date",
		"Mail For Mac", "Outlook For Mac", "Outlook For Windows", "Outlook For Mobile", "Other For Mobile", "Outlook For Web",
		"POP3 App", "IMAP4 App", "SMTP App", "Report Period"})
	today := time.Now().UTC()
	yn := func(v bool) string {
		if v {
			return "Yes"
		}
		return "No"
	}
	for _, u := range rows {
		if today.Sub(u.LastActivity) > time.Duration(days)*24*time.Hour {
			continue
		}
		name, _, _ := strings.Cut(u.UPN, "@")
		cw.Write([]string{today.Format("2006-01-02"), u.UPN, name, "False", "", u.LastActivity.Format("2006-01-02"),
			"No", "No", "No", "No", "No", "No", "No", yn(u.IMAP), yn(u.SMTP), fmt.Sprint(days)})
	}
	cw.Flush()
	return b.Bytes()
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}
