// Package hints explains the errors an admin meets when setting up and
// running smtpbridge: Exchange Online's SMTP replies and Entra ID's AADSTS
// codes, each with what it means and what fixes it (a PowerShell command or
// a portal step). One table feeds the bridge's log lines, the status page,
// `smtpbridge doctor` and the README's troubleshooting table, so that a
// live failure and a diagnosis say the same thing.
//
// Sources: Microsoft Learn ("Authenticate an IMAP, POP or SMTP connection
// using OAuth", the SMTP AUTH client submission limits, the Entra ID error
// code reference) and replies seen in the field; see EXCHANGE.md.
package hints

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Hint explains one error.
type Hint struct {
	// Code is what the hint is for: an SMTP reply with its enhanced code
	// ("535 5.7.3") or an Entra code ("AADSTS7000215").
	Code    string
	Meaning string
	// Fix is what to do, with the command or portal step.
	Fix string
}

// smtp are Exchange Online's replies, most specific first: Match takes
// the first whose code and enhanced code match, and whose Contains (if
// set) is in the text.
type smtpHint struct {
	code     int
	enhanced string
	contains string
	Hint
}

// codeText names the reply a hint is for: its codes, and the words of
// its text that tell it from others with the same codes.
func (e smtpHint) codeText() string {
	if e.contains != "" {
		return fmt.Sprintf("%d %s ...%s...", e.code, e.enhanced, e.contains)
	}
	return fmt.Sprintf("%d %s", e.code, e.enhanced)
}

