package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smtpbridge/smtpbridge/internal/durable"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
)

const tlsCertUsage = `Usage: smtpbridge tls-cert --host NAME [--host NAME2 ...] [--ip ADDR ...] [--days N] [--ca] --out DIR

Make the certificate a listener with tls: starttls or implicit needs, for
a LAN without a PKI: DIR/NAME.key (an RSA 2048 private key, which every
printer's TLS stack takes, TLS 1.0 with RSA key exchange included) and
DIR/NAME.crt (self-signed, for the names and addresses devices use).
With --ca, also DIR/NAME-ca.crt, a small CA that signed it, for the few
devices that want to trust a CA rather than pin a certificate. It prints
the listener settings and the fingerprint to check or pin on a device.
Existing files are never overwritten.

Flags:
`

// Bounds of tls-cert: printers refuse certificates valid for too long or
// from the future; 825 days is what current browsers and most printers
// take.
const (
	defaultCertDays = 825
	maxCertDays     = 3650
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func cmdTLSCert(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tls-cert", flag.ContinueOnError)
	var hosts, ips listFlag
	fs.Var(&hosts, "host", "a `NAME` devices connect to (repeat for more; the first names the files)")
	fs.Var(&ips, "ip", "an `ADDR` devices connect to (repeat for more)")
	days := fs.Int("days", defaultCertDays, "validity in days")
	withCA := fs.Bool("ca", false, "also make a small CA that signs the certificate (NAME-ca.crt)")
	out := fs.String("out", "", "the `DIR` to write the files to")
	fs.Usage = func() { fmt.Fprint(stderr, tlsCertUsage); fs.PrintDefaults() }
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	switch {
	case len(hosts) == 0:
		return usageError{"tls-cert: --host NAME is required (the name devices use for the bridge; add --ip for its address)"}
	case *out == "":
		return usageError{"tls-cert: --out DIR is required"}
	case *days < 1 || *days > maxCertDays:
		return usageError{fmt.Sprintf("tls-cert: --days %d: use 1 to %d (printers often refuse more than 825)", *days, maxCertDays)}
	}
	for _, h := range hosts {
		if mailaddr.CheckDomain(h) != nil || strings.ContainsAny(h, "/\\") {
			return usageError{fmt.Sprintf("tls-cert: --host %q is not a host name", h)}
		}
	}
	var addrs []net.IP
	for _, a := range ips {
		ip := net.ParseIP(a)
		if ip == nil {
			return usageError{fmt.Sprintf("tls-cert: --ip %q is not an IP address", a)}
		}
		addrs = append(addrs, ip)
	}
	now := time.Now()
	leafTmpl := &x509.Certificate{
		SerialNumber: serialNumber(),
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"smtpbridge"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Duration(*days) * 24 * time.Hour),
		// KeyEncipherment: old devices use RSA key exchange.
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              hosts,
		IPAddresses:           addrs,
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generate a key: %w", err)
	}
	signer, signerKey := leafTmpl, key
	var caPEM []byte
	if *withCA {
		caKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return fmt.Errorf("generate the CA's key: %w", err)
		}
		caTmpl := &x509.Certificate{
			SerialNumber: serialNumber(), Subject: pkix.Name{CommonName: hosts[0] + " CA (smtpbridge)", Organization: []string{"smtpbridge"}},
			NotBefore: now.Add(-time.Hour), NotAfter: leafTmpl.NotAfter,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("make the CA: %w", err)
		}
		if caTmpl, err = x509.ParseCertificate(der); err != nil {
			return err
		}
		caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		signer, signerKey = caTmpl, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return fmt.Errorf("make the certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})

	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	dir, err := filepath.Abs(*out)
	if err != nil {
		return err
	}
	base := filepath.Join(dir, hosts[0])
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{{base + ".key", keyPEM, 0o640}, {base + ".crt", certPEM, 0o644}}
	if caPEM != nil {
		files = append(files, struct {
			path string
			data []byte
			mode os.FileMode
		}{base + "-ca.crt", caPEM, 0o644})
	}
	for _, f := range files {
		if _, err := os.Lstat(f.path); err == nil {
			return fmt.Errorf("%s exists: remove it or choose another --out (nothing was written)", f.path)
		}
	}
	for _, f := range files {
		if err := writeNew(f.path, f.data, f.mode); err != nil {
			return err
		}
	}
	sum256, sum1 := sha256.Sum256(der), sha1.Sum(der)
	fmt.Fprintf(stdout, "wrote %s (the private key: mode 0640, owned like %s) and %s (the certificate, valid until %s)\n",
		base+".key", dir, base+".crt", leafTmpl.NotAfter.UTC().Format(time.DateOnly))
	if caPEM != nil {
		fmt.Fprintf(stdout, "wrote %s: the CA to install on devices that want to trust a CA\n", base+"-ca.crt")
	}
	fmt.Fprintf(stdout, "\nIn the listener's config (tls: starttls for port 587 or 25, implicit for 465):\n    cert_file: %s\n    key_file: %s\n", base+".crt", base+".key")
	fmt.Fprintf(stdout, "\nThe certificate's fingerprint, to check or pin on a device:\n  SHA-256: %s\n  SHA-1:   %s (devices that show only SHA-1)\n", colonHex(sum256[:]), colonHex(sum1[:]))
	fmt.Fprintf(stdout, "Names: %s\n", strings.Join(append(append([]string{}, hosts...), ips...), ", "))
	return nil
}

// writeNew writes a file that does not exist yet (never through a link),
// owned like its directory, as root writes files for the service.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.Write(data)
	cerr := f.Chmod(mode)
	oerr := durable.ChownLikeDir(f, filepath.Dir(path))
	serr := f.Sync()
	if err := errors.Join(werr, cerr, oerr, serr, f.Close()); err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func serialNumber() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}
