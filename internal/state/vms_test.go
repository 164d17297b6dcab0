package state

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/storage"
)

// vmHarness applies commands to a fresh machine with workers of 4 CPUs and
// 1024 MiB each.
type vmHarness struct{ *cmdHarness }

func newVMHarness(t *testing.T, workers ...uint64) *vmHarness {
	return &vmHarness{newCmdHarness(t, 4000, 1024, workers...)}
}

func (h *vmHarness) create(spec *pb.VMSpec) error {
	h.t.Helper()
	_, err := h.apply(&pb.Command{Op: &pb.Command_CreateVm{CreateVm: &pb.CreateVM{Spec: spec, NowUnixNano: 100}}})
	return err
}

// gen turns a generation counted from the VM's creation (0 at create, 1
// after the first placement) into the stored one, which starts at the
// creation's raft index; unknown names keep rel.
func (h *vmHarness) gen(name string, rel uint32) uint32 {
	if vm, ok := h.m.VM(name); ok {
		return uint32(vm.Seq) + rel
	}
	return rel
}

// place proposes placing name at its relative generation gen.
func (h *vmHarness) place(name string, gen uint32, worker uint64) bool {
	h.t.Helper()
	r := h.ok(&pb.Command{Op: &pb.Command_PlaceVms{PlaceVms: &pb.PlaceVMs{Placements: []*pb.VMPlacement{{Name: name, Generation: h.gen(name, gen), WorkerId: worker}}, NowUnixNano: 200}}})
	return r.(*pb.PutResponse).Index == 1
}

// report reports for name at its relative generation gen.
func (h *vmHarness) report(name string, gen uint32, worker uint64, s pb.VMState) (*pb.VMResponse, error) {
	h.t.Helper()
	r, err := h.apply(&pb.Command{Op: &pb.Command_ReportVm{ReportVm: &pb.ReportVM{Name: name, Generation: h.gen(name, gen), WorkerId: worker, State: s, StartedAtUnixNano: 300, NowUnixNano: 300}}})
	if err != nil {
		return nil, err
	}
	return r.(*pb.VMResponse), nil
}

func (h *vmHarness) desire(name string, d pb.VMDesired, restart bool) (*pb.VMResponse, error) {
	h.t.Helper()
	r, err := h.apply(&pb.Command{Op: &pb.Command_SetVmDesired{SetVmDesired: &pb.SetVMDesired{Name: name, Desired: d, Restart: restart, NowUnixNano: 400}}})
	if err != nil {
		return nil, err
	}
	return r.(*pb.VMResponse), nil
}

func (h *vmHarness) vm(name string) *pb.VM {
	h.t.Helper()
	vm, ok := h.m.VM(name)
	if !ok {
		h.t.Fatalf("vm %s missing", name)
	}
	return vm
}

func (h *vmHarness) used(worker uint64) Usage {
	h.t.Helper()
	return h.m.ForScheduling().Used[worker]
}

