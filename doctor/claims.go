package doctor

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// roleSendAsApp is the application permission Exchange checks for SMTP
// AUTH with app-only tokens.
const roleSendAsApp = "SMTP.SendAsApp"

// exchangeAppID is Office 365 Exchange Online's first-party application
// ID, which some tokens carry as their audience instead of its URL.
const exchangeAppID = "00000002-0000-0ff1-ce00-000000000000"

// claims are the access token claims doctor checks.
type claims struct {
	Audience string   `json:"aud"`
	TenantID string   `json:"tid"`
	AppID    string   `json:"appid"`
	AZP      string   `json:"azp"` // v2 tokens name the client here
	Roles    []string `json:"roles"`
	Expires  int64    `json:"exp"`
	// Delegated tokens: the permissions and the signed-in user.
	Scope string `json:"scp"`
	UPN   string `json:"upn"`
}

// delegatedClaims checks a mailbox's delegated token: the signed-in
// user is the mailbox, with the permission the transport needs.
func (r *run) delegatedClaims(t *Tenant, m mailbox, token, permission string) (claims, Step) {
	s := Step{Tenant: t.Name, Mailbox: m.address, Devices: m.devices, Name: "claims", Status: Pass}
	c, err := decode(token)
	if err != nil {
		s.Status, s.Detail = Warn, "the token could not be read: "+err.Error()
		return c, s
	}
	s.Detail = fmt.Sprintf("audience %s, signed in as %s, permissions %s, expires %s", c.Audience, c.UPN, c.Scope,
		time.Unix(c.Expires, 0).UTC().Format("15:04 UTC"))
	switch {
	case !strings.EqualFold(c.UPN, m.address):
		s.Status = Fail
		s.Meaning = fmt.Sprintf("The token is %s's, not the mailbox's: Exchange refuses it.", c.UPN)
		s.Fix = fmt.Sprintf("Sign in as the mailbox's user: smtpbridge tenant login --tenant %s --mailbox %s", t.Name, m.address)
	case !slices.Contains(strings.Fields(c.Scope), permission):
		s.Status = Fail
		s.Meaning = fmt.Sprintf("The token lacks the delegated permission %s.", permission)
		s.Fix = "Add the delegated permission to the app registration (API permissions), grant consent, and sign in again."
	}
	return c, s
}

func (c claims) hasRole() bool { return slices.Contains(c.Roles, roleSendAsApp) }

// decode reads a JWT's claims without checking its signature: the token
// just came from Entra over verified TLS, and only its content is shown.
func decode(token string) (claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return claims{}, fmt.Errorf("not a JWT (%d parts)", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return claims{}, fmt.Errorf("JWT payload: %w", err)
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return claims{}, fmt.Errorf("JWT payload: %w", err)
	}
	if c.AppID == "" {
		c.AppID = c.AZP
	}
	return c, nil
}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// claims decodes the token and checks its audience, tenant, app and role.
func (r *run) claims(t *Tenant, token string) (claims, Step) {
	s := Step{Tenant: t.Name, Name: "claims", Status: Pass}
	c, err := decode(token)
	if err != nil {
		s.Status, s.Detail = Warn, "the token could not be read: "+err.Error()
		return c, s
	}
	roles := "none"
	if len(c.Roles) > 0 {
		roles = strings.Join(c.Roles, ", ")
	}
	s.Detail = fmt.Sprintf("audience %s, tenant %s, app %s, roles %s, expires %s", c.Audience, c.TenantID, c.AppID, roles,
		time.Unix(c.Expires, 0).UTC().Format("15:04 UTC"))
	resource := strings.TrimSuffix(t.Scope, "/.default")
	switch {
	case !strings.EqualFold(strings.TrimRight(c.Audience, "/"), strings.TrimRight(resource, "/")) && c.Audience != exchangeAppID:
		s.Status = Fail
		s.Meaning = fmt.Sprintf("The token is for %s, not for Exchange Online (%s): Exchange refuses it with 535 5.7.3.", c.Audience, resource)
		s.Fix = "Set token_scope to https://outlook.office365.com/.default (national clouds: their Exchange URL)."
	case guidRE.MatchString(t.TenantID) && !strings.EqualFold(c.TenantID, t.TenantID):
		s.Status = Fail
		s.Meaning = fmt.Sprintf("The token is from tenant %s, not %s.", c.TenantID, t.TenantID)
		s.Fix = "Check tenant_id: it must be the tenant whose mailboxes the devices use."
	case t.ClientID != "" && !strings.EqualFold(c.AppID, t.ClientID):
		s.Status = Fail
		s.Meaning = fmt.Sprintf("The token is for app %s, not %s.", c.AppID, t.ClientID)
		s.Fix = "Check client_id."
	case !c.hasRole():
		s.Status = Warn
		s.Meaning = "The token has no SMTP.SendAsApp role: that is right only with RBAC for Applications in Exchange (the mailbox checks below tell)."
		s.Fix = "Without RBAC: API permissions > Add a permission > APIs my organization uses > Office 365 Exchange Online > Application permissions > SMTP.SendAsApp, then Grant admin consent."
	}
	return c, s
}
