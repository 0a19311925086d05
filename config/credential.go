package config

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/smtpbridge/smtpbridge/internal/secret"
)

// loadCredential checks that exactly one credential is configured, reads
// it and stores it in t.Credential.
func (l *loader) loadCredential(k string, t *Tenant) {
	set := 0
	for _, v := range []string{t.ClientSecret.Value(), t.ClientSecretFile, t.CertificateFile, t.FederatedTokenFile} {
		if v != "" {
			set++
		}
	}
	if t.ManagedIdentity != nil {
		set++
	}
	if t.Auth == AuthDelegated {
		if set != 0 {
			l.errorf(k, "auth: delegated is a public client: remove client_secret, client_secret_file, certificate_file, federated_token_file and managed_identity (each mailbox signs in with smtpbridge tenant login)")
			return
		}
		t.Credential = secret.NewDelegated()
		return
	}
	if name := l.envNames[k+".client_secret"]; set == 0 && name != "" {
		// client_secret: "${CONTOSO_SECRET}" with the variable unset
		// (said already) or set but empty (the package's secrets.env as
		// installed): say that, not that no credential is configured.
		if !l.hasProblem(k + ".client_secret") {
			l.errorf(k+".client_secret", "comes from ${%s}, which is empty: put the app's client secret (its Value, not its ID) in %s, in the environment or in secrets.env beside the config (which the service's unit reads)", name, name)
		}
		return
	}
	if set != 1 {
		l.errorf(k, "set exactly one of client_secret, client_secret_file, certificate_file, federated_token_file, managed_identity (found %d)", set)
		return
	}
	if t.CertificatePassword != "" && t.CertificateFile == "" {
		l.errorf(k+".certificate_password", "only used with certificate_file")
	}
	if t.CertificatePasswordFile != "" {
		switch {
		case t.CertificatePassword != "":
			l.errorf(k+".certificate_password_file", "set certificate_password or certificate_password_file, not both")
		case t.CertificateFile == "":
			l.errorf(k+".certificate_password_file", "only used with certificate_file")
		default:
			t.CertificatePasswordFile = l.path(t.CertificatePasswordFile)
			data, err := os.ReadFile(t.CertificatePasswordFile)
			if err != nil {
				l.errorf(k+".certificate_password_file", "%v", err)
				return
			}
			l.checkSecretFile(k+".certificate_password_file", t.CertificatePasswordFile)
			t.CertificatePassword = secret.String(strings.TrimRight(string(data), "\r\n"))
		}
	}
	l.checkSecretExpiry(k, t)
	switch {
	case t.ClientSecret != "":
		t.Credential = secret.NewClientSecret(t.ClientSecret.Value())
	case t.ManagedIdentity != nil:
		t.Credential = secret.NewManagedIdentity(t.ManagedIdentity.ClientID)
	case t.FederatedTokenFile != "":
		t.FederatedTokenFile = l.path(t.FederatedTokenFile)
		data, err := os.ReadFile(t.FederatedTokenFile)
		if err != nil {
			l.errorf(k+".federated_token_file", "%v (on Kubernetes, the projected service account token; AKS workload identity names it in AZURE_FEDERATED_TOKEN_FILE)", err)
			return
		}
		if strings.Count(strings.TrimSpace(string(data)), ".") != 2 {
			l.errorf(k+".federated_token_file", "%s does not hold a JWT (three dot-separated parts)", t.FederatedTokenFile)
			return
		}
		t.Credential = secret.NewFederatedTokenFile(t.FederatedTokenFile)
	case t.ClientSecretFile != "":
		t.ClientSecretFile = l.path(t.ClientSecretFile)
		data, err := os.ReadFile(t.ClientSecretFile)
		if err != nil {
			l.errorf(k+".client_secret_file", "%v", err)
			return
		}
		l.checkSecretFile(k+".client_secret_file", t.ClientSecretFile)
		value := strings.TrimRight(string(data), "\r\n")
		if strings.TrimSpace(value) == "" {
			l.errorf(k+".client_secret_file", "%s is empty", t.ClientSecretFile)
			return
		}
		t.Credential = secret.NewClientSecret(value)
	default:
		t.CertificateFile = l.path(t.CertificateFile)
		data, err := os.ReadFile(t.CertificateFile)
		if err != nil {
			l.errorf(k+".certificate_file", "%v", err)
			return
		}
		l.checkSecretFile(k+".certificate_file", t.CertificateFile)
		certs, key, err := ParseCertificateCredential(data, t.CertificatePassword.Value())
		if err != nil {
			l.errorf(k+".certificate_file", "%v", err)
			return
		}
		t.Credential = secret.NewCertificate(certs, key)
		switch exp := certs[0].NotAfter; {
		case now().After(exp):
			l.errorf(k+".certificate_file", "the certificate expired on %s; create a new one and upload it to the app registration (Certificates & secrets)",
				exp.Format(time.DateOnly))
		case now().Add(CredentialWarnBefore).After(exp):
			l.warnf(k+".certificate_file", "the certificate expires on %s; upload a new one to the app registration before then",
				exp.Format(time.DateOnly))
		}
	}
}