func TestValidateVMSpecNamesTheField(t *testing.T) {
	ok := func() *pb.VMSpec { return &pb.VMSpec{Name: "web-1"} }
	cases := []struct {
		name  string
		edit  func(s *pb.VMSpec)
		field string // "" = valid
	}{
		{"defaults", func(s *pb.VMSpec) {}, ""},
		{"full", func(s *pb.VMSpec) {
			s.Vcpus, s.MemoryMib, s.Kernel, s.Initrd, s.Disk, s.DiskReadonly, s.Cmdline = 64, 16, "/k", "/i", "/d", true, "quiet"
			s.Ports = []*pb.PortForward{{HostPort: 8080, GuestPort: 80}, {HostPort: 8080, GuestPort: 80, Protocol: "udp"}}
			s.Restart = pb.RestartPolicy_RESTART_POLICY_NEVER
		}, ""},
		{"empty name", func(s *pb.VMSpec) { s.Name = "" }, "name"},
		{"upper-case name", func(s *pb.VMSpec) { s.Name = "Web" }, "name"},
		{"leading dash", func(s *pb.VMSpec) { s.Name = "-web" }, "name"},
		{"trailing dash", func(s *pb.VMSpec) { s.Name = "web-" }, "name"},
		{"underscore", func(s *pb.VMSpec) { s.Name = "web_1" }, "name"},
		{"64 chars", func(s *pb.VMSpec) { s.Name = strings.Repeat("a", 64) }, "name"},
		{"too many vcpus", func(s *pb.VMSpec) { s.Vcpus = 65 }, "vcpus"},
		{"too little memory", func(s *pb.VMSpec) { s.MemoryMib = 15 }, "memory_mib"},
		{"relative kernel", func(s *pb.VMSpec) { s.Kernel = "vmlinux" }, "kernel"},
		{"relative initrd", func(s *pb.VMSpec) { s.Initrd = "x/initrd" }, "initrd"},
		{"relative disk", func(s *pb.VMSpec) { s.Disk = "disk.img" }, "disk"},
		{"readonly without disk", func(s *pb.VMSpec) { s.DiskReadonly = true }, "disk_readonly"},
		{"cmdline newline", func(s *pb.VMSpec) { s.Cmdline = "a\nb" }, "cmdline"},
		{"bad network", func(s *pb.VMSpec) { s.Network = "bridge" }, "network"},
		{"bad restart", func(s *pb.VMSpec) { s.Restart = 9 }, "restart"},
		{"host port 0", func(s *pb.VMSpec) { s.Ports = []*pb.PortForward{{HostPort: 0, GuestPort: 80}} }, "ports"},
		{"host port too big", func(s *pb.VMSpec) { s.Ports = []*pb.PortForward{{HostPort: 65536, GuestPort: 80}} }, "ports"},
		{"guest port 0", func(s *pb.VMSpec) { s.Ports = []*pb.PortForward{{HostPort: 80, GuestPort: 0}} }, "ports"},
		{"bad protocol", func(s *pb.VMSpec) { s.Ports = []*pb.PortForward{{HostPort: 80, GuestPort: 80, Protocol: "sctp"}} }, "ports"},
		{"duplicate host port", func(s *pb.VMSpec) {
			s.Ports = []*pb.PortForward{{HostPort: 80, GuestPort: 80}, {HostPort: 80, GuestPort: 81}}
		}, "ports"},
		{"ports without user network", func(s *pb.VMSpec) {
			s.Network = "none"
			s.Ports = []*pb.PortForward{{HostPort: 80, GuestPort: 80}}
		}, "ports"},
		{"empty constraint", func(s *pb.VMSpec) { s.Constraints = map[string]string{"": "x"} }, "constraints"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := ok()
			c.edit(s)
			err := ValidateVMSpec(NormalizeVMSpec(s))
			if c.field == "" {
				if err != nil {
					t.Fatalf("valid spec refused: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, ErrInvalidCommand) {
				t.Fatalf("err = %v, want a FieldError for %s", err, c.field)
			}
			if !strings.HasPrefix(err.Error(), c.field+": ") {
				t.Fatalf("message %q does not start with the field", err)
			}
		})
	}
	if err := ValidateVMSpec(nil); err == nil {
		t.Fatal("nil spec accepted")
	}
}

func TestCreateVMFillsDefaultsAndRefusesDuplicates(t *testing.T) {
	h := newVMHarness(t)
	if err := h.create(&pb.VMSpec{Name: "a", Ports: []*pb.PortForward{{HostPort: 2222, GuestPort: 22}}}); err != nil {
		t.Fatal(err)
	}
	vm := h.vm("a")
	s := vm.Spec
	if s.Vcpus != 1 || s.MemoryMib != 128 || s.Network != "user" || s.Restart != pb.RestartPolicy_RESTART_POLICY_ALWAYS || s.Ports[0].Protocol != "tcp" {
		t.Fatalf("defaults not filled: %v", s)
	}
	if vm.State != pb.VMState_VM_STATE_PENDING || vm.Desired != pb.VMDesired_VM_DESIRED_RUNNING || vm.Seq != h.index || vm.CreatedAtUnixNano != 100 || vm.WorkerId != 0 || vm.Generation != uint32(vm.Seq) {
		t.Fatalf("new vm = %v", vm)
	}
	before, _ := h.m.Snapshot()
	err := h.create(&pb.VMSpec{Name: "a", Vcpus: 4})
	if !errors.Is(err, ErrVMExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := h.create(&pb.VMSpec{Name: "b", MemoryMib: 8}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("invalid spec: %v", err)
	}
	after, _ := h.m.Snapshot()
	if string(before) != string(after) {
		t.Fatal("refused creates changed the state")
	}
}

func TestPlaceVMsIsRecheckedAndSharesCapacityWithTasks(t *testing.T) {
	h := newVMHarness(t, 1, 2)
	for _, name := range []string{"a", "b", "pinned"} {
		spec := &pb.VMSpec{Name: name, Vcpus: 1, MemoryMib: 512}
		if name == "pinned" {
			spec.Node = 2
		}
		if err := h.create(spec); err != nil {
			t.Fatal(err)
		}
	}
	if h.place("a", 2, 1) {
		t.Fatal("placement with a skipped generation applied")
	}
	if !h.place("a", 1, 1) {
		t.Fatal("good placement skipped")
	}
	if vm := h.vm("a"); vm.WorkerId != 1 || vm.Generation != h.gen("a", 1) || vm.State != pb.VMState_VM_STATE_SCHEDULED {
		t.Fatalf("placed vm = %v", vm)
	}
	if u := h.used(1); u.CPUMillis != 1000 || u.MemoryMiB != 512+VMOverheadMiB {
		t.Fatalf("reservation = %+v", u)
	}
	if h.place("a", 2, 2) {
		t.Fatal("placed twice")
	}
	if h.place("pinned", 1, 1) {
		t.Fatal("pinned vm placed on another worker")
	}
	// A task takes 600 MiB of worker 1: b (512 MiB) no longer fits there.
	h.ok(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{Spec: &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{MemoryMib: 400}}}}})
	task := h.m.Tasks(pb.TaskState_TASK_STATE_PENDING)[0]
	h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: task.Id, Attempt: 1, WorkerId: 1}}}}})
	if h.place("b", 1, 1) {
		t.Fatal("vm over-committed a worker together with a task")
	}
	if !h.place("b", 1, 2) {
		t.Fatal("b not placed on worker 2")
	}
	// And a task cannot over-commit a VM's worker either.
	h.ok(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{Spec: &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{MemoryMib: 600}}}}})
	task2 := h.m.Tasks(pb.TaskState_TASK_STATE_PENDING)[0]
	if r := h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: task2.Id, Attempt: 1, WorkerId: 2}}}}}); r.(*pb.PutResponse).Index != 0 {
		t.Fatal("task over-committed a VM's worker")
	}
	// Down and unschedulable workers take nothing.
	h.ok(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 2, State: pb.WorkerState_WORKER_STATE_DOWN}}})
	if h.place("pinned", 1, 2) {
		t.Fatal("placed on a down worker")
	}
	h.ok(&pb.Command{Op: &pb.Command_ReleaseVms{ReleaseVms: &pb.ReleaseVMs{WorkerId: 2}}})
	pending := h.m.PendingVMs()
	if len(pending) != 2 || pending[0].Name != "b" && pending[1].Name != "b" {
		t.Fatalf("pending = %+v", pending)
	}
}

