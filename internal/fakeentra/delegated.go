package fakeentra

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Delegated sign-in: users, the device code flow with a test-driven user
// who approves a code, and refresh tokens that an admin can revoke.

// OutlookResource is the resource Microsoft documents for delegated
// SMTP.Send; tokens for it are Exchange Online tokens as Resource's are.
const OutlookResource = "https://outlook.office.com"

// Delegated permissions for sending mail.
const (
	ScopeSMTPSend      = "SMTP.Send"
	ScopeMailSend      = "Mail.Send"
	ScopeMailReadWrite = "Mail.ReadWrite"
)

// User is a person in a tenant, who signs in for a mailbox.
type User struct {
	UPN      string
	ObjectID string
	tenant   string
	revoked  int // sign-in sessions revoked this many times; refresh tokens of earlier generations fail
}

// delegatedState is the fake's users, device codes and refresh tokens.
type delegatedState struct {
	mu       sync.Mutex
	users    map[string]*User         // by lower-case UPN
	codes    map[string]*deviceCode   // by device code
	byUser   map[string]*deviceCode   // by user code
	refresh  map[string]*refreshToken // by token
	pending  chan string              // user codes, as issued
	userLife time.Duration
}

type deviceCode struct {
	userCode, deviceCode string
	tenant               string
	clientID             string
	expires              time.Time
	approvedBy           *User
}

type refreshToken struct {
	user       *User
	clientID   string
	generation int
}

func newDelegatedState() *delegatedState {
	return &delegatedState{users: map[string]*User{}, codes: map[string]*deviceCode{},
		byUser: map[string]*deviceCode{}, refresh: map[string]*refreshToken{}, pending: make(chan string, 16)}
}

// AddUser adds a person to a tenant added before.
func (s *Server) AddUser(tenantID, upn string) *User {
	s.mu.Lock()
	t := s.tenants[strings.ToLower(tenantID)]
	s.mu.Unlock()
	if t == nil {
		panic("fakeentra: AddUser for unknown tenant " + tenantID)
	}
	d := s.delegated
	d.mu.Lock()
	defer d.mu.Unlock()
	u := &User{UPN: upn, ObjectID: newGUID(), tenant: t.id}
	d.users[strings.ToLower(upn)] = u
	return u
}

// SetUserTokenLifetime sets the lifetime of delegated access tokens
// (TokenLifetime by default). MSAL refreshes a token within 5 minutes of
// expiry on every use, so 300s or less makes every token request go to
// the refresh token.
func (s *Server) SetUserTokenLifetime(d time.Duration) {
	dl := s.delegated
	dl.mu.Lock()
	defer dl.mu.Unlock()
	dl.userLife = d
}

// NextUserCode waits for the next device code issued and returns its
// user code: what a person would read off the screen.
func (s *Server) NextUserCode(timeout time.Duration) (string, error) {
	select {
	case c := <-s.delegated.pending:
		return c, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("no device code issued within %s", timeout)
	}
}

// ApproveDeviceCode is the user upn signing in with userCode at the
// verification page and consenting.
func (s *Server) ApproveDeviceCode(userCode, upn string) error {
	d := s.delegated
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.byUser[userCode]
	if c == nil {
		return fmt.Errorf("no such code %q", userCode)
	}
	u := d.users[strings.ToLower(upn)]
	if u == nil || !strings.EqualFold(u.tenant, c.tenant) {
		return fmt.Errorf("no user %s in tenant %s", upn, c.tenant)
	}
	c.approvedBy = u
	return nil
}

// RevokeSignIns revokes every refresh token of upn, as
// Revoke-MgUserSignInSession or a password reset does.
func (s *Server) RevokeSignIns(upn string) {
	d := s.delegated
	d.mu.Lock()
	defer d.mu.Unlock()
	if u := d.users[strings.ToLower(upn)]; u != nil {
		u.revoked++
	}
}

