// Package passwd hashes and verifies device passwords.
//
// Two formats are understood: bcrypt ($2a$, $2b$, $2y$) and argon2id in the
// PHC string format ($argon2id$v=19$m=...,t=...,p=...$salt$hash). It never
// keeps, logs or returns a plaintext password.
package passwd

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Hash is a parsed password hash.
type Hash interface {
	// Verify reports whether password matches the hash, in time that does
	// not depend on where the two differ.
	Verify(password []byte) bool
	// Cost describes the algorithm and its work factors, without the salt
	// or digest: two hashes with the same Cost take the same time to verify.
	Cost() string
	// String returns the encoded hash, as it appears in the config.
	String() string
}

// ErrFormat is returned by Parse for a string that is neither bcrypt nor
// argon2id.
var ErrFormat = errors.New("not a bcrypt ($2a$, $2b$, $2y$) or argon2id ($argon2id$...) hash")

// Parse parses an encoded hash.
func Parse(s string) (Hash, error) {
	switch {
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		cost, err := bcrypt.Cost([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("bcrypt hash: %w", err)
		}
		return bcryptHash{encoded: s, cost: cost}, nil
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon2id(s)
	case strings.HasPrefix(s, "$argon2i$"), strings.HasPrefix(s, "$argon2d$"):
		return nil, fmt.Errorf("only argon2id is supported, not %s", strings.Split(s, "$")[1])
	}
	return nil, ErrFormat
}

// Dummy returns a hash with the same algorithm and cost as h, of a random
// password nobody knows. Verifying against it costs what verifying against
// h costs, so an unknown user takes as long as a wrong password.
func Dummy(h Hash) (Hash, error) {
	random := make([]byte, 24)
	if _, err := rand.Read(random); err != nil {
		return nil, err
	}
	parsed, err := Parse(h.String())
	if err != nil {
		return nil, fmt.Errorf("passwd: dummy of %s: %w", h.Cost(), err)
	}
	switch h := parsed.(type) {
	case bcryptHash:
		enc, err := bcrypt.GenerateFromPassword(random, h.cost)
		if err != nil {
			return nil, err
		}
		return bcryptHash{encoded: string(enc), cost: h.cost}, nil
	case argon2idHash:
		p := h.params
		p.salt = make([]byte, len(h.params.salt))
		if _, err := rand.Read(p.salt); err != nil {
			return nil, err
		}
		p.key = argon2.IDKey(random, p.salt, p.time, p.memory, p.threads, uint32(len(h.params.key)))
		return argon2idHash{params: p}, nil
	}
	return nil, fmt.Errorf("passwd: unknown hash type %T", h)
}

type bcryptHash struct {
	encoded string
	cost    int
}

func (h bcryptHash) Verify(pw []byte) bool {
	return bcrypt.CompareHashAndPassword([]byte(h.encoded), pw) == nil
}
func (h bcryptHash) Cost() string   { return "bcrypt cost=" + strconv.Itoa(h.cost) }
func (h bcryptHash) String() string { return h.encoded }

// Argon2id parameters used by NewArgon2id: OWASP's recommended
// configuration with the least memory (7 MiB, 5 passes, 1 lane), of the
// same strength as its 19 MiB, 2 passes. Memory is per verification in
// flight, so it is kept small on purpose: a burst of logins in a
// container with a 128 MiB limit must not exhaust it. Hashes made with
// other parameters (the 19 MiB, 2 passes of earlier versions) stay valid:
// each hash carries its own.
const (
	DefaultArgonMemory  = 7 * 1024
	DefaultArgonTime    = 5
	DefaultArgonThreads = 1
	argonSaltLen        = 16
	argonKeyLen         = 32
	// maxArgonMemory caps m= in a configured hash (KiB): a typo must not let
	// every login allocate gigabytes.
	maxArgonMemory = 1 << 20
	maxArgonTime   = 64
)

// DefaultBcryptCost is the cost used by NewBcrypt.
const DefaultBcryptCost = 12

type argon2idParams struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

type argon2idHash struct{ params argon2idParams }

func (h argon2idHash) Verify(pw []byte) bool {
	p := h.params
	got := argon2.IDKey(pw, p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(got, p.key) == 1
}

func (h argon2idHash) Cost() string {
	p := h.params
	return fmt.Sprintf("argon2id m=%d,t=%d,p=%d,len=%d", p.memory, p.time, p.threads, len(p.key))
}

func (h argon2idHash) String() string {
	p := h.params
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.memory, p.time, p.threads,
		enc.EncodeToString(p.salt), enc.EncodeToString(p.key))
}

func parseArgon2id(s string) (Hash, error) {
	parts := strings.Split(s, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(parts) != 6 {
		return nil, errors.New("argon2id hash: want $argon2id$v=19$m=...,t=...,p=...$salt$hash")
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return nil, fmt.Errorf("argon2id hash: unsupported version %q (want v=%d)", parts[2], argon2.Version)
	}
	var p argon2idParams
	seen := map[string]bool{}
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("argon2id hash: bad parameter %q", kv)
		}
		switch k {
		case "m":
			p.memory = uint32(n)
		case "t":
			p.time = uint32(n)
		case "p":
			if n > 255 {
				return nil, fmt.Errorf("argon2id hash: p=%d too large", n)
			}
			p.threads = uint8(n)
		default:
			return nil, fmt.Errorf("argon2id hash: unknown parameter %q", k)
		}
		seen[k] = true
	}
	if !seen["m"] || !seen["t"] || !seen["p"] {
		return nil, errors.New("argon2id hash: m, t and p are all required")
	}
	switch {
	case p.time < 1 || p.time > maxArgonTime:
		return nil, fmt.Errorf("argon2id hash: t=%d out of range 1..%d", p.time, maxArgonTime)
	case p.threads < 1:
		return nil, errors.New("argon2id hash: p must be at least 1")
	case p.memory < 8*uint32(p.threads) || p.memory > maxArgonMemory:
		return nil, fmt.Errorf("argon2id hash: m=%d KiB out of range %d..%d", p.memory, 8*uint32(p.threads), maxArgonMemory)
	}
	var err error
	if p.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(p.salt) < 8 {
		return nil, errors.New("argon2id hash: salt must be unpadded base64 of at least 8 bytes")
	}
	if p.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(p.key) < 16 {
		return nil, errors.New("argon2id hash: digest must be unpadded base64 of at least 16 bytes")
	}
	return argon2idHash{params: p}, nil
}

// NewArgon2id hashes password with argon2id and the default parameters.
func NewArgon2id(password []byte) (string, error) {
	p := argon2idParams{memory: DefaultArgonMemory, time: DefaultArgonTime, threads: DefaultArgonThreads,
		salt: make([]byte, argonSaltLen)}
	if _, err := rand.Read(p.salt); err != nil {
		return "", err
	}
	p.key = argon2.IDKey(password, p.salt, p.time, p.memory, p.threads, argonKeyLen)
	return argon2idHash{params: p}.String(), nil
}

// NewBcrypt hashes password with bcrypt at the given cost. bcrypt only
// looks at the first 72 bytes, so longer passwords are refused.
func NewBcrypt(password []byte, cost int) (string, error) {
	if len(password) > 72 {
		return "", errors.New("bcrypt only uses the first 72 bytes of a password; use argon2id for longer ones")
	}
	enc, err := bcrypt.GenerateFromPassword(password, cost)
	if err != nil {
		return "", err
	}
	return string(enc), nil
}
