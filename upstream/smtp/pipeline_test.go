package smtp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/fakeexchange"
	"github.com/smtpbridge/smtpbridge/message"
	"github.com/smtpbridge/smtpbridge/upstream"
)

// turnWindow is the slack between the writes of one flight that the fake
// Exchange still counts as one: far above what one flight's writes take,
// even on a busy machine, and every counted turn waits as long.
const turnWindow = 60 * time.Millisecond

// bodyMsg is a message with the given body, to recipients.
func bodyMsg(body string, to ...string) *message.Message {
	m := msg("", to...)
	m.Size, m.Body = int64(len(body)), strings.NewReader(body)
	return m
}

// sized is a message body of about n bytes, ending as end says.
func sized(n int, end string) string {
	var b strings.Builder
	b.WriteString("From: <" + mailbox + ">\r\nSubject: sized\r\n\r\n")
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for b.Len()+len(line) <= n-len(end) {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("z", max(0, n-len(end)-b.Len())))
	b.WriteString(end)
	return b.String()
}

func withIgnored(t *testing.T, ext ...string) {
	t.Helper()
	old := ignoredExtensions
	ignoredExtensions = ext
	t.Cleanup(func() { ignoredExtensions = old })
}

// Exchange Online offers PIPELINING and CHUNKING: on a warm connection a
// message is one flight, RSET, MAIL, the RCPTs and BDAT LAST with the
// body, and costs one round trip; with DATA only it costs two, and a
// server that offers neither gets a command at a time. The fake Exchange
// counts the round trips and records the commands' order; the message
// arrives byte for byte.
func TestRoundTripsPerMessage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ignored []string
		warm    int // round trips on a warm connection, one recipient
		three   int // the same with three recipients
	}{
		{"PIPELINING and CHUNKING", nil, 1, 1},
		{"PIPELINING, DATA", []string{"CHUNKING"}, 2, 2},
		{"CHUNKING only", []string{"PIPELINING"}, 4, 6},
		{"neither", []string{"PIPELINING", "CHUNKING"}, 5, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withIgnored(t, tc.ignored...)
			r := newRig(t, upstream.Limits{Connections: 1, PerMinute: 1000})
			r.w.Exchange.CountRoundTrips(turnWindow)
			bodies := []string{sized(4096, "\r\n"), sized(4096, "\r\n"), sized(4096, "no final line break")}
			for i, b := range bodies {
				to := []string{"bob@contoso.example"}
				if i == 2 {
					to = []string{"a@contoso.example", "b@contoso.example", "c@contoso.example"}
				}
				if _, err := r.tr.Deliver(context.Background(), bodyMsg(b, to...)); err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
			}
			got := r.w.Exchange.Messages()
			if len(got) != 3 || r.w.Exchange.AuthLogins() != 1 {
				t.Fatalf("%d messages over %d logins, want 3 over 1", len(got), r.w.Exchange.AuthLogins())
			}
			wantCmds := [][]string{{"MAIL", "RCPT", "DATA"}, {"RSET", "MAIL", "RCPT", "DATA"}, {"RSET", "MAIL", "RCPT", "RCPT", "RCPT", "DATA"}}
			wantTrips := []int{tc.warm, tc.warm, tc.three}
			if !slices.Contains(tc.ignored, "PIPELINING") {
				wantTrips[0] = tc.warm // no RSET on a fresh connection, and nothing waits for it
			} else {
				wantTrips[0] = tc.warm - 1
			}
			for i, m := range got {
				if !slices.Equal(m.Commands, wantCmds[i]) {
					t.Errorf("message %d: commands %v, want %v", i, m.Commands, wantCmds[i])
				}
				if m.RoundTrips != wantTrips[i] {
					t.Errorf("message %d: %d round trips, want %d", i, m.RoundTrips, wantTrips[i])
				}
				want := bodies[i]
				if !strings.HasSuffix(want, "\r\n") {
					want += "\r\n"
				}
				if m.SHA256 != sha256.Sum256([]byte(want)) {
					t.Errorf("message %d arrived changed:\n%q", i, tail(m.Data))
				}
			}
		})
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-80):] }