var smtp = []smtpHint{
	// Microsoft Graph's refusals, as the Graph transport words them.
	{550, "5.7.1", "Mail.ReadWrite", Hint{
		Meaning: "Microsoft Graph refused to create the draft that a message over 3 MB is sent as: the app lacks the application permission Mail.ReadWrite (or its RBAC for Applications role).",
		Fix:     "Entra admin center > App registrations > the app > API permissions > Add > Microsoft Graph > Application permissions > Mail.ReadWrite, then Grant admin consent; or, with RBAC for Applications, New-ManagementRoleAssignment -App <client_id> -Role \"Application Mail.ReadWrite\" -CustomResourceScope <scope> (smtpbridge exchange-script --graph prints it)."}},
	{550, "5.7.1", "ErrorAccessDenied", Hint{
		Meaning: "Microsoft Graph refused the app: it lacks the application permission Mail.Send with admin consent, or the mailbox is outside its RBAC for Applications scope (or an Application Access Policy).",
		Fix:     "Entra admin center > App registrations > the app > API permissions > Add > Microsoft Graph > Application permissions > Mail.Send, then Grant admin consent; or New-ManagementRoleAssignment -App <client_id> -Role \"Application Mail.Send\" -CustomResourceScope <scope> (smtpbridge exchange-script --graph prints it)."}},
	{550, "5.7.60", "ErrorSendAsDenied", Hint{
		Meaning: "Microsoft Graph: the app may use the mailbox but not send as the From address.",
		Fix:     "Send as the mailbox itself (from_policy: rewrite), or Add-RecipientPermission -Identity <address> -Trustee <mailbox> -AccessRights SendAs."}},
	{550, "5.1.1", "MailboxNotEnabledForRESTAPI", Hint{
		Meaning: "Microsoft Graph cannot send from this mailbox: it is inactive, soft-deleted, unlicensed for Exchange Online, or on-premises.",
		Fix:     "Check the mailbox in the Exchange admin center (Get-Mailbox <mailbox>); an on-premises mailbox needs transport: smtp through a hybrid connector instead."}},
	{451, "4.3.2", "Microsoft Graph", Hint{
		Meaning: "Microsoft Graph throttled the app or the mailbox (429, 503 or 504); the bridge waits as long as its Retry-After says.",
		Fix:     "Nothing, unless it persists: Graph allows 4 requests at once per app and mailbox and 10,000 per 10 minutes; spread the devices over more mailboxes."}},
	{535, "5.7.3", "Microsoft Graph", Hint{
		Meaning: "Microsoft Graph refused the bridge's token: its audience is not graph_host, or the tenant does not trust the app.",
		Fix:     "Check graph_host and graph_token_scope (https://graph.microsoft.com/.default for the public cloud); smtpbridge doctor shows the token's audience and roles."}},
	{550, "5.1.10", "RecipientNotFound", Hint{
		Meaning: "Exchange Online knows no recipient with this address: a typo in the device's address book, a mailbox or contact that was removed, or an address in one of your domains that is not in Exchange Online (Directory-Based Edge Blocking refuses it).",
		Fix:     "Correct the address on the device or in the ERP; for an address in your own domain, check it with Get-Recipient <address> in Exchange Online PowerShell. The message is not retried: send it again once fixed (smtpbridge queue requeue ID for a dead letter)."}},
	// 535 5.7.139's cause is the sentence after the comma (EXCHANGE.md).
	{535, "5.7.139", "disabled for the Tenant", Hint{
		Meaning: "SMTP AUTH is disabled for the whole tenant; it governs OAuth logins too. The mailbox's own setting overrides the tenant's.",
		Fix:     "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false for each mailbox the bridge sends as (or Set-TransportConfig -SmtpClientAuthenticationDisabled $false for the whole tenant)."}},
	{535, "5.7.139", "disabled for the Mailbox", Hint{
		Meaning: "SMTP AUTH is disabled for this mailbox; it governs OAuth logins too.",
		Fix:     "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false."}},
	{535, "5.7.139", "basic authentication is disabled", Hint{
		Meaning: "Exchange refused a Basic (username and password) login. The bridge logs in with OAuth tokens only: something else logs in as the mailbox, or smtp_host is not Exchange Online's.",
		Fix:     "Check smtp_host (smtp.office365.com:587); point the device that still logs in to Exchange itself at the bridge."}},
	{535, "5.7.139", "credentials were incorrect", Hint{
		Meaning: "Exchange refused the login's credentials: the token's user is not the mailbox the bridge logs in as, or the token is not for Exchange.",
		Fix:     "Check the device's mailbox and the tenant's token_scope (https://outlook.office365.com/.default); smtpbridge doctor shows the token's audience."}},
	{535, "5.7.139", "did not meet the criteria", Hint{
		Meaning: "A Conditional Access policy refused the login (the app, the bridge's address, or the mailbox's user).",
		Fix:     "In Entra ID > Conditional Access, exclude the bridge's app (workload identity) or allow the bridge's public address; the sign-in logs name the policy."}},
	{535, "5.7.139", "security defaults", Hint{
		Meaning: "The tenant's security defaults lock the mailbox's user.",
		Fix:     "Replace security defaults with Conditional Access policies that exclude the bridge's app, or use an app credential (auth: app) rather than a user's sign-in."}},
	{535, "5.7.139", "account locked", Hint{
		Meaning: "The mailbox's user account is locked.",
		Fix:     "Unlock the account in Entra ID (or on-premises AD for a synchronised user) and find out why it was locked."}},
	{535, "5.7.139", "federated STS", Hint{
		Meaning: "Exchange could not reach the federated sign-in service (AD FS) of the mailbox's domain.",
		Fix:     "Check the federation service, or move the domain to managed authentication (password hash sync)."}},
	{535, "5.7.139", "", Hint{
		Meaning: "SMTP AUTH is disabled for the mailbox or the whole tenant; it governs OAuth logins too.",
		Fix:     "Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false (and check Get-TransportConfig | Format-List SmtpClientAuthenticationDisabled for the tenant)."}},
	{535, "5.7.3", "", Hint{
		Meaning: "Exchange refused the token: the service principal is missing in Exchange, or was created with the App Registration's object ID instead of the Enterprise Application's; or the app may not use this mailbox (no FullAccess, or no RBAC assignment); or SMTP.SendAsApp lacks admin consent.",
		Fix:     "New-ServicePrincipal -AppId <client_id> -ObjectId <Enterprise application's Object ID>; Add-MailboxPermission -Identity <mailbox> -User <service principal> -AccessRights FullAccess; in Entra, grant admin consent for SMTP.SendAsApp (smtpbridge exchange-script prints all of it)."}},
	{530, "5.7.57", "", Hint{
		Meaning: "Exchange did not take a login before MAIL FROM.",
		Fix:     "Check token_scope (https://outlook.office365.com/.default) and that smtp_host is Exchange Online; smtpbridge doctor shows the token's audience."}},
	{501, "5.5.124", "", Hint{
		Meaning: "Exchange refused the login's form; the mailbox's messages wait (the mailbox is held).",
		Fix:     "Check smtp_host (smtp.office365.com:587) and that nothing between the bridge and Exchange rewrites the connection."}},
	// Continuous-error throttling: the mailbox, not the message.
	{550, "5.2.251", "", Hint{
		Meaning: "Microsoft throttles the mailbox from SMTP AUTH for a while, for every application, after its submissions kept failing as mailbox full (continuous error throttling). Support cannot lift it; the bridge holds the mailbox's messages and probes with one at a time.",
		Fix:     "Empty the mailbox's Sent Items (Exchange keeps a copy of everything sent), then wait; smtpbridge queue retry --mailbox <mailbox> tries at once."}},
	{550, "5.2.252", "throttled", Hint{
		Meaning: "Microsoft throttles the mailbox from SMTP AUTH for a while, for every application, after its submissions kept failing for Send As (continuous error throttling). The bridge holds the mailbox's messages and probes with one at a time.",
		Fix:     "Grant the mailbox Send As for the From addresses its devices use (Add-RecipientPermission -Identity <address> -Trustee <mailbox> -AccessRights SendAs), or use from_policy: rewrite; then wait."}},
	{550, "5.2.253", "", Hint{
		Meaning: "Microsoft throttles the mailbox from SMTP AUTH for a while, for every application, after its submissions kept failing for an invalid licence (continuous error throttling).",
		Fix:     "Give the mailbox's user an Exchange Online licence (or make it a shared mailbox), then wait."}},
	{550, "5.2.254", "", Hint{
		Meaning: "Microsoft throttles the mailbox from SMTP AUTH for a while, for every application, after its submissions kept failing for too many recipients (continuous error throttling).",
		Fix:     "Keep the devices' recipients per message under Exchange's limit (500 by default; limits.max_recipients), then wait."}},
	{550, "5.2.255", "", Hint{
		Meaning: "Microsoft throttles the mailbox from SMTP AUTH for a while, for every application, after its submissions kept failing for unknown recipients (continuous error throttling).",
		Fix:     "Correct the addresses in the devices' address books (the dead letters name them), then wait."}},
	{550, "5.7.60", "", Hint{
		Meaning: "The envelope sender is not the mailbox, and the mailbox has no SendAs right for it.",
		Fix:     "Add-RecipientPermission -Identity <sender address> -Trustee <mailbox> -AccessRights SendAs, or use from_policy: rewrite so that the device sends as its mailbox."}},
	{554, "5.2.252", "", Hint{
		Meaning: "The header From is not the mailbox, and the mailbox has no SendAs right for it (SendAsDenied).",
		Fix:     "Add-RecipientPermission -Identity <From address> -Trustee <mailbox> -AccessRights SendAs, or use from_policy: rewrite."}},
	{432, "4.3.2", "", Hint{
		Meaning: "More than 3 connections for this mailbox at once (STOREDRV.ClientSubmit; sender thread limit exceeded, or Concurrent connections limit exceeded).",
		Fix:     "Keep max_connections_per_mailbox at 3 or less, and look for other clients using the same mailbox; the bridge retries."}},
	{554, "5.2.0", "SubmissionQuota", Hint{
		Meaning: "The mailbox reached Exchange Online's 10,000 recipients a day.",
		Fix:     "Spread the devices over more mailboxes, or send fewer recipients; the quota is a rolling 24 hours."}},
	{421, "4.7.66", "", Hint{
		Meaning: "Exchange refuses TLS 1.0 and 1.1 on this endpoint.",
		Fix:     "The bridge uses TLS 1.2 or newer towards Exchange; look for a TLS-intercepting proxy between the bridge and smtp.office365.com."}},
	{550, "5.7.67", "", Hint{
		Meaning: "Exchange refuses TLS 1.0 and 1.1 on this endpoint.",
		Fix:     "The bridge uses TLS 1.2 or newer towards Exchange; look for a TLS-intercepting proxy between the bridge and smtp.office365.com."}},
	{451, "4.7.0", "access token", Hint{
		Meaning: "The bridge's own reply: it could not get an access token from Entra ID for the device's tenant, so it did not reach Exchange.",
		Fix:     "The status page's tenant row and the log's token line give Entra's AADSTS code and its fix; a transient one (AADSTS90033) needs nothing: the tenant's token requests pause and the queue retries."}},
	{451, "4.7.0", "", Hint{
		Meaning: "A temporary server error at Exchange Online.",
		Fix:     "Nothing: the bridge retries. If it lasts, check the Microsoft 365 service health page."}},
	{451, "4.3.111", "", Hint{
		Meaning: "A temporary error in Exchange Online's mail store.",
		Fix:     "Nothing: the bridge retries. If it lasts, check the Microsoft 365 service health page."}},
	{451, "4.7.500", "", Hint{
		Meaning: "Exchange Online is busy and asks the bridge's address to come back later.",
		Fix:     "Nothing: the bridge retries. If it lasts, check that the bridge sends no more than Exchange's limits (the status page's quota table)."}},
	{452, "4.5.3", "", Hint{
		Meaning: "Too many recipients for one message (500 by default). The bridge sends the recipients Exchange did not take in the next transaction, never the whole message again.",
		Fix:     "Nothing for the message; keep limits.max_recipients at or under the mailbox's limit so that devices are told at once."}},
	{550, "5.7.233", "", Hint{
		Meaning: "The tenant exceeded Exchange's external recipient rate limit.",
		Fix:     "Wait for the limit to lift; check the Microsoft 365 Defender portal for a device or account sending more than it should."}},
	{554, "5.2.2", "", Hint{
		Meaning: "The sending mailbox is full: Exchange keeps a copy of each sent message in Sent Items. The bridge holds the mailbox's messages and probes with one at a time; submitting each would earn continuous error throttling (5.2.251).",
		Fix:     "Empty the mailbox's Sent Items, or give it a retention policy that deletes old items; then smtpbridge queue retry --mailbox <mailbox>."}},
	{552, "5.3.4", "", Hint{
		Meaning: "The message is larger than the mailbox's MaxSendSize (35 MB by default).",
		Fix:     "Set-Mailbox -Identity <mailbox> -MaxSendSize 150MB (up to 150 MB), or set limits.max_message_bytes to the mailbox's size so that devices are told at once."}},
	{550, "5.1.8", "", Hint{
		Meaning: "The mailbox is blocked from sending (Access denied, bad outbound sender), usually after it sent spam.",
		Fix:     "Release it under Restricted entities in the Microsoft 365 Defender portal, and find out why it was blocked."}},
	{550, "5.7.501", "", Hint{
		Meaning: "Exchange blocks the mailbox as a sender after it detected spam from it.",
		Fix:     "Release it under Restricted entities in the Microsoft 365 Defender portal, and find out why it was blocked; then smtpbridge queue retry --mailbox <mailbox>."}},
	{550, "5.7.705", "", Hint{
		Meaning: "Exchange restricts the whole tenant's outbound mail after it sent too much spam.",
		Fix:     "Open a case with Microsoft support; find the accounts that sent it."}},
	{550, "5.7.750", "", Hint{
		Meaning: "Exchange blocks the tenant from sending from domains it has not registered.",
		Fix:     "Add and verify the sending domain in the Microsoft 365 admin center, or send from a verified one."}},
	{550, "5.7.708", "", Hint{
		Meaning: "Exchange restricts the whole tenant's outbound mail (traffic not accepted from this IP or tenant).",
		Fix:     "Open a case with Microsoft support."}},
}

