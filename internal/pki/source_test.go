package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is the rate-limit clock of a Source under test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// cluster is a CA directory with one node and one client certificate,
// issued at the real time (the TLS stack verifies against time.Now).
type cluster struct {
	dir                    string
	nodeCert, nodeKey      string
	clientCert, clientKey  string
	caFile                 string
	nodeSerial, cliSerial  *big.Int
	nodeSource, cliSource  *Source
	nodeClock, clientClock *fakeClock
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	now := time.Now()
	c := &cluster{dir: newCA(t, now), nodeClock: &fakeClock{t: now}, clientClock: &fakeClock{t: now}}
	c.caFile = filepath.Join(c.dir, CACertFile)
	var err error
	if c.nodeCert, c.nodeKey, err = IssueNode(c.dir, 1, nil, 0, now); err != nil {
		t.Fatal(err)
	}
	if c.clientCert, c.clientKey, err = IssueClient(c.dir, "alice", 0, now); err != nil {
		t.Fatal(err)
	}
	c.nodeSerial, c.cliSerial = readCert(t, c.nodeCert).SerialNumber, readCert(t, c.clientCert).SerialNumber
	if c.nodeSource, err = newSource(c.caFile, c.nodeCert, c.nodeKey, nil, c.nodeClock.now); err != nil {
		t.Fatal(err)
	}
	if c.cliSource, err = newSource(c.caFile, c.clientCert, c.clientKey, nil, c.clientClock.now); err != nil {
		t.Fatal(err)
	}
	return c
}

// result is what both ends of one handshake saw.
type result struct {
	clientErr, serverErr error
	server, client       tls.ConnectionState
}

// handshake connects a client with clientCfg (dialing serverName, "" for
// the IP address) to a server with serverCfg over loopback TCP. The server
// writes one byte after its handshake, so that a client certificate the
// server refuses (which TLS 1.3 reports after the client's handshake)
// shows up as a client error too.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config, serverName string) result {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var res result
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, aerr := lis.Accept()
		if aerr != nil {
			res.serverErr = aerr
			return
		}
		defer raw.Close()
		_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
		conn := tls.Server(raw, serverCfg)
		if res.serverErr = conn.Handshake(); res.serverErr != nil {
			return
		}
		res.server = conn.ConnectionState()
		_, res.serverErr = conn.Write([]byte("x"))
	}()
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	cfg := clientCfg.Clone()
	cfg.ServerName = serverName
	if serverName == "" {
		cfg.ServerName = "127.0.0.1" // as tls.Dial and grpc do for an IP address
	}
	conn := tls.Client(raw, cfg)
	if res.clientErr = conn.Handshake(); res.clientErr == nil {
		res.client = conn.ConnectionState()
		_, res.clientErr = conn.Read(make([]byte, 1))
	}
	if res.clientErr != nil {
		raw.Close() // unblock the server
	}
	<-done
	return res
}

func (r result) ok(t *testing.T) {
	t.Helper()
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("handshake failed: client %v, server %v", r.clientErr, r.serverErr)
	}
}

func serial(cs tls.ConnectionState) *big.Int {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	return cs.PeerCertificates[0].SerialNumber
}

func TestNodeServesVerifiedClients(t *testing.T) {
	c := newCluster(t)
	nodeClient, err := newSource(c.caFile, c.nodeCert, c.nodeKey, nil, c.clientClock.now)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		server     *tls.Config
		client     *Source
		serverName string
		wantPeer   string // identity the server sees
	}{
		{"client by name", c.nodeSource.ServerConfig(), c.cliSource, "localhost", "client alice"},
		{"client by IP", c.nodeSource.ServerConfig(), c.cliSource, "", "client alice"},
		{"node to node", c.nodeSource.ServerConfig(), nodeClient, "localhost", "node 1"},
		{"HTTP with a certificate", c.nodeSource.HTTPServerConfig(), c.cliSource, "localhost", "client alice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := handshake(t, tc.server, tc.client.ClientConfig(), tc.serverName)
			r.ok(t)
			id, err := PeerIdentity(r.server)
			if err != nil || id.String() != tc.wantPeer {
				t.Errorf("server sees %v, %v; want %s", id, err, tc.wantPeer)
			}
			if len(r.server.VerifiedChains) == 0 {
				t.Error("server did not verify the client's chain")
			}
			if id, err := PeerIdentity(r.client); err != nil || id.String() != "node 1" {
				t.Errorf("client sees %v, %v; want node 1", id, err)
			}
			if r.client.Version != tls.VersionTLS13 {
				t.Errorf("version %x, want TLS 1.3", r.client.Version)
			}
		})
	}

	// The HTTP endpoint lets a client without a certificate in; the gRPC
	// server does not.
	bare := &tls.Config{RootCAs: c.cliSource.cur.Load().pool, ServerName: "localhost"}
	r := handshake(t, c.nodeSource.HTTPServerConfig(), bare, "localhost")
	r.ok(t)
	if _, err := PeerIdentity(r.server); err == nil {
		t.Error("identity of a client without a certificate")
	}
	if r := handshake(t, c.nodeSource.ServerConfig(), bare, "localhost"); r.serverErr == nil || r.clientErr == nil {
		t.Errorf("gRPC server accepted a client without a certificate: client %v, server %v", r.clientErr, r.serverErr)
	}
	if got := c.nodeSource.Identity(); got != (Identity{Kind: "node", NodeID: 1, Name: "node-1"}) {
		t.Errorf("Identity() = %+v", got)
	}
	if got := c.cliSource.NotAfter(); !got.Equal(readCert(t, c.clientCert).NotAfter) {
		t.Errorf("NotAfter() = %v", got)
	}
}

