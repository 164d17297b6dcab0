package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/server"
)

// testDeadline bounds waits in tests that would otherwise hang on a bug.
const testDeadline = 20 * time.Second

// serveUntilDone returns a run function that serves f on lis until its
// context ends, as server.Run would.
func serveUntilDone(lis net.Listener, f *fakeCluster, started chan<- server.Config) func(context.Context, server.Config) error {
	return func(ctx context.Context, cfg server.Config) error {
		started <- cfg
		s := grpc.NewServer()
		rpcpb.RegisterClusterServer(s, f)
		go func() { _ = s.Serve(lis) }()
		<-ctx.Done()
		s.Stop()
		return ctx.Err()
	}
}

func TestDevPrintsNextStepsOnceServing(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	// The node answers but has no leader yet: not ready.
	f := &fakeCluster{
		status:   &blixardpb.StatusResponse{NodeId: 1},
		onStatus: make(chan struct{}, 1),
	}
	started := make(chan server.Config, 1)
	h := newHarness(t)
	h.env[envAddr] = addr // so the printed commands need no --addr
	h.deps.runServer = serveUntilDone(lis, f, started)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- h.runCtx(ctx, "dev", "--listen", addr) }()

	var cfg server.Config
	select {
	case cfg = <-started:
	case code := <-done:
		t.Fatalf("dev exited with %d before starting the node; stderr %q", code, h.stderr.String())
	}
	// Two polls answered without a leader: nothing printed yet.
	for range 2 {
		select {
		case <-f.onStatus:
		case <-time.After(testDeadline):
			t.Fatal("dev never polled Status")
		}
	}
	if out := h.stdout.String(); out != "" {
		t.Fatalf("printed before the node had a leader: %q", out)
	}
	f.mu.Lock()
	f.status = &blixardpb.StatusResponse{NodeId: 1, Leader: 1}
	f.mu.Unlock()

	select {
	case <-h.stdout.waitFor("stop with Ctrl-C"):
	case code := <-done:
		t.Fatalf("dev exited with %d; stderr %q", code, h.stderr.String())
	case <-time.After(testDeadline):
		t.Fatal("dev never reported it was serving")
	}
	out := h.stdout.String()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	httpAddr := net.JoinHostPort(host, strconv.Itoa(p+80))
	for _, want := range []string{
		"node 1 is serving on " + addr,
		"\ndashboard: http://" + httpAddr + "/ (metrics: http://" + httpAddr + "/metrics)\n",
		"data dir: " + cfg.DataDir + " (temporary, removed on exit)",
		"\n  blixard cluster status\n",
		"\n  blixard worker list\n",
		"\n  blixard kv put hello world\n",
		"\n  blixard vm create hello\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	f.mu.Lock()
	if !f.statuses[0].GetLocal() {
		t.Error("readiness check did not ask for the local view")
	}
	f.mu.Unlock()
	if cfg.ID != 1 || !cfg.Bootstrap || !cfg.Worker || cfg.Listen != addr || cfg.Advertise != addr ||
		cfg.CPUMillis != 4000 || cfg.MemoryMiB != 8192 || cfg.ElectionTicks != defaultElectionTicks || cfg.Logger == nil ||
		cfg.HTTPAddr != httpAddr {
		t.Errorf("dev config = %+v", cfg)
	}
	if fi, err := os.Stat(cfg.DataDir); err != nil || !fi.IsDir() {
		t.Errorf("temporary data dir missing while running: %v", err)
	}

	cancel() // as Ctrl-C would
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("exit code after stop = %d, want 0; stderr %q", code, h.stderr.String())
		}
	case <-time.After(testDeadline):
		t.Fatal("dev did not stop")
	}
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary data dir not removed: %v", err)
	}
}

