package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// checkInterval is how often a handshake may look at the files' stamps.
const checkInterval = time.Second

// Source holds the CA pool and this process's own certificate and key,
// loaded from files and reloaded without a restart: Reload re-reads all
// three files (call it on SIGHUP); besides, every handshake checks the
// files' stamps (inode, mtime, size) at most once per second and reloads
// when they changed. A failed reload keeps the previous material and is
// reported through onError; it never breaks running connections. A Source
// is safe for concurrent use.
type Source struct {
	caFile, certFile, keyFile string
	onError                   func(error)
	now                       func() time.Time

	cur atomic.Pointer[material]

	// mu serializes loads and guards the fields below.
	mu      sync.Mutex
	checked time.Time    // last stamp check
	seen    [3]fileStamp // stamps of the last load attempt, good or bad
}

// material is one consistent set of loaded files.
type material struct {
	pool  *x509.CertPool
	cert  *tls.Certificate // Leaf is set
	ident Identity
}

// fileStamp tells whether a file changed since it was last read.
type fileStamp struct {
	info os.FileInfo // nil: stat failed
}

func (a fileStamp) same(b fileStamp) bool {
	if a.info == nil || b.info == nil {
		return a.info == nil && b.info == nil
	}
	return os.SameFile(a.info, b.info) && a.info.ModTime().Equal(b.info.ModTime()) && a.info.Size() == b.info.Size()
}

// NewSource loads the CA certificates in caFile and the own certificate and
// key in certFile and keyFile. The certificate must chain to the CA, be
// valid now and carry a blixard identity. onError (may be nil) receives the
// errors of automatic reloads.
func NewSource(caFile, certFile, keyFile string, onError func(error)) (*Source, error) {
	return newSource(caFile, certFile, keyFile, onError, time.Now)
}

func newSource(caFile, certFile, keyFile string, onError func(error), now func() time.Time) (*Source, error) {
	s := &Source{caFile: caFile, certFile: certFile, keyFile: keyFile, onError: onError, now: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checked = now()
	if err := s.loadLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload re-reads the three files now. On error the previous material
// stays in use and the error is returned (not passed to onError).
func (s *Source) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checked = s.now()
	return s.loadLocked()
}

// maybeReload reloads if the last check is at least checkInterval ago and
// a file changed since the last load attempt. A handshake that finds
// another one checking or loading goes on with the current material.
func (s *Source) maybeReload() {
	if !s.mu.TryLock() {
		return
	}
	defer s.mu.Unlock()
	now := s.now()
	if d := now.Sub(s.checked); d >= 0 && d < checkInterval {
		return
	}
	s.checked = now
	if sameStamps(s.stamps(), s.seen) {
		return
	}
	if err := s.loadLocked(); err != nil && s.onError != nil {
		s.onError(fmt.Errorf("reload TLS files (still using the previous ones): %w", err))
	}
}

func sameStamps(a, b [3]fileStamp) bool {
	for i := range a {
		if !a[i].same(b[i]) {
			return false
		}
	}
	return true
}

// stamps stats the three files.
func (s *Source) stamps() [3]fileStamp {
	var st [3]fileStamp
	for i, p := range []string{s.caFile, s.certFile, s.keyFile} {
		if fi, err := os.Stat(p); err == nil {
			st[i].info = fi
		}
	}
	return st
}

// loadLocked reads the files and, if they are good, makes them current.
// The stamps are taken before reading: a file replaced meanwhile is read
// again at the next check.
func (s *Source) loadLocked() error {
	stamps := s.stamps()
	s.seen = stamps
	m, err := s.read()
	if err != nil {
		return err
	}
	s.cur.Store(m)
	return nil
}

func (s *Source) read() (*material, error) {
	caPEM, err := os.ReadFile(s.caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w; pass the cluster's %s (made by 'blixard tls init')", err, CACertFile)
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w; pass the cluster's %s (made by 'blixard tls init')", s.caFile, err, CACertFile)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	cert, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s and key %s: %w; issue them again with 'blixard tls cert'", s.certFile, s.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", s.certFile, err)
		}
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, perr := x509.ParseCertificate(der); perr == nil {
			inter.AddCert(c)
		}
	}
	if _, err = cert.Leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   s.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("certificate %s does not verify against CA %s: %w; issue it again with 'blixard tls cert' from the CA in use, or pass the CA that signed it", s.certFile, s.caFile, err)
	}
	ident, err := IdentityOf(cert.Leaf)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", s.certFile, err)
	}
	return &material{pool: pool, cert: &cert, ident: ident}, nil
}

// Identity is the identity of the current own certificate.
func (s *Source) Identity() Identity { return s.cur.Load().ident }

// NotAfter is the expiry of the current own certificate.
func (s *Source) NotAfter() time.Time { return s.cur.Load().cert.Leaf.NotAfter }

// ServerConfig is for the gRPC server: TLS 1.3, a client certificate
// verified against the current CA pool is required. The material is
// chosen per handshake (GetConfigForClient), so reloads apply to new
// connections. grpc's credentials.NewTLS adds "h2" to the per-handshake
// config itself.
func (s *Source) ServerConfig() *tls.Config {
	return s.serverConfig(tls.RequireAndVerifyClientCert, nil)
}

// HTTPServerConfig is ServerConfig for the HTTP endpoint: a client
// certificate is verified if given but not required (browsers and
// Prometheus authenticate with bearer tokens). It negotiates HTTP/1.1
// only: net/http does not see into GetConfigForClient to offer h2.
func (s *Source) HTTPServerConfig() *tls.Config {
	return s.serverConfig(tls.VerifyClientCertIfGiven, []string{"http/1.1"})
}

func (s *Source) serverConfig(auth tls.ClientAuthType, protos []string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			s.maybeReload()
			m := s.cur.Load()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*m.cert},
				ClientCAs:    m.pool,
				ClientAuth:   auth,
				NextProtos:   protos,
				// A resumed session would skip verifying the client's
				// chain against the current pool (after a CA change).
				SessionTicketsDisabled: true,
			}, nil
		},
	}
}

// ClientConfig is for dialing nodes: TLS 1.3, presents the current own
// certificate, and accepts only a node certificate that verifies against
// the current CA pool (ServerAuth) and, if the connection state carries a
// server name, names that host. Go's TLS client leaves an IP address out
// of ConnectionState.ServerName (it is not sent as SNI), so a connection
// dialed by IP address is checked for chain and node identity only; check
// PeerIdentity against the node you meant to reach. The verification runs
// in VerifyConnection (InsecureSkipVerify only turns off the built-in
// check, which could not see reloads).
func (s *Source) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s.maybeReload()
			return s.cur.Load().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			s.maybeReload()
			return verifyServer(s.cur.Load().pool, cs)
		},
	}
}

// verifyServer checks the server side of cs against pool.
func verifyServer(pool *x509.CertPool, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	if cs.ServerName != "" {
		if err := leaf.VerifyHostname(cs.ServerName); err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	if id.Kind != KindNode {
		return fmt.Errorf("server certificate speaks for %s, not for a node", id)
	}
	return nil
}
