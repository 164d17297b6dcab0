package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/pki"
)

// scli runs the CLI against addr with the cluster's TLS directory and
// token (empty: none), overriding whatever the environment says.
func scli(tlsDir, token, addr string, args ...string) (string, string, error) {
	return cliEnv([]string{"BLIXARD_TLS_DIR=" + tlsDir, "BLIXARD_TOKEN=" + token}, addr, args...)
}

// mustCLI runs a CLI command that must succeed.
func mustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := cli("127.0.0.1:1", args...)
	if err != nil {
		t.Fatalf("blixard %v: %v: %s", args, err, errOut)
	}
	return out
}

// makeCerts runs 'blixard tls' as an operator would: a CA, nodes 1..n
// and a client named admin.
func makeCerts(t testing.TB, dir string, nodes int) {
	t.Helper()
	mustCLI(t, "tls", "init", "--dir", dir)
	for id := 1; id <= nodes; id++ {
		mustCLI(t, "tls", "cert", "--dir", dir, "--node", strconv.Itoa(id), "--host", "127.0.0.1")
	}
	mustCLI(t, "tls", "cert", "--dir", dir, "--client", "admin")
}

// secureCluster starts a 3-node cluster with mutual TLS, bootstraps its
// management token and returns it.
func secureCluster(t testing.TB) (*cluster, string) {
	return secureClusterOf(t, newCluster(t))
}