func TestDevAddsAddrToHintsForNonDefaultListen(t *testing.T) {
	var b strings.Builder
	printDevReady(&b, server.Config{ID: 1, DataDir: "/d", CPUMillis: 1500, MemoryMiB: 10}, "127.0.0.1:7100", defaultAddr, false)
	for _, want := range []string{
		"  blixard --addr 127.0.0.1:7100 cluster status\n",
		"data dir: /d (kept on exit)",
		"worker: 1.5 CPU, 10 MiB memory",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestDevPrintsTheDashboardOfAnyHTTPAddr(t *testing.T) {
	for _, tc := range []struct{ http, want string }{
		{"0.0.0.0:7180", "dashboard: http://127.0.0.1:7180/ (metrics: http://127.0.0.1:7180/metrics)\n"},
		{"[::1]:7180", "dashboard: http://[::1]:7180/"},
		{"", ""},
	} {
		var b strings.Builder
		printDevReady(&b, server.Config{ID: 1, DataDir: "/d", HTTPAddr: tc.http}, "127.0.0.1:7100", defaultAddr, false)
		if got := b.String(); tc.want == "" && strings.Contains(got, "dashboard") || !strings.Contains(got, tc.want) {
			t.Errorf("--http-addr %q: output lacks %q:\n%s", tc.http, tc.want, got)
		}
	}
}

func TestDevHTTPAddrFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // HTTPAddr, or the error line
		ok   bool
	}{
		{[]string{"--listen", "127.0.0.1:7100"}, "127.0.0.1:7180", true},
		{[]string{"--http-addr", "off"}, "", true},
		{[]string{"--http-addr", "127.0.0.1:9000"}, "127.0.0.1:9000", true},
		{[]string{"--http-addr", "127.0.0.1:7000"}, "--http-addr must differ from --listen (both use port 7000)", false},
		{[]string{"--http-addr", "9000"}, `--http-addr must be HOST:PORT (got "9000")`, false},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv("TMPDIR", t.TempDir())
			h := newHarness(t)
			started := make(chan server.Config, 1)
			h.deps.runServer = func(ctx context.Context, cfg server.Config) error {
				started <- cfg
				return errors.New("stop here")
			}
			code := h.run(append([]string{"dev"}, tc.args...)...)
			if !tc.ok {
				if code != exitUsage {
					t.Errorf("exit code = %d, want %d", code, exitUsage)
				}
				h.wantErrorLine(tc.want)
				return
			}
			select {
			case cfg := <-started:
				if cfg.HTTPAddr != tc.want {
					t.Errorf("HTTPAddr = %q, want %q", cfg.HTTPAddr, tc.want)
				}
			default:
				t.Fatalf("node not started (exit %d): %s", code, h.stderr.String())
			}
		})
	}
}

func TestDevFailsWhenNeverServing(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	addr := closedAddr(t)
	h := newHarness(t)
	started := make(chan server.Config, 1)
	h.deps.runServer = func(ctx context.Context, cfg server.Config) error {
		started <- cfg
		<-ctx.Done() // never serves
		return ctx.Err()
	}
	code := h.run("dev", "--listen", addr, "--ready-timeout", "300ms", "--log-level", "error")
	if code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("dev node did not start serving on "+addr+" within 300ms", "--ready-timeout")
	if out := h.stdout.String(); out != "" {
		t.Errorf("stdout = %q, want nothing", out)
	}
	cfg := <-started
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary data dir not removed: %v", err)
	}
}

func TestDevNodeExitsEarly(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(filepath.Join(data, "wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t)
	started := make(chan server.Config, 1)
	h.deps.runServer = func(ctx context.Context, cfg server.Config) error {
		started <- cfg
		return errors.New("server: not wired yet")
	}
	code := h.run("dev", "--data-dir", data, "--listen", closedAddr(t), "--log-level", "error")
	if code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("dev node stopped before it was serving: server: not wired yet")
	if cfg := <-started; cfg.Bootstrap {
		t.Error("restart of an existing data dir bootstraps again")
	}
	if _, err := os.Stat(data); err != nil {
		t.Errorf("given data dir removed: %v", err)
	}
}
