package observe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/stats"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/observe/observetest"
	"github.com/blixard/blixard/internal/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource is a fixed cluster: node 2 of three, node 1 leads.
type fakeSource struct {
	raft    RaftStatus
	raftErr error
	removed bool
	tasks   []*pb.Task
	vms     []*pb.VM
}

func (f *fakeSource) NodeID() uint64 { return 2 }
func (f *fakeSource) Raft(context.Context) (RaftStatus, error) {
	return f.raft, f.raftErr
}
func (f *fakeSource) Removed() bool { return f.removed }
func (f *fakeSource) Members() []*pb.Member {
	return []*pb.Member{
		{Id: 1, Addr: "10.0.0.1:7000", Role: pb.MemberRole_MEMBER_ROLE_VOTER},
		{Id: 2, Addr: "10.0.0.2:7000", Role: pb.MemberRole_MEMBER_ROLE_VOTER},
		{Id: 3, Addr: "10.0.0.3:7000", Role: pb.MemberRole_MEMBER_ROLE_LEARNER},
	}
}
func (f *fakeSource) Workers() []*pb.Worker {
	return []*pb.Worker{
		{Id: 1, Addr: "10.0.0.1:7000", State: pb.WorkerState_WORKER_STATE_READY, Capacity: &pb.Resources{CpuMillis: 4000, MemoryMib: 8192}},
		{Id: 2, Addr: "10.0.0.2:7000", State: pb.WorkerState_WORKER_STATE_READY, Unschedulable: true, UnschedulableReason: "cgroups broken", Capacity: &pb.Resources{CpuMillis: 2000, MemoryMib: 1024}},
		{Id: 3, Addr: "10.0.0.3:7000", State: pb.WorkerState_WORKER_STATE_DOWN, Capacity: &pb.Resources{CpuMillis: 1000, MemoryMib: 512}},
		{Id: 4, Addr: "10.0.0.4:7000", State: pb.WorkerState_WORKER_STATE_READY, Cordoned: true, CordonReason: "disk swap", Capacity: &pb.Resources{CpuMillis: 1000, MemoryMib: 512}},
	}
}
func (f *fakeSource) WorkerStatus(id uint64) (*pb.WorkerStatus, bool) {
	if id != 1 {
		return nil, false
	}
	return &pb.WorkerStatus{WorkerId: 1, CpuPercent: 12.5, MemoryUsedMib: 300, RunningTasks: 1, ReportedAtUnixNano: 1}, true
}
func (f *fakeSource) PendingTasks() int { return 1 }
func (f *fakeSource) VMs() []*pb.VM     { return f.vms }

// TaskSummary summarizes f.tasks (in submission order) as the state does.
func (f *fakeSource) TaskSummary(recent int) state.TaskSummary {
	s := state.TaskSummary{Total: len(f.tasks), ByState: map[pb.TaskState]int{}}
	for _, t := range f.tasks {
		s.ByState[t.State]++
	}
	for i := len(f.tasks) - 1; i >= 0 && len(s.Recent) < recent; i-- {
		s.Recent = append(s.Recent, f.tasks[i])
	}
	return s
}

// Reservations sums the active attempts' and placed VMs' requests, as the
// state keeps them.
func (f *fakeSource) Reservations() map[uint64]state.Usage {
	out := map[uint64]state.Usage{}
	for _, t := range f.tasks {
		n := len(t.Attempts)
		if n == 0 {
			continue
		}
		a := t.Attempts[n-1]
		if a.State != pb.TaskState_TASK_STATE_ASSIGNED && a.State != pb.TaskState_TASK_STATE_RUNNING {
			continue
		}
		r := out[a.WorkerId]
		r.CPUMillis += t.Spec.GetResources().GetCpuMillis()
		r.MemoryMiB += t.Spec.GetResources().GetMemoryMib()
		out[a.WorkerId] = r
	}
	for _, vm := range f.vms {
		if vm.WorkerId == 0 {
			continue
		}
		need := state.VMReservation(vm.Spec)
		r := out[vm.WorkerId]
		r.CPUMillis += need.GetCpuMillis()
		r.MemoryMiB += need.GetMemoryMib()
		out[vm.WorkerId] = r
	}
	return out
}

