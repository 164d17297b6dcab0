package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/loadgen"
	"github.com/blixard/blixard/internal/pki"
	"github.com/blixard/blixard/internal/server"
)

// putRecorder is a Cluster service whose Put records each request and
// then runs hook (if set) with the put's number, from 1, outside the lock.
type putRecorder struct {
	rpcpb.UnimplementedClusterServer

	mu   sync.Mutex
	puts []*blixardpb.PutRequest
	hook func(ctx context.Context, n int) error
}

func (f *putRecorder) Put(ctx context.Context, req *blixardpb.PutRequest) (*blixardpb.PutResponse, error) {
	f.mu.Lock()
	f.puts = append(f.puts, req)
	n := len(f.puts)
	f.mu.Unlock()
	if f.hook != nil {
		if err := f.hook(ctx, n); err != nil {
			return nil, err
		}
	}
	return &blixardpb.PutResponse{Index: uint64(n)}, nil
}

func (f *putRecorder) recorded() []*blixardpb.PutRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*blixardpb.PutRequest(nil), f.puts...)
}

// benchResult decodes the JSON object of a bench run and checks it has
// exactly the documented fields.
func benchResult(t *testing.T, out string, extra ...string) map[string]any {
	t.Helper()
	m, keys := jsonKeys(t, out)
	want := sorted(append([]string{"benchmark", "endpoints", "conns", "clients", "requested", "total", "errors", "interrupted",
		"elapsed_sec", "rate_per_sec", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "error_groups"}, extra...)...)
	if strings.Join(keys, ",") != strings.Join(want, ",") {
		t.Errorf("JSON fields %v, want %v", keys, want)
	}
	return m
}

func num(t *testing.T, m map[string]any, k string) float64 {
	t.Helper()
	v, ok := m[k].(float64)
	if !ok {
		t.Fatalf("JSON %q is %T %v, want a number", k, m[k], m[k])
	}
	return v
}

// wantSaneLatencies checks a successful run's numbers.
func wantSaneLatencies(t *testing.T, m map[string]any) {
	t.Helper()
	if r := num(t, m, "rate_per_sec"); r <= 0 {
		t.Errorf("rate_per_sec %v, want > 0", r)
	}
	if e := num(t, m, "elapsed_sec"); e <= 0 {
		t.Errorf("elapsed_sec %v, want > 0", e)
	}
	p50, p90, p99, mx := num(t, m, "p50_ms"), num(t, m, "p90_ms"), num(t, m, "p99_ms"), num(t, m, "max_ms")
	if !(0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= mx) {
		t.Errorf("percentiles p50 %v p90 %v p99 %v max %v, want 0 < p50 <= p90 <= p99 <= max", p50, p90, p99, mx)
	}
	if mean := num(t, m, "mean_ms"); mean <= 0 || mean > mx {
		t.Errorf("mean_ms %v, want in (0, max %v]", mean, mx)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	f := &putRecorder{}
	addr := startFake(t, f)
	kv := func(args ...string) []string { return append([]string{"--addr", addr, "bench", "kv"}, args...) }
	tasks := func(args ...string) []string { return append([]string{"--addr", addr, "bench", "tasks"}, args...) }
	// --endpoints without --addr.
	kvE := func(args ...string) []string { return append([]string{"-o", "table", "bench", "kv"}, args...) }
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{kv("--clients", "0"), []string{`--clients must be between 1 and 10000 (got "0")`, "--clients 16"}},
		{kv("--clients", "-3"), []string{`--clients must be between 1 and 10000 (got "-3")`}},
		{kv("--clients", "10001"), []string{`--clients must be between 1 and 10000 (got "10001")`}},
		{kv("--clients", "many"), []string{`--clients must be a positive integer (got "many")`, "bench kv --help"}},
		{kv("--total", "0"), []string{`--total must be between 1 and 10000000 (got "0")`}},
		{kv("--total", "-1"), []string{`--total must be between 1 and`}},
		{kv("--total", "1.5"), []string{`--total must be a positive integer (got "1.5")`}},
		{kv("--conns", "0"), []string{`--conns must be between 1 and 64 (got "0")`}},
		{kv("--val-size", "0"), []string{`--val-size must be between 1 and`, `(got "0")`}},
		{kv("--val-size", "-5"), []string{`--val-size must be between 1 and`, `(got "-5")`}},
		{kv("--val-size", "5000000"), []string{`--val-size must be between 1 and`, "4 MiB"}},
		{kv("--key-size", "6"), []string{`--key-size must be between 10 and 1024 bytes for --total 10000 (got "6")`}},
		{kv("--key-size", "7", "--total", "11"), []string{`--key-size must be between 8 and 1024 bytes for --total 11 (got "7")`}},
		{kv("--key-size", "2000"), []string{`--key-size must be between`, `(got "2000")`}},
		{kvE("--endpoints", ""), []string{"--endpoints must not be empty", "--endpoints 127.0.0.1:7000,127.0.0.1:7001"}},
		{kvE("--endpoints", " , "), []string{`--endpoints entry 1 is empty (got " , ")`}},
		{kvE("--endpoints", addr+",,"+addr), []string{`--endpoints entry 2 is empty`}},
		{kvE("--endpoints", addr+","), []string{`--endpoints entry 2 is empty`}},
		{kvE("--endpoints", "nohost"), []string{`--endpoints entry "nohost" must be HOST:PORT`}},
		{kvE("--endpoints", addr+",h:99999"), []string{`--endpoints entry "h:99999" needs a port between 1 and 65535`}},
		{kv("--endpoints", addr, "--addr", addr), []string{"--addr and --endpoints: give one, not both"}},
		{[]string{"--addr", "nope", "bench", "kv"}, []string{`--addr must be HOST:PORT (got "nope")`}},
		{kv("extra"), []string{"too many arguments"}},
		{tasks("--command", " "), []string{"--command must not be empty", "--command /bin/true"}},
		{tasks("--clients", "0"), []string{`--clients must be between 1 and 10000 (got "0")`}},
		{tasks("--total", "0"), []string{`--total must be between 1`}},
		{[]string{"-o", "table", "bench", "tasks", "--endpoints", "a:1,,b:2"}, []string{`--endpoints entry 2 is empty`}},
		{[]string{"--addr", addr, "bench", "nope"}, []string{`unknown command "nope" for "blixard bench"`}},
		{[]string{"--addr", addr, "--token", "bxt_x", "bench", "kv"}, []string{"--token needs TLS"}},
	} {
		t.Run(strings.Join(tc.args[2:], " "), func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(tc.args...); code != exitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, exitUsage, h.stderr.String())
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Errorf("stdout %q, want nothing", h.stdout.String())
			}
		})
	}
	if n := len(f.recorded()); n != 0 {
		t.Errorf("bad input made %d Put calls, want none", n)
	}
}

