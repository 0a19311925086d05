package tokenstore

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	msalerrors "github.com/AzureAD/microsoft-authentication-library-for-go/apps/errors"

	"github.com/smtpbridge/smtpbridge/hints"
)

// Error is a failed token request. It holds only what Entra said and what
// the bridge saw on the network; never the request, which carries the
// client secret or assertion.
type Error struct {
	Tenant string
	// Mailbox is the signed-in mailbox of a delegated tenant; "" for an
	// app's token.
	Mailbox       string
	HTTPStatus    int    // 0 when no HTTP answer came back
	Code          string // OAuth error, e.g. "invalid_client"
	AADSTS        int    // e.g. 7000215; 0 when unknown
	Description   string // Entra's error_description, first sentence(s)
	CorrelationID string
	// Temporary is true for failures that may go away by themselves
	// (network, timeouts, 5xx, throttling, Entra's transient codes).
	Temporary bool
	// RetryAt is when the tenant's pause after this failure ends: no
	// request goes to Entra before.
	RetryAt time.Time
	// SignIn is true when only a person signing in again for Mailbox
	// helps (smtpbridge tenant login): no sign-in stored, or Entra
	// refused the refresh token (revoked, expired, a password reset).
	SignIn bool
	// remembered: a sign-in refusal given again without asking Entra
	// (signInState); no new token request, for the metrics.
	remembered bool
	cause      string // network-level cause, already free of secrets
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "token for tenant %s: ", e.Tenant)
	if e.Mailbox != "" {
		fmt.Fprintf(&b, "mailbox %s: ", e.Mailbox)
	}
	switch {
	case e.AADSTS != 0:
		fmt.Fprintf(&b, "Entra ID refused: AADSTS%d %s", e.AADSTS, e.Code)
		if e.Description != "" {
			b.WriteString(": " + e.Description)
		}
	case e.HTTPStatus != 0:
		fmt.Fprintf(&b, "Entra ID answered HTTP %d", e.HTTPStatus)
		if e.Code != "" {
			b.WriteString(" " + e.Code)
		}
	default:
		b.WriteString(e.cause)
	}
	if hint := e.Hint(); hint != "" {
		b.WriteString(" (" + hint + ")")
	}
	if e.SignIn {
		fmt.Fprintf(&b, "; the mailbox's messages wait until someone signs in for it again: %s", e.LoginCommand())
	}
	return b.String()
}

// LoginCommand is the command that signs the mailbox in again.
func (e *Error) LoginCommand() string {
	return fmt.Sprintf("smtpbridge tenant login --tenant %s --mailbox %s", e.Tenant, e.Mailbox)
}

// transientAADSTS are codes Entra documents as temporary.
var transientAADSTS = map[int]bool{50049: true, 90033: true}

// Hint returns what the error means and what an admin should do about it,
// or "".
func (e *Error) Hint() string {
	if h := hints.ForAADSTS(e.AADSTS); h != nil {
		return h.Meaning + " " + h.Fix
	}
	return ""
}

var aadstsRE = regexp.MustCompile(`AADSTS(\d+)`)

// classify turns an MSAL error into an *Error without keeping the MSAL
// error itself: msalerrors.CallErr holds the HTTP request, body included.
func classify(t Tenant, err error) *Error {
	e := &Error{Tenant: t.Name}
	if errors.Is(err, errNotSignedIn) {
		e.SignIn, e.cause = true, err.Error()
		return e
	}
	var call msalerrors.CallErr
	if errors.As(err, &call) && call.Resp != nil {
		e.HTTPStatus = call.Resp.StatusCode
		var body struct {
			Error         string `json:"error"`
			Description   string `json:"error_description"`
			Codes         []int  `json:"error_codes"`
			CorrelationID string `json:"correlation_id"`
		}
		if call.Resp.Body != nil {
			data, _ := io.ReadAll(io.LimitReader(call.Resp.Body, 64<<10))
			_ = json.Unmarshal(data, &body)
		}
		e.Code = body.Error
		e.CorrelationID = body.CorrelationID
		e.Description = trimDescription(body.Description)
		if len(body.Codes) > 0 {
			e.AADSTS = body.Codes[0]
		} else if m := aadstsRE.FindStringSubmatch(body.Description); m != nil {
			fmt.Sscan(m[1], &e.AADSTS)
		}
		e.Temporary = e.HTTPStatus >= 500 || e.HTTPStatus == 429 || e.HTTPStatus == 408 ||
			transientAADSTS[e.AADSTS] || body.Error == "temporarily_unavailable"
		return e
	}
	e.Temporary = true
	e.cause = networkCause(err)
	return e
}

// trimDescription drops the "AADSTSnnn: " prefix and the trace trailer.
func trimDescription(d string) string {
	d = aadstsRE.ReplaceAllString(d, "")
	d = strings.TrimLeft(d, ": ")
	if i := strings.Index(d, " Trace ID:"); i >= 0 {
		d = d[:i]
	}
	if i := strings.IndexAny(d, "\r\n"); i >= 0 {
		d = d[:i]
	}
	if len(d) > 300 {
		d = d[:300] + "..."
	}
	return d
}

// networkCause describes a failure that got no HTTP answer. These errors
// come from net/http and crypto/tls and name the URL, never the form body.
func networkCause(err error) string {
	var (
		unknownAuth x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		certInvalid x509.CertificateInvalidError
		recordErr   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &unknownAuth), errors.As(err, &hostErr), errors.As(err, &certInvalid):
		return "the authority's TLS certificate is not trusted (" + firstLine(err) + "); for a private issuer set SSL_CERT_FILE"
	case errors.As(err, &recordErr):
		return "the authority does not speak TLS: " + firstLine(err)
	}
	return "Entra ID not reachable: " + firstLine(err)
}

func firstLine(err error) string {
	s := err.Error()
	s = strings.ReplaceAll(s, "server response error:\n ", "")
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}
