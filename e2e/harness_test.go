// Package e2e runs real `blixard` processes on loopback and checks what an
// operator would see. Nothing here sleeps: every wait polls a condition
// with a deadline and says what it last saw when it gives up.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var blixardBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "blixard-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	blixardBin = filepath.Join(dir, "blixard")
	build := exec.Command("go", "build", "-race", "-o", blixardBin, "../cmd/blixard")
	if os.Getenv("BLIXARD_E2E_NORACE") != "" {
		build = exec.Command("go", "build", "-o", blixardBin, "../cmd/blixard")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building blixard:", err)
		os.Exit(1)
	}
	// The race runtime sleeps a second at exit by default so late reports
	// can print; CLI calls would each pay it.
	os.Setenv("GORACE", "atexit_sleep_ms=0 halt_on_error=1")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type node struct {
	t       testing.TB
	id      uint64
	addr    string
	http    string // --http-addr: metrics, health, dashboard
	dir     string
	logPath string
	args    []string
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
}

// fastTimers keep elections and worker liveness quick on loopback.
var fastTimers = []string{"--tick", "50ms", "--heartbeat-interval", "200ms", "--worker-ttl", "2s"}

type cluster struct {
	t      testing.TB
	tlsDir string   // with mutual TLS: the certificates (see secureCluster); "": --insecure
	token  string   // the management token of a secure cluster
	root   string   // parent of every node's data directory
	timers []string // raft/worker timing flags for every node
	nodes  map[uint64]*node
	others []*node // processes expected to be refused; not members
}

func newCluster(t testing.TB) *cluster {
	// The data directories' root is made before the cleanup that kills the
	// nodes is registered: cleanups run last-registered first, so its
	// removal runs after every node is dead rather than racing their writes.
	c := &cluster{t: t, root: t.TempDir(), nodes: map[uint64]*node{}, timers: fastTimers}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.kill()
		}
		for _, n := range c.others {
			n.kill()
		}
		// What the nodes started (VM guards and QEMUs outlive a killed node
		// by design) must be gone before the data directories are removed.
		c.killLeftovers()
		for _, n := range append(c.others, mapNodes(c.nodes)...) {
			if strings.Contains(n.logs(), "WARNING: DATA RACE") {
				t.Errorf("node %d hit a data race; see %s", n.id, n.logPath)
			}
		}
		if t.Failed() {
			for _, n := range c.nodes {
				b, _ := os.ReadFile(n.logPath)
				lines := strings.Split(string(b), "\n")
				if len(lines) > 40 {
					lines = lines[len(lines)-40:]
				}
				t.Logf("---- last log lines of node %d ----\n%s", n.id, strings.Join(lines, "\n"))
			}
		}
	})
	return c
}

// killLeftovers kills every process still running from under the
// cluster's data directories and waits until they are gone.
func (c *cluster) killLeftovers() {
	waitFor(c.t, 10*time.Second, "processes started under "+c.root+" to be gone", func() (bool, string) {
		pids := pidsMentioning(c.root, nil)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		return len(pids) == 0, fmt.Sprintf("pids %v", pids)
	})
}

// other returns a running member other than n.
func (c *cluster) other(n *node) *node {
	for id := uint64(1); id <= uint64(len(c.nodes))+1; id++ {
		if o, ok := c.nodes[id]; ok && o != n && o.running() {
			return o
		}
	}
	c.t.Fatalf("no running node other than %d", n.id)
	return nil
}

func mapNodes(m map[uint64]*node) []*node {
	var out []*node
	for _, n := range m {
		out = append(out, n)
	}
	return out
}

// add creates a member node; extra are flags such as --bootstrap or --join.
func (c *cluster) add(id uint64, extra ...string) *node {
	c.t.Helper()
	n := c.spawn(id, extra...)
	c.nodes[id] = n
	return n
}

// addRefused starts a node the cluster is expected to refuse.
func (c *cluster) addRefused(id uint64, extra ...string) *node {
	c.t.Helper()
	n := c.spawn(id, extra...)
	c.others = append(c.others, n)
	return n
}

func (c *cluster) spawn(id uint64, extra ...string) *node {
	c.t.Helper()
	parent, err := os.MkdirTemp(c.root, "")
	if err != nil {
		c.t.Fatal(err)
	}
	dir := filepath.Join(parent, fmt.Sprintf("node%d", id))
	n := &node{t: c.t, id: id, addr: freeAddr(c.t), http: freeAddr(c.t), dir: dir, logPath: dir + ".log"}
	n.args = append([]string{"node", "--id", strconv.FormatUint(id, 10), "--data-dir", dir, "--listen", n.addr, "--http-addr", n.http, "--log-level", "debug"}, c.timers...)
	if c.tlsDir == "" {
		n.args = append(n.args, "--insecure")
	} else if !slices.Contains(extra, "--tls-dir") && !slices.Contains(extra, "--cert") {
		n.args = append(n.args, "--tls-dir", c.tlsDir)
	}
	n.args = append(n.args, extra...)
	n.start()
	return n
}