// checkSecretFile warns when a file holding a secret is readable by users
// other than its owner and group.
func (l *loader) checkSecretFile(key, path string) {
	if exposed, fix := secret.Exposed(path); exposed {
		l.warnf(key, "%s holds a secret and is readable by every user on this host; %s", path, fix)
	}
}

// checkSecretExpiry parses client_secret_expires and warns when the date
// is near or past. Past is a warning, not an error: the secret may have
// been renewed without the date being updated, and refusing to start would
// stop every tenant's mail.
func (l *loader) checkSecretExpiry(k string, t *Tenant) {
	if t.ClientSecretExpires == "" {
		return
	}
	key := k + ".client_secret_expires"
	if t.CertificateFile != "" {
		l.errorf(key, "only used with client_secret or client_secret_file; a certificate's expiry is read from the certificate")
		return
	}
	d, err := time.Parse(time.DateOnly, t.ClientSecretExpires)
	if err != nil {
		l.errorf(key, "%q is not a date; write it as YYYY-MM-DD, e.g. \"2027-06-30\" (the Expires column under Certificates & secrets)", t.ClientSecretExpires)
		return
	}
	t.SecretExpires = d.Add(24*time.Hour - time.Second)
	switch {
	case now().After(t.SecretExpires):
		l.warnf(key, "the client secret expired on %s: token requests fail with AADSTS7000222 until you create a new secret (Certificates & secrets) and update client_secret and this date",
			t.ClientSecretExpires)
	case now().Add(CredentialWarnBefore).After(t.SecretExpires):
		l.warnf(key, "the client secret expires on %s; create a new one under Certificates & secrets before then and update client_secret and this date",
			t.ClientSecretExpires)
	}
}

// ParseCertificateCredential reads an app certificate with its RSA private
// key from PEM (certificate and unencrypted key blocks) or PKCS#12 (.pfx,
// with password). The certificate matching the key comes first.
func ParseCertificateCredential(data []byte, password string) ([]*x509.Certificate, crypto.PrivateKey, error) {
	var (
		certs []*x509.Certificate
		key   crypto.PrivateKey
	)
	if bytes.Contains(data, []byte("-----BEGIN")) {
		rest := data
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			switch block.Type {
			case "CERTIFICATE":
				c, err := x509.ParseCertificate(block.Bytes)
				if err != nil {
					return nil, nil, fmt.Errorf("parse certificate: %w", err)
				}
				certs = append(certs, c)
			case "PRIVATE KEY":
				k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
				if err != nil {
					return nil, nil, fmt.Errorf("parse PKCS#8 private key: %w", err)
				}
				key = k
			case "RSA PRIVATE KEY":
				if _, enc := block.Headers["DEK-Info"]; enc {
					return nil, nil, errors.New("the private key is encrypted (legacy PEM encryption); convert to PKCS#12 with " +
						"`openssl pkcs12 -export -in app.pem -out app.pfx` and set certificate_password, or remove the passphrase")
				}
				k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
				if err != nil {
					return nil, nil, fmt.Errorf("parse RSA private key: %w", err)
				}
				key = k
			case "ENCRYPTED PRIVATE KEY":
				return nil, nil, errors.New("the private key is encrypted; convert to PKCS#12 with " +
					"`openssl pkcs12 -export -in app.pem -out app.pfx` and set certificate_password, or remove the passphrase")
			}
		}
	} else {
		k, leaf, chain, err := pkcs12.DecodeChain(data, password)
		if err != nil {
			if errors.Is(err, pkcs12.ErrIncorrectPassword) {
				return nil, nil, errors.New("PKCS#12 file: wrong certificate_password")
			}
			return nil, nil, fmt.Errorf("not a PEM file, and reading it as PKCS#12 failed: %w", err)
		}
		key = k
		certs = append([]*x509.Certificate{leaf}, chain...)
	}
	if len(certs) == 0 {
		return nil, nil, errors.New("no certificate found (want PEM with a CERTIFICATE block, or PKCS#12)")
	}
	if key == nil {
		return nil, nil, errors.New("no private key found; the file must hold both the certificate and its key")
	}
	rsaKey, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("the private key is %T; Entra client assertions here need an RSA key", key)
	}
	// Put the certificate that matches the key first.
	for i, c := range certs {
		if pub, ok := c.PublicKey.(*rsa.PublicKey); ok && pub.Equal(&rsaKey.PublicKey) {
			certs[0], certs[i] = certs[i], certs[0]
			return certs, rsaKey, nil
		}
	}
	return nil, nil, errors.New("the private key does not belong to any certificate in the file")
}

// hasProblem says whether key has a problem already (an unset ${VAR}).
func (l *loader) hasProblem(key string) bool {
	for _, p := range l.problems {
		if p.Key == key {
			return true
		}
	}
	return false
}
