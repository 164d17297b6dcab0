// Package pki makes and loads the cluster's CA and the certificates of nodes
// and clients. A cluster has one private certificate authority, an ECDSA
// P-256 key pair written by InitCA ('blixard tls init') into a TLS
// directory; IssueNode and IssueClient ('blixard tls cert') sign short-lived
// certificates with it. Every certificate names whom it speaks for in
// exactly one URI SAN, blixard://node/<id> or blixard://client/<name>, which
// IdentityOf and PeerIdentity read back for authorization. Node certificates
// serve and dial (ServerAuth and ClientAuth); client certificates only dial.
// A running process holds its CA pool, certificate and key in a Source, which
// builds the tls.Configs for the gRPC server, the HTTP endpoint and outgoing
// connections, and picks up replaced files (certificate rotation, a new CA
// bundle) without a restart: on Reload (SIGHUP) and, at most once a second,
// on a handshake that finds the files changed.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/internal/fsutil"
)

// File names inside a TLS directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Validity defaults and limits, in days.
const (
	defaultCADays   = 3650
	defaultLeafDays = 90
	maxDays         = 36500
)

// backdate is how far before "now" certificates become valid, so that a
// peer whose clock is a little behind still accepts them.
const backdate = time.Hour

// uriScheme is the scheme of identity URI SANs.
const uriScheme = "blixard"

// NodeCertFile is the certificate file name of node id.
func NodeCertFile(id uint64) string { return "node-" + strconv.FormatUint(id, 10) + ".crt" }

// NodeKeyFile is the key file name of node id.
func NodeKeyFile(id uint64) string { return "node-" + strconv.FormatUint(id, 10) + ".key" }

// ClientCertFile is the certificate file name of client name.
func ClientCertFile(name string) string { return "client-" + name + ".crt" }

// ClientKeyFile is the key file name of client name.
func ClientKeyFile(name string) string { return "client-" + name + ".key" }

// InitCA creates dir (0700) and writes a new ECDSA P-256 CA into it: ca.crt
// (0644) and ca.key (0600), valid for days days (0: 3650). It refuses, with
// an error wrapping fs.ErrExist that names the file, if ca.crt or ca.key
// already exists.
func InitCA(dir string, days int, now time.Time) error {
	days, err := checkDays(days, defaultCADays)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err = os.Lstat(p); err == nil {
			return fmt.Errorf("refusing to overwrite %s: %w; the CA in %s is already made, issue certificates with it ('blixard tls cert --dir %s ...') or remove %s and %s to start over (every certificate it signed stops working)",
				p, fs.ErrExist, dir, dir, CACertFile, CAKeyFile)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, err)
		}
	}
	if err = os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create TLS directory %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "blixard cluster CA", Organization: []string{"blixard"}, OrganizationalUnit: []string{host}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.AddDate(0, 0, days),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("sign CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	// The key first: a crash in between leaves no ca.crt without its key.
	if err := fsutil.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("write CA key: %w", err)
	}
	if err := fsutil.WriteFileAtomic(certPath, encodeCert(der), 0o644); err != nil {
		return fmt.Errorf("write CA certificate: %w", err)
	}
	return nil
}

// IssueNode signs a certificate for node id with the CA in dir and writes
// node-<id>.crt and node-<id>.key (0600) there, replacing older ones. The
// certificate is for ServerAuth and ClientAuth, has CN "node-<id>", the URI
// SAN blixard://node/<id> and a DNS or IP SAN per host (default: localhost,
// 127.0.0.1, ::1 and this machine's host name); it is valid for days days
// (0: 90), but never beyond the CA.
func IssueNode(dir string, id uint64, hosts []string, days int, now time.Time) (certPath, keyPath string, err error) {
	if id == 0 {
		return "", "", errors.New("node ID must be a positive integer (got 0)")
	}
	if len(hosts) == 0 {
		hosts = defaultHosts()
	}
	var dns []string
	var ips []net.IP
	for _, h := range hosts {
		ip, name, err := parseHost(h)
		if err != nil {
			return "", "", err
		}
		switch {
		case ip != nil && !slices.ContainsFunc(ips, ip.Equal):
			ips = append(ips, ip)
		case name != "" && !slices.Contains(dns, name):
			dns = append(dns, name)
		}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "node-" + strconv.FormatUint(id, 10), Organization: []string{"blixard"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    dns,
		IPAddresses: ips,
		URIs:        []*url.URL{nodeURI(id)},
	}
	return issue(dir, tmpl, NodeCertFile(id), NodeKeyFile(id), days, now)
}

// IssueClient signs a client certificate (ClientAuth only) for name with
// the CA in dir and writes client-<name>.crt and client-<name>.key (0600)
// there, replacing older ones. It has CN name and the URI SAN
// blixard://client/<name>; name is 1 to 64 characters of [a-zA-Z0-9._-].
// It is valid for days days (0: 90), but never beyond the CA.
func IssueClient(dir, name string, days int, now time.Time) (certPath, keyPath string, err error) {
	if err := checkClientName(name); err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"blixard"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{clientURI(name)},
	}
	return issue(dir, tmpl, ClientCertFile(name), ClientKeyFile(name), days, now)
}