func TestBenchWithoutSubcommandShowsHelp(t *testing.T) {
	h := newHarness(t)
	if code := h.run("bench"); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	for _, w := range []string{"bench kv", "bench tasks", "Measure Cluster.Put"} {
		if !strings.Contains(h.stdout.String(), strings.TrimPrefix(w, "bench ")) {
			t.Errorf("help does not mention %q: %q", w, h.stdout.String())
		}
	}
}

func TestBenchKVRequestsAndJSON(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		clients, total, keySize int
	}{
		{"more ops than clients", 8, 50, 12},
		{"fewer ops than clients", 8, 3, 16},
		{"one client", 1, 5, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &putRecorder{}
			addr := startFake(t, f)
			h := newHarness(t)
			code := h.run("--addr", addr, "-o", "json", "bench", "kv", "--clients", fmt.Sprint(tc.clients), "--total", fmt.Sprint(tc.total),
				"--val-size", "10", "--key-size", fmt.Sprint(tc.keySize))
			if code != exitOK {
				t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
			}
			if h.stderr.String() != "" {
				t.Errorf("stderr %q, want nothing (not a terminal, and JSON)", h.stderr.String())
			}
			puts := f.recorded()
			if len(puts) != tc.total {
				t.Fatalf("%d Put calls, want %d", len(puts), tc.total)
			}
			keys := map[string]bool{}
			for _, p := range puts {
				keys[p.GetKey()] = true
				if len(p.GetKey()) != tc.keySize || !strings.HasPrefix(p.GetKey(), "bench/") {
					t.Errorf("key %q, want bench/ and %d bytes", p.GetKey(), tc.keySize)
				}
				if string(p.GetValue()) != "xxxxxxxxxx" {
					t.Errorf("value %q, want 10 bytes", p.GetValue())
				}
			}
			for seq := range tc.total {
				if k := benchKey(tc.keySize, seq); !keys[k] {
					t.Errorf("key %q of op %d never written", k, seq)
				}
			}
			m := benchResult(t, h.stdout.String(), "val_size", "key_size")
			for k, want := range map[string]float64{"total": float64(tc.total), "requested": float64(tc.total), "errors": 0,
				"clients": float64(tc.clients), "conns": 1, "val_size": 10, "key_size": float64(tc.keySize)} {
				if got := num(t, m, k); got != want {
					t.Errorf("%s = %v, want %v", k, got, want)
				}
			}
			if m["benchmark"] != "kv" || m["interrupted"] != false {
				t.Errorf("benchmark %v interrupted %v, want kv and false", m["benchmark"], m["interrupted"])
			}
			if eps, _ := m["endpoints"].([]any); len(eps) != 1 || eps[0] != addr {
				t.Errorf("endpoints %v, want [%s]", m["endpoints"], addr)
			}
			if g, _ := m["error_groups"].([]any); g == nil || len(g) != 0 {
				t.Errorf("error_groups %v, want []", m["error_groups"])
			}
			wantSaneLatencies(t, m)
		})
	}
}