// secureClusterOf turns the empty cluster c (its timers set) into a
// running secure one.
func secureClusterOf(t testing.TB, c *cluster) (*cluster, string) {
	c.tlsDir = filepath.Join(c.root, "tls")
	makeCerts(t, c.tlsDir, 4)
	n1 := c.add(1, "--bootstrap")
	var token string
	waitFor(t, 30*time.Second, "the bootstrap token", func() (bool, string) {
		out, errOut, err := scli(c.tlsDir, "", n1.addr, "--output", "json", "cluster", "bootstrap-token")
		if err != nil {
			return false, errOut
		}
		var r struct {
			Token string `json:"token"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.Token == "" {
			return false, fmt.Sprintf("bad JSON %q: %v", out, err)
		}
		token = r.Token
		return true, ""
	})
	c.add(2, "--join", n1.addr)
	c.add(3, "--join", n1.addr)
	waitFor(t, 60*time.Second, "voters [1 2 3] over TLS", func() (bool, string) {
		out, errOut, err := scli(c.tlsDir, token, n1.addr, "--output", "json", "cluster", "status")
		if err != nil {
			return false, errOut
		}
		var st statusJSON
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, out
		}
		voters := 0
		for _, m := range st.Members {
			if m.Role == "voter" {
				voters++
			}
		}
		return voters == 3 && len(st.Members) == 3, out
	})
	c.token = token
	return c, token
}

// client is a gRPC client of the node at addr: over mutual TLS with the
// admin certificate and the management token on a secure cluster.
func (c *cluster) client(t testing.TB, addr string) rpcpb.ClusterClient {
	t.Helper()
	if c.tlsDir == "" {
		return client(t, addr)
	}
	src, err := pki.NewSource(filepath.Join(c.tlsDir, pki.CACertFile), filepath.Join(c.tlsDir, pki.ClientCertFile("admin")), filepath.Join(c.tlsDir, pki.ClientKeyFile("admin")), nil)
	if err != nil {
		t.Fatal(err)
	}
	tok := c.token
	withTok := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig())),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, m string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return inv(withTok(ctx), m, req, reply, cc, o...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rpcpb.NewClusterClient(cc)
}

func memberIDs(t *testing.T, c *cluster, token, addr string) string {
	t.Helper()
	out, errOut, err := scli(c.tlsDir, token, addr, "--output", "json", "cluster", "status")
	if err != nil {
		t.Fatalf("cluster status: %v: %s", err, errOut)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, m := range st.Members {
		ids = append(ids, m.ID)
	}
	return fmt.Sprint(ids)
}

func createToken(t *testing.T, c *cluster, mgmt, addr, policy string) string {
	t.Helper()
	out, errOut, err := scli(c.tlsDir, mgmt, addr, "--output", "json", "token", "create", "--policy", policy, "--name", policy+"-e2e")
	if err != nil {
		t.Fatalf("token create --policy %s: %v: %s", policy, err, errOut)
	}
	var r struct {
		Token    string `json:"token"`
		Accessor string `json:"accessor"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Token == "" {
		t.Fatalf("token create JSON %q: %v", out, err)
	}
	return r.Token
}

func TestTLSClusterRefusesStrangersAndEnforcesPolicies(t *testing.T) {
	c, mgmt := secureCluster(t)
	n1, n2, n3 := c.nodes[1], c.nodes[2], c.nodes[3]
	before := memberIDs(t, c, mgmt, n2.addr)

	// Writes and reads work through any node (tokens travel with the
	// calls a follower forwards).
	if _, errOut, err := scli(c.tlsDir, mgmt, n2.addr, "kv", "put", "k", "v"); err != nil {
		t.Fatalf("kv put via a follower: %v: %s", err, errOut)
	}
	if out, errOut, err := scli(c.tlsDir, mgmt, n3.addr, "kv", "get", "k"); err != nil || !strings.Contains(out, "v") {
		t.Fatalf("kv get via a follower: %q %v: %s", out, err, errOut)
	}
	if _, errOut, err := scli(c.tlsDir, "", n1.addr, "cluster", "bootstrap-token"); err == nil || !strings.Contains(errOut, "bootstrapped already") {
		t.Fatalf("second bootstrap: %v %q", err, errOut)
	}

	t.Run("node from another CA cannot join", func(t *testing.T) {
		other := filepath.Join(c.root, "other-ca")
		makeCerts(t, other, 4)
		n := c.addRefused(4, "--join", n1.addr, "--tls-dir", other)
		if !n.waitExit(60 * time.Second) {
			t.Fatal("a node with another CA's certificate was still trying to join after 60 s")
		}
		if n.exitErr == nil || !strings.Contains(n.logs(), "TLS handshake failed") {
			t.Fatalf("exit %v; log tail: %s", n.exitErr, tail(n.logs()))
		}
		if got := memberIDs(t, c, mgmt, n1.addr); got != before {
			t.Fatalf("members %s after the refused join, want %s", got, before)
		}
	})

	t.Run("node 2's certificate cannot be node 4", func(t *testing.T) {
		d := c.tlsDir
		n := c.addRefused(4, "--join", n1.addr, "--ca", filepath.Join(d, "ca.crt"), "--cert", filepath.Join(d, "node-2.crt"), "--key", filepath.Join(d, "node-2.key"))
		if !n.waitExit(30 * time.Second) {
			t.Fatal("a node with another node's certificate kept running")
		}
		if n.exitErr == nil || !strings.Contains(n.logs(), "is a certificate for node 2, not for node 4") {
			t.Fatalf("exit %v; log: %s", n.exitErr, tail(n.logs()))
		}
		if got := memberIDs(t, c, mgmt, n1.addr); got != before {
			t.Fatalf("members %s, want %s", got, before)
		}
	})

	t.Run("clients without the cluster's certificate get nothing", func(t *testing.T) {
		// Plaintext, no certificate at all.
		if out, errOut, err := cli(n1.addr, "cluster", "status"); err == nil {
			t.Fatalf("plaintext client answered: %s", out)
		} else {
			t.Logf("plaintext client: %s", strings.TrimSpace(errOut))
		}
		// A client certificate from another CA.
		other := filepath.Join(c.root, "stranger-ca")
		makeCerts(t, other, 0)
		if out, errOut, err := scli(other, mgmt, n1.addr, "cluster", "status"); err == nil {
			t.Fatalf("client from another CA answered: %s", out)
		} else if !strings.Contains(errOut, "TLS") {
			t.Errorf("another CA's client: %q, want it to say TLS failed", errOut)
		}
		// The right certificate but no token.
		if _, errOut, err := scli(c.tlsDir, "", n1.addr, "cluster", "status"); err == nil || !strings.Contains(errOut, "needs a token") {
			t.Errorf("no token: %v %q", err, errOut)
		}
	})

	read := createToken(t, c, mgmt, n1.addr, "read")
	submit := createToken(t, c, mgmt, n1.addr, "submit")

	t.Run("policies", func(t *testing.T) {
		for _, tc := range []struct {
			name, token string
			args        []string
			want        string
		}{
			{"submit cordons", submit, []string{"worker", "cordon", "1"}, "may not call CordonWorker"},
			{"submit removes a member", submit, []string{"cluster", "remove", "3"}, "may not call RemoveMember"},
			{"submit picks the user", submit, []string{"task", "submit", "--user", "root", "--", "/bin/true"}, "user:"},
			{"read writes", read, []string{"kv", "put", "x", "y"}, "may not call Put"},
			{"read submits", read, []string{"task", "submit", "--", "/bin/true"}, "may not call SubmitTask"},
		} {
			_, errOut, err := scli(c.tlsDir, tc.token, n2.addr, tc.args...)
			if err == nil || !strings.Contains(errOut, tc.want) {
				t.Errorf("%s: %v, stderr %q; want a refusal saying %q", tc.name, err, errOut, tc.want)
			}
		}
		if got := memberIDs(t, c, mgmt, n1.addr); got != before {
			t.Errorf("members %s, want %s", got, before)
		}
		// A submitted task runs as the unprivileged task user on a root node.
		out, errOut, err := scli(c.tlsDir, submit, n3.addr, "task", "submit", "--wait", "--", "/bin/sh", "-c", "id -u")
		if err != nil {
			t.Fatalf("submit token's task: %v: %s", err, errOut)
		}
		uid := strings.TrimSpace(out)
		if _, perr := strconv.Atoi(uid); perr != nil || (os.Geteuid() == 0 && uid == "0") {
			t.Fatalf("the task ran as uid %q on a node running as uid %d; want an unprivileged uid", uid, os.Geteuid())
		}
	})

	t.Run("HTTP needs a read token", func(t *testing.T) {
		ca, err := os.ReadFile(filepath.Join(c.tlsDir, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
		defer hc.CloseIdleConnections()
		for _, tc := range []struct {
			path, token string
			want        int
		}{{"/healthz", "", 200}, {"/metrics", "", 401}, {"/api/overview", "", 401}, {"/metrics", read, 200}, {"/api/overview", read, 200}} {
			req, _ := http.NewRequest(http.MethodGet, "https://"+n2.http+tc.path, nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("GET %s: %v", tc.path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("GET %s (token %v): %d, want %d", tc.path, tc.token != "", resp.StatusCode, tc.want)
			}
		}
	})

	t.Run("revoked on every node", func(t *testing.T) {
		accessor := strings.Split(read, "_")[1]
		if _, errOut, err := scli(c.tlsDir, mgmt, n3.addr, "token", "revoke", accessor); err != nil {
			t.Fatalf("token revoke: %v: %s", err, errOut)
		}
		for _, n := range []*node{n1, n2, n3} {
			waitFor(t, 5*time.Second, fmt.Sprintf("node %d to refuse the revoked token", n.id), func() (bool, string) {
				_, errOut, err := scli(c.tlsDir, read, n.addr, "kv", "get", "k", "--serializable")
				return err != nil && strings.Contains(errOut, "revoked"), errOut
			})
		}
	})

	t.Run("certificates reload on SIGHUP", func(t *testing.T) {
		served := func() string {
			conn, err := tls.Dial("tcp", n1.addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // reads the served certificate only
			if err != nil {
				return "dial: " + err.Error()
			}
			defer conn.Close()
			return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
		}
		onDisk := func() string {
			b, err := os.ReadFile(filepath.Join(c.tlsDir, "node-1.crt"))
			if err != nil {
				t.Fatal(err)
			}
			blk, _ := pem.Decode(b)
			cert, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return cert.SerialNumber.String()
		}
		before := served()
		if before != onDisk() {
			t.Fatalf("node 1 serves %s, its file holds %s", before, onDisk())
		}
		mustCLI(t, "tls", "cert", "--dir", c.tlsDir, "--node", "1", "--host", "127.0.0.1")
		renewed := onDisk()
		if renewed == before {
			t.Fatal("re-issuing did not change the certificate")
		}
		if err := n1.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "node 1 to serve its new certificate", func() (bool, string) {
			s := served()
			return s == renewed, s
		})
		if _, errOut, err := scli(c.tlsDir, mgmt, n1.addr, "kv", "get", "k"); err != nil {
			t.Fatalf("a client after the rotation: %v: %s", err, errOut)
		}
	})

	t.Run("audit log", func(t *testing.T) {
		log := mapAudit(c)
		for _, want := range []string{`"method":"/blixard.rpc.v1.Cluster/CreateToken"`, `"method":"/blixard.rpc.v1.Cluster/CordonWorker"`, `"outcome":"PermissionDenied"`, `"policy":"submit"`} {
			if !strings.Contains(log, want) {
				t.Errorf("the audit logs lack %s:\n%s", want, tail(log))
			}
		}
		for _, secret := range []string{mgmt, read, submit} {
			if strings.Contains(log, strings.Split(secret, "_")[2]) {
				t.Error("an audit log holds a token secret")
			}
		}
	})
}

// mapAudit is every node's audit log, concatenated.
func mapAudit(c *cluster) string {
	var b strings.Builder
	for _, n := range c.nodes {
		d, _ := os.ReadFile(filepath.Join(n.dir, "audit.log"))
		b.Write(d)
	}
	return b.String()
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

func TestNodeWithoutTLSOrInsecureRefusesToStart(t *testing.T) {
	out, errOut, err := cli("127.0.0.1:1", "node", "--id", "1", "--data-dir", filepath.Join(t.TempDir(), "d"), "--listen", freeAddr(t), "--bootstrap")
	if err == nil {
		t.Fatalf("node started without TLS or --insecure: %s", out)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 1 || !strings.Contains(errOut, "blixard tls init") || !strings.Contains(errOut, "--tls-dir") {
		t.Fatalf("stderr %q: want one line saying how to make certificates", errOut)
	}
}
