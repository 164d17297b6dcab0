package pki

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// newCA makes a CA in a fresh directory.
func newCA(t *testing.T, now time.Time) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if err := InitCA(dir, 0, now); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readCert(t *testing.T, p string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := parseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func TestFileNames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{NodeCertFile(3), "node-3.crt"},
		{NodeKeyFile(3), "node-3.key"},
		{ClientCertFile("alice"), "client-alice.crt"},
		{ClientKeyFile("alice"), "client-alice.key"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestInitCAThenRefuseReinit(t *testing.T) {
	dir := newCA(t, testNow)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v, %v; want 0700", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(dir, CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode %v, %v; want 0600", fi.Mode(), err)
	}
	ca := readCert(t, filepath.Join(dir, CACertFile))
	if !ca.IsCA || !ca.NotAfter.Equal(testNow.AddDate(0, 0, 3650)) {
		t.Errorf("CA: IsCA %v, NotAfter %v", ca.IsCA, ca.NotAfter)
	}
	before, _ := os.ReadFile(filepath.Join(dir, CACertFile))

	tests := []struct {
		name   string
		remove string // file removed before the second init
		want   string
	}{
		{"both exist", "", CACertFile},
		{"only the key exists", CACertFile, CAKeyFile},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			for _, f := range []string{CACertFile, CAKeyFile} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				if f != tc.remove {
					if err := os.WriteFile(filepath.Join(d, f), b, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			err := InitCA(d, 0, testNow)
			if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), filepath.Join(d, tc.want)) {
				t.Fatalf("second init: %v; want ErrExist naming %s", err, tc.want)
			}
		})
	}
	if err := InitCA(dir, 0, testNow); err == nil {
		t.Fatal("re-init succeeded")
	}
	if after, _ := os.ReadFile(filepath.Join(dir, CACertFile)); string(after) != string(before) {
		t.Fatal("refused re-init changed ca.crt")
	}
	if err := InitCA(t.TempDir(), -1, testNow); err == nil {
		t.Fatal("negative days accepted")
	}
}

func TestIssueNode(t *testing.T) {
	dir := newCA(t, testNow)
	host, _ := os.Hostname()
	tests := []struct {
		name    string
		hosts   []string
		days    int
		wantDNS []string
		wantIPs []string
		wantErr string
	}{
		{name: "default hosts", wantIPs: []string{"127.0.0.1", "::1"}}, // DNS: localhost and the host name
		{name: "given hosts", hosts: []string{"node1.example.com", "10.0.0.1", "[fd00::1]", "NODE1.example.com."}, days: 7,
			wantDNS: []string{"node1.example.com"}, wantIPs: []string{"10.0.0.1", "fd00::1"}},
		{name: "host with port", hosts: []string{"10.0.0.1:7000"}, wantErr: "without a port"},
		{name: "bad host", hosts: []string{"a b"}, wantErr: `host "a b"`},
		{name: "empty host", hosts: []string{""}, wantErr: `host ""`},
		{name: "days too many", days: maxDays + 1, wantErr: "validity"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certPath, keyPath, err := IssueNode(dir, 7, tc.hosts, tc.days, testNow)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if certPath != filepath.Join(dir, "node-7.crt") || keyPath != filepath.Join(dir, "node-7.key") {
				t.Errorf("paths %s %s", certPath, keyPath)
			}
			for _, p := range []string{certPath, keyPath} {
				if fi, serr := os.Stat(p); serr != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v, %v; want 0600", p, fi.Mode(), serr)
				}
			}
			c := readCert(t, certPath)
			days := tc.days
			if days == 0 {
				days = 90
			}
			if !c.NotAfter.Equal(testNow.AddDate(0, 0, days)) {
				t.Errorf("NotAfter %v, want %d days", c.NotAfter, days)
			}
			if c.Subject.CommonName != "node-7" || len(c.URIs) != 1 || c.URIs[0].String() != "blixard://node/7" {
				t.Errorf("CN %q, URIs %v", c.Subject.CommonName, c.URIs)
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ExtKeyUsage %v", c.ExtKeyUsage)
			}
			want := tc.wantDNS
			if tc.hosts == nil {
				want = []string{"localhost"}
				if _, name, err := parseHost(host); err == nil && name != "localhost" {
					want = append(want, name)
				}
			}
			if !slices.Equal(c.DNSNames, want) {
				t.Errorf("DNS SANs %v, want %v", c.DNSNames, want)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tc.wantIPs) {
				t.Errorf("IP SANs %v, want %v", ips, tc.wantIPs)
			}
		})
	}
	if _, _, err := IssueNode(dir, 0, nil, 0, testNow); err == nil {
		t.Error("node 0 accepted")
	}
}

