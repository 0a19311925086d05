// Package fakeentra is an Entra ID-like token issuer for tests and sandbox
// mode. It serves the OpenID configuration and the v2.0 token endpoint over
// HTTPS, grants client-credential tokens to registered apps (client secret
// or certificate assertion, as MSAL sends them), and refuses the rest with
// Entra's own error codes (AADSTS7000215, AADSTS700016, AADSTS90002, ...).
//
// The access tokens are RS256 JWTs shaped like Entra's v1 tokens for
// https://outlook.office365.com, and Verify lets the fake Exchange check
// them. It is not a security boundary and must never be used as one.
package fakeentra

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Resource is the audience of Exchange Online tokens.
const Resource = "https://outlook.office365.com"

// RoleSendAsApp is the application permission Exchange checks for SMTP.
const RoleSendAsApp = "SMTP.SendAsApp"

// GraphResource is the audience of Microsoft Graph tokens.
const GraphResource = "https://graph.microsoft.com"

// Microsoft Graph's application permissions for sending mail.
const (
	RoleMailSend      = "Mail.Send"
	RoleMailReadWrite = "Mail.ReadWrite"
)

// Microsoft Graph's application permissions for finding the senders
// that still use SMTP AUTH (smtpbridge discover).
const (
	RoleReportsRead  = "Reports.Read.All"
	RoleAuditLogRead = "AuditLog.Read.All"
)

// App is an app registration with its service principal in one tenant.
type App struct {
	ClientID string
	// ObjectID is the service principal's (Enterprise Application's)
	// object ID, the one New-ServicePrincipal needs. Generated if empty.
	ObjectID string
	// AppObjectID is the App Registration's object ID, the one people
	// wrongly pass to New-ServicePrincipal. Generated if empty.
	AppObjectID  string
	Secrets      []Secret
	Certificates []*x509.Certificate
	// Roles granted with admin consent. Nil means SMTP.SendAsApp; an empty
	// non-nil slice means none (RBAC for Applications, or consent missing).
	Roles []string
	// GraphRoles are the roles in Microsoft Graph tokens. Nil means
	// Mail.Send and Mail.ReadWrite; an empty non-nil slice means none.
	GraphRoles []string
	// Federated are the app's federated identity credentials: tokens
	// from another issuer it accepts as the app's client assertion.
	Federated []FederatedCredential
	// PublicClient is "Allow public client flows" on the app
	// registration: the device code flow and refresh tokens with no
	// credential, for delegated sign-in.
	PublicClient bool
}

// FederatedCredential is a federated identity credential: Entra accepts,
// as the app's client assertion, a token of Issuer for Subject with
// Audience (api://AzureADTokenExchange by default), compared case
// sensitively as Entra does.
type FederatedCredential struct {
	Issuer, Subject, Audience string
}

// TokenExchangeAudience is the audience Entra expects of federated
// tokens.
const TokenExchangeAudience = "api://AzureADTokenExchange"

// FederatedIssuer is the issuer of the tokens IssueFederated signs: a
// stand-in for a Kubernetes cluster's OIDC issuer.
func (s *Server) FederatedIssuer() string { return s.url + "/federated-issuer" }

// IssueFederated signs a token of FederatedIssuer for subject and
// audience, valid for ttl, as a cluster would project a service
// account token.
func (s *Server) IssueFederated(subject, audience string, ttl time.Duration) (string, error) {
	return s.signFederated(s.FederatedIssuer(), subject, audience, ttl)
}

// ManagedIdentityIssuer is the issuer of the managed identities' tokens
// for TokenExchangeAudience (Entra's, for the identity's tenant): the
// issuer of a federated credential that trusts a managed identity, whose
// subject is the identity's object ID.
func (s *Server) ManagedIdentityIssuer() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url + "/" + s.identityTenant + "/v2.0"
}

func (s *Server) signFederated(issuer, subject, audience string, ttl time.Duration) (string, error) {
	now := time.Now()
	jti := make([]byte, 8)
	rand.Read(jti)
	return signRS256(s.key, "fed-"+s.kid, map[string]any{"iss": issuer, "sub": subject, "aud": []string{audience},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix(), "jti": hex.EncodeToString(jti)})
}

