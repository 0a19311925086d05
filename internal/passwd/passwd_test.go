package passwd

import (
	"strings"
	"testing"
)

func TestArgon2idRoundTrip(t *testing.T) {
	enc, err := NewArgon2id([]byte("s3cret pw"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enc, "$argon2id$v=19$m=7168,t=5,p=1$") {
		t.Fatalf("unexpected encoding %q", enc)
	}
	h, err := Parse(enc)
	if err != nil {
		t.Fatal(err)
	}
	if h.String() != enc {
		t.Errorf("String() = %q, want %q", h.String(), enc)
	}
	if !h.Verify([]byte("s3cret pw")) {
		t.Error("right password refused")
	}
	for _, wrong := range []string{"", "s3cret p", "s3cret pw ", "S3cret pw"} {
		if h.Verify([]byte(wrong)) {
			t.Errorf("wrong password %q accepted", wrong)
		}
	}
}

func TestBcryptRoundTrip(t *testing.T) {
	enc, err := NewBcrypt([]byte("pw"), 4)
	if err != nil {
		t.Fatal(err)
	}
	h, err := Parse(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Verify([]byte("pw")) || h.Verify([]byte("pW")) {
		t.Error("bcrypt verification wrong")
	}
	if h.Cost() != "bcrypt cost=4" {
		t.Errorf("Cost() = %q", h.Cost())
	}
	if _, err := NewBcrypt([]byte(strings.Repeat("x", 73)), 4); err == nil {
		t.Error("bcrypt accepted a 73-byte password it would silently truncate")
	}
}

// Vectors made by another implementation (the reference C argon2 CLI,
// Debian package argon2: echo -n PW | argon2 SALT -id -t T -k M -p P -l 32 -e)
// must verify, so hashes made elsewhere work in the config.
func TestArgon2idKnownVectors(t *testing.T) {
	for _, v := range []struct{ enc, pw string }{
		{"$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0MTZi$mUle6mpXVzgp2TU6O3ZuJm3/rNhyihP0xuOTLQzEhX8", "password"},
		{"$argon2id$v=19$m=19456,t=2,p=1$YW5vdGhlcnNhbHR2YWx1ZQ$fGPfBCekapcpWF+LYtdEv7W4YeqAbnYnl6PJ7KXof84", "correct horse"},
	} {
		h, err := Parse(v.enc)
		if err != nil {
			t.Fatal(err)
		}
		if !h.Verify([]byte(v.pw)) {
			t.Errorf("vector %s did not verify", v.enc)
		}
		if h.Verify([]byte(v.pw + "x")) {
			t.Errorf("vector %s verified the wrong password", v.enc)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{
		"",
		"hunter2",
		"$1$abc$def",
		"$argon2i$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=18$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=65536,t=3$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=99999999,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=65536,t=0,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=65536,t=3,p=4$!!!$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA",
		"$2a$10$tooshort",
	} {
		if h, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %v, want error", s, h)
		}
	}
}

func TestDummyHasSameCost(t *testing.T) {
	for _, mk := range []func() (string, error){
		func() (string, error) { return NewArgon2id([]byte("a")) },
		func() (string, error) { return NewBcrypt([]byte("a"), 5) },
	} {
		enc, err := mk()
		if err != nil {
			t.Fatal(err)
		}
		h, _ := Parse(enc)
		d, err := Dummy(h)
		if err != nil {
			t.Fatal(err)
		}
		if d.Cost() != h.Cost() {
			t.Errorf("dummy cost %q != %q", d.Cost(), h.Cost())
		}
		if d.String() == h.String() || d.Verify([]byte("a")) {
			t.Error("dummy hash is the real hash")
		}
	}
}