func task(id string, s pb.TaskState, attempts ...*pb.Attempt) *pb.Task {
	return &pb.Task{Id: id, State: s, Attempts: attempts, CreatedAtUnixNano: 1,
		Spec: &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{CpuMillis: 500, MemoryMib: 100}}}
}

func newFake() *fakeSource {
	return &fakeSource{
		raft: RaftStatus{Term: 7, Leader: 1, Commit: 40, Applied: 39, Role: "follower"},
		tasks: []*pb.Task{
			task("t1", pb.TaskState_TASK_STATE_SUCCEEDED, &pb.Attempt{WorkerId: 1, State: pb.TaskState_TASK_STATE_SUCCEEDED, FinishedAtUnixNano: 5, Result: &pb.TaskResult{}}),
			task("t2", pb.TaskState_TASK_STATE_RUNNING, &pb.Attempt{WorkerId: 1, State: pb.TaskState_TASK_STATE_RUNNING}),
			task("t3", pb.TaskState_TASK_STATE_PENDING),
			// A retry: the last attempt failed, so nothing is reserved.
			task("t4", pb.TaskState_TASK_STATE_PENDING, &pb.Attempt{WorkerId: 1, State: pb.TaskState_TASK_STATE_FAILED}),
		},
		vms: []*pb.VM{
			{Spec: &pb.VMSpec{Name: "web", Vcpus: 2, MemoryMib: 256}, Desired: pb.VMDesired_VM_DESIRED_RUNNING, State: pb.VMState_VM_STATE_RUNNING, WorkerId: 1, Restarts: 3},
			{Spec: &pb.VMSpec{Name: "<script>alert(1)</script>", Vcpus: 1, MemoryMib: 128}, Desired: pb.VMDesired_VM_DESIRED_RUNNING, State: pb.VMState_VM_STATE_PENDING, Reason: "no worker has room & <b>"},
		},
	}
}

// serve runs Handler on a real socket until the test ends.
func serve(t *testing.T, src Source) string {
	t.Helper()
	h, err := Listen("127.0.0.1:0", Handler(src, NewMetrics(src, nil), nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Serve() }()
	t.Cleanup(func() {
		h.Shutdown(time.Second)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + h.Addr()
}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	return observetest.Get(t, url)
}

// scrape parses /metrics into name{labels} → value.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	code, _, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	return parseMetrics(t, body)
}

func parseMetrics(t *testing.T, body string) map[string]float64 {
	t.Helper()
	out, err := observetest.ParseMetrics(body)
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return out
}

func TestMetricsReadStateAtScrapeTime(t *testing.T) {
	src := newFake()
	base := serve(t, src)
	got := scrape(t, base)
	want := map[string]float64{
		"blixard_raft_term":                              7,
		"blixard_raft_commit_index":                      40,
		"blixard_raft_applied_index":                     39,
		"blixard_raft_is_leader":                         0,
		"blixard_raft_leader_id":                         1,
		"blixard_ready":                                  1,
		"blixard_raft_members{role=voter}":               2,
		"blixard_raft_members{role=learner}":             1,
		"blixard_workers{state=ready}":                   3,
		"blixard_workers_cordoned":                       1,
		"blixard_workers{state=down}":                    1,
		"blixard_workers_schedulable":                    1,
		"blixard_worker_capacity_cpu_cores{worker=1}":    4,
		"blixard_worker_capacity_memory_bytes{worker=2}": 1024 << 20,
		"blixard_worker_reserved_cpu_cores{worker=1}":    0.5 + 2, // t2 + web
		"blixard_worker_reserved_memory_bytes{worker=1}": (100 + 256 + 64) << 20,
		"blixard_worker_reserved_cpu_cores{worker=3}":    0,
		"blixard_tasks{state=succeeded}":                 1,
		"blixard_tasks{state=running}":                   1,
		"blixard_tasks{state=pending}":                   2,
		"blixard_tasks{state=lost}":                      0,
		"blixard_tasks_pending":                          1,
		"blixard_vms{state=running}":                     1,
		"blixard_vms{state=pending}":                     1,
		"blixard_vms{state=failed}":                      0,
		"blixard_vms_desired{desired=running}":           2,
		"blixard_vms_pending":                            1,
		"go_goroutines":                                  -1, // present
		"process_start_time_seconds":                     -1,
	}
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s missing", k)
			continue
		}
		if v >= 0 && g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}

	// Read at scrape time: a change shows in the next scrape.
	src.raft = RaftStatus{Term: 8, Leader: 2, Commit: 41, Applied: 41, Role: "leader"}
	got = scrape(t, base)
	if got["blixard_raft_is_leader"] != 1 || got["blixard_raft_term"] != 8 {
		t.Errorf("after becoming leader: is_leader %v term %v", got["blixard_raft_is_leader"], got["blixard_raft_term"])
	}
}