// checkFederated verifies a federated token presented as app's client
// assertion, as Entra does.
func (s *Server) checkFederated(j *jws, app *App) *Failure {
	if j.verify(&s.key.PublicKey) != nil {
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 700027, Description: "Client assertion failed signature validation."}
	}
	var c struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp int64           `json:"exp"`
	}
	if err := json.Unmarshal(j.payload, &c); err != nil {
		return &Failure{Status: 400, Code: "invalid_client", AADSTS: 50027, Description: "JWT token is invalid or malformed."}
	}
	var auds []string
	if json.Unmarshal(c.Aud, &auds) != nil {
		var one string
		json.Unmarshal(c.Aud, &one)
		auds = []string{one}
	}
	var issuerKnown, subjectKnown bool
	for _, fc := range app.Federated {
		if fc.Issuer != c.Iss {
			continue
		}
		issuerKnown = true
		if fc.Subject != c.Sub {
			continue
		}
		subjectKnown = true
		aud := fc.Audience
		if aud == "" {
			aud = TokenExchangeAudience
		}
		for _, a := range auds {
			if a == aud {
				if time.Now().Unix() > c.Exp {
					return &Failure{Status: 400, Code: "invalid_client", AADSTS: 700024, Description: "Client assertion is not within its valid time range."}
				}
				return nil
			}
		}
	}
	switch {
	case !issuerKnown:
		return &Failure{Status: 400, Code: "invalid_client", AADSTS: 700211, Description: fmt.Sprintf("No matching federated identity record found for presented assertion issuer '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.", c.Iss)}
	case !subjectKnown:
		return &Failure{Status: 400, Code: "invalid_client", AADSTS: 700213, Description: fmt.Sprintf("No matching federated identity record found for presented assertion subject '%s'. Please note that the matching is done using a case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion.", c.Sub)}
	}
	return &Failure{Status: 400, Code: "invalid_client", AADSTS: 700212, Description: fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'.", strings.Join(auds, ","))}
}

// Secret is a client secret with its expiry (zero: never).
type Secret struct {
	Value   string
	Expires time.Time
}

// Claims are what Verify returns from a valid access token.
type Claims struct {
	Audience string   `json:"aud"`
	Issuer   string   `json:"iss"`
	TenantID string   `json:"tid"`
	AppID    string   `json:"appid"`
	ObjectID string   `json:"oid"`
	Roles    []string `json:"roles,omitempty"`
	// Scope (scp) and UPN are set in delegated tokens: the user's
	// permissions and name.
	Scope     string `json:"scp,omitempty"`
	UPN       string `json:"upn,omitempty"`
	Expires   int64  `json:"exp"`
	NotBefore int64  `json:"nbf"`
}

// Failure is a scripted error answer of the token endpoint.
type Failure struct {
	Status      int
	Code        string // OAuth error, e.g. "temporarily_unavailable"
	AADSTS      int
	Description string
}

// Server is the fake issuer.
type Server struct {
	// TokenLifetime is the expires_in of issued tokens. MSAL treats a token
	// within 5 minutes of expiry as expired, so keep it well above 300s.
	TokenLifetime time.Duration

	mu        sync.Mutex
	tenants   map[string]*tenant // by ID and by domain
	key       *rsa.PrivateKey
	kid       string
	failures  []Failure
	down      *Failure       // every request fails while set (SetDown)
	grants    map[string]int // client ID -> tokens issued
	grantsFor map[string]int // client ID and resource -> tokens issued
	requests  int
	// assertions are the last client assertion each client ID presented.
	assertions map[string]string
	// The host's managed identities (SetManagedIdentity): the endpoint's
	// secret header, the tenant, and the identities by client ID ("" the
	// system-assigned one).
	identityHeader string
	identityTenant string
	identities     map[string]*App
	// Delegated sign-in's users, device codes and refresh tokens.
	delegated *delegatedState

	srv *http.Server
	ln  net.Listener
	url string
}

type tenant struct {
	id   string
	apps map[string]*App // by client ID
}

