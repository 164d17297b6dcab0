package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/observe"
	"github.com/blixard/blixard/internal/observe/observetest"
)

func withHTTP(c *Config) { c.HTTPAddr = "127.0.0.1:0" }

// httpGet fetches url on a fresh connection (none left open for goleak).
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	code, _, body := observetest.Get(t, url)
	return code, body
}

// scrape reads s's /metrics into "name{label=value,...}" → value (label
// names sorted; histograms as name{...}_count).
func scrape(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+s.HTTPAddr()+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("node %d /metrics: %d %s", s.cfg.ID, code, body)
	}
	out, err := observetest.ParseMetrics(body)
	if err != nil {
		t.Fatalf("node %d /metrics does not parse: %v", s.cfg.ID, err)
	}
	return out
}

// waitMetrics waits until every metric in want has its value on s.
func waitMetrics(t *testing.T, s *Server, want map[string]float64) {
	t.Helper()
	waitUntil(t, 20*time.Second, fmt.Sprintf("node %d metrics %v", s.cfg.ID, want), func() (bool, string) {
		got := scrape(t, s)
		var wrong []string
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				wrong = append(wrong, fmt.Sprintf("%s=%v (ok=%v)", k, g, ok))
			}
		}
		return len(wrong) == 0, strings.Join(wrong, ", ")
	})
}

