package server

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

func clientOf(t *testing.T, s *Server) rpcpb.ClusterClient {
	t.Helper()
	cc, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rpcpb.NewClusterClient(cc)
}

func follower(servers []*Server) *Server {
	for _, s := range servers {
		if !s.Node().IsLeader() {
			return s
		}
	}
	return nil
}

// wantCode fails unless err has code c and a message containing each of
// parts.
func wantCode(t *testing.T, err error, c codes.Code, parts ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != c {
		t.Fatalf("err = %v, want code %v", err, c)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Fatalf("message %q does not contain %q", st.Message(), p)
		}
	}
}

// waitVM waits until cond holds for the VM as s sees it.
func waitVM(t *testing.T, s *Server, name, what string, cond func(vm *pb.VM, ok bool) bool) *pb.VM {
	t.Helper()
	var got *pb.VM
	waitUntil(t, 20*time.Second, "vm "+name+" "+what, func() (bool, string) {
		vm, ok := s.State().VM(name)
		got = vm
		return cond(vm, ok), fmt.Sprintf("ok=%v %v", ok, vm)
	})
	return got
}

func reportAs(ctx context.Context, s *Server, vm *pb.VM, st pb.VMState) error {
	_, err := s.propose(ctx, &pb.Command{Op: &pb.Command_ReportVm{ReportVm: &pb.ReportVM{
		Name: vm.Spec.Name, Generation: vm.Generation, WorkerId: vm.WorkerId, State: st, StartedAtUnixNano: time.Now().UnixNano(), NowUnixNano: time.Now().UnixNano(),
	}}})
	return err
}

func serverByID(servers []*Server, id uint64) *Server {
	for _, s := range servers {
		if s.cfg.ID == id {
			return s
		}
	}
	return nil
}