func TestBenchKVTable(t *testing.T) {
	f := &putRecorder{}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "bench", "kv", "--total", "1200", "--clients", "3"); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	out := h.stdout.String()
	for _, w := range []string{
		"Benchmark:  kv put, 256-byte values, 16-byte keys\n",
		"Endpoints:  " + addr + " (1 connection)\n",
		"Clients:    3\n",
		"Total:      1,200\n",
		"Errors:     0\n",
		"Elapsed:    ", "Rate:       ", " ops/s\n",
		"Latency:    mean ", ", p50 ", ", p90 ", ", p99 ", ", max ",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("table lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "Errors by message") || h.stderr.String() != "" {
		t.Errorf("an error-free run printed errors: stdout %q stderr %q", out, h.stderr.String())
	}
}

func TestBenchSpreadsClientsOverEndpoints(t *testing.T) {
	// Each endpoint's first Put waits until the other endpoint got one:
	// the run can only finish if both are used at once.
	both := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	seen := map[int]bool{}
	barrier := func(which int) func(context.Context, int) error {
		return func(ctx context.Context, _ int) error {
			mu.Lock()
			seen[which] = true
			if len(seen) == 2 {
				once.Do(func() { close(both) })
			}
			mu.Unlock()
			select {
			case <-both:
				return nil
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
	}
	a, b := &putRecorder{hook: barrier(0)}, &putRecorder{hook: barrier(1)}
	addrA, addrB := startFake(t, a), startFake(t, b)
	h := newHarness(t)
	run := h.runAsync("-o", "json", "bench", "kv", "--endpoints", addrA+", "+addrB, "--clients", "4", "--total", "40", "--conns", "2")
	if code := run(); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	na, nb := len(a.recorded()), len(b.recorded())
	if na+nb != 40 || na == 0 || nb == 0 {
		t.Errorf("puts %d on %s and %d on %s, want 40 over both", na, addrA, nb, addrB)
	}
	m := benchResult(t, h.stdout.String(), "val_size", "key_size")
	if num(t, m, "conns") != 4 {
		t.Errorf("conns %v, want 2 per endpoint", m["conns"])
	}
	if eps, _ := m["endpoints"].([]any); len(eps) != 2 || eps[0] != addrA || eps[1] != addrB {
		t.Errorf("endpoints %v, want [%s %s]", m["endpoints"], addrA, addrB)
	}
}

func TestBenchCountsAndGroupsErrors(t *testing.T) {
	f := &putRecorder{hook: func(_ context.Context, n int) error {
		switch {
		case n%4 == 0:
			return status.Error(codes.InvalidArgument, "value: too\nodd")
		case n%5 == 0:
			return status.Error(codes.Aborted, "leader changed")
		}
		return nil
	}}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "bench", "kv", "--total", "40", "--clients", "2"); code != exitFailure {
		t.Fatalf("exit %d, want 1; stderr %q", code, h.stderr.String())
	}
	// n%4: 10; n%5 and not n%4: 8 - 2 = 6.
	out := h.stdout.String()
	for _, w := range []string{"Total:      40\n", "Errors:     16\n", "\nErrors by message:\n",
		"      10  InvalidArgument: value: too odd\n", "       6  Aborted: leader changed\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if strings.Index(out, "InvalidArgument") > strings.Index(out, "Aborted") {
		t.Errorf("errors not most frequent first:\n%s", out)
	}
	h.wantErrorLine("16 of 40 operations failed (most often: InvalidArgument: value: too odd)", "see the errors above")

	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "bench", "kv", "--total", "40", "--clients", "2"); code != exitFailure {
		t.Fatalf("json: exit %d, want 1; stderr %q", code, h.stderr.String())
	}
	m := benchResult(t, h.stdout.String(), "val_size", "key_size")
	if num(t, m, "errors") != 16 || num(t, m, "total") != 40 {
		t.Errorf("errors %v total %v, want 16 of 40", m["errors"], m["total"])
	}
	groups, _ := json.Marshal(m["error_groups"])
	if want := `[{"count":10,"message":"InvalidArgument: value: too odd"},{"count":6,"message":"Aborted: leader changed"}]`; string(groups) != want {
		t.Errorf("error_groups %s, want %s", groups, want)
	}
	h.wantErrorLine("16 of 40 operations failed", "see error_groups in the output")
}