func TestGRPCAndProposalMetrics(t *testing.T) {
	src := newFake()
	m := NewMetrics(src, nil)
	m.ObserveProposal("submit_task", 3*time.Millisecond, nil)
	m.ObserveProposal("submit_task", time.Millisecond, errors.New("no leader"))
	m.record(context.Background(), "/blixard.rpc.v1.Cluster/Put", time.Now(), nil)
	m.record(context.Background(), "/blixard.rpc.v1.Cluster/Put", time.Now(), errors.New("plain error"))
	h, err := Listen("127.0.0.1:0", Handler(src, m, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Serve() }()
	defer func() { h.Shutdown(time.Second); <-done }()
	got := scrape(t, "http://"+h.Addr())
	for k, v := range map[string]float64{
		"blixard_raft_proposal_duration_seconds{command=submit_task,result=ok}_count":    1,
		"blixard_raft_proposal_duration_seconds{command=submit_task,result=error}_count": 1,
		"blixard_grpc_requests_total{code=OK,method=Put,service=Cluster}":                1,
		"blixard_grpc_requests_total{code=Unknown,method=Put,service=Cluster}":           1,
		"blixard_grpc_request_duration_seconds{method=Put,service=Cluster}_count":        2,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestReadiness(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(*fakeSource)
		code   int
		reason string
	}{
		{"ready", func(*fakeSource) {}, 200, "ok"},
		{"no leader", func(f *fakeSource) { f.raft.Leader = 0 }, 503, "no leader known at term 7"},
		{"lagging", func(f *fakeSource) { f.raft.Applied = 10; f.raft.Commit = 10 + MaxApplyLag + 1 }, 503, "101 entries behind commit index 111"},
		{"lag at the limit", func(f *fakeSource) { f.raft.Applied = 10; f.raft.Commit = 10 + MaxApplyLag }, 200, "ok"},
		{"removed", func(f *fakeSource) { f.removed = true }, 503, "removed from the cluster"},
		{"raft stuck", func(f *fakeSource) { f.raftErr = context.DeadlineExceeded }, 503, "raft is not answering"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := newFake()
			tc.edit(src)
			base := serve(t, src)
			code, _, body := get(t, base+"/readyz")
			if code != tc.code || !strings.Contains(body, tc.reason) || strings.Count(body, "\n") != 1 {
				t.Errorf("/readyz = %d %q, want %d and one line with %q", code, body, tc.code, tc.reason)
			}
			code, _, body = get(t, base+"/readyz?format=json")
			var r Readiness
			if err := json.Unmarshal([]byte(body), &r); err != nil || code != tc.code || r.Ready != (tc.code == 200) || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("/readyz?format=json = %d %s (%v)", code, body, err)
			}
			if code, _, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
				t.Errorf("/healthz = %d %q, want 200 ok whatever the readiness", code, body)
			}
		})
	}
}