// aadsts are Entra ID's codes at the token endpoint.
var aadsts = map[int]Hint{
	7000215: {Meaning: "Wrong client secret.",
		Fix: "Use the secret's Value (shown once, when it was created), not its Secret ID: create a new one under App registrations > Certificates & secrets."},
	7000222: {Meaning: "The client secret has expired.",
		Fix: "Create a new secret under App registrations > Certificates & secrets, put it in the config (and client_secret_expires), and reload."},
	700016: {Meaning: "No app with this client_id in this tenant.",
		Fix: "Check client_id (the Application (client) ID) and tenant_id; for an app registered in another tenant, an admin of this one must consent to it."},
	7000229: {Meaning: "The app has no service principal (Enterprise application) in the tenant.",
		Fix: "Grant admin consent for the app in this tenant (Enterprise applications), which creates it."},
	90002: {Meaning: "Tenant not found.",
		Fix: "Use the Directory (tenant) ID or a verified domain as tenant_id, and the authority_host of the tenant's cloud."},
	700027: {Meaning: "The client certificate is not registered on the app, or the assertion is not valid.",
		Fix: "Upload the certificate's public part under App registrations > Certificates & secrets, and check that certificate_file holds the matching key."},
	50173: {Meaning: "Entra ID revoked the mailbox's sign-in: the user's password was changed or reset, or an admin revoked the sessions.",
		Fix: "Sign in again as the mailbox's user with smtpbridge tenant login; the mailbox's messages wait until then."},
	70008: {Meaning: "The mailbox's refresh token expired: it went unused for 90 days, or a sign-in frequency policy ended it.",
		Fix: "Sign in again as the mailbox's user with smtpbridge tenant login."},
	700082: {Meaning: "The mailbox's refresh token expired after a long time unused.",
		Fix: "Sign in again as the mailbox's user with smtpbridge tenant login."},
	50076: {Meaning: "A Conditional Access policy now wants multi-factor authentication for the mailbox's user.",
		Fix: "Sign in again with smtpbridge tenant login (MFA is done in the browser), or exclude the bridge's app from the policy."},
	65001: {Meaning: "Nobody consented to the app's delegated permission (SMTP.Send or Mail.Send).",
		Fix: "Add the delegated permission under API permissions and grant admin consent, then sign in again with smtpbridge tenant login."},
	7000218: {Meaning: "No credential was sent: with auth: app the tenant has none configured; with auth: delegated the app registration does not allow public client flows.",
		Fix: "auth: app: set one of client_secret, client_secret_file, certificate_file, federated_token_file, managed_identity. auth: delegated: App registrations > the app > Authentication > Allow public client flows: Yes."},
	700211: {Meaning: "The federated token's issuer matches no federated credential of the app.",
		Fix: "Add a federated credential to the app registration (Certificates & secrets > Federated credentials) with this issuer: the cluster's OIDC issuer URL (az aks show --query oidcIssuerProfile.issuerUrl), exactly."},
	700212: {Meaning: "The federated token's audience matches no federated credential of the app.",
		Fix: "Project the service account token with audience api://AzureADTokenExchange (or set that audience on the federated credential)."},
	700213: {Meaning: "The federated token's subject matches no federated credential of the app: it is another service account, or the credential names it differently (the comparison is case sensitive).",
		Fix: "Set the federated credential's subject to system:serviceaccount:<namespace>:<service account> of the bridge's pod, exactly."},
	700024: {Meaning: "The client assertion is outside its valid time.",
		Fix: "Check this host's clock (timedatectl; run NTP)."},
	1002012: {Meaning: "token_scope is not a resource followed by /.default.",
		Fix: "Set token_scope: https://outlook.office365.com/.default (national clouds differ)."},
	500011: {Meaning: "token_scope names a resource this tenant does not have.",
		Fix: "Set token_scope: https://outlook.office365.com/.default (national clouds differ), and check the tenant has Exchange Online."},
	7000112: {Meaning: "The application is disabled.",
		Fix: "Enable it under Enterprise applications > Properties > Enabled for users to sign-in."},
	53003: {Meaning: "A Conditional Access policy blocked the app.",
		Fix: "Exclude the app (workload identity) from the policy, or allow the bridge's address in it."},
	50049: {Meaning: "A transient Entra ID error.", Fix: "Nothing: the bridge retries."},
	90033: {Meaning: "A transient Entra ID error.", Fix: "Nothing: the bridge retries."},
}

