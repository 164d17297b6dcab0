package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
)

// jsonEqual checks that got is JSON equal to want, names and values.
func jsonEqual(t *testing.T, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad want: %v", err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("JSON output\n got %s\nwant %s", got, want)
	}
}

func statusFixture() *fakeCluster {
	voter, learner := blixardpb.MemberRole_MEMBER_ROLE_VOTER, blixardpb.MemberRole_MEMBER_ROLE_LEARNER
	return &fakeCluster{status: &blixardpb.StatusResponse{
		NodeId: 2, Leader: 1, Term: 5, CommitIndex: 100, AppliedIndex: 99,
		Members: []*blixardpb.MemberStatus{
			{Id: 2, Addr: "127.0.0.1:7002", Role: voter, State: "replicating", AppliedIndex: 99},
			{Id: 1, Addr: "127.0.0.1:7001", Role: voter, State: "leader", AppliedIndex: 100},
			{Id: 3, Addr: "127.0.0.1:7003", Role: learner, State: "probing", AppliedIndex: 50},
		},
	}}
}

func TestClusterStatusJSON(t *testing.T) {
	f := statusFixture()
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "--output", "json", "cluster", "status"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &obj); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedKeys(obj), sorted("node_id", "leader", "term", "commit_index", "applied_index", "members"); !reflect.DeepEqual(got, want) {
		t.Errorf("fields = %v, want %v", got, want)
	}
	jsonEqual(t, h.stdout.String(), `{
		"node_id": 2, "leader": 1, "term": 5, "commit_index": 100, "applied_index": 99,
		"members": [
			{"id": 1, "addr": "127.0.0.1:7001", "role": "voter", "state": "leader", "applied_index": 100},
			{"id": 2, "addr": "127.0.0.1:7002", "role": "voter", "state": "replicating", "applied_index": 99},
			{"id": 3, "addr": "127.0.0.1:7003", "role": "learner", "state": "probing", "applied_index": 50}
		]}`)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.statuses) != 1 || f.statuses[0].GetLocal() {
		t.Errorf("status requests = %v, want one non-local", f.statuses)
	}
}

