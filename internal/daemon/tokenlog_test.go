package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/smtpbridge/smtpbridge/internal/syncbuf"
	"github.com/smtpbridge/smtpbridge/tokenstore"
)

// A tenant's token state is logged when it changes, not per request.
func TestTokenLog(t *testing.T) {
	out := &syncbuf.Buffer{}
	l := &tokenLog{log: zerolog.New(out)}
	transient := &tokenstore.Error{Tenant: "contoso", HTTPStatus: 503, AADSTS: 90033, Temporary: true, RetryAt: time.Now().Add(time.Minute)}
	for i := 0; i < 5; i++ {
		l.ObserveToken("contoso", tokenstore.Token{}, transient)
	}
	refused := &tokenstore.Error{Tenant: "contoso", HTTPStatus: 401, Code: "invalid_client", AADSTS: 7000215}
	l.ObserveToken("contoso", tokenstore.Token{}, refused)
	l.ObserveToken("contoso", tokenstore.Token{}, refused)
	l.ObserveToken("contoso", tokenstore.Token{}, nil)
	l.ObserveToken("contoso", tokenstore.Token{}, nil)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3 (transient, refused, recovered):\n%s", len(lines), out)
	}
	for i, want := range []string{`"level":"warn"`, `"level":"error"`, `"level":"info"`} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: %s, want %s", i, lines[i], want)
		}
	}
	if !strings.Contains(lines[0], "next_request") || !strings.Contains(lines[1], `"problem":"tenant set-up"`) {
		t.Errorf("lines:\n%s", out)
	}
}