func TestHTTPMetricsHealthAndDashboard(t *testing.T) {
	servers := startCluster(t, 3, withHTTP)
	lead, fol := leaderOf(servers), follower(servers)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Raft and membership, on every node.
	for _, s := range servers {
		isLeader := 0.0
		if s == lead {
			isLeader = 1
		}
		waitMetrics(t, s, map[string]float64{
			"blixard_raft_is_leader":             isLeader,
			"blixard_raft_leader_id":             float64(lead.cfg.ID),
			"blixard_raft_members{role=voter}":   3,
			"blixard_raft_members{role=learner}": 0,
			"blixard_ready":                      1,
			"blixard_workers{state=ready}":       3,
			"blixard_workers_schedulable":        3,
			fmt.Sprintf("blixard_worker_capacity_cpu_cores{worker=%d}", s.cfg.ID):    1,
			fmt.Sprintf("blixard_worker_capacity_memory_bytes{worker=%d}", s.cfg.ID): 1024 << 20,
		})
		if code, body := httpGet(t, "http://"+s.HTTPAddr()+"/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("node %d /healthz = %d %q", s.cfg.ID, code, body)
		}
		if code, body := httpGet(t, "http://"+s.HTTPAddr()+"/readyz"); code != 200 || body != "ok\n" {
			t.Errorf("node %d /readyz = %d %q", s.cfg.ID, code, body)
		}
	}

	// A task submitted through a follower and run to the end.
	c := clientOf(t, fol)
	sub, err := c.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{CpuMillis: 100, MemoryMib: 16}}})
	if err != nil {
		t.Fatal(err)
	}
	done, err := c.WaitTask(ctx, &pb.WaitTaskRequest{Id: sub.Task.Id})
	if err != nil || done.Task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("task ended %v (%v), want succeeded", done.GetTask(), err)
	}
	for _, s := range servers {
		waitMetrics(t, s, map[string]float64{
			"blixard_tasks{state=succeeded}": 1,
			"blixard_tasks{state=pending}":   0,
			"blixard_tasks_pending":          0,
		})
	}
	waitMetrics(t, fol, map[string]float64{
		"blixard_grpc_requests_total{code=OK,method=SubmitTask,service=Cluster}":         1,
		"blixard_grpc_requests_total{code=OK,method=WaitTask,service=Cluster}":           1,
		"blixard_grpc_request_duration_seconds{method=SubmitTask,service=Cluster}_count": 1,
		"blixard_raft_proposal_duration_seconds{command=submit_task,result=ok}_count":    1,
	})

	// A VM placed on a worker reserves its memory plus QEMU's overhead.
	if _, err := clientOf(t, lead).CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "web", Vcpus: 1, MemoryMib: 128}}); err != nil {
		t.Fatal(err)
	}
	vm := waitVM(t, lead, "web", "placed", func(vm *pb.VM, ok bool) bool { return ok && vm.WorkerId != 0 })
	waitMetrics(t, lead, map[string]float64{
		"blixard_vms{state=scheduled}":                                              1,
		"blixard_vms_desired{desired=running}":                                      1,
		"blixard_vms_pending":                                                       0,
		fmt.Sprintf("blixard_worker_reserved_cpu_cores{worker=%d}", vm.WorkerId):    1,
		fmt.Sprintf("blixard_worker_reserved_memory_bytes{worker=%d}", vm.WorkerId): (128 + 64) << 20,
	})

	// The dashboard and its JSON, from a follower.
	base := "http://" + fol.HTTPAddr()
	if code, body := httpGet(t, base+"/"); code != 200 || !strings.Contains(body, "<title>Blixard</title>") {
		t.Errorf("GET / = %d\n%s", code, body)
	}
	var o observe.Overview
	waitUntil(t, 20*time.Second, "the follower's overview to show the VM placed", func() (bool, string) {
		code, body := httpGet(t, base+"/api/overview")
		o = observe.Overview{}
		if err := json.Unmarshal([]byte(body), &o); code != 200 || err != nil {
			return false, fmt.Sprintf("%d %v %s", code, err, body)
		}
		return len(o.VMs) == 1 && o.VMs[0].Worker == vm.WorkerId, body
	})
	if o.NodeID != fol.cfg.ID || o.View != "follower" || !o.Ready.Ready || o.Ready.Leader != lead.cfg.ID {
		t.Errorf("overview header: node %d view %q ready %+v", o.NodeID, o.View, o.Ready)
	}
	leaders := 0
	for _, m := range o.Members {
		if m.Leader {
			leaders++
			if m.ID != lead.cfg.ID {
				t.Errorf("overview marks %d as leader, want %d", m.ID, lead.cfg.ID)
			}
		}
	}
	if len(o.Members) != 3 || leaders != 1 {
		t.Errorf("overview members: %+v", o.Members)
	}
	if len(o.Workers) != 3 || o.Workers[0].Capacity.CPUMillis != 1000 || o.Workers[0].State != "ready" {
		t.Errorf("overview workers: %+v", o.Workers)
	}
	for _, w := range o.Workers {
		if w.ID == vm.WorkerId && w.Reserved != (observe.Reserved{CPUMillis: 1000, MemoryMiB: 192}) {
			t.Errorf("overview: worker %d reserved %+v, want the VM's 1000m and 192 MiB", w.ID, w.Reserved)
		}
	}
	if o.Tasks.Total != 1 || o.Tasks.Counts["succeeded"] != 1 || len(o.Tasks.Recent) != 1 || o.Tasks.Recent[0].ID != sub.Task.Id ||
		o.Tasks.Recent[0].State != "succeeded" || o.Tasks.Recent[0].ExitCode == nil || *o.Tasks.Recent[0].ExitCode != 0 {
		t.Errorf("overview tasks: %+v", o.Tasks)
	}
	if o.VMs[0].Name != "web" || o.VMs[0].State != "scheduled" || o.VMs[0].Desired != "running" || o.VMs[0].MemoryMiB != 128 {
		t.Errorf("overview vms: %+v", o.VMs)
	}
}

func TestReadyzWithoutQuorum(t *testing.T) {
	servers := startCluster(t, 3, withHTTP)
	n1 := servers[0]
	servers[1].Stop()
	servers[2].Stop()
	readyz := func(s *Server) (int, string) { return httpGet(t, "http://"+s.HTTPAddr()+"/readyz") }
	waitUntil(t, 20*time.Second, "node 1 unready without a quorum", func() (bool, string) {
		code, body := readyz(n1)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "no leader known"), fmt.Sprintf("%d %q", code, body)
	})
	if code, body := readyz(n1); strings.Count(body, "\n") != 1 || !strings.Contains(body, "quorum") {
		t.Errorf("/readyz without quorum = %d %q, want one line that says why", code, body)
	}
	if code, _ := httpGet(t, "http://"+n1.HTTPAddr()+"/healthz"); code != 200 {
		t.Errorf("/healthz without quorum = %d, want 200 (the process serves)", code)
	}
	waitMetrics(t, n1, map[string]float64{"blixard_ready": 0, "blixard_raft_is_leader": 0, "blixard_raft_leader_id": 0})

	// Node 2 comes back: a quorum again, a leader, ready.
	n2, err := New(servers[1].cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n2.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Server{n1, n2} {
		waitUntil(t, 20*time.Second, fmt.Sprintf("node %d ready again", s.cfg.ID), func() (bool, string) {
			code, body := readyz(s)
			return code == http.StatusOK && body == "ok\n", fmt.Sprintf("%d %q", code, body)
		})
	}
}