func (n *node) start() {
	n.t.Helper()
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	n.cmd = exec.Command(blixardBin, n.args...)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.exited = make(chan struct{})
	go func() {
		n.exitErr = n.cmd.Wait()
		f.Close()
		close(n.exited)
	}()
}

// restart starts the node again from its data dir, without bootstrap/join.
func (n *node) restart() {
	n.t.Helper()
	var args []string
	for i := 0; i < len(n.args); i++ {
		switch n.args[i] {
		case "--bootstrap":
		case "--join":
			i++
		default:
			args = append(args, n.args[i])
		}
	}
	n.args = args
	n.start()
}

func (n *node) running() bool {
	select {
	case <-n.exited:
		return false
	default:
		return n.cmd != nil
	}
}

// waitExit waits up to d for the process to end by itself.
func (n *node) waitExit(d time.Duration) bool {
	select {
	case <-n.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// kill9 is a crash: no shutdown code runs.
func (n *node) kill9() {
	n.t.Helper()
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

func (n *node) kill() { n.kill9() }

// stop asks for a graceful shutdown and waits for it.
func (n *node) stop(timeout time.Duration) {
	n.t.Helper()
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(timeout):
		n.t.Fatalf("node %d did not stop within %v of SIGTERM", n.id, timeout)
	}
}

func (n *node) logs() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

// cli runs the blixard CLI against addr and returns stdout, stderr and err.
func cli(addr string, args ...string) (string, string, error) {
	return cliEnv(nil, addr, args...)
}

// cliEnv is cli with env added to the environment (KEY=VALUE entries).
func cliEnv(env []string, addr string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, blixardBin, append([]string{"--addr", addr, "--timeout", "3s"}, args...)...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// sharedDir returns a new directory that every user can read, for files
// a task checks: on a root node tasks run as nobody, and t.TempDir is
// private to root.
func sharedDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// waitFor polls cond until it holds or timeout passes; cond returns a
// description of what it saw, used in the failure message.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen string
	for {
		ok, s := cond()
		if ok {
			return
		}
		seen = s
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last saw: %s", timeout, what, seen)
		}
		// Poll pacing, not a synchronisation sleep: the condition above
		// is what the test waits for.
		<-time.After(50 * time.Millisecond)
	}
}

type memberJSON struct {
	ID           uint64 `json:"id"`
	Addr         string `json:"addr"`
	Role         string `json:"role"`
	State        string `json:"state"`
	AppliedIndex uint64 `json:"applied_index"`
}

type statusJSON struct {
	NodeID       uint64       `json:"node_id"`
	Leader       uint64       `json:"leader"`
	Term         uint64       `json:"term"`
	CommitIndex  uint64       `json:"commit_index"`
	AppliedIndex uint64       `json:"applied_index"`
	Members      []memberJSON `json:"members"`
}

func status(addr string) (statusJSON, string) {
	out, errOut, err := cli(addr, "--output", "json", "cluster", "status")
	var st statusJSON
	if err != nil {
		return st, fmt.Sprintf("status via %s failed: %v: %s", addr, err, strings.TrimSpace(errOut))
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Sprintf("bad status JSON %q: %v", out, err)
	}
	return st, out
}

// waitVoters waits until the leader reports exactly ids as voters.
func (c *cluster) waitVoters(via *node, ids ...uint64) statusJSON {
	c.t.Helper()
	var last statusJSON
	want := fmt.Sprint(ids)
	waitFor(c.t, 60*time.Second, "voters "+want, func() (bool, string) {
		st, raw := status(via.addr)
		last = st
		if st.Leader == 0 {
			return false, raw
		}
		var voters []uint64
		for _, m := range st.Members {
			if m.Role == "voter" {
				voters = append(voters, m.ID)
			}
		}
		return fmt.Sprint(voters) == want && len(voters) == len(st.Members), raw
	})
	return last
}

func put(addr, key, value string) error {
	_, errOut, err := cli(addr, "kv", "put", key, value)
	if err != nil {
		return fmt.Errorf("put %s via %s: %v: %s", key, addr, err, strings.TrimSpace(errOut))
	}
	return nil
}

func get(addr, key string, serializable bool) (string, error) {
	args := []string{"--output", "json", "kv", "get", key}
	if serializable {
		args = append(args, "--serializable")
	}
	out, errOut, err := cli(addr, args...)
	if err != nil {
		return "", fmt.Errorf("get %s via %s: %v: %s", key, addr, err, strings.TrimSpace(errOut))
	}
	var r struct {
		Value string `json:"value"`
		Found bool   `json:"found"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return "", fmt.Errorf("bad kv JSON %q: %v", out, err)
	}
	return r.Value, nil
}

// threeNodes starts a bootstrapped 3-voter cluster.
func threeNodes(t *testing.T, extra ...string) *cluster {
	c := newCluster(t)
	n1 := c.add(1, append([]string{"--bootstrap"}, extra...)...)
	c.add(2, append([]string{"--join", n1.addr}, extra...)...)
	c.add(3, append([]string{"--join", n1.addr}, extra...)...)
	c.waitVoters(n1, 1, 2, 3)
	return c
}