func TestPlaceVMsKeepsHostPortsApart(t *testing.T) {
	h := newVMHarness(t, 1, 2)
	fwd := func(port uint32, proto string) *pb.PortForward {
		return &pb.PortForward{HostPort: port, GuestPort: 80, Protocol: proto}
	}
	for name, ports := range map[string][]*pb.PortForward{
		"web":  {fwd(8080, "tcp")},
		"web2": {fwd(8080, "")}, // tcp by default
		"dns":  {fwd(8080, "udp")},
	} {
		if err := h.create(&pb.VMSpec{Name: name, Vcpus: 1, MemoryMib: 128, Ports: ports}); err != nil {
			t.Fatal(err)
		}
	}
	if !h.place("web", 1, 1) {
		t.Fatal("web not placed")
	}
	if h.place("web2", 1, 1) {
		t.Fatal("web2 placed on worker 1, where web already forwards 8080/tcp")
	}
	if !h.place("dns", 1, 1) {
		t.Fatal("dns (8080/udp) refused on worker 1: another protocol is another port")
	}
	v := h.m.ForScheduling()
	if got := v.HostPorts[1]; got["8080/tcp"] != "web" || got["8080/udp"] != "dns" || len(got) != 2 || len(v.HostPorts[2]) != 0 {
		t.Fatalf("scheduling view host ports = %v", v.HostPorts)
	}
	if p := h.m.PendingVMs(); len(p) != 1 || p[0].Name != "web2" || !slices.Equal(p[0].HostPorts, []string{"8080/tcp"}) {
		t.Fatalf("pending = %+v", p)
	}
	if !h.place("web2", 1, 2) {
		t.Fatal("web2 not placed on worker 2")
	}
	// A deleted VM frees its port.
	if _, err := h.desire("web", pb.VMDesired_VM_DESIRED_DELETED, false); err != nil {
		t.Fatal(err)
	}
	if _, err := h.report("web", 1, 1, pb.VMState_VM_STATE_STOPPED); err != nil {
		t.Fatal(err)
	}
	if _, taken := h.m.ForScheduling().HostPorts[1]["8080/tcp"]; taken {
		t.Fatal("8080/tcp still taken on worker 1 after web was deleted")
	}
}

