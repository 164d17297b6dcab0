package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/acl"
	"github.com/blixard/blixard/internal/state"
	"github.com/blixard/blixard/internal/vm/qemu"
)

// ---------------------------------------------------------------------------
// Worker-side hooks
// ---------------------------------------------------------------------------

// isStaleVM says whether a ReportVM error means the report is fenced (the
// VM was re-placed or removed, or its generation moved on): the worker
// drops it rather than retry. Proposals of ReportVM go through
// vmCluster.ReportVM (vms_worker.go), the same path as task reports.
func isStaleVM(err error) bool { return errors.Is(err, state.ErrStaleVM) }

// setVMConsole installs the lookup of VM console logs on this worker
// (the VM reconciler's ConsoleLog).
func (s *Server) setVMConsole(f func(name string) (string, bool)) {
	s.vmConsoleMu.Lock()
	s.vmConsole = f
	s.vmConsoleMu.Unlock()
}

func (s *Server) consoleLog(name string) (string, bool, error) {
	s.vmConsoleMu.Lock()
	f := s.vmConsole
	s.vmConsoleMu.Unlock()
	if f == nil {
		return "", false, status.Errorf(codes.FailedPrecondition, "console logs are not available on node %d: it runs no VMs", s.cfg.ID)
	}
	path, ok := f(name)
	return path, ok, nil
}

// ---------------------------------------------------------------------------
// Leader's pending reasons
// ---------------------------------------------------------------------------

func (s *Server) setVMWaiting(w map[string]string) {
	s.waitMu.Lock()
	s.vmWaiting = w
	s.waitMu.Unlock()
}

// withVMReason adds the leader's last scheduling pass's reason to a
// pending VM's reason.
func (s *Server) withVMReason(vm *pb.VM) *pb.VM {
	if vm == nil || vm.State != pb.VMState_VM_STATE_PENDING || !s.node.IsLeader() {
		return vm
	}
	s.waitMu.Lock()
	why := s.vmWaiting[vm.Spec.GetName()]
	s.waitMu.Unlock()
	switch {
	case why == "":
	case vm.Reason == "":
		vm.Reason = why
	default:
		vm.Reason += "; " + why
	}
	return vm
}

// ---------------------------------------------------------------------------
// Cluster API
// ---------------------------------------------------------------------------

// fitsSomeWorker refuses a VM that no registered worker that can run VMs
// could ever hold. With no such worker registered yet it accepts (the VM
// stays pending and says why).
func (s *Server) fitsSomeWorker(spec *pb.VMSpec) error {
	need := state.VMReservation(spec)
	var bigMem, bigCPU *pb.Worker
	n := 0
	for _, w := range s.sm.Workers() {
		if spec.Node != 0 && w.Id != spec.Node || !slices.Contains(w.Capabilities, state.CapabilityVMs) {
			continue
		}
		n++
		if bigMem == nil || w.GetCapacity().GetMemoryMib() > bigMem.GetCapacity().GetMemoryMib() {
			bigMem = w
		}
		if bigCPU == nil || w.GetCapacity().GetCpuMillis() > bigCPU.GetCapacity().GetCpuMillis() {
			bigCPU = w
		}
	}
	if n == 0 {
		return nil
	}
	which := "the largest, worker"
	if spec.Node != 0 {
		which = "pinned worker"
	}
	if m := bigMem.GetCapacity().GetMemoryMib(); need.MemoryMib > m {
		return status.Errorf(codes.InvalidArgument, "memory_mib: %d MiB (plus %d MiB for the hypervisor) is more than any worker offers (%s %d, has %d MiB); ask for at most %d",
			spec.MemoryMib, state.VMOverheadMiB, which, bigMem.Id, m, max(m-state.VMOverheadMiB, 0))
	}
	if c := bigCPU.GetCapacity().GetCpuMillis(); need.CpuMillis > c {
		return status.Errorf(codes.InvalidArgument, "vcpus: %d vCPUs need %dm CPU, more than any worker offers (%s %d, has %dm); ask for at most %d",
			spec.Vcpus, need.CpuMillis, which, bigCPU.Id, c, c/1000)
	}
	return nil
}