// New returns a server; call Start to serve.
func New() (*Server, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	kid := make([]byte, 8)
	rand.Read(kid)
	return &Server{
		TokenLifetime: 3599 * time.Second,
		tenants:       map[string]*tenant{},
		key:           key,
		kid:           hex.EncodeToString(kid),
		grants:        map[string]int{},
		grantsFor:     map[string]int{},
		assertions:    map[string]string{},
		delegated:     newDelegatedState(),
	}, nil
}

// Start serves HTTPS on addr ("127.0.0.1:0" for any port) with cert.
func (s *Server) Start(addr string, cert tls.Certificate) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", s.openIDConfig)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", s.token)
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/devicecode", s.deviceCodeStart)
	mux.HandleFunc("GET /msi/token", s.managedToken)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	s.url = "https://" + ln.Addr().String()
	go s.srv.Serve(s.ln)
	return nil
}

// SetURLHost makes the advertised URLs use host (e.g. "localhost") instead
// of the listening IP, keeping the port.
func (s *Server) SetURLHost(host string) {
	_, port, _ := net.SplitHostPort(s.ln.Addr().String())
	s.url = "https://" + net.JoinHostPort(host, port)
}

// URL is the authority host, e.g. https://127.0.0.1:43123.
func (s *Server) URL() string { return s.url }

// Close stops the server.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// AddTenant registers a directory by ID, reachable also by its domains.
func (s *Server) AddTenant(id string, domains ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &tenant{id: id, apps: map[string]*App{}}
	s.tenants[strings.ToLower(id)] = t
	for _, d := range domains {
		s.tenants[strings.ToLower(d)] = t
	}
}

// AddApp registers an app in a tenant added before and returns it with
// generated IDs filled in.
func (s *Server) AddApp(tenantID string, app App) *App {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenants[strings.ToLower(tenantID)]
	if t == nil {
		panic("fakeentra: AddApp for unknown tenant " + tenantID)
	}
	if app.ObjectID == "" {
		app.ObjectID = newGUID()
	}
	if app.AppObjectID == "" {
		app.AppObjectID = newGUID()
	}
	if app.Roles == nil {
		app.Roles = []string{RoleSendAsApp}
	}
	if app.GraphRoles == nil {
		app.GraphRoles = []string{RoleMailSend, RoleMailReadWrite}
	}
	a := app
	t.apps[strings.ToLower(app.ClientID)] = &a
	return &a
}

// SetDown makes every token request fail with f until it is called again
// with nil: an outage.
func (s *Server) SetDown(f *Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = f
}

// Fail makes the next token requests fail, one Failure per request.
func (s *Server) Fail(f ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, f...)
}

// Grants returns how many tokens were issued to clientID.
func (s *Server) Grants(clientID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grants[strings.ToLower(clientID)]
}

// GrantsFor returns how many tokens were issued to clientID for one
// resource (Resource, GraphResource).
func (s *Server) GrantsFor(clientID, resource string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grantsFor[strings.ToLower(clientID)+" "+resource]
}