func TestHTTPAddrInUseFailsStartup(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	listen := freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, Config{Insecure: true, ID: 1, DataDir: filepath.Join(t.TempDir(), "n"), Listen: listen, Bootstrap: true, HTTPAddr: taken.Addr().String(), Logger: logger()})
	}()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	select {
	case err = <-errc:
	case <-timer.C:
		t.Fatal("Run did not return within 20s with the HTTP port in use")
	}
	if err == nil || strings.Contains(err.Error(), "\n") ||
		!strings.Contains(err.Error(), "--http-addr "+taken.Addr().String()) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Run = %v, want one line naming --http-addr and the port in use", err)
	}
	// Nothing is left behind: the gRPC port is free again.
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("gRPC port still held after the failed start: %v", err)
	}
	l.Close()
}

func TestTracesLinkClientCallsToServerSpansAndProposals(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	servers := startCluster(t, 1, func(c *Config) { c.TraceExporter = exp; c.Worker = false })
	s := servers[0]

	// A client traced the way the CLI traces its calls.
	clientExp := tracetest.NewInMemoryExporter()
	ct := observe.NewTracingTo(clientExp)
	defer ct.Shutdown(context.Background())
	cc, err := grpc.NewClient(s.Addr(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, ct.DialOptions()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rpcpb.NewClusterClient(cc).Put(ctx, &pb.PutRequest{Key: "k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}

	const method = "blixard.rpc.v1.Cluster/Put"
	find := func(spans tracetest.SpanStubs, name string, kind trace.SpanKind) *tracetest.SpanStub {
		for i := range spans {
			if spans[i].Name == name && spans[i].SpanKind == kind {
				return &spans[i]
			}
		}
		return nil
	}
	client := find(clientExp.GetSpans(), method, trace.SpanKindClient)
	if client == nil {
		t.Fatalf("no client span %s among %v", method, names(clientExp.GetSpans()))
	}
	var server, propose *tracetest.SpanStub
	waitUntil(t, 10*time.Second, "the server span of "+method, func() (bool, string) {
		spans := exp.GetSpans()
		server, propose = find(spans, method, trace.SpanKindServer), find(spans, "raft.propose", trace.SpanKindInternal)
		return server != nil && propose != nil, fmt.Sprint(names(spans))
	})
	if server.SpanContext.TraceID() != client.SpanContext.TraceID() || server.Parent.SpanID() != client.SpanContext.SpanID() {
		t.Errorf("server span %v is not the child of client span %v", server.SpanContext, client.SpanContext)
	}
	if propose.Parent.SpanID() != server.SpanContext.SpanID() {
		t.Errorf("raft.propose's parent = %v, want the server span %v", propose.Parent.SpanID(), server.SpanContext.SpanID())
	}
	if !hasAttr(propose.Attributes, attribute.String("blixard.command", "put")) {
		t.Errorf("raft.propose attributes %v lack blixard.command=put", propose.Attributes)
	}
	if !hasAttr(server.Resource.Attributes(), attribute.Int64("blixard.node_id", 1)) {
		t.Errorf("server resource %v lacks blixard.node_id=1", server.Resource.Attributes())
	}
}

func names(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}

func hasAttr(attrs []attribute.KeyValue, want attribute.KeyValue) bool {
	for _, a := range attrs {
		if a == want {
			return true
		}
	}
	return false
}