func (a *api) CreateVM(ctx context.Context, req *pb.CreateVMRequest) (*pb.VMResponse, error) {
	spec := state.NormalizeVMSpec(req.GetSpec())
	if err := state.ValidateVMSpec(spec); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := a.s.node.ReadIndex(ctx); err != nil {
		return nil, toStatus(err)
	}
	if _, ok := a.s.sm.VM(spec.Name); ok {
		return nil, status.Errorf(codes.AlreadyExists, "name: vm %q already exists", spec.Name)
	}
	if err := a.s.checkVMPaths(spec); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := a.s.fitsSomeWorker(spec); err != nil {
		return nil, err
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_CreateVm{CreateVm: &pb.CreateVM{Spec: spec, NowUnixNano: a.s.clock.Now().UnixNano(), Owner: acl.FromContext(ctx).Owner()}}})
	if err != nil {
		return nil, toStatus(err)
	}
	r, _ := res.(*pb.VMResponse)
	return r, nil
}

// readVM returns a VM as of a linearizable read, if the caller may read
// it.
func (a *api) readVM(ctx context.Context, name string) (*pb.VM, error) {
	vm, err := linearGet(ctx, a, "vm", "name", name, a.s.sm.VM)
	if err != nil {
		return nil, err
	}
	if err := ownerCheck(ctx, "vm", vm.Spec.GetName(), vm.Owner, false); err != nil {
		return nil, err
	}
	return vm, nil
}

func (a *api) GetVM(ctx context.Context, req *pb.GetVMRequest) (*pb.VMResponse, error) {
	vm, err := a.readVM(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	if vm.State == pb.VMState_VM_STATE_PENDING {
		// Only the leader knows why a VM waits: ask it.
		if resp, ok := fromLeader(a, func(c rpcpb.ClusterClient) (*pb.VMResponse, error) {
			return c.GetVM(ctx, req)
		}); ok {
			return resp, nil
		}
	}
	return &pb.VMResponse{Vm: a.s.withVMReason(vm)}, nil
}

func (a *api) ListVMs(ctx context.Context, _ *pb.ListVMsRequest) (*pb.ListVMsResponse, error) {
	if err := a.s.node.ReadIndex(ctx); err != nil {
		return nil, toStatus(err)
	}
	p := acl.FromContext(ctx)
	vms := a.s.sm.VMs()
	out := vms[:0]
	for _, vm := range vms {
		if p.CanRead(vm.Owner) {
			out = append(out, a.s.withVMReason(vm))
		}
	}
	return &pb.ListVMsResponse{Vms: out}, nil
}

func (a *api) SetVMDesired(ctx context.Context, req *pb.SetVMDesiredRequest) (*pb.VMResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name: must not be empty")
	}
	if p := acl.FromContext(ctx); !p.Has(acl.CapOperate) {
		vm, err := a.readVM(ctx, req.Name)
		if err != nil {
			return nil, err
		}
		if err := ownerCheck(ctx, "vm", vm.Spec.GetName(), vm.Owner, true); err != nil {
			return nil, err
		}
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_SetVmDesired{SetVmDesired: &pb.SetVMDesired{
		Name: req.Name, Desired: req.Desired, Restart: req.Restart, NowUnixNano: a.s.clock.Now().UnixNano(),
	}}})
	if err != nil {
		if errors.Is(err, state.ErrUnknownVM) {
			return nil, status.Errorf(codes.NotFound, "vm %q not found", req.Name)
		}
		return nil, toStatus(err)
	}
	r, _ := res.(*pb.VMResponse)
	return r, nil
}

// WaitVM streams the VM as it is now and again after every change, until
// it is removed (a last message with removed set) or the client goes.
func (a *api) WaitVM(req *pb.WaitVMRequest, stream rpcpb.Cluster_WaitVMServer) error {
	ctx := stream.Context()
	vm, err := a.readVM(ctx, req.GetName())
	if err != nil {
		return err
	}
	tick := a.s.clock.NewTicker(time.Second)
	defer tick.Stop()
	var last *pb.VM
	for {
		ch := a.s.applied.Wait()
		cur, ok := a.s.sm.VM(req.Name)
		if !ok {
			return stream.Send(&pb.VMResponse{Vm: vm, Removed: true})
		}
		vm = a.s.withVMReason(cur)
		if last == nil || !proto.Equal(last, vm) {
			if err := stream.Send(&pb.VMResponse{Vm: vm}); err != nil {
				return err
			}
			last = vm
		}
		select {
		case <-ch:
		case <-tick.C(): // the leader's pending reason changes without an entry
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-a.s.ctx.Done():
			return status.Error(codes.Unavailable, "node is shutting down; retry on another node")
		}
	}
}