// SetManagedIdentity makes the server the host's managed identity
// endpoint, in the style of App Service and Container Apps
// (IDENTITY_ENDPOINT and IDENTITY_HEADER, which it returns): system is
// the system-assigned identity (nil: none), user the user-assigned ones,
// all apps of tenantID already added with AddApp.
func (s *Server) SetManagedIdentity(tenantID string, system *App, user ...*App) (endpoint, header string) {
	h := make([]byte, 16)
	rand.Read(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.identityHeader, s.identityTenant = hex.EncodeToString(h), tenantID
	s.identities = map[string]*App{}
	if system != nil {
		s.identities[""] = system
	}
	for _, a := range user {
		s.identities[strings.ToLower(a.ClientID)] = a
	}
	return s.url + "/msi/token", s.identityHeader
}

// managedToken is the managed identity endpoint: GET with api-version,
// resource and, for a user-assigned identity, client_id; the header
// X-IDENTITY-HEADER must be the endpoint's secret.
func (s *Server) managedToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	header, tenantID := s.identityHeader, s.identityTenant
	app := s.identities[strings.ToLower(r.URL.Query().Get("client_id"))]
	t := s.tenants[strings.ToLower(tenantID)]
	s.requests++
	s.mu.Unlock()
	if header == "" || r.Header.Get("X-IDENTITY-HEADER") != header {
		writeJSON(w, 401, map[string]any{"statusCode": 401, "message": "Unauthorized request: missing or wrong X-IDENTITY-HEADER"})
		return
	}
	if app == nil || t == nil {
		writeJSON(w, 400, map[string]any{"statusCode": 400, "message": "No managed identity found for the specified client_id, or none assigned to this resource."})
		return
	}
	resource := strings.TrimRight(r.URL.Query().Get("resource"), "/")
	if resource == TokenExchangeAudience {
		// For an app registration on which the identity is a federated
		// credential: a token of ManagedIdentityIssuer for the
		// identity's object ID.
		tok, err := s.signFederated(s.ManagedIdentityIssuer(), app.ObjectID, resource, s.TokenLifetime)
		if err != nil {
			writeJSON(w, 500, map[string]any{"statusCode": 500, "message": err.Error()})
			return
		}
		writeJSON(w, 200, map[string]any{"access_token": tok, "token_type": "Bearer", "resource": resource, "client_id": app.ClientID,
			"expires_on": strconv.FormatInt(time.Now().Add(s.TokenLifetime).Unix(), 10)})
		return
	}
	if resource != Resource && resource != GraphResource {
		writeJSON(w, 400, map[string]any{"statusCode": 400, "message": "AADSTS500011: The resource principal named " + resource + " was not found in the tenant."})
		return
	}
	tok, err := s.issue(t, app, resource)
	if err != nil {
		writeJSON(w, 500, map[string]any{"statusCode": 500, "message": err.Error()})
		return
	}
	s.mu.Lock()
	s.grants[strings.ToLower(app.ClientID)]++
	s.grantsFor[strings.ToLower(app.ClientID)+" "+resource]++
	s.mu.Unlock()
	writeJSON(w, 200, map[string]any{"access_token": tok, "token_type": "Bearer", "resource": resource, "client_id": app.ClientID,
		"expires_on": strconv.FormatInt(time.Now().Add(s.TokenLifetime).Unix(), 10)})
}

// LastAssertion is the last client assertion clientID presented.
func (s *Server) LastAssertion(clientID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.assertions[strings.ToLower(clientID)]
}

// Requests returns how many token requests arrived, granted or not.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

func (s *Server) openIDConfig(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("tenant")
	s.mu.Lock()
	t := s.tenants[strings.ToLower(name)]
	s.mu.Unlock()
	if t == nil {
		writeError(w, Failure{Status: 400, Code: "invalid_tenant", AADSTS: 90002, Description: fmt.Sprintf(
			"Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", name)})
		return
	}
	// The endpoints under the name the client used, as Entra's own
	// document does (a client that reached the fake through a proxy, by
	// a name only the proxy resolves, must be sent back to that name).
	origin := "https://" + r.Host
	base := origin + "/" + name
	writeJSON(w, 200, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"issuer":                                origin + "/" + t.id + "/v2.0",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_types_supported":              []string{"code", "id_token", "token"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
	})
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	var fail *Failure
	if len(s.failures) > 0 {
		fail = &s.failures[0]
		s.failures = s.failures[1:]
	}
	if s.down != nil {
		fail = s.down
	}
	s.mu.Unlock()
	if fail != nil {
		writeError(w, *fail)
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, Failure{Status: 400, Code: "invalid_request", AADSTS: 900144, Description: "The request body must be form-encoded."})
		return
	}
	t, f := s.lookupTenant(r)
	if f != nil {
		writeError(w, *f)
		return
	}
	var delegated bool
	switch gt := r.PostForm.Get("grant_type"); gt {
	case "client_credentials":
	case "refresh_token", "urn:ietf:params:oauth:grant-type:device_code", "device_code":
		delegated = true
	default:
		writeError(w, Failure{Status: 400, Code: "unsupported_grant_type", AADSTS: 70003, Description: fmt.Sprintf("The app requested an unsupported grant type '%s'.", gt)})
		return
	}
	app, f := s.lookupApp(t, r)
	if f != nil {
		writeError(w, *f)
		return
	}
	if delegated {
		s.delegatedToken(w, r, t, app)
		return
	}
	if f := s.checkCredential(r, app, s.url+r.URL.Path); f != nil {
		writeError(w, *f)
		return
	}
	resource, ok := parseScope(r.PostForm.Get("scope"))
	if !ok {
		writeError(w, Failure{Status: 400, Code: "invalid_scope", AADSTS: 1002012, Description: fmt.Sprintf(
			"The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", r.PostForm.Get("scope"))})
		return
	}
	if resource != Resource && resource != GraphResource {
		writeError(w, Failure{Status: 400, Code: "invalid_resource", AADSTS: 500011, Description: fmt.Sprintf(
			"The resource principal named %s was not found in the tenant named %s.", resource, r.PathValue("tenant"))})
		return
	}
	tok, err := s.issue(t, app, resource)
	if err != nil {
		writeError(w, Failure{Status: 500, Code: "server_error", AADSTS: 90000, Description: err.Error()})
		return
	}
	s.mu.Lock()
	s.grants[strings.ToLower(app.ClientID)]++
	s.grantsFor[strings.ToLower(app.ClientID)+" "+resource]++
	s.mu.Unlock()
	secs := int(s.TokenLifetime / time.Second)
	writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok})
}