func TestVMControlPlane(t *testing.T) {
	servers := startCluster(t, 3, func(c *Config) { c.CPUMillis = 4000; c.MemoryMiB = 1024 })
	waitUntil(t, 10*time.Second, "3 ready workers", func() (bool, string) {
		n := 0
		for _, w := range servers[0].State().Workers() {
			if w.State == pb.WorkerState_WORKER_STATE_READY {
				n++
			}
		}
		return n == 3, fmt.Sprint(n)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := follower(servers)
	c := clientOf(t, f)

	// Create through a follower; the leader places it.
	resp, err := c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "web", MemoryMib: 256, Ports: []*pb.PortForward{{HostPort: 8080, GuestPort: 80}}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Vm.State != pb.VMState_VM_STATE_PENDING || resp.Vm.Spec.Vcpus != 1 || resp.Vm.Spec.Restart != pb.RestartPolicy_RESTART_POLICY_ALWAYS {
		t.Fatalf("created = %v", resp.Vm)
	}
	web := waitVM(t, f, "web", "scheduled", func(vm *pb.VM, ok bool) bool {
		return ok && vm.State == pb.VMState_VM_STATE_SCHEDULED && vm.WorkerId != 0 && vm.Generation == uint32(vm.Seq)+1
	})

	// Bad input: errors name the field and nothing is created.
	_, err = c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "web"}})
	wantCode(t, err, codes.AlreadyExists, "name:", `"web"`)
	_, err = c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "big", MemoryMib: 4096}})
	wantCode(t, err, codes.InvalidArgument, "memory_mib:", "1024 MiB")
	_, err = c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "wide", Vcpus: 8}})
	wantCode(t, err, codes.InvalidArgument, "vcpus:")
	_, err = c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "Bad_Name"}})
	wantCode(t, err, codes.InvalidArgument, "name:")
	_, err = c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "ports", Ports: []*pb.PortForward{{HostPort: 1, GuestPort: 1}, {HostPort: 1, GuestPort: 2}}}})
	wantCode(t, err, codes.InvalidArgument, "ports:")
	list, err := c.ListVMs(ctx, &pb.ListVMsRequest{})
	if err != nil || len(list.Vms) != 1 || list.Vms[0].Spec.Name != "web" {
		t.Fatalf("list after refused creates = %v, %v", list, err)
	}
	_, err = c.GetVM(ctx, &pb.GetVMRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound, "nope")
	_, err = c.SetVMDesired(ctx, &pb.SetVMDesiredRequest{Name: "nope", Desired: pb.VMDesired_VM_DESIRED_STOPPED})
	wantCode(t, err, codes.NotFound, "nope")

	// WaitVM streams the current state, then each change.
	wctx, wcancel := context.WithCancel(ctx)
	stream, err := c.WaitVM(wctx, &pb.WaitVMRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.Vm.State != pb.VMState_VM_STATE_SCHEDULED {
		t.Fatalf("first WaitVM message = %v, %v", first, err)
	}
	worker := serverByID(servers, web.WorkerId)
	if reportErr := reportAs(ctx, worker, web, pb.VMState_VM_STATE_RUNNING); reportErr != nil {
		t.Fatal(reportErr)
	}
	for {
		m, recvErr := stream.Recv()
		if recvErr != nil {
			t.Fatal(recvErr)
		}
		if m.Vm.State == pb.VMState_VM_STATE_RUNNING {
			break
		}
	}
	wcancel()

	// Console logs: not available until the node's VM reconciler installs
	// its lookup; then served from the worker through any node.
	other := servers[0]
	if other == worker {
		other = servers[1]
	}
	oc := clientOf(t, other)
	readLogs := func(req *pb.VMLogsRequest) (string, error) {
		ls, logsErr := oc.VMLogs(ctx, req)
		if logsErr != nil {
			return "", logsErr
		}
		var b strings.Builder
		for {
			ch, recvErr := ls.Recv()
			if recvErr == io.EOF {
				return b.String(), nil
			}
			if recvErr != nil {
				return b.String(), recvErr
			}
			b.Write(ch.Data)
		}
	}
	_, err = readLogs(&pb.VMLogsRequest{Name: "web"})
	wantCode(t, err, codes.FailedPrecondition, "not available")
	logPath := filepath.Join(t.TempDir(), "console.log")
	if writeFileErr := os.WriteFile(logPath, []byte("booted\nBLIXARD-READY\n"), 0o600); writeFileErr != nil {
		t.Fatal(writeFileErr)
	}
	worker.setVMConsole(func(name string) (string, bool) { return logPath, name == "web" })
	got, err := readLogs(&pb.VMLogsRequest{Name: "web"})
	if err != nil || got != "booted\nBLIXARD-READY\n" {
		t.Fatalf("logs = %q, %v", got, err)
	}
	got, err = readLogs(&pb.VMLogsRequest{Name: "web", Offset: 7})
	if err != nil || got != "BLIXARD-READY\n" {
		t.Fatalf("logs from offset = %q, %v", got, err)
	}

	// Stop keeps the placement; restart bumps restart_seq.
	r, err := c.SetVMDesired(ctx, &pb.SetVMDesiredRequest{Name: "web", Desired: pb.VMDesired_VM_DESIRED_STOPPED})
	if err != nil || r.Vm.Desired != pb.VMDesired_VM_DESIRED_STOPPED || r.Vm.WorkerId != web.WorkerId {
		t.Fatalf("stop = %v, %v", r, err)
	}
	r, err = c.SetVMDesired(ctx, &pb.SetVMDesiredRequest{Name: "web", Desired: pb.VMDesired_VM_DESIRED_RUNNING, Restart: true})
	if err != nil || r.Vm.Desired != pb.VMDesired_VM_DESIRED_RUNNING || r.Vm.RestartSeq != 1 {
		t.Fatalf("restart = %v, %v", r, err)
	}

	// Delete waits for the worker's stopped report, then the record goes
	// and WaitVM says so.
	r, err = c.SetVMDesired(ctx, &pb.SetVMDesiredRequest{Name: "web", Desired: pb.VMDesired_VM_DESIRED_DELETED})
	if err != nil || r.Removed {
		t.Fatalf("delete of a placed vm = %v, %v", r, err)
	}
	_, err = c.SetVMDesired(ctx, &pb.SetVMDesiredRequest{Name: "web", Desired: pb.VMDesired_VM_DESIRED_RUNNING})
	wantCode(t, err, codes.FailedPrecondition, "deleted")
	stream, err = c.WaitVM(ctx, &pb.WaitVMRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if _, recvErr := stream.Recv(); recvErr != nil {
		t.Fatal(recvErr)
	}
	if reportErr := reportAs(ctx, worker, web, pb.VMState_VM_STATE_STOPPED); reportErr != nil {
		t.Fatal(reportErr)
	}
	for {
		m, recvErr := stream.Recv()
		if recvErr != nil {
			t.Fatalf("WaitVM ended without removed: %v", recvErr)
		}
		if m.Removed {
			break
		}
	}
	waitVM(t, f, "web", "removed", func(_ *pb.VM, ok bool) bool { return !ok })
	if u := f.State().ForScheduling().Used[web.WorkerId]; u.MemoryMiB != 0 {
		t.Fatalf("reservation left after delete: %+v", u)
	}
	// The name is free again.
	if _, createVMErr := c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "web", MemoryMib: 64}}); createVMErr != nil {
		t.Fatalf("re-create: %v", createVMErr)
	}

	// Worker down: the VM is re-placed on another worker with a new
	// generation, and the old worker's reports are fenced.
	if _, createVMErr := c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "mover", MemoryMib: 128}}); createVMErr != nil {
		t.Fatal(createVMErr)
	}
	mover := waitVM(t, f, "mover", "placed", func(vm *pb.VM, ok bool) bool { return ok && vm.WorkerId != 0 })
	gone := serverByID(servers, mover.WorkerId)
	gone.Stop()
	var live []*Server
	for _, s := range servers {
		if s != gone {
			live = append(live, s)
		}
	}
	moved := waitVM(t, live[0], "mover", "re-placed", func(vm *pb.VM, ok bool) bool {
		return ok && vm.WorkerId != 0 && vm.WorkerId != mover.WorkerId
	})
	if moved.Generation != mover.Generation+2 || moved.Restarts != 1 || moved.State != pb.VMState_VM_STATE_SCHEDULED {
		t.Fatalf("re-placed vm = %v (was %v)", moved, mover)
	}
	err = reportAs(ctx, live[0], mover, pb.VMState_VM_STATE_RUNNING)
	if !isStaleVM(err) {
		t.Fatalf("report from the down worker: %v", err)
	}
}

func TestVMCreateWithoutWorkersStaysPendingWithReason(t *testing.T) {
	servers := startCluster(t, 1, func(c *Config) { c.Worker = false })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := clientOf(t, servers[0])
	if _, err := c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "huge", MemoryMib: 1 << 20}}); err != nil {
		t.Fatalf("with no workers the create must be accepted: %v", err)
	}
	waitUntil(t, 10*time.Second, "pending reason", func() (bool, string) {
		r, err := c.GetVM(ctx, &pb.GetVMRequest{Name: "huge"})
		if err != nil {
			return false, err.Error()
		}
		return r.Vm.State == pb.VMState_VM_STATE_PENDING && r.Vm.Reason == "no worker is ready and schedulable", r.Vm.String()
	})
	// Delete of an unplaced VM removes it at once.
	r, err := c.SetVMDesired(ctx, &pb.SetVMDesiredRequest{Name: "huge", Desired: pb.VMDesired_VM_DESIRED_DELETED})
	if err != nil || !r.Removed {
		t.Fatalf("delete = %v, %v", r, err)
	}
	if _, err := c.GetVM(ctx, &pb.GetVMRequest{Name: "huge"}); status.Code(err) != codes.NotFound {
		t.Fatalf("after delete: %v", err)
	}
}