func TestOverviewJSON(t *testing.T) {
	base := serve(t, newFake())
	code, hdr, body := get(t, base+"/api/overview")
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("/api/overview = %d %s %s", code, hdr.Get("Content-Type"), body)
	}
	var o Overview
	if err := json.Unmarshal([]byte(body), &o); err != nil {
		t.Fatal(err)
	}
	if o.NodeID != 2 || o.View != "follower" || !o.Ready.Ready || o.Ready.Leader != 1 {
		t.Errorf("header fields: %+v", o)
	}
	if len(o.Members) != 3 || !o.Members[0].Leader || o.Members[0].Self || !o.Members[1].Self || o.Members[2].Role != "learner" {
		t.Errorf("members: %+v", o.Members)
	}
	if len(o.Workers) != 4 || !o.Workers[3].Cordoned || o.Workers[3].Schedulable || o.Workers[3].CordonReason != "disk swap" || o.Workers[0].Reserved != (Reserved{2500, 420}) || o.Workers[0].Usage == nil || o.Workers[0].Usage.RunningTasks != 1 ||
		o.Workers[1].Schedulable || o.Workers[1].UnschedulableReason != "cgroups broken" || o.Workers[2].State != "down" {
		t.Errorf("workers: %+v", o.Workers)
	}
	if o.Tasks.Total != 4 || o.Tasks.Counts["pending"] != 2 || o.Tasks.Counts["timed_out"] != 0 || len(o.Tasks.Recent) != 4 ||
		o.Tasks.Recent[0].ID != "t4" || o.Tasks.Recent[3].ExitCode == nil || *o.Tasks.Recent[3].ExitCode != 0 {
		t.Errorf("tasks: %+v", o.Tasks)
	}
	if _, ok := o.Tasks.Counts["timed_out"]; !ok {
		t.Error("counts lack a zero state")
	}
	if len(o.VMs) != 2 || o.VMs[0].Name != "web" || o.VMs[0].Worker != 1 || o.VMs[0].Restarts != 3 || o.VMs[1].Reason != "no worker has room & <b>" {
		t.Errorf("vms: %+v", o.VMs)
	}
	// Names from users are data: JSON escapes < and > (no HTML in the answer).
	if strings.Contains(body, "<script>") {
		t.Error("overview JSON carries a raw <script>")
	}
}

func TestOverviewListsOnlyTheNewestTasks(t *testing.T) {
	src := newFake()
	src.tasks = nil
	for i := range RecentTasks + 5 {
		src.tasks = append(src.tasks, task(fmt.Sprintf("t%d", i), pb.TaskState_TASK_STATE_SUCCEEDED))
	}
	o := BuildOverview(context.Background(), src, time.Now())
	if o.Tasks.Total != RecentTasks+5 || len(o.Tasks.Recent) != RecentTasks || o.Tasks.Recent[0].ID != src.tasks[len(src.tasks)-1].Id {
		t.Errorf("total %d recent %d first %s", o.Tasks.Total, len(o.Tasks.Recent), o.Tasks.Recent[0].ID)
	}
}