func TestIssueClient(t *testing.T) {
	dir := newCA(t, testNow)
	tests := []struct {
		name string
		ok   bool
	}{
		{"alice", true},
		{"ci.bot_2-x", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"a/b", false},
		{"a b", false},
		{"ä", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certPath, keyPath, err := IssueClient(dir, tc.name, 0, testNow)
			if !tc.ok {
				if err == nil || !strings.Contains(err.Error(), "client name") {
					t.Fatalf("err = %v, want a client name error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if certPath != filepath.Join(dir, "client-"+tc.name+".crt") || keyPath != filepath.Join(dir, "client-"+tc.name+".key") {
				t.Errorf("paths %s %s", certPath, keyPath)
			}
			for _, p := range []string{certPath, keyPath} {
				if fi, serr := os.Stat(p); serr != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v, %v; want 0600", p, fi.Mode(), serr)
				}
			}
			c := readCert(t, certPath)
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || c.Subject.CommonName != tc.name {
				t.Errorf("ExtKeyUsage %v, CN %q", c.ExtKeyUsage, c.Subject.CommonName)
			}
			id, err := IdentityOf(c)
			if err != nil || id != (Identity{Kind: "client", Name: tc.name}) {
				t.Errorf("identity %+v, %v", id, err)
			}
		})
	}
}