// checkCredential verifies a client secret or a client assertion the way
// Entra does, returning the failure to send or nil.
func (s *Server) checkCredential(r *http.Request, app *App, tokenURL string) *Failure {
	if secret := r.PostForm.Get("client_secret"); secret != "" {
		for _, sec := range app.Secrets {
			if sec.Value == secret {
				if !sec.Expires.IsZero() && time.Now().After(sec.Expires) {
					return &Failure{Status: 401, Code: "invalid_client", AADSTS: 7000222, Description: fmt.Sprintf(
						"The provided client secret keys for app '%s' are expired. Visit the Azure portal to create new keys for your app.", app.ClientID)}
				}
				return nil
			}
		}
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 7000215, Description: fmt.Sprintf(
			"Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", app.ClientID)}
	}
	assertion := r.PostForm.Get("client_assertion")
	if assertion == "" {
		return &Failure{Status: 400, Code: "invalid_request", AADSTS: 7000218, Description: "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
	}
	if r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		return &Failure{Status: 400, Code: "invalid_request", AADSTS: 50027, Description: "Invalid client_assertion_type."}
	}
	j, err := parseJWS(assertion)
	if err != nil {
		return &Failure{Status: 400, Code: "invalid_client", AADSTS: 50027, Description: "JWT token is invalid or malformed: " + err.Error()}
	}
	s.mu.Lock()
	s.assertions[strings.ToLower(app.ClientID)] = assertion
	s.mu.Unlock()
	if j.header["kid"] == "fed-"+s.kid {
		return s.checkFederated(j, app)
	}
	cert := findCert(app.Certificates, j.header)
	if cert == nil {
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 700027, Description: fmt.Sprintf(
			"The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'.]", app.ClientID)}
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || j.verify(pub) != nil {
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 700027, Description: "Client assertion failed signature validation."}
	}
	var c struct {
		Aud string `json:"aud"`
		Iss string `json:"iss"`
		Sub string `json:"sub"`
		Exp int64  `json:"exp"`
		Nbf int64  `json:"nbf"`
	}
	if err := json.Unmarshal(j.payload, &c); err != nil {
		return &Failure{Status: 400, Code: "invalid_client", AADSTS: 50027, Description: "JWT token is invalid or malformed."}
	}
	now := time.Now().Unix()
	switch {
	case !strings.EqualFold(c.Iss, app.ClientID) || !strings.EqualFold(c.Sub, app.ClientID):
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 700021, Description: "Client assertion application identifier doesn't match 'client_id' parameter."}
	case c.Aud != tokenURL:
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 700212, Description: fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'.", c.Aud)}
	case now > c.Exp+300 || now+300 < c.Nbf:
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 700024, Description: "Client assertion is not within its valid time range."}
	case time.Now().After(cert.NotAfter):
		return &Failure{Status: 401, Code: "invalid_client", AADSTS: 700027, Description: "Client assertion contains an invalid signature. [Reason - The key used is expired.]"}
	}
	return nil
}