func TestReportVMIsFenced(t *testing.T) {
	h := newVMHarness(t, 1, 2)
	if err := h.create(&pb.VMSpec{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.report("a", 0, 1, pb.VMState_VM_STATE_RUNNING); !errors.Is(err, ErrStaleVM) {
		t.Fatalf("report for an unplaced vm: %v", err)
	}
	h.place("a", 1, 1)
	for _, c := range []struct {
		gen    uint32
		worker uint64
	}{{0, 1}, {2, 1}, {1, 2}} {
		if _, err := h.report("a", c.gen, c.worker, pb.VMState_VM_STATE_RUNNING); !errors.Is(err, ErrStaleVM) {
			t.Fatalf("report gen %d worker %d: %v", c.gen, c.worker, err)
		}
	}
	if _, err := h.report("nope", 1, 1, pb.VMState_VM_STATE_RUNNING); !errors.Is(err, ErrStaleVM) || !errors.Is(err, ErrUnknownVM) {
		t.Fatalf("report for an unknown vm: %v", err)
	}
	if _, err := h.report("a", 1, 1, pb.VMState_VM_STATE_PENDING); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("worker reported pending: %v", err)
	}
	r, err := h.report("a", 1, 1, pb.VMState_VM_STATE_RUNNING)
	if err != nil {
		t.Fatal(err)
	}
	if r.Vm.State != pb.VMState_VM_STATE_RUNNING || r.Vm.StartedAtUnixNano != 300 {
		t.Fatalf("after report: %v", r.Vm)
	}
	r2 := h.ok(&pb.Command{Op: &pb.Command_ReportVm{ReportVm: &pb.ReportVM{Name: "a", Generation: h.gen("a", 1), WorkerId: 1, State: pb.VMState_VM_STATE_FAILED, Reason: "exit 1", GenerationRestarts: 2}}}).(*pb.VMResponse)
	if r2.Vm.Restarts != 2 || r2.Vm.Reason != "exit 1" || r2.Vm.StartedAtUnixNano != 300 {
		t.Fatalf("failed report: %v", r2.Vm)
	}
	// The count is absolute: the same report again (a worker retrying after
	// an unknown outcome) or an older one changes nothing; a newer adds.
	for _, n := range []uint32{2, 1, 3} {
		r := h.ok(&pb.Command{Op: &pb.Command_ReportVm{ReportVm: &pb.ReportVM{Name: "a", Generation: h.gen("a", 1), WorkerId: 1, State: pb.VMState_VM_STATE_STARTING, GenerationRestarts: n}}}).(*pb.VMResponse)
		if want := max(uint32(2), n); r.Vm.Restarts != want {
			t.Fatalf("report of %d restarts: restarts = %d, want %d", n, r.Vm.Restarts, want)
		}
	}
	// An entry from before generation_restarts still counts its delta.
	r3 := h.ok(&pb.Command{Op: &pb.Command_ReportVm{ReportVm: &pb.ReportVM{Name: "a", Generation: h.gen("a", 1), WorkerId: 1, State: pb.VMState_VM_STATE_RUNNING, RestartsDelta: 1}}}).(*pb.VMResponse)
	if r3.Vm.Restarts != 4 {
		t.Fatalf("legacy delta report: restarts = %d, want 4", r3.Vm.Restarts)
	}
}

func TestSetVMDesired(t *testing.T) {
	h := newVMHarness(t, 1)
	for _, n := range []string{"a", "b", "c"} {
		if err := h.create(&pb.VMSpec{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.desire("zz", pb.VMDesired_VM_DESIRED_STOPPED, false); !errors.Is(err, ErrUnknownVM) {
		t.Fatalf("unknown vm: %v", err)
	}
	if _, err := h.desire("a", pb.VMDesired_VM_DESIRED_STOPPED, true); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("restart with stopped: %v", err)
	}
	if _, err := h.desire("a", 7, false); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("bad desired: %v", err)
	}

	// Unplaced: stop makes it stopped (not pending), start queues it again.
	r, _ := h.desire("a", pb.VMDesired_VM_DESIRED_STOPPED, false)
	if r.Vm.State != pb.VMState_VM_STATE_STOPPED || len(h.m.PendingVMs()) != 2 {
		t.Fatalf("stopped unplaced vm: %v", r.Vm)
	}
	r, _ = h.desire("a", pb.VMDesired_VM_DESIRED_RUNNING, false)
	if r.Vm.State != pb.VMState_VM_STATE_PENDING || len(h.m.PendingVMs()) != 3 {
		t.Fatalf("started unplaced vm: %v", r.Vm)
	}
	// Unplaced delete removes at once.
	r, _ = h.desire("c", pb.VMDesired_VM_DESIRED_DELETED, false)
	if _, ok := h.m.VM("c"); ok || !r.Removed {
		t.Fatal("unplaced vm not removed at once")
	}

	// Placed: restart bumps restart_seq; start after a failure does too.
	h.place("a", 1, 1)
	h.report("a", 1, 1, pb.VMState_VM_STATE_RUNNING)
	r, _ = h.desire("a", pb.VMDesired_VM_DESIRED_RUNNING, true)
	if r.Vm.RestartSeq != 1 || r.Vm.Desired != pb.VMDesired_VM_DESIRED_RUNNING {
		t.Fatalf("restart: %v", r.Vm)
	}
	r, _ = h.desire("a", pb.VMDesired_VM_DESIRED_RUNNING, false)
	if r.Vm.RestartSeq != 1 {
		t.Fatal("start of a running vm bumped restart_seq")
	}
	h.report("a", 1, 1, pb.VMState_VM_STATE_FAILED)
	r, _ = h.desire("a", pb.VMDesired_VM_DESIRED_RUNNING, false)
	if r.Vm.RestartSeq != 2 {
		t.Fatal("start of a failed vm did not ask the worker to start it")
	}
	// Stop keeps the placement and the reservation.
	r, _ = h.desire("a", pb.VMDesired_VM_DESIRED_STOPPED, false)
	if r.Vm.WorkerId != 1 || h.used(1).MemoryMiB != 128+VMOverheadMiB {
		t.Fatalf("stopped vm released its worker: %v", r.Vm)
	}

	// Placed delete waits for the worker's stopped report.
	r, _ = h.desire("a", pb.VMDesired_VM_DESIRED_DELETED, false)
	if r.Removed || r.Vm.Desired != pb.VMDesired_VM_DESIRED_DELETED {
		t.Fatalf("placed vm removed before its worker stopped it: %v", r)
	}
	if _, err := h.desire("a", pb.VMDesired_VM_DESIRED_RUNNING, false); !errors.Is(err, ErrVMDeleting) {
		t.Fatalf("start while deleting: %v", err)
	}
	if err := h.create(&pb.VMSpec{Name: "a"}); !errors.Is(err, ErrVMExists) {
		t.Fatalf("create while deleting: %v", err)
	}
	if r, err := h.report("a", 1, 1, pb.VMState_VM_STATE_STOPPING); err != nil || r.Removed {
		t.Fatalf("stopping report: %v %v", r, err)
	}
	if r, err := h.report("a", 1, 1, pb.VMState_VM_STATE_STOPPED); err != nil || !r.Removed {
		t.Fatalf("stopped report: %v %v", r, err)
	}
	if _, ok := h.m.VM("a"); ok || h.used(1) != (Usage{}) {
		t.Fatal("deleted vm or its reservation left behind")
	}
	if err := h.create(&pb.VMSpec{Name: "a"}); err != nil {
		t.Fatalf("name not free after delete: %v", err)
	}
}

func TestWorkerDownMovesReleasesOrRemovesVMs(t *testing.T) {
	h := newVMHarness(t, 1, 2)
	for _, n := range []string{"run", "stop", "del", "other"} {
		if err := h.create(&pb.VMSpec{Name: n, MemoryMib: 128}); err != nil {
			t.Fatal(err)
		}
	}
	h.place("run", 1, 1)
	h.place("stop", 1, 1)
	h.place("del", 1, 1)
	h.place("other", 1, 2)
	h.desire("stop", pb.VMDesired_VM_DESIRED_STOPPED, false)
	h.desire("del", pb.VMDesired_VM_DESIRED_DELETED, false)
	// A task on the same worker.
	h.ok(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{Spec: &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{MemoryMib: 10}}}}})
	task := h.m.Tasks(pb.TaskState_TASK_STATE_PENDING)[0]
	h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: task.Id, Attempt: 1, WorkerId: 1}}}}})
	ver := h.m.VMsVersion()
	h.ok(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_DOWN, NowUnixNano: 900}}})
	// The task is re-queued at once; the VMs stay on the down worker (and
	// its reports still pass) until the leader releases them.
	if p := h.m.Tasks(pb.TaskState_TASK_STATE_PENDING); len(p) != 1 || p[0].Id != task.Id {
		t.Fatalf("task of the down worker not re-queued: pending %v", p)
	}
	if h.m.VMsVersion() != ver || len(h.m.VMsOnWorker(1)) != 3 || len(h.m.PendingVMs()) != 0 {
		t.Fatalf("worker down moved VMs before their release: on worker 1 %v, pending %+v", h.m.VMsOnWorker(1), h.m.PendingVMs())
	}
	if got := h.m.VMsHeldByDownWorkers(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("VMsHeldByDownWorkers = %v, want [1]", got)
	}
	if _, err := h.report("run", 1, 1, pb.VMState_VM_STATE_RUNNING); err != nil {
		t.Fatalf("report before the release: %v", err)
	}
	r := h.ok(&pb.Command{Op: &pb.Command_ReleaseVms{ReleaseVms: &pb.ReleaseVMs{WorkerId: 1, NowUnixNano: 900}}})
	if n := r.(*pb.PutResponse).Index; n != 3 || h.m.VMsVersion() == ver {
		t.Fatalf("release changed %d VMs (version %d→%d), want 3", n, ver, h.m.VMsVersion())
	}
	if got := h.m.VMsHeldByDownWorkers(); len(got) != 0 {
		t.Fatalf("VMsHeldByDownWorkers after the release = %v", got)
	}
	run := h.vm("run")
	if run.WorkerId != 0 || run.Generation != h.gen("run", 2) || run.State != pb.VMState_VM_STATE_PENDING || run.Restarts != 1 || run.Reason != "worker 1 down" || run.UpdatedAtUnixNano != 900 {
		t.Fatalf("running vm after worker down: %v", run)
	}
	stop := h.vm("stop")
	if stop.WorkerId != 0 || stop.State != pb.VMState_VM_STATE_STOPPED || stop.Restarts != 0 {
		t.Fatalf("stopped vm after worker down: %v", stop)
	}
	if _, ok := h.m.VM("del"); ok {
		t.Fatal("deleted vm kept")
	}
	if h.used(1) != (Usage{}) || h.vm("other").WorkerId != 2 {
		t.Fatalf("reservations wrong after worker down: %+v", h.used(1))
	}
	if len(h.m.VMsOnWorker(1)) != 0 || len(h.m.VMsOnWorker(2)) != 1 {
		t.Fatal("VMsOnWorker wrong")
	}
	// The old worker's reports are fenced; the re-placement carries gen 3
	// (worker down bumped it to 2 already).
	if _, err := h.report("run", 1, 1, pb.VMState_VM_STATE_RUNNING); !errors.Is(err, ErrStaleVM) {
		t.Fatalf("report from the down worker: %v", err)
	}
	p := h.m.PendingVMs()
	if len(p) != 1 || p[0].Name != "run" || p[0].Generation != h.gen("run", 3) {
		t.Fatalf("pending = %+v", p)
	}
	if !h.place("run", 3, 2) {
		t.Fatal("re-placement refused")
	}
	// Delete on a VM whose worker is down removes it at once.
	h.desire("stop", pb.VMDesired_VM_DESIRED_RUNNING, false)
	if !h.place("stop", 3, 2) {
		t.Fatal("stop not re-placed")
	}
	h.ok(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 2, State: pb.WorkerState_WORKER_STATE_DOWN}}})
	h.ok(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: &pb.Worker{Id: 3, Capacity: &pb.Resources{CpuMillis: 8000, MemoryMib: 8000}}}}})
	if r, err := h.desire("other", pb.VMDesired_VM_DESIRED_DELETED, false); err != nil || !r.Removed {
		t.Fatalf("delete after worker down: %v %v", r, err)
	}
}