func TestDashboard(t *testing.T) {
	base := serve(t, newFake())
	code, hdr, body := get(t, base+"/")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(body, "<title>Blixard</title>") {
		t.Fatalf("GET / = %d %s\n%s", code, hdr.Get("Content-Type"), body)
	}
	if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP = %q", csp)
	}
	for _, ref := range []string{`src="dashboard.js"`, `href="dashboard.css"`} {
		if !strings.Contains(body, ref) {
			t.Errorf("page lacks %s", ref)
		}
	}
	// No external assets: nothing is loaded from another origin.
	for _, other := range []string{"http://", "https://", `="//`} {
		if strings.Contains(body, other) {
			t.Errorf("page refers to another origin (%s)", other)
		}
	}
	code, hdr, js := get(t, base+"/dashboard.js")
	if code != 200 || !strings.Contains(hdr.Get("Content-Type"), "javascript") || !strings.Contains(js, "api/overview") {
		t.Errorf("GET /dashboard.js = %d %s", code, hdr.Get("Content-Type"))
	}
	if code, _, _ := get(t, base+"/dashboard.css"); code != 200 {
		t.Errorf("GET /dashboard.css = %d", code)
	}
	if code, _, _ := get(t, base+"/nope"); code != 404 {
		t.Errorf("GET /nope = %d, want 404", code)
	}
	resp, err := http.Post(base+"/api/overview", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/overview = %d, want 405", resp.StatusCode)
	}
}

// The dashboard puts data into the page as text only.
func TestDashboardScriptNeverWritesHTML(t *testing.T) {
	js, err := os.ReadFile("dashboard/dashboard.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
		if strings.Contains(string(js), bad) {
			t.Errorf("dashboard.js uses %s", bad)
		}
	}
	if !strings.Contains(string(js), "textContent") {
		t.Error("dashboard.js sets no textContent")
	}
}

func TestListenOnAPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(l.Addr().String(), http.NotFoundHandler(), nil); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Listen on a port in use: %v", err)
	}
}

func TestPeerRaftStreamsAreNotTraced(t *testing.T) {
	for method, want := range map[string]bool{
		"/blixard.rpc.v1.Raft/Send":         false,
		"/blixard.rpc.v1.Raft/SendSnapshot": false,
		"/blixard.rpc.v1.Cluster/Put":       true,
	} {
		if got := skipPeerRaft(&stats.RPCTagInfo{FullMethodName: method}); got != want {
			t.Errorf("trace %s = %v, want %v", method, got, want)
		}
	}
}

func TestTracingFollowsTheEnvironment(t *testing.T) {
	env := func(kv ...string) func(string) (string, bool) {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tc := range []struct {
		env  func(string) (string, bool)
		want bool
	}{
		{env(), false},
		{env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), true},
		{env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces"), true},
		{env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318", "OTEL_SDK_DISABLED", "true"), false},
		{env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318", "OTEL_TRACES_EXPORTER", "none"), false},
	} {
		tr, err := NewTracing(context.Background(), tc.env)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Enabled() != tc.want || (len(tr.ServerOptions()) > 0) != tc.want || (len(tr.DialOptions()) > 0) != tc.want {
			t.Errorf("enabled = %v, want %v", tr.Enabled(), tc.want)
		}
		if err := tr.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}
	if _, err := NewTracing(context.Background(), env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")); err == nil ||
		!strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Errorf("unsupported protocol: %v", err)
	}
}

// countingSource counts reads of the task table.
type countingSource struct {
	*fakeSource
	reads int
}

func (c *countingSource) TaskSummary(recent int) state.TaskSummary {
	c.reads++
	return c.fakeSource.TaskSummary(recent)
}

func TestTablesAreReusedOnlyWithinTheirReadBudget(t *testing.T) {
	src := &countingSource{fakeSource: newFake()}
	c := &tableCache{src: src}
	first := c.get()
	c.cost = time.Hour // as if the read had been slow
	if c.get() != first || src.reads != 1 {
		t.Fatalf("a read within %d× its cost was not reused (%d reads)", readBudget, src.reads)
	}
	c.cost = 0 // as if it had been instant: always read again
	src.tasks = src.tasks[:1]
	if got := c.get(); got == first || src.reads != 2 || got.taskTotal != 1 {
		t.Fatalf("a stale read was reused (%d reads, %d tasks)", src.reads, got.taskTotal)
	}
}