func findCert(certs []*x509.Certificate, header map[string]any) *x509.Certificate {
	for _, c := range certs {
		s256 := sha256.Sum256(c.Raw)
		s1 := sha1.Sum(c.Raw)
		if header["x5t#S256"] == base64.StdEncoding.EncodeToString(s256[:]) ||
			header["x5t#S256"] == b64.EncodeToString(s256[:]) ||
			header["x5t"] == base64.StdEncoding.EncodeToString(s1[:]) ||
			header["x5t"] == b64.EncodeToString(s1[:]) {
			return c
		}
	}
	return nil
}

// parseScope returns the resource of a "<resource>/.default" scope, the
// OpenID scopes MSAL adds being allowed beside it.
func parseScope(scope string) (string, bool) {
	var resource string
	for _, s := range strings.Fields(scope) {
		switch s {
		case "openid", "profile", "offline_access":
			continue
		}
		r, ok := strings.CutSuffix(s, "/.default")
		if !ok || resource != "" {
			return "", false
		}
		resource = r
	}
	return resource, resource != ""
}

func (s *Server) issue(t *tenant, app *App, resource string) (string, error) {
	now := time.Now()
	claims := map[string]any{
		"aud":             resource,
		"iss":             "https://sts.windows.net/" + t.id + "/",
		"iat":             now.Unix(),
		"nbf":             now.Unix(),
		"exp":             now.Add(s.TokenLifetime).Unix(),
		"aio":             strings.Repeat("E2ZgYJjD", 12),
		"app_displayname": "smtpbridge",
		"appid":           app.ClientID,
		"appidacr":        "1",
		"idp":             "https://sts.windows.net/" + t.id + "/",
		"oid":             app.ObjectID,
		"rh":              "0.AAAA" + strings.Repeat("x", 60),
		"sub":             app.ObjectID,
		"tid":             t.id,
		"uti":             newGUID(),
		"ver":             "1.0",
		"wids":            []string{"0997a1d0-0d1d-4acb-b408-d5ca73121e90"},
		// Real Exchange tokens run to 1.5-3 KB; pad so that the bridge's
		// handling of long XOAUTH2 responses is exercised.
		"xms_tcdt": strings.Repeat("1", 10),
		"xms_pad":  strings.Repeat("A", 1200),
	}
	roles := app.Roles
	if resource == GraphResource {
		roles = app.GraphRoles
	}
	if len(roles) > 0 {
		claims["roles"] = roles
	}
	return signRS256(s.key, s.kid, claims)
}

// Verify checks an access token's signature and lifetime and returns its
// claims. It is what the fake Exchange uses to validate XOAUTH2 logins.
func (s *Server) Verify(token string) (Claims, error) {
	j, err := parseJWS(token)
	if err != nil {
		return Claims{}, err
	}
	if j.header["alg"] != "RS256" || j.header["kid"] != s.kid {
		return Claims{}, errors.New("token not signed by this issuer")
	}
	if err := j.verify(&s.key.PublicKey); err != nil {
		return Claims{}, fmt.Errorf("bad signature: %w", err)
	}
	var c Claims
	if err := json.Unmarshal(j.payload, &c); err != nil {
		return Claims{}, err
	}
	if now := time.Now().Unix(); now >= c.Expires || now+300 < c.NotBefore {
		return Claims{}, errors.New("token expired or not yet valid")
	}
	return c, nil
}

func writeError(w http.ResponseWriter, f Failure) {
	desc := fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s",
		f.AADSTS, f.Description, newGUID(), newGUID(), time.Now().UTC().Format("2006-01-02 15:04:05Z"))
	writeJSON(w, f.Status, map[string]any{
		"error":             f.Code,
		"error_description": desc,
		"error_codes":       []int{f.AADSTS},
		"timestamp":         time.Now().UTC().Format("2006-01-02 15:04:05Z"),
		"trace_id":          newGUID(),
		"correlation_id":    newGUID(),
		"error_uri":         "https://login.microsoftonline.com/error?code=" + fmt.Sprint(f.AADSTS),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func newGUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