func TestRefusedHandshakes(t *testing.T) {
	c := newCluster(t)
	other := newCluster(t) // another CA
	otherNode, err := tls.LoadX509KeyPair(other.nodeCert, other.nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	otherClient, err := tls.LoadX509KeyPair(other.clientCert, other.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	clientAsServer, err := tls.LoadX509KeyPair(c.clientCert, c.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	rawServer := func(cert tls.Certificate) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert}
	}
	// A client that trusts c's CA natively but presents a certificate of
	// another CA.
	foreignClient := &tls.Config{RootCAs: c.cliSource.cur.Load().pool, Certificates: []tls.Certificate{otherClient}}

	tests := []struct {
		name       string
		server     *tls.Config
		client     *tls.Config
		serverName string
		wantClient string // in the client's error; "" when the server refuses
		wantServer string // in the server's error
	}{
		{"server from another CA", rawServer(otherNode), c.cliSource.ClientConfig(), "localhost", "unknown authority", ""},
		{"client from another CA", c.nodeSource.ServerConfig(), foreignClient, "localhost", "", "unknown authority"},
		{"client from another CA, HTTP", c.nodeSource.HTTPServerConfig(), foreignClient, "localhost", "", "unknown authority"},
		{"both from other CAs", other.nodeSource.ServerConfig(), c.cliSource.ClientConfig(), "localhost", "unknown authority", ""},
		{"client certificate as a server", rawServer(clientAsServer), c.cliSource.ClientConfig(), "localhost", "server certificate", ""},
		{"wrong host name", c.nodeSource.ServerConfig(), c.cliSource.ClientConfig(), "db.example.com", "db.example.com", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := handshake(t, tc.server, tc.client, tc.serverName)
			if r.clientErr == nil || r.serverErr == nil {
				t.Fatalf("handshake went through: client %v, server %v", r.clientErr, r.serverErr)
			}
			if tc.wantClient != "" && !strings.Contains(r.clientErr.Error(), tc.wantClient) {
				t.Errorf("client error %q lacks %q", r.clientErr, tc.wantClient)
			}
			if tc.wantServer != "" && !strings.Contains(r.serverErr.Error(), tc.wantServer) {
				t.Errorf("server error %q lacks %q", r.serverErr, tc.wantServer)
			}
		})
	}
}