func TestIssueNeedsAValidCA(t *testing.T) {
	dir := newCA(t, testNow)
	tests := []struct {
		name    string
		dir     string
		now     time.Time
		wantErr string
	}{
		{"no CA", t.TempDir(), testNow, "blixard tls init"},
		{"CA expired", dir, testNow.AddDate(11, 0, 0), "not now"},
		{"CA not yet valid", dir, testNow.AddDate(0, 0, -1), "not now"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := IssueClient(tc.dir, "alice", 0, tc.now)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
	// A certificate never outlives its CA.
	p, _, err := IssueClient(dir, "late", 0, testNow.AddDate(0, 0, 3650-10))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readCert(t, p).NotAfter, testNow.AddDate(0, 0, 3650); !got.Equal(want) {
		t.Errorf("NotAfter %v, want the CA's %v", got, want)
	}
}

func TestIdentityOf(t *testing.T) {
	uris := func(ss ...string) []*url.URL {
		var out []*url.URL
		for _, s := range ss {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, u)
		}
		return out
	}
	tests := []struct {
		name    string
		uris    []*url.URL
		want    Identity
		str     string
		wantErr string
	}{
		{"node", uris("blixard://node/3"), Identity{Kind: "node", NodeID: 3, Name: "node-3"}, "node 3", ""},
		{"client", uris("blixard://client/alice"), Identity{Kind: "client", Name: "alice"}, "client alice", ""},
		{"other URIs ignored", uris("spiffe://x/y", "blixard://node/9"), Identity{Kind: "node", NodeID: 9, Name: "node-9"}, "node 9", ""},
		{"none", nil, Identity{}, "", "no blixard:// URI SAN"},
		{"only others", uris("https://example.com/"), Identity{}, "", "no blixard:// URI SAN"},
		{"two", uris("blixard://node/1", "blixard://client/a"), Identity{}, "", "exactly one"},
		{"node zero", uris("blixard://node/0"), Identity{}, "", "malformed"},
		{"node not a number", uris("blixard://node/x"), Identity{}, "", "malformed"},
		{"node leading zero", uris("blixard://node/01"), Identity{}, "", "malformed"},
		{"node extra path", uris("blixard://node/1/2"), Identity{}, "", "malformed"},
		{"client bad name", uris("blixard://client/a%20b"), Identity{}, "", "malformed"},
		{"unknown kind", uris("blixard://admin/root"), Identity{}, "", "malformed"},
		{"query", uris("blixard://node/1?x=1"), Identity{}, "", "malformed"},
		{"port", uris("blixard://node:1/1"), Identity{}, "", "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityOf(&x509.Certificate{URIs: tc.uris})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("IdentityOf = %+v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want || got.String() != tc.str {
				t.Fatalf("IdentityOf = %+v (%q), %v; want %+v (%q)", got, got.String(), err, tc.want, tc.str)
			}
		})
	}

	// Round trip through a real certificate.
	dir := newCA(t, testNow)
	p, _, err := IssueNode(dir, 12, []string{"localhost"}, 0, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := IdentityOf(readCert(t, p)); err != nil || id.String() != "node 12" || id.NodeID != 12 || id.Name != "node-12" {
		t.Fatalf("identity %+v, %v", id, err)
	}
}

func TestResolveNodeFiles(t *testing.T) {
	tests := []struct {
		name     string
		files    []string
		wantCert string // base name; "" for an error
		wantErr  []string
	}{
		{"per-id files", []string{"ca.crt", "node-3.crt", "node-3.key", "node.crt", "node.key"}, "node-3.crt", nil},
		{"plain files", []string{"ca.crt", "node.crt", "node.key", "node-4.crt"}, "node.crt", nil},
		{"nothing", nil, "", []string{"ca.crt", "node-3.crt", "node.crt", "blixard tls cert --dir DIR --node 3"}},
		{"no CA", []string{"node-3.crt", "node-3.key"}, "", []string{"no DIR/ca.crt;", "blixard tls init --dir DIR"}},
		{"no key", []string{"ca.crt", "node-3.crt"}, "", []string{"DIR/node-3.crt has no key DIR/node-3.key", "blixard tls cert --dir DIR --node 3"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ca, cert, key, err := ResolveNodeFiles(dir, 3)
			if tc.wantCert == "" {
				if err == nil {
					t.Fatalf("no error, got %s %s %s", ca, cert, key)
				}
				for _, w := range tc.wantErr {
					if w = strings.ReplaceAll(w, "DIR", dir); !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			wantKey := strings.TrimSuffix(tc.wantCert, ".crt") + ".key"
			if err != nil || ca != filepath.Join(dir, "ca.crt") || cert != filepath.Join(dir, tc.wantCert) || key != filepath.Join(dir, wantKey) {
				t.Fatalf("got %s %s %s, %v; want %s", ca, cert, key, err, tc.wantCert)
			}
		})
	}
}

func TestResolveClientFiles(t *testing.T) {
	tests := []struct {
		name     string
		files    []string
		wantCert string // base name; "" for an error
		wantErr  []string
	}{
		{"client.crt wins", []string{"ca.crt", "client.crt", "client.key", "client-a.crt", "client-a.key"}, "client.crt", nil},
		{"single named", []string{"ca.crt", "client-alice.crt", "client-alice.key", "node-1.crt"}, "client-alice.crt", nil},
		{"several", []string{"ca.crt", "client-b.crt", "client-a.crt"}, "", []string{"several client certificates in DIR (client-a.crt, client-b.crt); pass --cert and --key"}},
		{"none", []string{"ca.crt", "node-1.crt"}, "", []string{"no client certificate in DIR", "blixard tls cert --dir DIR --client NAME"}},
		{"no CA", []string{"client.crt", "client.key"}, "", []string{"no CA certificate DIR/ca.crt", "blixard tls cert --dir DIR --client NAME"}},
		{"no key", []string{"ca.crt", "client-a.crt"}, "", []string{"DIR/client-a.crt has no key DIR/client-a.key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ca, cert, key, err := ResolveClientFiles(dir)
			if tc.wantCert == "" {
				if err == nil {
					t.Fatalf("no error, got %s %s %s", ca, cert, key)
				}
				for _, w := range tc.wantErr {
					if w = strings.ReplaceAll(w, "DIR", dir); !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			wantKey := strings.TrimSuffix(tc.wantCert, ".crt") + ".key"
			if err != nil || ca != filepath.Join(dir, "ca.crt") || cert != filepath.Join(dir, tc.wantCert) || key != filepath.Join(dir, wantKey) {
				t.Fatalf("got %s %s %s, %v; want %s", ca, cert, key, err, tc.wantCert)
			}
		})
	}
}

func TestParseHost(t *testing.T) {
	tests := []struct {
		in      string
		ip, dns string
	}{
		{"10.0.0.1", "10.0.0.1", ""},
		{"::1", "::1", ""},
		{"[::1]", "::1", ""},
		{"Node-1.Example.com", "", "node-1.example.com"},
		{"a..b", "", ""},
		{"-a", "", ""},
		{"a:1", "", ""},
		{strings.Repeat("a", 64), "", ""},
	}
	for _, tc := range tests {
		ip, dns, err := parseHost(tc.in)
		gotIP := ""
		if ip != nil {
			gotIP = ip.String()
		}
		if tc.ip == "" && tc.dns == "" {
			if err == nil {
				t.Errorf("parseHost(%q) = %v %q, want an error", tc.in, ip, dns)
			}
			continue
		}
		if err != nil || gotIP != tc.ip || dns != tc.dns || (ip != nil && !ip.Equal(net.ParseIP(tc.ip))) {
			t.Errorf("parseHost(%q) = %q %q %v, want %q %q", tc.in, gotIP, dns, err, tc.ip, tc.dns)
		}
	}
}