// issue completes tmpl, signs it with the CA in dir and writes the pair.
func issue(dir string, tmpl *x509.Certificate, certFile, keyFile string, days int, now time.Time) (string, string, error) {
	days, err := checkDays(days, defaultLeafDays)
	if err != nil {
		return "", "", err
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return "", "", err
	}
	if now.Before(caCert.NotBefore) || !now.Before(caCert.NotAfter) {
		return "", "", fmt.Errorf("the CA in %s is valid from %s until %s, not now (%s); make a new CA with 'blixard tls init' in an empty directory and issue every certificate again",
			filepath.Join(dir, CACertFile), caCert.NotBefore.UTC().Format(time.RFC3339), caCert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return "", "", err
	}
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.AddDate(0, 0, days)
	if tmpl.NotAfter.After(caCert.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return "", "", fmt.Errorf("sign certificate %s: %w", certFile, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return "", "", err
	}
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	if err := fsutil.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("write key: %w", err)
	}
	if err := fsutil.WriteFileAtomic(certPath, encodeCert(der), 0o600); err != nil {
		return "", "", fmt.Errorf("write certificate: %w", err)
	}
	return certPath, keyPath, nil
}

// loadCA reads and checks the CA certificate and key in dir.
func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	hint := fmt.Sprintf("certificates are issued in the directory that holds the CA key; make a CA with 'blixard tls init --dir %s' or pass the --dir that has it", dir)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read CA certificate: %w; %s", err, hint)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read CA key: %w; %s", err, hint)
	}
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	caCert := certs[0]
	if !caCert.IsCA {
		return nil, nil, fmt.Errorf("CA certificate %s is not a CA certificate; pass the --dir made by 'blixard tls init'", certPath)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("CA key %s holds no PEM block; restore it from a backup or make a new CA", keyPath)
	}
	var key any
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("CA key %s: %w; restore it from a backup or make a new CA", keyPath, err)
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("CA key %s is a %T, want an ECDSA key as 'blixard tls init' writes", keyPath, key)
	}
	if pub, ok := caCert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(ecKey.Public()) {
		return nil, nil, fmt.Errorf("CA key %s does not belong to CA certificate %s; restore the matching pair", keyPath, certPath)
	}
	return caCert, ecKey, nil
}

// parseCerts parses every CERTIFICATE block in data; it fails if there is
// none or one does not parse.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

func checkDays(days, def int) (int, error) {
	switch {
	case days < 0 || days > maxDays:
		return 0, fmt.Errorf("validity must be between 1 and %d days, or 0 for the default of %d (got %d)", maxDays, def, days)
	case days == 0:
		return def, nil
	}
	return days, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // positive, never zero
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// defaultHosts are the SANs of a node certificate issued without hosts.
func defaultHosts() []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil {
		if _, name, err := parseHost(h); err == nil && name != "" {
			hosts = append(hosts, name)
		}
	}
	return hosts
}

// parseHost splits a --host value into an IP address or a DNS name.
func parseHost(h string) (net.IP, string, error) {
	s := strings.TrimSpace(h)
	if ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); ip != nil {
		return ip, "", nil
	}
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	ok := name != "" && len(name) <= 253
	for _, label := range strings.Split(name, ".") {
		if !ok {
			break
		}
		ok = label != "" && len(label) <= 63 && strings.Trim(label, "-") == label
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				ok = false
			}
		}
	}
	if !ok {
		return nil, "", fmt.Errorf("host %q is neither an IP address nor a DNS name; pass the names and addresses peers dial this node by, without a port, e.g. --host node1.example.com --host 10.0.0.1", h)
	}
	return nil, name, nil
}

// checkClientName enforces 1..64 characters of [a-zA-Z0-9._-].
func checkClientName(name string) error {
	ok := len(name) >= 1 && len(name) <= 64
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("client name must be 1 to 64 characters of letters, digits, '.', '_' and '-' (got %q)", name)
	}
	return nil
}