func TestBenchEveryOperationFails(t *testing.T) {
	t.Run("nothing listening", func(t *testing.T) {
		addr := closedAddr(t)
		h := newHarness(t)
		if code := h.run("--addr", addr, "bench", "kv", "--total", "100000", "--clients", "4"); code != exitFailure {
			t.Fatalf("exit %d, want 1; stderr %q", code, h.stderr.String())
		}
		h.wantErrorLine("cannot reach blixard at "+addr, "is a node running?")
		if h.stdout.String() != "" {
			t.Errorf("stdout %q, want nothing", h.stdout.String())
		}
	})
	t.Run("nothing listening, endpoints", func(t *testing.T) {
		a, b := closedAddr(t), closedAddr(t)
		h := newHarness(t)
		if code := h.run("-o", "json", "bench", "tasks", "--endpoints", a+","+b); code != exitFailure {
			t.Fatalf("exit %d, want 1; stderr %q", code, h.stderr.String())
		}
		h.wantErrorLine("cannot reach blixard at " + a + ", " + b)
		if h.stdout.String() != "" {
			t.Errorf("stdout %q, want nothing", h.stdout.String())
		}
	})
	t.Run("refused by the node", func(t *testing.T) {
		f := &putRecorder{hook: func(context.Context, int) error {
			return status.Error(codes.PermissionDenied, "token policy read may not call Put")
		}}
		addr := startFake(t, f)
		h := newHarness(t)
		if code := h.run("--addr", addr, "bench", "kv", "--total", "100000", "--clients", "2"); code != exitFailure {
			t.Fatalf("exit %d, want 1; stderr %q", code, h.stderr.String())
		}
		h.wantErrorLine("token policy read may not call Put", "'blixard token policies'")
		// It stops once the first operations all failed.
		if n := len(f.recorded()); n < benchGiveUpMin || n > 1000 {
			t.Errorf("%d Put calls, want the run to stop soon after %d failures", n, benchGiveUpMin)
		}
	})
	t.Run("every task fails", func(t *testing.T) {
		f := newFakeTasks()
		f.next = finalTask("t-9", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{ExitCode: 3})
		addr := startFake(t, f)
		h := newHarness(t)
		if code := h.run("--addr", addr, "bench", "tasks", "--total", "5", "--clients", "2", "--command", "/bin/false"); code != exitFailure {
			t.Fatalf("exit %d, want 1; stderr %q", code, h.stderr.String())
		}
		h.wantErrorLine("no task succeeded: task failed with exit code 3 (all 5)", `--command "/bin/false"`, "blixard task status t-9")
		f.mu.Lock()
		defer f.mu.Unlock()
		keys := map[string]bool{}
		for _, s := range f.submits {
			keys[s.GetIdempotencyKey()] = true
			if s.GetSpec().GetCommand() != "/bin/false" || s.GetSpec().GetName() != benchTaskName {
				t.Errorf("spec %v, want command /bin/false named %q", s.GetSpec(), benchTaskName)
			}
		}
		if len(f.submits) != 5 || len(keys) != 5 {
			t.Errorf("%d submits with %d idempotency keys, want 5 distinct", len(f.submits), len(keys))
		}
	})
	t.Run("tasks never final", func(t *testing.T) {
		f := newFakeTasks()
		f.next = pendingTask("t-p")
		addr := startFake(t, f)
		h := newHarness(t)
		if code := h.run("--addr", addr, "--timeout", "1s", "bench", "tasks", "--total", "3", "--clients", "3"); code != exitFailure {
			t.Fatalf("exit %d, want 1; stderr %q", code, h.stderr.String())
		}
		h.wantErrorLine("no task was final within --timeout 1s (task t-p is still pending)", "'blixard worker list'")
	})
}

