// Package mailaddr parses the envelope addresses and address patterns that
// smtpbridge checks devices against.
//
// It is strict on purpose: an address a policy cannot reason about (a quoted
// local part, an address literal, a "%" or "!" routing hack, non-ASCII) is
// refused rather than guessed at, so that what the policy matched is exactly
// what Exchange Online receives. It must never accept an address whose
// domain could be read two ways.
package mailaddr

import (
	"errors"
	"fmt"
	"strings"
)

// Address is a mailbox in dot-atom form (RFC 5321 section 4.1.2).
type Address struct {
	Local  string
	Domain string
}

// String returns the address as local@domain.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// Equal reports whether a and b name the same mailbox. Exchange Online
// treats both parts case-insensitively.
func (a Address) Equal(b Address) bool {
	return strings.EqualFold(a.Local, b.Local) && strings.EqualFold(a.Domain, b.Domain)
}

// Limits from RFC 5321 section 4.5.3.1.
const (
	maxLocal  = 64
	maxDomain = 253
	maxPath   = 254
)

// Errors returned by Parse, for errors.Is.
var (
	ErrSyntax = errors.New("invalid address")
)

// Parse parses local@domain. The local part must be a dot-atom without the
// routing characters "%" and "!"; the domain must be a host name.
func Parse(s string) (Address, error) {
	if len(s) > maxPath {
		return Address{}, fmt.Errorf("%w: longer than %d characters", ErrSyntax, maxPath)
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return Address{}, fmt.Errorf("%w: no @", ErrSyntax)
	}
	local, domain := s[:at], s[at+1:]
	if err := checkLocal(local); err != nil {
		return Address{}, err
	}
	if err := CheckDomain(domain); err != nil {
		return Address{}, err
	}
	return Address{Local: local, Domain: domain}, nil
}

func checkLocal(local string) error {
	if local == "" {
		return fmt.Errorf("%w: empty local part", ErrSyntax)
	}
	if len(local) > maxLocal {
		return fmt.Errorf("%w: local part longer than %d characters", ErrSyntax, maxLocal)
	}
	if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") {
		return fmt.Errorf("%w: misplaced dot in local part", ErrSyntax)
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		switch {
		case c == '%' || c == '!':
			return fmt.Errorf("%w: routing character %q in local part", ErrSyntax, c)
		case c == '.' || isAtext(c):
		default:
			return fmt.Errorf("%w: character %q not allowed in local part", ErrSyntax, c)
		}
	}
	return nil
}

// isAtext reports whether c is an RFC 5322 atext character.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("#$&'*+-/=?^_`{|}~", c) >= 0
}

// CheckDomain reports whether d is a syntactically valid host name.
func CheckDomain(d string) error {
	if d == "" {
		return fmt.Errorf("%w: empty domain", ErrSyntax)
	}
	if len(d) > maxDomain {
		return fmt.Errorf("%w: domain longer than %d characters", ErrSyntax, maxDomain)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%w: bad domain label in %q", ErrSyntax, d)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%w: domain label starts or ends with '-' in %q", ErrSyntax, d)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("%w: character %q not allowed in domain", ErrSyntax, c)
			}
		}
	}
	return nil
}

// MustParse is Parse for addresses known to be valid, such as literals
// in tests; it panics on an error.
func MustParse(s string) Address {
	a, err := Parse(s)
	if err != nil {
		panic(fmt.Sprintf("mailaddr.MustParse(%q): %v", s, err))
	}
	return a
}