// deviceCodeStart is POST /{tenant}/oauth2/v2.0/devicecode.
func (s *Server) deviceCodeStart(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeError(w, Failure{Status: 400, Code: "invalid_request", AADSTS: 900144, Description: "The request body must be form-encoded."})
		return
	}
	t, f := s.lookupTenant(r)
	if f != nil {
		writeError(w, *f)
		return
	}
	app, f := s.lookupApp(t, r)
	if f != nil {
		writeError(w, *f)
		return
	}
	if !app.PublicClient {
		writeError(w, publicClientOff)
		return
	}
	if _, _, f := parseDelegatedScope(r.PostForm.Get("scope")); f != nil {
		writeError(w, *f)
		return
	}
	b := make([]byte, 4)
	rand.Read(b)
	userCode := strings.ToUpper(hex.EncodeToString(b))
	c := &deviceCode{userCode: userCode, deviceCode: "dc-" + newGUID(), tenant: t.id, clientID: app.ClientID, expires: time.Now().Add(15 * time.Minute)}
	d := s.delegated
	d.mu.Lock()
	d.codes[c.deviceCode], d.byUser[userCode] = c, c
	d.mu.Unlock()
	select {
	case d.pending <- userCode:
	default:
	}
	verify := s.url + "/devicelogin"
	writeJSON(w, 200, map[string]any{"user_code": userCode, "device_code": c.deviceCode, "verification_uri": verify,
		"expires_in": 900, "interval": 1,
		"message": fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.", verify, userCode)})
}

// publicClientOff is Entra's answer to a credential-less request when the
// app registration does not allow public client flows.
var publicClientOff = Failure{Status: 401, Code: "invalid_client", AADSTS: 7000218,
	Description: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}

// lookupTenant finds the tenant a token or device code request's path
// names, by ID or domain.
func (s *Server) lookupTenant(r *http.Request) (*tenant, *Failure) {
	name := r.PathValue("tenant")
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[strings.ToLower(name)]; t != nil {
		return t, nil
	}
	return nil, &Failure{Status: 400, Code: "invalid_tenant", AADSTS: 90002, Description: fmt.Sprintf("Tenant '%s' not found.", name)}
}

// lookupApp finds the app a request's client_id names in t.
func (s *Server) lookupApp(t *tenant, r *http.Request) (*App, *Failure) {
	clientID := r.PostForm.Get("client_id")
	s.mu.Lock()
	defer s.mu.Unlock()
	if app := t.apps[strings.ToLower(clientID)]; app != nil {
		return app, nil
	}
	return nil, &Failure{Status: 400, Code: "unauthorized_client", AADSTS: 700016, Description: fmt.Sprintf(
		"Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", clientID, r.PathValue("tenant"))}
}

// parseDelegatedScope returns the resource and permissions of delegated
// scopes such as "https://outlook.office.com/SMTP.Send offline_access":
// one resource, and permissions it knows (SMTP.Send on Exchange,
// Mail.Send and Mail.ReadWrite on Graph), space-separated.
func parseDelegatedScope(scope string) (resource, permissions string, f *Failure) {
	invalid := &Failure{Status: 400, Code: "invalid_scope", AADSTS: 70011, Description: fmt.Sprintf("The provided value for the input parameter 'scope' is not valid. The scope %s is not valid.", scope)}
	var perms []string
	for _, sc := range strings.Fields(scope) {
		switch sc {
		case "openid", "profile", "offline_access":
			continue
		}
		i := strings.LastIndex(sc, "/")
		if i < 0 || resource != "" && resource != sc[:i] {
			return "", "", invalid
		}
		resource, perms = sc[:i], append(perms, sc[i+1:])
	}
	for _, p := range perms {
		ok := (resource == Resource || resource == OutlookResource) && p == ScopeSMTPSend ||
			resource == GraphResource && (p == ScopeMailSend || p == ScopeMailReadWrite)
		if !ok {
			return "", "", invalid
		}
	}
	if len(perms) == 0 {
		return "", "", invalid
	}
	return resource, strings.Join(perms, " "), nil
}

// delegatedToken answers the device code and refresh token grants of a
// public client.
func (s *Server) delegatedToken(w http.ResponseWriter, r *http.Request, t *tenant, app *App) {
	if !app.PublicClient {
		writeError(w, publicClientOff)
		return
	}
	resource, permission, f := parseDelegatedScope(r.PostForm.Get("scope"))
	if f != nil {
		writeError(w, *f)
		return
	}
	d := s.delegated
	d.mu.Lock()
	var user *User
	switch r.PostForm.Get("grant_type") {
	case "refresh_token":
		rt := d.refresh[r.PostForm.Get("refresh_token")]
		switch {
		case rt == nil || !strings.EqualFold(rt.clientID, app.ClientID):
			f = &Failure{Status: 400, Code: "invalid_grant", AADSTS: 9002313, Description: "Invalid request. Request is malformed or invalid."}
		case rt.generation != rt.user.revoked:
			f = &Failure{Status: 400, Code: "invalid_grant", AADSTS: 50173, Description: "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password."}
		default:
			user = rt.user
		}
	default: // the device code grant
		c := d.codes[r.PostForm.Get("device_code")]
		switch {
		case c == nil || !strings.EqualFold(c.clientID, app.ClientID):
			f = &Failure{Status: 400, Code: "invalid_grant", AADSTS: 70000, Description: "The provided value for the 'device_code' is not valid."}
		case time.Now().After(c.expires):
			f = &Failure{Status: 400, Code: "expired_token", AADSTS: 70020, Description: "The provided value for the input parameter 'device_code' is not valid. This device code has expired."}
		case c.approvedBy == nil:
			f = &Failure{Status: 400, Code: "authorization_pending", AADSTS: 70016, Description: "OAuth 2.0 device flow error. Authorization is pending. Continue polling."}
		default:
			user = c.approvedBy
			delete(d.codes, c.deviceCode)
			delete(d.byUser, c.userCode)
		}
	}
	var rt string
	life := d.userLife
	if user != nil {
		rt = "rt-" + newGUID() + newGUID()
		d.refresh[rt] = &refreshToken{user: user, clientID: app.ClientID, generation: user.revoked}
	}
	d.mu.Unlock()
	if f != nil {
		writeError(w, *f)
		return
	}
	if life == 0 {
		life = s.TokenLifetime
	}
	now := time.Now()
	at, err := signRS256(s.key, s.kid, map[string]any{
		"aud": resource, "iss": "https://sts.windows.net/" + t.id + "/", "iat": now.Unix(), "nbf": now.Unix(),
		"exp": now.Add(life).Unix(), "appid": app.ClientID, "oid": user.ObjectID, "sub": user.ObjectID, "tid": t.id,
		"scp": permission, "upn": user.UPN, "unique_name": user.UPN, "ver": "1.0", "xms_pad": strings.Repeat("A", 1000)})
	if err != nil {
		writeError(w, Failure{Status: 500, Code: "server_error", AADSTS: 90000, Description: err.Error()})
		return
	}
	idt, err := signRS256(s.key, s.kid, map[string]any{
		"aud": app.ClientID, "iss": s.url + "/" + t.id + "/v2.0", "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"name": user.UPN, "oid": user.ObjectID, "preferred_username": user.UPN, "sub": user.ObjectID, "tid": t.id, "ver": "2.0"})
	if err != nil {
		writeError(w, Failure{Status: 500, Code: "server_error", AADSTS: 90000, Description: err.Error()})
		return
	}
	info, _ := json.Marshal(map[string]string{"uid": user.ObjectID, "utid": t.id})
	s.mu.Lock()
	s.grants[strings.ToLower(app.ClientID)]++
	s.grantsFor[strings.ToLower(app.ClientID)+" "+resource]++
	s.mu.Unlock()
	secs := int(life / time.Second)
	var granted []string
	for _, p := range strings.Fields(permission) {
		granted = append(granted, resource+"/"+p)
	}
	writeJSON(w, 200, map[string]any{"token_type": "Bearer", "scope": strings.Join(granted, " "), "expires_in": secs, "ext_expires_in": secs,
		"access_token": at, "refresh_token": rt, "id_token": idt, "client_info": base64.RawURLEncoding.EncodeToString(info)})
}