func TestBenchTasksAgainstFake(t *testing.T) {
	f := newFakeTasks()
	f.next = finalTask("t-ok", blixardpb.TaskState_TASK_STATE_SUCCEEDED, &blixardpb.TaskResult{})
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "bench", "tasks", "--total", "7", "--clients", "3"); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	for _, w := range []string{"Benchmark:  tasks, /bin/true submitted and waited for\n", "Total:      7\n", "Errors:     0\n"} {
		if !strings.Contains(h.stdout.String(), w) {
			t.Errorf("table lacks %q:\n%s", w, h.stdout.String())
		}
	}
}

func TestBenchInterrupted(t *testing.T) {
	const fast, clients = 5, 4
	blocked := make(chan int, 100)
	f := &putRecorder{hook: func(ctx context.Context, n int) error {
		if n <= fast {
			return nil
		}
		blocked <- n
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}}
	addr := startFake(t, f)
	for _, json := range []bool{false, true} {
		t.Run(fmt.Sprintf("json=%v", json), func(t *testing.T) {
			f.mu.Lock()
			f.puts = nil
			f.mu.Unlock()
			h := newHarness(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			args := []string{"--addr", addr, "bench", "kv", "--total", "100", "--clients", fmt.Sprint(clients)}
			if json {
				args = append(args, "-o", "json")
			}
			done := make(chan int, 1)
			go func() { done <- h.runCtx(ctx, args...) }()
			for range clients {
				select {
				case <-blocked:
				case <-time.After(testDeadline):
					t.Fatalf("the clients never blocked; stderr %q", h.stderr.String())
				}
			}
			cancel()
			select {
			case code := <-done:
				if code != exitInterrupted {
					t.Fatalf("exit %d, want %d; stderr %q", code, exitInterrupted, h.stderr.String())
				}
			case <-time.After(testDeadline):
				t.Fatal("bench did not stop when its context was cancelled")
			}
			h.wantErrorLine("interrupted", "the 5 of 100 operations that finished")
			if json {
				m := benchResult(t, h.stdout.String(), "val_size", "key_size")
				if m["interrupted"] != true || num(t, m, "total") != fast || num(t, m, "requested") != 100 || num(t, m, "errors") != 0 {
					t.Errorf("JSON %v, want interrupted with 5 of 100 and no errors", m)
				}
				return
			}
			if !strings.Contains(h.stdout.String(), "Total:      5 of 100 (interrupted)\nErrors:     0\n") {
				t.Errorf("table does not show the partial count:\n%s", h.stdout.String())
			}
		})
	}
}

func TestBenchProgressBar(t *testing.T) {
	f := &putRecorder{}
	addr := startFake(t, f)
	terminal := func(io.Writer) bool { return true }

	h := newHarness(t)
	h.deps.isTerminal = terminal
	if code := h.run("--addr", addr, "bench", "kv", "--total", "20", "--clients", "2"); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	got := h.stderr.String()
	if !strings.HasPrefix(got, "\r[") || !strings.HasSuffix(got, "\x1b[K\n") || strings.Count(got, "\n") != 1 {
		t.Errorf("stderr %q, want redrawn progress lines ending in one newline", got)
	}
	last := got[strings.LastIndex(got, "\r")+1:]
	if !strings.HasPrefix(last, "[####################] 20/20  ") || !strings.Contains(last, "/s") {
		t.Errorf("last progress line %q, want a full bar at 20/20", last)
	}
	if !strings.Contains(h.stdout.String(), "Total:      20\n") {
		t.Errorf("stdout %q lacks the result", h.stdout.String())
	}

	// Never with JSON output, even on a terminal.
	h = newHarness(t)
	h.deps.isTerminal = terminal
	if code := h.run("--addr", addr, "-o", "json", "bench", "kv", "--total", "20"); code != exitOK {
		t.Fatalf("json: exit %d, stderr %q", code, h.stderr.String())
	}
	if h.stderr.String() != "" {
		t.Errorf("json: stderr %q, want nothing", h.stderr.String())
	}
}

func TestBenchBar(t *testing.T) {
	for _, tc := range []struct {
		p    loadgen.Progress
		want string
	}{
		{loadgen.Progress{Done: 0, Total: 10000}, "[                    ] 0/10,000  0/s"},
		{loadgen.Progress{Done: 4000, Total: 10000, Elapsed: 4 * time.Second}, "[########            ] 4,000/10,000  1,000/s"},
		{loadgen.Progress{Done: 3, Errors: 2, Total: 3, Elapsed: time.Second}, "[####################] 3/3  3/s  2 failed"},
		{loadgen.Progress{Done: 1, Total: 3, Elapsed: 2 * time.Second}, "[######              ] 1/3  1/s"},
	} {
		if got := benchBar(tc.p); got != tc.want {
			t.Errorf("benchBar(%+v) = %q, want %q", tc.p, got, tc.want)
		}
	}
}

func TestBenchFormatting(t *testing.T) {
	for n, want := range map[int]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 12345: "12,345", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q, want %q", n, got, want)
		}
	}
	for r, want := range map[float64]string{0: "0.0", 1620.54: "1,620.5", 999.96: "1,000.0", 0.04: "0.0", 12.25: "12.3"} {
		if got := formatRate(r); got != want {
			t.Errorf("formatRate(%v) = %q, want %q", r, got, want)
		}
	}
	for _, tc := range []struct {
		size, seq int
		want      string
	}{{16, 0, "bench/0000000000"}, {16, 1999, "bench/0000001999"}, {7, 9, "bench/9"}, {8, 42, "bench/42"}} {
		if got := benchKey(tc.size, tc.seq); got != tc.want {
			t.Errorf("benchKey(%d, %d) = %q, want %q", tc.size, tc.seq, got, tc.want)
		}
	}
}

