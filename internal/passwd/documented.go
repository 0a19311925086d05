package passwd

import "crypto/subtle"

// The passwords the project's documentation shows: the sandbox device's,
// printed in the README and the examples. Anyone may know them, so no
// real device may have one: hash-password warns, check-config refuses a
// device whose hash verifies one, and the bridge refuses a login with one
// outside sandbox mode.
var documented = []string{"scan-to-mail"}

// documentedHashes are hashes of documented passwords that the project
// ships (the examples, the Helm chart's values until 2026-12): found by
// their text, at no cost, wherever a config is loaded. A test keeps the
// list in step with the repository.
var documentedHashes = map[string]bool{
	"$argon2id$v=19$m=7168,t=5,p=1$yApTCPw9fmA3WY9HgO+e5g$AVeYUj6c5M/zt46EsuRgKZfgOaMc/lUk19HBOIaAWBQ": true,
}

// Documented is the list of documented passwords, for messages.
func Documented() []string { return append([]string(nil), documented...) }

// IsDocumented says whether password is one the documentation shows, in
// time that does not depend on the password.
func IsDocumented(password []byte) bool {
	found := 0
	for _, d := range documented {
		found |= subtle.ConstantTimeCompare(password, []byte(d))
	}
	return found == 1
}

// IsDocumentedHash says whether the encoded hash is one the project
// ships for a documented password.
func IsDocumentedHash(encoded string) bool { return documentedHashes[encoded] }

// VerifiesDocumented says whether h verifies a documented password: one
// hash check per documented password (tens of milliseconds for argon2id).
func VerifiesDocumented(h Hash) bool {
	if IsDocumentedHash(h.String()) {
		return true
	}
	for _, d := range documented {
		if h.Verify([]byte(d)) {
			return true
		}
	}
	return false
}