// A body larger than a chunk goes in chunks: the first with the
// envelope, the rest once the envelope is answered, pipelined: two round
// trips, however large. Bodies of exactly a chunk, or one byte more,
// arrive whole.
func TestLargeBodyInChunks(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 1, PerMinute: 1000})
	// A chunk goes in several TLS records, written one after the other:
	// more slack between them than a small flight's single write needs.
	r.w.Exchange.CountRoundTrips(4 * turnWindow)
	bodies := []string{sized(chunkSize-2, "\r\n"), sized(chunkSize-1, "\r\n"), sized(3*chunkSize+100, "\r\n"), sized(2*chunkSize-2, "end")}
	for i, b := range bodies {
		if _, err := r.tr.Deliver(context.Background(), bodyMsg(b)); err != nil {
			t.Fatalf("body %d (%d bytes): %v", i, len(b), err)
		}
	}
	for i, m := range r.w.Exchange.Messages() {
		want := bodies[i]
		if !strings.HasSuffix(want, "\r\n") {
			want += "\r\n"
		}
		if m.SHA256 != sha256.Sum256([]byte(want)) || m.Size != int64(len(want)) {
			t.Errorf("body %d: %d bytes arrived, want %d, or changed", i, m.Size, len(want))
		}
		if m.RoundTrips != 2 {
			t.Errorf("body %d (%d bytes): %d round trips, want 2", i, len(want), m.RoundTrips)
		}
	}
}

// A message for all its recipients or none (sync mode) holds its body
// until every RCPT is answered: with one refused, nothing goes, and the
// connection serves the next message.
func TestAllRecipientsHoldsTheBody(t *testing.T) {
	r := newRig(t, upstream.Limits{Connections: 1, PerMinute: 1000})
	r.w.Exchange.CountRoundTrips(turnWindow)
	r.w.Exchange.RefuseRecipient("gone@contoso.example", fakeexchange.Reply{Code: 550, Enhanced: [3]int{5, 1, 10}, Text: "RESOLVER.ADR.RecipientNotFound"})
	m := msg("all or none", "bob@contoso.example", "gone@contoso.example")
	m.AllRecipients = true
	rc, err := r.tr.Deliver(context.Background(), m)
	if err == nil || len(rc.Accepted) != 0 || len(rc.Refused) != 1 || rc.Refused[0].Recipient != "gone@contoso.example" {
		t.Fatalf("receipt %+v, err %v; want gone@ refused and nothing sent", rc, err)
	}
	m = msg("all of them", "bob@contoso.example", "alice@contoso.example")
	m.AllRecipients = true
	if _, err := r.tr.Deliver(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	got := r.w.Exchange.Messages()
	if len(got) != 1 || r.w.Exchange.AuthLogins() != 1 {
		t.Fatalf("%d messages over %d logins, want 1 over 1", len(got), r.w.Exchange.AuthLogins())
	}
	if got[0].RoundTrips != 2 {
		t.Errorf("%d round trips, want 2 (the envelope, then the body)", got[0].RoundTrips)
	}
}

// Exchange closing an idle connection is found by the RSET that opens
// the next flight; the message goes again, whole, on a new connection.
func TestStaleConnectionResends(t *testing.T) {
	for _, ignored := range [][]string{nil, {"CHUNKING"}} {
		t.Run(fmt.Sprint(ignored), func(t *testing.T) {
			withIgnored(t, ignored...)
			r := newRig(t, upstream.Limits{Connections: 1, PerMinute: 1000})
			if _, err := r.tr.Deliver(context.Background(), msg("first")); err != nil {
				t.Fatal(err)
			}
			r.w.Exchange.DropConnections()
			body := sized(chunkSize+5000, "\r\n")
			if _, err := r.tr.Deliver(context.Background(), bodyMsg(body)); err != nil {
				t.Fatalf("after Exchange dropped the idle connection: %v", err)
			}
			got := r.w.Exchange.Messages()
			if len(got) != 2 || got[1].SHA256 != sha256.Sum256([]byte(body)) {
				t.Fatalf("%d messages; the second changed: %v", len(got), len(got) == 2 && !bytes.Equal(got[1].Data, []byte(body)))
			}
			if n := r.w.Exchange.AuthLogins(); n != 2 {
				t.Errorf("%d logins, want 2", n)
			}
		})
	}
}
