package mailaddr

import (
	"fmt"
	"strings"
)

// Pattern matches addresses. Three forms are accepted, all case-insensitive:
//
//	contoso.com       any address at exactly that domain
//	*@contoso.com     the same, spelled as a wildcard
//	bob@partner.org   exactly that address
//
// Subdomains are not matched by a domain pattern: "contoso.com" does not
// match "bob@eu.contoso.com". List them explicitly.
type Pattern struct {
	local  string // "" matches any local part
	domain string
	// written is an exact-address pattern's address as written.
	written Address
}

// ParsePattern parses one of the forms documented on Pattern.
func ParsePattern(s string) (Pattern, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Pattern{}, fmt.Errorf("%w: empty pattern", ErrSyntax)
	}
	if !strings.Contains(s, "@") {
		if err := CheckDomain(s); err != nil {
			return Pattern{}, err
		}
		return Pattern{domain: strings.ToLower(s)}, nil
	}
	if rest, ok := strings.CutPrefix(s, "*@"); ok {
		if err := CheckDomain(rest); err != nil {
			return Pattern{}, err
		}
		return Pattern{domain: strings.ToLower(rest)}, nil
	}
	a, err := Parse(s)
	if err != nil {
		return Pattern{}, err
	}
	return Pattern{local: strings.ToLower(a.Local), domain: strings.ToLower(a.Domain), written: a}, nil
}

// Match reports whether a matches p.
func (p Pattern) Match(a Address) bool {
	if !strings.EqualFold(a.Domain, p.domain) {
		return false
	}
	return p.local == "" || strings.EqualFold(a.Local, p.local)
}

// String returns the pattern in its canonical form.
func (p Pattern) String() string {
	if p.local == "" {
		return "*@" + p.domain
	}
	return p.local + "@" + p.domain
}

// Patterns is a list of patterns; it matches when any pattern matches.
type Patterns []Pattern

// ParsePatterns parses every entry, returning the first error with the
// offending entry named.
func ParsePatterns(list []string) (Patterns, error) {
	ps := make(Patterns, 0, len(list))
	for _, s := range list {
		p, err := ParsePattern(s)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// Addresses are the exact addresses among the patterns, as written.
func (ps Patterns) Addresses() []Address {
	var out []Address
	for _, p := range ps {
		if p.local != "" {
			out = append(out, p.written)
		}
	}
	return out
}

// Match reports whether any pattern matches a. An empty list matches nothing;
// callers decide what an empty list means for their policy.
func (ps Patterns) Match(a Address) bool {
	for _, p := range ps {
		if p.Match(a) {
			return true
		}
	}
	return false
}
