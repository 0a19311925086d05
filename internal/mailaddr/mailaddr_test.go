package mailaddr

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Address
		wantErr bool
	}{
		{in: "bob@contoso.com", want: Address{"bob", "contoso.com"}},
		{in: "Bob.Smith+scan@Contoso.COM", want: Address{"Bob.Smith+scan", "Contoso.COM"}},
		{in: "o'brien@x-y.example", want: Address{"o'brien", "x-y.example"}},
		{in: "printer@localhost", want: Address{"printer", "localhost"}},
		{in: "", wantErr: true},
		{in: "bob", wantErr: true},
		{in: "@contoso.com", wantErr: true},
		{in: "bob@", wantErr: true},
		{in: ".bob@contoso.com", wantErr: true},
		{in: "bob.@contoso.com", wantErr: true},
		{in: "b..ob@contoso.com", wantErr: true},
		{in: "bob%evil.com@contoso.com", wantErr: true},
		{in: "evil.com!bob@contoso.com", wantErr: true},
		{in: "bob@evil@contoso.com", wantErr: true},
		{in: "bob smith@contoso.com", wantErr: true},
		{in: "bob\r\nBcc: x@y.z@contoso.com", wantErr: true},
		{in: "bob\x00@contoso.com", wantErr: true},
		{in: "bob@[192.0.2.1]", wantErr: true},
		{in: "bob@-contoso.com", wantErr: true},
		{in: "bob@contoso..com", wantErr: true},
		{in: "bob@contoso.com.", wantErr: true},
		{in: "bøb@contoso.com", wantErr: true},
		{in: strings.Repeat("a", 65) + "@contoso.com", wantErr: true},
		{in: "a@" + strings.Repeat("b", 64) + ".com", wantErr: true},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("Parse(%q) = %v, want error", tt.in, got)
			} else if !errors.Is(err, ErrSyntax) {
				t.Errorf("Parse(%q) error %v is not ErrSyntax", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pattern string
		addr    string
		want    bool
	}{
		{"contoso.com", "bob@contoso.com", true},
		{"contoso.com", "BOB@CONTOSO.COM", true},
		{"contoso.com", "bob@eu.contoso.com", false},
		{"contoso.com", "bob@contoso.com.evil.org", false},
		{"contoso.com", "bob@notcontoso.com", false},
		{"*@contoso.com", "alice@contoso.com", true},
		{"*@contoso.com", "alice@partner.org", false},
		{"bob@partner.org", "bob@partner.org", true},
		{"bob@partner.org", "Bob@Partner.org", true},
		{"bob@partner.org", "alice@partner.org", false},
		{"bob@partner.org", "bob@partner.org.evil", false},
	}
	for _, tt := range tests {
		p, err := ParsePattern(tt.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", tt.pattern, err)
		}
		a, err := Parse(tt.addr)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.addr, err)
		}
		if got := p.Match(a); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.pattern, tt.addr, got, tt.want)
		}
	}
}

func TestParsePatternErrors(t *testing.T) {
	for _, in := range []string{"", "*", "*@", "@", "*.contoso.com", "bob@", "a b.com", "*@*.com", "bob%x@contoso.com"} {
		if p, err := ParsePattern(in); err == nil {
			t.Errorf("ParsePattern(%q) = %v, want error", in, p)
		}
	}
}

func TestPatternsMatch(t *testing.T) {
	ps, err := ParsePatterns([]string{"contoso.com", "bob@partner.org"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"x@contoso.com":     true,
		"bob@partner.org":   true,
		"alice@partner.org": false,
		"x@fabrikam.com":    false,
	} {
		a, _ := Parse(addr)
		if got := ps.Match(a); got != want {
			t.Errorf("Match(%q) = %v, want %v", addr, got, want)
		}
	}
	if (Patterns{}).Match(Address{"x", "contoso.com"}) {
		t.Error("empty Patterns matched")
	}
	if _, err := ParsePatterns([]string{"ok.com", "bad pattern"}); err == nil || !strings.Contains(err.Error(), "bad pattern") {
		t.Errorf("ParsePatterns error %v does not name the bad entry", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"bob@contoso.com", "a%b@c", "\"q\"@x.y", "@a:b@c", "x@[1.2.3.4]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever is accepted must round-trip and carry nothing that could
		// end an SMTP line or a header.
		if a.String() != s {
			t.Fatalf("round trip %q -> %q", s, a.String())
		}
		if strings.ContainsAny(s, "\r\n\x00 <>\"%!") {
			t.Fatalf("accepted unsafe address %q", s)
		}
		if strings.Count(s, "@") != 1 {
			t.Fatalf("accepted address with %d @: %q", strings.Count(s, "@"), s)
		}
	})
}

// FuzzPattern: a recipient pattern never matches an address at another
// domain, a wildcard never matches a subdomain, and an exact pattern
// matches only its own address; whatever the pattern and the address.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"contoso.com", "bob@contoso.com"}, {"*@contoso.com", "bob@eu.contoso.com"}, {"bob@partner.org", "BOB@Partner.org"},
		{"contoso.com", "bob@contoso.com.evil.example"}, {"*@*", "a@b"}, {" contoso.com ", "x@contoso.com"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pat, addr string) {
		p, err := ParsePattern(pat)
		if err != nil {
			return
		}
		a, err := Parse(addr)
		if err != nil {
			return
		}
		// The canonical form parses back to a pattern that matches the
		// same (an exact address keeps its spelling as written too).
		if q, err := ParsePattern(p.String()); err != nil || q.local != p.local || q.domain != p.domain {
			t.Fatalf("pattern %q -> %q does not parse back (%v)", pat, p.String(), err)
		}
		if !p.Match(a) {
			return
		}
		if !strings.EqualFold(a.Domain, p.domain) {
			t.Fatalf("%q matched %q at another domain", pat, addr)
		}
		if p.local != "" && !strings.EqualFold(a.Local, p.local) {
			t.Fatalf("exact pattern %q matched %q", pat, addr)
		}
		if !Patterns([]Pattern{p}).Match(a) {
			t.Fatalf("a list of %q does not match what %q matches", pat, pat)
		}
	})
}

// Addresses are a list's exact addresses, spelled as written; domain
// patterns are not addresses.
func TestPatternsAddresses(t *testing.T) {
	ps, err := ParsePatterns([]string{"Billing@Contoso.com", "contoso.com", "*@fabrikam.com", "o'brien@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range ps.Addresses() {
		got = append(got, a.String())
	}
	if strings.Join(got, " ") != "Billing@Contoso.com o'brien@contoso.com" {
		t.Errorf("Addresses() = %q", got)
	}
}