func TestClientConfigWantsANodeServer(t *testing.T) {
	// A server certificate of the right CA, with ServerAuth and the host
	// name, that speaks for a client: refused by the identity check alone.
	c := newCluster(t)
	tmpl := &x509.Certificate{
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost"},
		URIs:        []*url.URL{clientURI("mallory")},
	}
	certPath, keyPath, err := issue(c.dir, tmpl, "mallory.crt", "mallory.key", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	r := handshake(t, &tls.Config{Certificates: []tls.Certificate{cert}}, c.cliSource.ClientConfig(), "localhost")
	if r.clientErr == nil || !strings.Contains(r.clientErr.Error(), "speaks for client mallory, not for a node") {
		t.Fatalf("client error %v, want a refusal of the client identity", r.clientErr)
	}
	if err := verifyServer(c.cliSource.cur.Load().pool, tls.ConnectionState{ServerName: "localhost"}); err == nil {
		t.Fatal("no server certificate accepted")
	}
}

func TestReloadServesNewCertificate(t *testing.T) {
	c := newCluster(t)
	var errs []error
	var mu sync.Mutex
	clock := c.nodeClock
	src, err := newSource(c.caFile, c.nodeCert, c.nodeKey, func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	errCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(errs)
	}
	served := func() *big.Int {
		t.Helper()
		r := handshake(t, src.ServerConfig(), c.cliSource.ClientConfig(), "localhost")
		r.ok(t)
		return serial(r.client)
	}
	reissue := func() *big.Int {
		t.Helper()
		p, _, ierr := IssueNode(c.dir, 1, nil, 0, time.Now())
		if ierr != nil {
			t.Fatal(ierr)
		}
		return readCert(t, p).SerialNumber
	}

	if got := served(); got.Cmp(c.nodeSerial) != 0 {
		t.Fatalf("served serial %x, want %x", got, c.nodeSerial)
	}

	// Within a second of the last check, handshakes do not look at the files.
	second := reissue()
	clock.add(999 * time.Millisecond)
	if got := served(); got.Cmp(c.nodeSerial) != 0 {
		t.Fatalf("served %x before the check interval passed, want the old %x", got, c.nodeSerial)
	}
	// Then one does, and the new certificate is served.
	clock.add(time.Millisecond)
	if got := served(); got.Cmp(second) != 0 {
		t.Fatalf("served %x after the check interval, want the new %x", got, second)
	}

	// Reload applies at once.
	third := reissue()
	if err = src.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := served(); got.Cmp(third) != 0 {
		t.Fatalf("served %x after Reload, want %x", got, third)
	}

	// A broken file keeps the previous material, reported once.
	if err = os.WriteFile(c.nodeCert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err = src.Reload(); err == nil || !strings.Contains(err.Error(), c.nodeCert) {
		t.Fatalf("Reload of a broken certificate: %v, want an error naming %s", err, c.nodeCert)
	}
	if errCount() != 0 {
		t.Fatal("Reload passed its error to onError too")
	}
	if err = os.WriteFile(c.nodeKey, []byte("garbage too"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		clock.add(2 * time.Second)
		if got := served(); got.Cmp(third) != 0 {
			t.Fatalf("served %x with broken files, want the previous %x", got, third)
		}
	}
	if n := errCount(); n != 1 {
		t.Fatalf("onError called %d times for one change, want 1: %v", n, errs)
	}
	if !strings.Contains(errs[0].Error(), "still using the previous") {
		t.Errorf("onError got %q", errs[0])
	}

	// Repaired files are picked up.
	fourth := reissue()
	clock.add(2 * time.Second)
	if got := served(); got.Cmp(fourth) != 0 {
		t.Fatalf("served %x after repair, want %x", got, fourth)
	}

	// A client source picks up a new own certificate the same way.
	p, _, err := IssueClient(c.dir, "alice", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c.clientClock.add(time.Second)
	r := handshake(t, src.ServerConfig(), c.cliSource.ClientConfig(), "localhost")
	r.ok(t)
	if got, want := serial(r.server), readCert(t, p).SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("client presented %x, want the new %x", got, want)
	}
}

func TestReloadNewCA(t *testing.T) {
	// Moving a node to another CA: the new ca.crt and certificate are
	// trusted and served after a reload, the old ones no longer.
	c := newCluster(t)
	other := newCluster(t)
	for _, p := range [][2]string{{other.caFile, c.caFile}, {other.nodeCert, c.nodeCert}, {other.nodeKey, c.nodeKey}} {
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.nodeSource.Reload(); err != nil {
		t.Fatal(err)
	}
	if r := handshake(t, c.nodeSource.ServerConfig(), c.cliSource.ClientConfig(), "localhost"); r.clientErr == nil {
		t.Fatal("a client of the old CA accepted the new node certificate")
	}
	handshake(t, c.nodeSource.ServerConfig(), other.cliSource.ClientConfig(), "localhost").ok(t)
}

func TestNewSourceErrors(t *testing.T) {
	c := newCluster(t)
	other := newCluster(t)
	missing := filepath.Join(t.TempDir(), "none.crt")
	garbage := filepath.Join(t.TempDir(), "garbage.crt")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name           string
		ca, cert, key  string
		now            time.Time
		want           []string
		wantNotExisted bool
	}{
		{"CA missing", missing, c.nodeCert, c.nodeKey, time.Now(), []string{missing, "blixard tls init"}, true},
		{"CA garbage", garbage, c.nodeCert, c.nodeKey, time.Now(), []string{garbage, "no PEM CERTIFICATE"}, false},
		{"cert missing", c.caFile, missing, c.nodeKey, time.Now(), []string{missing, "blixard tls cert"}, true},
		{"key of another cert", c.caFile, c.nodeCert, c.clientKey, time.Now(), []string{c.nodeCert, "blixard tls cert"}, false},
		{"other CA", c.caFile, other.nodeCert, other.nodeKey, time.Now(), []string{other.nodeCert, "does not verify against CA " + c.caFile}, false},
		{"expired", c.caFile, c.nodeCert, c.nodeKey, time.Now().AddDate(0, 0, 91), []string{c.nodeCert, "expired"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newSource(tc.ca, tc.cert, tc.key, nil, func() time.Time { return tc.now })
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if errors.Is(err, os.ErrNotExist) != tc.wantNotExisted {
				t.Errorf("errors.Is(err, ErrNotExist) = %v", !tc.wantNotExisted)
			}
		})
	}
}