// VMLogs streams a VM's serial console from the worker that runs it,
// proxied through this node when that is another one.
func (a *api) VMLogs(req *pb.VMLogsRequest, stream rpcpb.Cluster_VMLogsServer) error {
	ctx := stream.Context()
	if req.GetPrevious() && req.GetFollow() {
		return status.Error(codes.InvalidArgument, "previous: the previous console log is complete; it cannot be followed")
	}
	vm, err := a.readVM(ctx, req.GetName())
	if err != nil {
		return err
	}
	self := a.s.cfg.ID
	if req.WorkerId != 0 {
		// Forwarded here because this node was the VM's worker.
		if req.WorkerId != self || vm.WorkerId != self {
			return status.Errorf(codes.Unavailable, "vm %s moved from worker %d to worker %d; retry", vm.Spec.Name, req.WorkerId, vm.WorkerId)
		}
		return a.s.serveConsole(stream, vm.Spec.Name, req.Follow, req.Offset, req.Previous)
	}
	switch vm.WorkerId {
	case 0:
		return status.Errorf(codes.FailedPrecondition, "vm %s runs on no worker (it is %s); it has no console log now", vm.Spec.Name, stateWord(vm.State))
	case self:
		return a.s.serveConsole(stream, vm.Spec.Name, req.Follow, req.Offset, req.Previous)
	}
	m, ok := a.s.sm.Member(vm.WorkerId)
	if !ok {
		return status.Errorf(codes.FailedPrecondition, "worker %d that runs vm %s is no longer a member; its console log is gone", vm.WorkerId, vm.Spec.Name)
	}
	cc, err := a.s.conns.get(m.Addr)
	if err != nil {
		return toStatus(err)
	}
	fwd := &pb.VMLogsRequest{Name: req.Name, Follow: req.Follow, Offset: req.Offset, WorkerId: vm.WorkerId, Previous: req.Previous}
	in, err := rpcpb.NewClusterClient(cc).VMLogs(ctx, fwd)
	if err != nil {
		return err
	}
	for {
		c, err := in.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(c); err != nil {
			return err
		}
	}
}

func stateWord(s pb.VMState) string {
	switch s {
	case pb.VMState_VM_STATE_PENDING:
		return "pending"
	case pb.VMState_VM_STATE_STOPPED:
		return "stopped"
	}
	return s.String()
}

// serveConsole streams this worker's console log of vm name from offset.
// With follow it keeps going while the VM stays placed here; a log that
// shrank (the VM was restarted and its log started again) is read again
// from the start.
func (s *Server) serveConsole(stream rpcpb.Cluster_VMLogsServer, name string, follow bool, offset int64, previous bool) error {
	path, ok, err := s.consoleLog(name)
	if err != nil {
		return err
	}
	if previous {
		// The previous part (the last run's log, or what came before the
		// last rotation) is complete: sent once, never followed.
		prev := path + qemu.PreviousConsoleSuffix
		if _, statErr := os.Stat(prev); !ok || statErr != nil {
			return status.Errorf(codes.FailedPrecondition, "vm %s has no previous console log on worker %d: it has not been restarted or rotated there", name, s.cfg.ID)
		}
		_, err = sendFile(stream, prev, 0, make([]byte, 64<<10))
		return err
	}
	if !ok && !follow {
		return status.Errorf(codes.FailedPrecondition, "vm %s has no console log on worker %d: it has not started there", name, s.cfg.ID)
	}
	tick := s.clock.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 64<<10)
	for {
		done := true
		if follow {
			vm, ok := s.sm.VM(name)
			done = !ok || vm.WorkerId != s.cfg.ID
		}
		if path == "" {
			if path, _, err = s.consoleLog(name); err != nil {
				return err
			}
		}
		if path != "" {
			n, err := sendFile(stream, path, offset, buf)
			if err != nil {
				return err
			}
			offset = n
		}
		if done {
			return nil
		}
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-s.ctx.Done():
			return status.Error(codes.Unavailable, "node is shutting down")
		case <-s.applied.Wait():
		case <-tick.C():
		}
	}
}

// sendFile sends path from offset to its end and returns the new offset.
func sendFile(stream rpcpb.Cluster_VMLogsServer, path string, offset int64, buf []byte) (int64, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return offset, nil
	}
	if err != nil {
		return offset, status.Errorf(codes.Internal, "open console log: %v", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() < offset {
		offset = 0
	}
	for {
		k, rerr := f.ReadAt(buf, offset)
		if k > 0 {
			if err := stream.Send(&pb.LogChunk{Data: append([]byte(nil), buf[:k]...)}); err != nil {
				return offset, err
			}
			offset += int64(k)
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return offset, nil
			}
			return offset, status.Errorf(codes.Internal, "read console log: %v", fmt.Errorf("%w", rerr))
		}
	}
}