func TestReleaseVMsOnlyForAStillDownWorker(t *testing.T) {
	h := newVMHarness(t, 1, 2)
	if err := h.create(&pb.VMSpec{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	h.place("a", 1, 1)
	down := &pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_DOWN}}}
	release := &pb.Command{Op: &pb.Command_ReleaseVms{ReleaseVms: &pb.ReleaseVMs{WorkerId: 1}}}
	// A ready worker keeps its VMs.
	if r := h.ok(release); r.(*pb.PutResponse).Index != 0 || h.vm("a").WorkerId != 1 {
		t.Fatalf("release of a ready worker moved its VM: %v", h.vm("a"))
	}
	// Down, then back (ready) before the release: the release is a no-op
	// and the worker keeps the VM with its generation.
	h.ok(down)
	h.ok(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_READY}}})
	if r := h.ok(release); r.(*pb.PutResponse).Index != 0 {
		t.Fatalf("release after the worker came back changed %d VMs", r.(*pb.PutResponse).Index)
	}
	if a := h.vm("a"); a.WorkerId != 1 || a.Generation != h.gen("a", 1) {
		t.Fatalf("vm after a release of a returned worker: %v", a)
	}
	if _, err := h.report("a", 1, 1, pb.VMState_VM_STATE_RUNNING); err != nil {
		t.Fatalf("the returned worker's report: %v", err)
	}
	// Down again, released: moved; a second release changes nothing.
	h.ok(down)
	if r := h.ok(release); r.(*pb.PutResponse).Index != 1 || h.vm("a").WorkerId != 0 {
		t.Fatalf("release of a down worker: %v", h.vm("a"))
	}
	if r := h.ok(release); r.(*pb.PutResponse).Index != 0 || h.vm("a").Generation != h.gen("a", 2) {
		t.Fatalf("second release: %v", h.vm("a"))
	}
	if _, err := h.apply(&pb.Command{Op: &pb.Command_ReleaseVms{ReleaseVms: &pb.ReleaseVMs{WorkerId: 9}}}); !errors.Is(err, ErrUnknownWorker) {
		t.Fatalf("release of an unknown worker: %v", err)
	}
}

