package tokenstore

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// FederatedClaims are what a federated token says of itself, read
// without verifying it (Entra does that), for doctor.
type FederatedClaims struct {
	Issuer, Subject string
	Audience        []string
	Expires         time.Time
}

// ReadFederatedClaims reads the token in path and decodes its claims.
func ReadFederatedClaims(path string) (FederatedClaims, error) {
	tok, err := readFederatedToken(path)
	if err != nil {
		return FederatedClaims{}, err
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return FederatedClaims{}, fmt.Errorf("federated_token_file %s does not hold a JWT", path)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return FederatedClaims{}, fmt.Errorf("federated_token_file %s: the token's claims: %w", path, err)
	}
	var c struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp int64           `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return FederatedClaims{}, fmt.Errorf("federated_token_file %s: the token's claims: %w", path, err)
	}
	out := FederatedClaims{Issuer: c.Iss, Subject: c.Sub, Expires: time.Unix(c.Exp, 0)}
	if json.Unmarshal(c.Aud, &out.Audience) != nil {
		var one string
		json.Unmarshal(c.Aud, &one)
		out.Audience = []string{one}
	}
	return out, nil
}