var replyRE = regexp.MustCompile(`^\s*([2-5]\d\d)[ -]+([245]\.\d{1,3}\.\d{1,3})?`)

// ForReply explains an SMTP reply such as "535 5.7.3 Authentication
// unsuccessful"; nil if the table does not know it.
func ForReply(reply string) *Hint {
	m := replyRE.FindStringSubmatch(reply)
	if m == nil {
		return nil
	}
	code, _ := strconv.Atoi(m[1])
	return Match(code, m[2], reply)
}

// Match explains a reply by its code, enhanced code ("5.7.3") and text.
func Match(code int, enhanced, text string) *Hint {
	for _, e := range smtp {
		if e.code == code && e.enhanced == enhanced && strings.Contains(strings.ToLower(text), strings.ToLower(e.contains)) {
			h := e.Hint
			h.Code = e.codeText()
			return &h
		}
	}
	return nil
}

// ForAADSTS explains an Entra ID error code; nil if the table does not
// know it.
func ForAADSTS(code int) *Hint {
	h, ok := aadsts[code]
	if !ok {
		return nil
	}
	h.Code = fmt.Sprintf("AADSTS%d", code)
	return &h
}

// All returns every hint, SMTP replies first, for documentation.
func All() []Hint {
	var out []Hint
	for _, e := range smtp {
		h := e.Hint
		h.Code = e.codeText()
		out = append(out, h)
	}
	for _, code := range slices.Sorted(maps.Keys(aadsts)) {
		out = append(out, *ForAADSTS(code))
	}
	return out
}

// Markdown renders the table for the README.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| error | what it means | what fixes it |\n|---|---|---|\n")
	for _, h := range All() {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", h.Code, escape(h.Meaning), escape(h.Fix))
	}
	return b.String()
}

// escape keeps a cell one cell, and "<mailbox>" visible: Markdown would
// take it for an HTML tag.
func escape(s string) string {
	return strings.NewReplacer("|", "\\|", "<", "&lt;", ">", "&gt;").Replace(s)
}