func TestVMsSurviveSnapshotRecordsAndStateDB(t *testing.T) {
	h := newVMHarness(t, 1)
	for _, n := range []string{"a", "b"} {
		if err := h.create(&pb.VMSpec{Name: n, Vcpus: 1, MemoryMib: 256, Constraints: map[string]string{"k": "v"}}); err != nil {
			t.Fatal(err)
		}
	}
	h.place("a", 1, 1)
	h.report("a", 1, 1, pb.VMState_VM_STATE_RUNNING)
	want := h.used(1)
	snap, err := h.m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}

	r := New()
	if restoreErr := r.Restore(snap); restoreErr != nil {
		t.Fatal(restoreErr)
	}
	if got := r.ForScheduling().Used[1]; got != want {
		t.Fatalf("reservation after restore = %+v, want %+v", got, want)
	}
	if s2, _ := r.Snapshot(); string(s2) != string(snap) {
		t.Fatal("snapshot after restore differs")
	}

	// Checkpoint the changes into a real bbolt state database, reopen it,
	// and load it into a fresh machine.
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := storage.OpenStateDB(path)
	if err != nil {
		t.Fatal(err)
	}
	if cpErr := db.Checkpoint(h.index, h.m.TakeChanges()); cpErr != nil {
		t.Fatal(cpErr)
	}
	db.Close()
	db, err = storage.OpenStateDB(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l := New()
	if _, err := db.Load(l.LoadRecord); err != nil {
		t.Fatal(err)
	}
	if s3, _ := l.Snapshot(); string(s3) != string(snap) {
		t.Fatal("state loaded from state.db differs")
	}
	if got := l.ForScheduling().Used[1]; got != want {
		t.Fatalf("reservation after load = %+v, want %+v", got, want)
	}
	if got := l.PendingVMs(); len(got) != 1 || got[0].Name != "b" {
		t.Fatalf("pending after load = %+v", got)
	}

	// A removal is a nil value, and AllRecords lists VMs.
	h.desire("b", pb.VMDesired_VM_DESIRED_DELETED, false)
	ch := h.m.TakeChanges()
	if len(ch) != 1 || ch[0].Table != storage.TableVMs || string(ch[0].Key) != "b" || ch[0].Value != nil {
		t.Fatalf("removal change = %v", ch)
	}
	n := 0
	for _, c := range h.m.AllRecords() {
		if c.Table == storage.TableVMs {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("AllRecords has %d vms, want 1", n)
	}
}

// A VM deleted and created again under its name never reuses one of its
// predecessor's generations: otherwise its old worker could adopt the old
// process as the new VM and the old copy's reports would pass the fence.
func TestRecreatedVMDoesNotReuseGenerations(t *testing.T) {
	h := newVMHarness(t, 1)
	if err := h.create(&pb.VMSpec{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	h.place("a", 1, 1)
	old := h.vm("a").Generation
	if _, err := h.report("a", 1, 1, pb.VMState_VM_STATE_RUNNING); err != nil {
		t.Fatal(err)
	}
	h.desire("a", pb.VMDesired_VM_DESIRED_DELETED, false)
	if r, err := h.report("a", 1, 1, pb.VMState_VM_STATE_STOPPED); err != nil || !r.Removed {
		t.Fatalf("delete: %v, %v", r, err)
	}
	if err := h.create(&pb.VMSpec{Name: "a", MemoryMib: 256}); err != nil {
		t.Fatal(err)
	}
	if !h.place("a", 1, 1) {
		t.Fatal("placement of the re-created vm refused")
	}
	if g := h.vm("a").Generation; g <= old {
		t.Fatalf("re-created vm placed at generation %d; its predecessor ran at %d", g, old)
	}
	stale := &pb.ReportVM{Name: "a", Generation: old, WorkerId: 1, State: pb.VMState_VM_STATE_RUNNING, NowUnixNano: 500}
	if _, err := h.apply(&pb.Command{Op: &pb.Command_ReportVm{ReportVm: stale}}); !errors.Is(err, ErrStaleVM) {
		t.Fatalf("report of the deleted predecessor's generation: err = %v, want ErrStaleVM", err)
	}
}