func TestBenchErrorMessage(t *testing.T) {
	failed := finalTask("t42", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{Error: `start attempt "t42.1": no such file`})
	for _, tc := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unavailable, "no leader"), "Unavailable: no leader"},
		{status.Error(codes.DeadlineExceeded, "context deadline exceeded"), "no answer within --timeout 2s"},
		{context.DeadlineExceeded, "no answer within --timeout 2s"},
		{errors.New("plain\nbroken"), "plain broken"},
		{&benchStepError{step: "SubmitTask", err: status.Error(codes.ResourceExhausted, "full")}, "SubmitTask: ResourceExhausted: full"},
		{&benchStepError{step: "WaitTask", id: "t7", err: status.Error(codes.NotFound, `task "t7" not found`)}, `WaitTask: NotFound: task "ID" not found`},
		{&benchStepError{step: "WaitTask", err: status.Error(codes.DeadlineExceeded, "x")}, "WaitTask: no answer within --timeout 2s"},
		{&benchTaskFailed{task: failed}, `task could not start: start attempt "ID.1": no such file`},
		{&benchTaskFailed{task: finalTask("t1", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{ExitCode: 2})}, "task failed with exit code 2"},
		{&benchTaskFailed{task: finalTask("t1", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{ExitCode: -1, Signal: "SIGKILL"})}, "task was killed by SIGKILL"},
		{&benchTaskFailed{task: finalTask("t1", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{OomKilled: true})}, "task was killed for using too much memory"},
		{&benchTaskFailed{task: finalTask("t1", blixardpb.TaskState_TASK_STATE_TIMED_OUT, nil)}, "task ended timed_out"},
		{&benchTaskFailed{task: finalTask("t1", blixardpb.TaskState_TASK_STATE_LOST, nil)}, "task was lost: its worker went away"},
		{&benchTaskTimeout{id: "t3", state: blixardpb.TaskState_TASK_STATE_RUNNING, err: context.DeadlineExceeded}, "task not final within --timeout 2s (still running)"},
	} {
		if got := benchErrorMessage(tc.err, 2*time.Second); got != tc.want {
			t.Errorf("benchErrorMessage(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestBenchResultJSONAndTable(t *testing.T) {
	var lats []time.Duration
	for i := 1; i <= 100; i++ {
		lats = append(lats, time.Duration(i)*time.Millisecond)
	}
	var groups []loadgen.ErrorGroup
	for i := range 7 {
		groups = append(groups, loadgen.ErrorGroup{Message: fmt.Sprintf("e%d", i), Count: 7 - i})
	}
	r := loadgen.Result{Clients: 4, Total: 200, Done: 128, Errors: 28, Elapsed: 2 * time.Second, Latencies: lats, ErrorGroups: groups}
	w := kvWorkload(16, 8)

	j := newBenchJSON(w, []string{"a:1"}, 1, r)
	if j.Total != 128 || j.Requested != 200 || j.Errors != 28 || j.RatePerSec != 50 || j.ElapsedSec != 2 ||
		j.P50Ms != 50 || j.P90Ms != 90 || j.P99Ms != 99 || j.MaxMs != 100 || j.MeanMs != 50.5 || *j.ValSize != 8 || *j.KeySize != 16 {
		t.Errorf("JSON %+v, want 128 of 200, rate 50/s, p50 50 p90 90 p99 99 max 100 mean 50.5", j)
	}
	if len(j.ErrorGroups) != 7 || j.ErrorGroups[0] != (benchErrorJSON{"e0", 7}) {
		t.Errorf("error groups %+v", j.ErrorGroups)
	}

	var b strings.Builder
	if err := printBench(&b, w, []string{"a:1", "b:2"}, 2, r); err != nil {
		t.Fatal(err)
	}
	want := `Benchmark:  kv put, 8-byte values, 16-byte keys
Endpoints:  a:1, b:2 (2 connections)
Clients:    4
Total:      128
Errors:     28
Elapsed:    2.000s
Rate:       50.0 ops/s
Latency:    mean 50.50ms, p50 50.00ms, p90 90.00ms, p99 99.00ms, max 100.00ms

Errors by message:
         7  e0
         6  e1
         5  e2
         4  e3
         3  e4
  … and 2 more messages
`
	if b.String() != want {
		t.Errorf("table\n%s\nwant\n%s", b.String(), want)
	}

	// No success: no latencies.
	b.Reset()
	if err := printBench(&b, w, []string{"a:1"}, 1, loadgen.Result{Clients: 1, Total: 9, Done: 1, Errors: 1, Interrupted: true,
		ErrorGroups: []loadgen.ErrorGroup{{Message: "boom", Count: 1}}}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"Total:      1 of 9 (interrupted)\n", "Latency:    - (no operation succeeded)\n", "Rate:       0.0 ops/s\n", "       1  boom\n"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("table lacks %q:\n%s", w, b.String())
		}
	}
}

// ---------------------------------------------------------------------------
// Against a real in-process node.

// startNode runs a real single-node cluster (bootstrapped, a worker) on a
// loopback port until the test ends, and waits until it has a leader and
// a ready worker. tweak may change the configuration first.
func startNode(t *testing.T, tweak func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.Config{
		ID: 1, DataDir: filepath.Join(t.TempDir(), "node"), Listen: "127.0.0.1:0",
		Bootstrap: true, Worker: true, CPUMillis: 2000, MemoryMiB: 1024, Labels: map[string]string{},
		TickInterval: 20 * time.Millisecond, HeartbeatInterval: 100 * time.Millisecond, WorkerTTL: 2 * time.Second,
		Insecure: true, TaskUser: defaultTaskUser(),
		Logger: slog.New(slog.DiscardHandler),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		s.Stop()
		t.Fatalf("start node: %v", err)
	}
	t.Cleanup(s.Stop)

	tick := time.NewTicker(10 * time.Millisecond) // poll pacing; the condition is what is awaited
	defer tick.Stop()
	for {
		ready := false
		for _, w := range s.State().Workers() {
			ready = ready || w.GetState() == blixardpb.WorkerState_WORKER_STATE_READY
		}
		if s.Node().IsLeader() && ready {
			return s
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node not leader with a ready worker within %s (leader %v, workers %v)", testDeadline, s.Node().IsLeader(), s.State().Workers())
		case <-tick.C:
		}
	}
}

func TestBenchAgainstARealNode(t *testing.T) {
	s := startNode(t, nil)
	addr := s.Addr()

	h := newHarness(t)
	if code := h.run("--addr", addr, "--output", "json", "bench", "kv", "--total", "200", "--clients", "8", "--val-size", "100"); code != exitOK {
		t.Fatalf("bench kv: exit %d, stderr %q", code, h.stderr.String())
	}
	m := benchResult(t, h.stdout.String(), "val_size", "key_size")
	if num(t, m, "total") != 200 || num(t, m, "errors") != 0 || num(t, m, "clients") != 8 || num(t, m, "val_size") != 100 {
		t.Errorf("kv JSON %v, want 200 ops by 8 clients, no errors, val_size 100", m)
	}
	wantSaneLatencies(t, m)
	// The writes are in the replicated state: every key, with its value.
	for seq := range 200 {
		kv, ok := s.State().Get(benchKey(16, seq))
		if !ok || string(kv.GetValue()) != strings.Repeat("x", 100) {
			t.Fatalf("key %q: found %v, value %q; want 100 x's", benchKey(16, seq), ok, kv.GetValue())
		}
	}
	// And readable through the API, as a user would.
	h = newHarness(t)
	if code := h.run("--addr", addr, "kv", "get", "bench/0000000199"); code != exitOK || h.stdout.String() != strings.Repeat("x", 100)+"\n" {
		t.Errorf("kv get bench/0000000199: exit %d, stdout %q, stderr %q", code, h.stdout.String(), h.stderr.String())
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "--output", "json", "bench", "tasks", "--total", "20", "--clients", "4"); code != exitOK {
		t.Fatalf("bench tasks: exit %d, stdout %q, stderr %q", code, h.stdout.String(), h.stderr.String())
	}
	m = benchResult(t, h.stdout.String(), "command")
	if num(t, m, "total") != 20 || num(t, m, "errors") != 0 || num(t, m, "clients") != 4 || m["command"] != "/bin/true" || m["benchmark"] != "tasks" {
		t.Errorf("tasks JSON %v, want 20 tasks by 4 clients, no errors", m)
	}
	wantSaneLatencies(t, m)
	succeeded := 0
	for _, task := range s.State().Tasks(blixardpb.TaskState_TASK_STATE_UNSPECIFIED) {
		if task.GetSpec().GetName() != benchTaskName {
			continue
		}
		if task.GetState() != blixardpb.TaskState_TASK_STATE_SUCCEEDED || task.GetSpec().GetCommand() != "/bin/true" {
			t.Errorf("task %s: %s running %q, want a succeeded /bin/true", task.GetId(), task.GetState(), task.GetSpec().GetCommand())
			continue
		}
		succeeded++
	}
	if succeeded != 20 {
		t.Errorf("%d succeeded bench tasks in the state, want 20", succeeded)
	}

	// A failing command: every task fails, one line says so.
	h = newHarness(t)
	if code := h.run("--addr", addr, "bench", "tasks", "--total", "3", "--clients", "3", "--command", "/bin/false"); code != exitFailure {
		t.Fatalf("bench tasks /bin/false: exit %d, stderr %q", code, h.stderr.String())
	}
	h.wantErrorLine("no task succeeded: task failed with exit code 1 (all 3)")
}

func TestBenchAgainstATLSNodeWithAToken(t *testing.T) {
	// Certificates valid now (the harness's clock is fixed in the past).
	dir := filepath.Join(t.TempDir(), "tls")
	h := newHarness(t)
	h.deps.now = time.Now
	if code := h.run("tls", "init", "--dir", dir); code != exitOK {
		t.Fatalf("tls init: exit %d, stderr %q", code, h.stderr.String())
	}
	h = newHarness(t)
	h.deps.now = time.Now
	if code := h.run("tls", "cert", "--dir", dir, "--node", "1"); code != exitOK {
		t.Fatalf("tls cert --node 1: exit %d, stderr %q", code, h.stderr.String())
	}
	h = newHarness(t)
	h.deps.now = time.Now
	if code := h.run("tls", "cert", "--dir", dir, "--client", "bench"); code != exitOK {
		t.Fatalf("tls cert --client: exit %d, stderr %q", code, h.stderr.String())
	}
	s := startNode(t, func(cfg *server.Config) {
		ca, cert, key, err := pki.ResolveNodeFiles(dir, 1)
		if err != nil {
			t.Fatal(err)
		}
		src, err := pki.NewSource(ca, cert, key, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Insecure, cfg.TLS, cfg.Identify = false, src, server.IdentifyPKI
	})
	addr := s.Addr()

	// Certificates but no token: every Put is refused; one line says why.
	h = newHarness(t)
	if code := h.run("--addr", addr, "--tls-dir", dir, "bench", "kv", "--total", "50", "--clients", "2"); code != exitFailure {
		t.Fatalf("no token: exit %d, stderr %q", code, h.stderr.String())
	}
	h.wantErrorLine(envToken)

	h = newHarness(t)
	if code := h.run("--addr", addr, "--tls-dir", dir, "-o", "json", "cluster", "bootstrap-token"); code != exitOK {
		t.Fatalf("bootstrap-token: exit %d, stderr %q", code, h.stderr.String())
	}
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(h.stdout.String()), &tok); err != nil || tok.Token == "" {
		t.Fatalf("bootstrap-token output %q: %v", h.stdout.String(), err)
	}

	h = newHarness(t)
	h.env[envToken] = tok.Token
	if code := h.run("--tls-dir", dir, "-o", "json", "bench", "kv", "--endpoints", addr, "--total", "50", "--clients", "4"); code != exitOK {
		t.Fatalf("bench kv over TLS: exit %d, stderr %q", code, h.stderr.String())
	}
	m := benchResult(t, h.stdout.String(), "val_size", "key_size")
	if num(t, m, "total") != 50 || num(t, m, "errors") != 0 {
		t.Errorf("JSON %v, want 50 ops and no errors", m)
	}
	if _, ok := s.State().Get(benchKey(16, 49)); !ok {
		t.Error("the last key was not written")
	}
}
