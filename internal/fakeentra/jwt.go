package fakeentra

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

var b64 = base64.RawURLEncoding

// signRS256 returns a compact JWS of claims signed with key.
func signRS256(key *rsa.PrivateKey, kid string, claims any) (string, error) {
	header, _ := json.Marshal(map[string]string{"typ": "JWT", "alg": "RS256", "kid": kid})
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signing := b64.EncodeToString(header) + "." + b64.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signing + "." + b64.EncodeToString(sig), nil
}

// jws is a parsed, not yet verified, compact JWS.
type jws struct {
	header  map[string]any
	payload []byte
	signing string
	sig     []byte
}

func parseJWS(token string) (*jws, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWT: want three dot-separated parts")
	}
	var j jws
	hb, err := b64.DecodeString(parts[0])
	if err != nil {
		return nil, fmt.Errorf("JWT header: %w", err)
	}
	if err := json.Unmarshal(hb, &j.header); err != nil {
		return nil, fmt.Errorf("JWT header: %w", err)
	}
	if j.payload, err = b64.DecodeString(parts[1]); err != nil {
		return nil, fmt.Errorf("JWT payload: %w", err)
	}
	if j.sig, err = b64.DecodeString(parts[2]); err != nil {
		return nil, fmt.Errorf("JWT signature: %w", err)
	}
	j.signing = parts[0] + "." + parts[1]
	return &j, nil
}

// verify checks the signature with pub for RS256 or PS256, the two
// algorithms MSAL uses for client assertions.
func (j *jws) verify(pub *rsa.PublicKey) error {
	sum := sha256.Sum256([]byte(j.signing))
	switch j.header["alg"] {
	case "RS256":
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], j.sig)
	case "PS256":
		return rsa.VerifyPSS(pub, crypto.SHA256, sum[:], j.sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	}
	return fmt.Errorf("unsupported JWT alg %v", j.header["alg"])
}