func TestClusterStatusTable(t *testing.T) {
	f := statusFixture()
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "cluster", "status", "--local"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	want := "" +
		"LEADER  ID  ADDR            ROLE     STATE        APPLIED\n" +
		"*       1   127.0.0.1:7001  voter    leader       100\n" +
		"        2   127.0.0.1:7002  voter    replicating  99\n" +
		"        3   127.0.0.1:7003  learner  probing      50\n"
	if got := h.stdout.String(); got != want {
		t.Errorf("table\n got:\n%s\nwant:\n%s", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.statuses[0].GetLocal() {
		t.Error("--local not sent")
	}
}

func workersFixture() *fakeCluster {
	hb := testNow.Add(-1500 * time.Millisecond)
	reported := time.Date(2026, 3, 1, 11, 59, 50, 123456789, time.UTC)
	return &fakeCluster{workers: &blixardpb.ListWorkersResponse{Workers: []*blixardpb.WorkerInfo{
		{
			Worker: &blixardpb.Worker{
				Id: 2, Addr: "127.0.0.1:7002", State: blixardpb.WorkerState_WORKER_STATE_DOWN,
				Capacity: &blixardpb.Resources{CpuMillis: 4000, MemoryMib: 8192, DiskMib: 10240},
			},
		},
		{
			Worker: &blixardpb.Worker{
				Id: 1, Addr: "127.0.0.1:7001", State: blixardpb.WorkerState_WORKER_STATE_READY,
				Capacity:     &blixardpb.Resources{CpuMillis: 500, MemoryMib: 2048},
				Labels:       map[string]string{"zone": "eu-1", "disk": "ssd"},
				Capabilities: []string{"docker"},
				Cordoned:     true, CordonReason: "disk swap",
			},
			Status: &blixardpb.WorkerStatus{
				WorkerId: 1, CpuPercent: 12.5, MemoryUsedMib: 512, RunningTasks: 3,
				ReportedAtUnixNano: reported.UnixNano(),
			},
			LastHeartbeatUnixNano: hb.UnixNano(),
		},
	}}}
}

func TestWorkerListJSON(t *testing.T) {
	addr := startFake(t, workersFixture())
	h := newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "worker", "list"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &list); err != nil {
		t.Fatal(err)
	}
	for _, w := range list {
		want := sorted("id", "addr", "status", "cpu", "memory_mib", "labels", "last_heartbeat", "capabilities", "disk_mib", "usage",
			"schedulable", "cordoned", "cordon_reason", "unschedulable", "unschedulable_reason")
		if got := sortedKeys(w); !reflect.DeepEqual(got, want) {
			t.Errorf("worker fields = %v, want %v", got, want)
		}
		if got, want := sortedKeys(w["usage"].(map[string]any)), sorted("cpu_percent", "memory_used_mib", "running_tasks", "reported_at"); !reflect.DeepEqual(got, want) {
			t.Errorf("usage fields = %v, want %v", got, want)
		}
	}
	jsonEqual(t, h.stdout.String(), `[
		{"id": 1, "addr": "127.0.0.1:7001", "status": "ready", "cpu": 0.5, "memory_mib": 2048,
		 "labels": {"disk": "ssd", "zone": "eu-1"}, "last_heartbeat": "2026-03-01T11:59:58.5Z",
		 "capabilities": ["docker"], "disk_mib": 0,
		 "usage": {"cpu_percent": 12.5, "memory_used_mib": 512, "running_tasks": 3, "reported_at": "2026-03-01T11:59:50.123456789Z"},
		 "schedulable": false, "cordoned": true, "cordon_reason": "disk swap", "unschedulable": false, "unschedulable_reason": ""},
		{"id": 2, "addr": "127.0.0.1:7002", "status": "down", "cpu": 4, "memory_mib": 8192,
		 "labels": {}, "last_heartbeat": null, "capabilities": [], "disk_mib": 10240,
		 "usage": {"cpu_percent": 0, "memory_used_mib": 0, "running_tasks": 0, "reported_at": null},
		 "schedulable": false, "cordoned": false, "cordon_reason": "", "unschedulable": false, "unschedulable_reason": ""}
	]`)
}

func TestWorkerListEmptyJSON(t *testing.T) {
	addr := startFake(t, &fakeCluster{workers: &blixardpb.ListWorkersResponse{}})
	h := newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "worker", "list"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := strings.TrimSpace(h.stdout.String()); got != "[]" {
		t.Errorf("empty list = %q, want []", got)
	}
}

func TestWorkerListTable(t *testing.T) {
	addr := startFake(t, workersFixture())
	h := newHarness(t)
	if code := h.run("--addr", addr, "worker", "list"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	want := "" +
		"ID  ADDR            STATUS  SCHEDULING            CPU  MEMORY   DISK      CPU USED  MEMORY USED  TASKS  LAST HEARTBEAT  LABELS              CAPABILITIES\n" +
		"1   127.0.0.1:7001  ready   cordoned (disk swap)  0.5  2048MiB  -         12.5%     512MiB       3      1.5s ago        disk=ssd,zone=eu-1  docker\n" +
		"2   127.0.0.1:7002  down    no                    4    8192MiB  10240MiB  -         -            -      -               -                   -\n"
	if got := h.stdout.String(); got != want {
		t.Errorf("table\n got:\n%s\nwant:\n%s", got, want)
	}
}

func TestKVGet(t *testing.T) {
	f := &fakeCluster{kv: map[string]*blixardpb.GetResponse{
		"hello": {Found: true, Value: []byte("world"), ModIndex: 17},
	}}
	addr := startFake(t, f)

	t.Run("table", func(t *testing.T) {
		h := newHarness(t)
		if code := h.run("--addr", addr, "kv", "get", "hello", "--serializable"); code != exitOK {
			t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
		}
		if got := h.stdout.String(); got != "world\n" {
			t.Errorf("stdout = %q, want %q", got, "world\n")
		}
		f.mu.Lock()
		last := f.gets[len(f.gets)-1]
		f.mu.Unlock()
		if last.GetKey() != "hello" || !last.GetSerializable() {
			t.Errorf("request = %v, want key hello, serializable", last)
		}
	})
	t.Run("json", func(t *testing.T) {
		h := newHarness(t)
		if code := h.run("--addr", addr, "-o", "json", "kv", "get", "hello"); code != exitOK {
			t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
		}
		jsonEqual(t, h.stdout.String(), `{"key": "hello", "value": "world", "mod_index": 17, "found": true}`)
	})
	t.Run("missing table", func(t *testing.T) {
		h := newHarness(t)
		if code := h.run("--addr", addr, "kv", "get", "x"); code != exitFailure {
			t.Errorf("exit code = %d, want %d", code, exitFailure)
		}
		if got, want := h.stderr.String(), "error: key \"x\" not found — set it with 'blixard kv put x VALUE'\n"; got != want {
			t.Errorf("stderr = %q, want %q", got, want)
		}
		if h.stdout.String() != "" {
			t.Errorf("stdout = %q, want nothing", h.stdout.String())
		}
	})
	t.Run("missing json", func(t *testing.T) {
		h := newHarness(t)
		if code := h.run("--addr", addr, "-o", "json", "kv", "get", "x"); code != exitFailure {
			t.Errorf("exit code = %d, want %d", code, exitFailure)
		}
		jsonEqual(t, h.stdout.String(), `{"key": "x", "value": null, "mod_index": 0, "found": false}`)
		h.wantErrorLine(`key "x" not found`)
	})
}

func TestKVPut(t *testing.T) {
	f := &fakeCluster{}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "kv", "put", "hello", "big world"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "42\n" {
		t.Errorf("stdout = %q, want the raft index", got)
	}
	f.mu.Lock()
	if len(f.puts) != 1 || f.puts[0].GetKey() != "hello" || string(f.puts[0].GetValue()) != "big world" {
		t.Errorf("puts = %v", f.puts)
	}
	f.mu.Unlock()

	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "kv", "put", "k", "v"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	jsonEqual(t, h.stdout.String(), `{"key": "k", "index": 42}`)
}

func TestClusterRemoveAndTransfer(t *testing.T) {
	f := &fakeCluster{leader: 2}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "cluster", "remove", "3"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	f.mu.Lock()
	if got := h.stdout.String(); got != "removed member 3\n" || len(f.removed) != 1 || f.removed[0] != 3 {
		t.Errorf("stdout %q, removed %v", got, f.removed)
	}
	f.mu.Unlock()

	h = newHarness(t)
	if code := h.run("--addr", addr, "cluster", "transfer-leader", "2"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "leader is now 2\n" {
		t.Errorf("stdout = %q", got)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "cluster", "transfer-leader", "3"); code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("leadership did not move to 3 (leader is 2)")
}

func TestUnreachable(t *testing.T) {
	addr := closedAddr(t)
	for _, args := range [][]string{
		{"cluster", "status"}, {"worker", "list"}, {"kv", "get", "k"}, {"kv", "put", "k", "v"},
		{"cluster", "remove", "2"}, {"cluster", "transfer-leader", "2"},
	} {
		h := newHarness(t)
		if code := h.run(append([]string{"--addr", addr}, args...)...); code != exitFailure {
			t.Errorf("%v: exit code = %d, want %d", args, code, exitFailure)
		}
		want := "error: cannot reach blixard at " + addr + " — is a node running? start one with 'blixard dev' or pass --addr\n"
		if got := h.stderr.String(); got != want {
			t.Errorf("%v: stderr\n got %q\nwant %q", args, got, want)
		}
	}
}

func TestAddrFromEnv(t *testing.T) {
	addr := startFake(t, statusFixture())
	h := newHarness(t)
	h.env[envAddr] = addr
	if code := h.run("-o", "json", "cluster", "status"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}

	// --addr wins over the environment.
	closed := closedAddr(t)
	h = newHarness(t)
	h.env[envAddr] = addr
	if code := h.run("--addr", closed, "cluster", "status"); code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("cannot reach blixard at " + closed)

	h = newHarness(t)
	h.env[envAddr] = "nonsense"
	if code := h.run("cluster", "status"); code != exitUsage {
		t.Errorf("exit code = %d, want %d", code, exitUsage)
	}
	h.wantErrorLine(`BLIXARD_ADDR must be HOST:PORT (got "nonsense")`)
}

func TestTimeout(t *testing.T) {
	addr := startFake(t, &fakeCluster{block: true})
	h := newHarness(t)
	if code := h.run("--addr", addr, "--timeout", "50ms", "cluster", "status"); code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("did not answer within 50ms", "--timeout")
}

func TestServerErrors(t *testing.T) {
	tests := []struct {
		err  error
		want []string
	}{
		{status.Error(codes.NotFound, "node 9 is not a member; see 'blixard cluster status'"), []string{"error: node 9 is not a member"}},
		{status.Error(codes.FailedPrecondition, "this node is the last voter"), []string{"error: this node is the last voter — "}},
		{status.Error(codes.Unavailable, "raftnode: no leader"), []string{"is unavailable: raftnode: no leader", "retry"}},
		{status.Error(codes.Internal, "disk full"), []string{"error: disk full — see the node's log"}},
	}
	for _, tc := range tests {
		addr := startFake(t, &fakeCluster{err: tc.err})
		h := newHarness(t)
		if code := h.run("--addr", addr, "cluster", "remove", "9"); code != exitFailure {
			t.Errorf("%v: exit code = %d, want %d", tc.err, code, exitFailure)
		}
		h.wantErrorLine(tc.want...)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--output", "yaml", "cluster", "status"}, `--output must be "table" or "json" (got "yaml")`},
		{[]string{"--timeout", "0s", "cluster", "status"}, `--timeout must be positive (got "0s")`},
		{[]string{"--timeout", "soon", "cluster", "status"}, `--timeout must be a duration like 500ms, 2s or 1m (got "soon")`},
		{[]string{"--addr", "nohost", "cluster", "status"}, `--addr must be HOST:PORT (got "nohost")`},
		{[]string{"clustr"}, `unknown command "clustr" for "blixard" — did you mean "cluster"?`},
		{[]string{"cluster", "stat"}, `unknown command "stat" for "blixard cluster"`},
		{[]string{"kv", "put", "k"}, "missing VALUE — usage: blixard kv put KEY VALUE"},
		{[]string{"kv", "get"}, "missing KEY — usage: blixard kv get KEY"},
		{[]string{"kv", "get", "a", "b"}, "too many arguments"},
		{[]string{"kv", "get", ""}, "KEY must not be empty"},
		{[]string{"cluster", "remove", "zero"}, `ID must be a positive integer (got "zero")`},
		{[]string{"cluster", "transfer-leader", "0"}, `ID must be a positive integer (got "0")`},
		{[]string{"worker", "list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"dev", "--listen", "nope"}, `--listen must be HOST:PORT (got "nope")`},
	}
	for _, tc := range tests {
		h := newHarness(t)
		if code := h.run(tc.args...); code != exitUsage {
			t.Errorf("%v: exit code = %d, want %d", tc.args, code, exitUsage)
		}
		h.wantErrorLine(tc.want)
		if h.stdout.String() != "" {
			t.Errorf("%v: stdout = %q, want nothing", tc.args, h.stdout.String())
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {}, {"node", "--help"}, {"cluster"}, {"kv", "get", "-h"}, {"help", "worker"},
	} {
		h := newHarness(t)
		if code := h.run(args...); code != exitOK {
			t.Errorf("%v: exit code = %d, want 0; stderr %q", args, code, h.stderr.String())
		}
		if !strings.Contains(h.stdout.String(), "Usage:") {
			t.Errorf("%v: no usage on stdout: %q", args, h.stdout.String())
		}
		if h.stderr.String() != "" {
			t.Errorf("%v: stderr = %q", args, h.stderr.String())
		}
	}
}
