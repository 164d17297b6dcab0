package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/clock"
	"github.com/blixard/blixard/internal/vm"
)

// vmModel is a minimal replicated state for the core's tests: the VM
// records of one worker, with the report fencing and removal rules of the
// shared contract.
type vmModel struct {
	worker uint64
	vms    map[string]*pb.VM
	stale  int // reports refused as stale
}

func (m *vmModel) assigned() []*pb.VM {
	var out []*pb.VM
	for _, v := range m.vms {
		if v.WorkerId == m.worker {
			out = append(out, proto.Clone(v).(*pb.VM))
		}
	}
	slices.SortFunc(out, func(a, b *pb.VM) int { return strings.Compare(a.Spec.Name, b.Spec.Name) })
	return out
}

var errModelStale = errors.New("stale vm report")

func (m *vmModel) report(r *pb.ReportVM) error {
	v, ok := m.vms[r.Name]
	if !ok || v.WorkerId != r.WorkerId || v.Generation != r.Generation {
		m.stale++
		return errModelStale
	}
	v.State, v.Reason = r.State, r.Reason
	if r.StartedAtUnixNano != 0 {
		v.StartedAtUnixNano = r.StartedAtUnixNano
	}
	if r.GenerationRestarts > v.GenerationRestarts { // as state.Machine does
		v.Restarts += r.GenerationRestarts - v.GenerationRestarts
		v.GenerationRestarts = r.GenerationRestarts
	}
	if v.Desired == pb.VMDesired_VM_DESIRED_DELETED && (r.State == pb.VMState_VM_STATE_STOPPED || r.State == pb.VMState_VM_STATE_FAILED) {
		delete(m.vms, r.Name)
	}
	return nil
}

// vmHarness drives a VMCore synchronously against a vm.Fake: every
// operation is performed inline, every VM event is polled, and time only
// moves when the test advances it.
type vmHarness struct {
	t       *testing.T
	root    string
	host    *vm.FakeHost
	drv     *vm.Fake
	core    *VMCore
	now     time.Time
	model   *vmModel
	reports []*pb.ReportVM
	ops     []VMOp
	watched map[string]vmWatched
	wake    time.Time
}

type vmWatched struct {
	run   uint64
	exit  <-chan vm.Exit
	ready bool
}

const vmTestWorker = 2

func newVMHarness(t *testing.T, manualReady bool) *vmHarness {
	h := &vmHarness{t: t, root: t.TempDir(), now: time.Unix(1_700_000_000, 0), watched: map[string]vmWatched{}}
	h.host = vm.NewFakeHost(vm.FakeOptions{Now: func() time.Time { return h.now }, ManualReady: manualReady})
	h.drv = h.host.NewDriver()
	h.core = NewVMCore(VMCoreConfig{WorkerID: vmTestWorker, ImageDir: "/images", StateRoot: h.root})
	h.model = &vmModel{worker: vmTestWorker, vms: map[string]*pb.VM{}}
	return h
}

func (h *vmHarness) add(name string, policy pb.RestartPolicy) *pb.VM {
	v := &pb.VM{
		Spec:    &pb.VMSpec{Name: name, Vcpus: 1, MemoryMib: 128, Network: "user", Restart: policy},
		Desired: pb.VMDesired_VM_DESIRED_RUNNING, State: pb.VMState_VM_STATE_SCHEDULED,
		WorkerId: vmTestWorker, Generation: 1,
	}
	h.model.vms[name] = v
	return v
}

func (h *vmHarness) vm(name string) *pb.VM {
	h.t.Helper()
	v, ok := h.model.vms[name]
	if !ok {
		h.t.Fatalf("vm %s has no record", name)
	}
	return v
}

// step runs Plan, performs its operations and feeds events back until
// nothing more happens at the current time.
func (h *vmHarness) step() {
	h.t.Helper()
	for i := 0; ; i++ {
		if i > 50 {
			h.t.Fatal("the core does not settle: it keeps issuing operations or reports")
		}
		h.poll()
		p := h.core.Plan(h.now, h.model.assigned())
		h.wake = p.Wake
		for _, r := range p.Reports {
			h.reports = append(h.reports, r)
			_ = h.model.report(r)
		}
		for _, op := range p.Ops {
			h.ops = append(h.ops, op)
			err := h.exec(op)
			h.core.Done(h.now, op, err)
			if op.Kind == VMOpStart && err == nil {
				h.watched[op.Name] = vmWatched{run: op.Run, exit: h.drv.Wait(vm.ID(op.Name))}
			}
		}
		if len(p.Reports) == 0 && len(p.Ops) == 0 && !h.poll() {
			return
		}
	}
}

// poll feeds readiness and exits to the core; it reports whether it fed
// anything.
func (h *vmHarness) poll() bool {
	fed := false
	for name, w := range h.watched {
		if !w.ready {
			if st, err := h.drv.Status(context.Background(), vm.ID(name)); err == nil && st.State == vm.StateRunning {
				h.core.Ready(name, w.run)
				w.ready = true
				h.watched[name] = w
				fed = true
			}
		}
		select {
		case e := <-w.exit:
			delete(h.watched, name)
			if e.Err == nil {
				h.core.Exited(h.now, name, w.run, e)
				fed = true
			}
		default:
		}
	}
	return fed
}

func (h *vmHarness) exec(op VMOp) error {
	switch op.Kind {
	case VMOpStart:
		_, err := h.drv.Start(context.Background(), op.Spec)
		if err == nil {
			if mkdirErr := os.MkdirAll(op.Dir, 0o700); mkdirErr != nil {
				h.t.Fatal(mkdirErr)
			}
		}
		return err
	case VMOpStop:
		return h.drv.Stop(context.Background(), vm.ID(op.Name))
	case VMOpKill:
		return h.drv.Kill(vm.ID(op.Name))
	case VMOpRemove:
		return os.RemoveAll(op.Dir)
	}
	return fmt.Errorf("unknown op %v", op.Kind)
}

func (h *vmHarness) advance(d time.Duration) {
	h.now = h.now.Add(d)
	h.step()
}

func (h *vmHarness) takeOps() []string {
	var out []string
	for _, op := range h.ops {
		out = append(out, op.Kind.String()+" "+op.Name)
	}
	h.ops = nil
	return out
}

// restartWorker is the worker process dying and starting again over the
// same host: a new driver and core; Recover's VMs are handed to the core
// as live at generation gen (ready), with dirs as the directories found.
func (h *vmHarness) restartWorker(gen uint32, dirs ...string) {
	h.t.Helper()
	if err := h.drv.Close(); err != nil {
		h.t.Fatal(err)
	}
	h.drv = h.host.NewDriver()
	h.core = NewVMCore(VMCoreConfig{WorkerID: vmTestWorker, ImageDir: "/images", StateRoot: h.root})
	h.watched = map[string]vmWatched{}
	ids, err := h.drv.Recover(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	var live []RecoveredVM
	for _, id := range ids {
		live = append(live, RecoveredVM{Name: string(id), Gen: gen, Ready: true})
	}
	h.core.Recovered(live, dirs)
	for _, op := range h.core.Live() {
		h.watched[op.Name] = vmWatched{run: op.Run, exit: h.drv.Wait(vm.ID(op.Name)), ready: true}
	}
}

func (h *vmHarness) takeReports() []string {
	var out []string
	for _, r := range h.reports {
		s := strings.TrimPrefix(r.State.String(), "VM_STATE_")
		if r.GenerationRestarts > 0 {
			s += fmt.Sprintf(" restarts=%d", r.GenerationRestarts)
		}
		out = append(out, r.Name+" "+s)
	}
	h.reports = nil
	return out
}

func wantVMList(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

func TestVMCoreStartsAndReportsRunningOnceReady(t *testing.T) {
	h := newVMHarness(t, true)
	h.add("web", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	wantVMList(t, "ops", h.takeOps(), "start web")
	wantVMList(t, "reports", h.takeReports(), "web STARTING")
	if got := h.vm("web").StartedAtUnixNano; got != h.now.UnixNano() {
		t.Fatalf("started_at = %d, want %d", got, h.now.UnixNano())
	}
	// Converging again changes nothing: no second start, no report.
	h.advance(time.Second)
	wantVMList(t, "ops after a second pass", h.takeOps())
	wantVMList(t, "reports after a second pass", h.takeReports())

	if err := h.host.MarkReady("web"); err != nil {
		t.Fatal(err)
	}
	h.step()
	wantVMList(t, "reports once ready", h.takeReports(), "web RUNNING")
	if st := h.vm("web").State; st != pb.VMState_VM_STATE_RUNNING {
		t.Fatalf("record state %v, want running", st)
	}
	if got := h.host.Running(); !slices.Equal(got, []vm.ID{"web"}) {
		t.Fatalf("host runs %v", got)
	}
}

func TestVMCoreBuildsTheDriverSpec(t *testing.T) {
	c := NewVMCore(VMCoreConfig{WorkerID: 1, ImageDir: "/img", StateRoot: "/data/vms"})
	s, image, err := c.buildSpec(&pb.VMSpec{
		Name: "a", Vcpus: 2, MemoryMib: 256, Network: "user", Cmdline: "quiet",
		Ports: []*pb.PortForward{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !image || s.Kernel != "/img/vmlinux" || s.Initrd != "/img/initrd.img" || s.VCPUs != 2 || s.MemoryMiB != 256 {
		t.Fatalf("spec %+v (default image %v)", s, image)
	}
	if s.Network.Mode != vm.NetworkUser || len(s.Network.Forwards) != 1 || s.Network.Forwards[0].String() != "0.0.0.0:8080:80/tcp" && s.Network.Forwards[0].String() != "0.0.0.0:8080:80" {
		t.Fatalf("network %+v", s.Network)
	}
	// A kernel of its own: no default initrd.
	s, image, err = c.buildSpec(&pb.VMSpec{Name: "b", Kernel: "/k/vmlinux", Network: "none", Disk: "/d/root.qcow2", DiskReadonly: true})
	if err != nil {
		t.Fatal(err)
	}
	if image || s.Initrd != "" || s.Disk == nil || s.Disk.Format != "qcow2" || !s.Disk.ReadOnly || s.Network.Mode != vm.NetworkNone {
		t.Fatalf("spec %+v", s)
	}
	// Tap gets a stable, short interface name.
	s, _, err = c.buildSpec(&pb.VMSpec{Name: strings.Repeat("x", 63), Network: "tap"})
	if err != nil {
		t.Fatal(err)
	}
	if d := s.Network.TapDevice; len(d) > 15 || d != TapDevice(strings.Repeat("x", 63)) {
		t.Fatalf("tap device %q", d)
	}
	if _, _, err := c.buildSpec(&pb.VMSpec{Name: "c", Network: "bridge"}); !errors.Is(err, vm.ErrInvalidSpec) || !strings.Contains(err.Error(), "network") {
		t.Fatalf("bad network: %v", err)
	}
	noImage := NewVMCore(VMCoreConfig{WorkerID: 1, StateRoot: "/data/vms"})
	if _, _, err := noImage.buildSpec(&pb.VMSpec{Name: "d"}); !errors.Is(err, vm.ErrInvalidSpec) || !strings.Contains(err.Error(), "--vm-image") {
		t.Fatalf("no image: %v", err)
	}
}

func TestVMCoreRestartsCrashesWithExponentialBackoff(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("db", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	wantVMList(t, "ops", h.takeOps(), "start db")
	h.takeReports()

	wantDelays := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute}
	for i, d := range wantDelays {
		if err := h.host.Crash("db", ""); err != nil {
			t.Fatal(err)
		}
		h.step()
		wantVMList(t, fmt.Sprintf("crash %d: ops before the backoff", i+1), h.takeOps())
		reps := h.reports
		wantVMList(t, fmt.Sprintf("crash %d: reports", i+1), h.takeReports(), fmt.Sprintf("db STARTING restarts=%d", i+1))
		if !strings.Contains(reps[0].Reason, "SIGKILL") || !strings.Contains(reps[0].Reason, d.String()+" backoff") {
			t.Fatalf("crash %d: reason %q, want the exit and a %s backoff", i+1, reps[0].Reason, d)
		}
		if got := h.wake.Sub(h.now); got != d {
			t.Fatalf("crash %d: wake in %s, want %s", i+1, got, d)
		}
		h.advance(d - time.Millisecond)
		wantVMList(t, fmt.Sprintf("crash %d: ops just before the backoff ends", i+1), h.takeOps())
		h.advance(time.Millisecond)
		wantVMList(t, fmt.Sprintf("crash %d: ops once the backoff ends", i+1), h.takeOps(), "start db")
		h.takeReports()
		if got := h.vm("db").Restarts; got != uint32(i+1) {
			t.Fatalf("crash %d: restarts = %d", i+1, got)
		}
	}
	// Ten minutes of running resets the backoff.
	h.advance(10 * time.Minute)
	if err := h.host.Crash("db", ""); err != nil {
		t.Fatal(err)
	}
	h.step()
	if got := h.wake.Sub(h.now); got != time.Second {
		t.Fatalf("after 10 min running: backoff %s, want 1s", got)
	}
}

func TestVMCoreRestartPolicies(t *testing.T) {
	t.Run("never reports failed with the reason", func(t *testing.T) {
		h := newVMHarness(t, false)
		h.add("a", pb.RestartPolicy_RESTART_POLICY_NEVER)
		h.step()
		h.takeOps()
		h.takeReports()
		if err := h.host.Crash("a", "hypervisor killed by signal SIGKILL"); err != nil {
			t.Fatal(err)
		}
		h.step()
		wantVMList(t, "reports", h.takeReports(), "a FAILED")
		if r := h.vm("a").Reason; !strings.Contains(r, "SIGKILL") {
			t.Fatalf("reason %q", r)
		}
		h.advance(time.Hour)
		wantVMList(t, "ops an hour later", h.takeOps())
		wantVMList(t, "reports an hour later", h.takeReports())
	})
	t.Run("on-failure stops after a clean exit", func(t *testing.T) {
		h := newVMHarness(t, false)
		h.add("a", pb.RestartPolicy_RESTART_POLICY_ON_FAILURE)
		h.step()
		h.takeOps()
		h.takeReports()
		if err := h.host.GuestExit("a", 0); err != nil {
			t.Fatal(err)
		}
		h.advance(time.Minute)
		wantVMList(t, "ops", h.takeOps())
		wantVMList(t, "reports", h.takeReports(), "a STOPPED")
		if r := h.vm("a").Reason; !strings.Contains(r, "status 0") {
			t.Fatalf("reason %q", r)
		}
	})
	t.Run("on-failure restarts a non-zero exit", func(t *testing.T) {
		h := newVMHarness(t, false)
		h.add("a", pb.RestartPolicy_RESTART_POLICY_ON_FAILURE)
		h.step()
		h.takeOps()
		if err := h.host.GuestExit("a", 3); err != nil {
			t.Fatal(err)
		}
		h.step()
		h.advance(time.Second)
		wantVMList(t, "ops", h.takeOps(), "start a")
		if got := h.vm("a").Restarts; got != 1 {
			t.Fatalf("restarts %d", got)
		}
	})
	t.Run("always restarts a clean exit", func(t *testing.T) {
		h := newVMHarness(t, false)
		h.add("a", pb.RestartPolicy_RESTART_POLICY_UNSPECIFIED)
		h.step()
		h.takeOps()
		if err := h.host.GuestExit("a", 0); err != nil {
			t.Fatal(err)
		}
		h.step()
		h.advance(time.Second)
		wantVMList(t, "ops", h.takeOps(), "start a")
	})
}

func TestVMCoreSpecErrorFailsWithoutRestartLoop(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("bad", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.host.FailNextStart(fmt.Errorf("%w: kernel /nope/vmlinux does not exist", vm.ErrInvalidSpec))
	h.step()
	wantVMList(t, "ops", h.takeOps(), "start bad")
	wantVMList(t, "reports", h.takeReports(), "bad STARTING", "bad FAILED")
	if r := h.vm("bad").Reason; !strings.Contains(r, "/nope/vmlinux does not exist") {
		t.Fatalf("reason %q does not name the problem", r)
	}
	h.advance(time.Hour)
	wantVMList(t, "ops an hour later", h.takeOps())
	// vm start on a failed VM bumps restart_seq: it is tried again.
	h.vm("bad").RestartSeq++
	h.step()
	wantVMList(t, "ops after a restart", h.takeOps(), "start bad")
}

func TestVMCoreInfrastructureStartErrorIsRetried(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("a", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.host.FailNextStart(errors.New("QEMU exited during startup"))
	h.step()
	wantVMList(t, "ops", h.takeOps(), "start a")
	h.advance(time.Second)
	wantVMList(t, "ops after the backoff", h.takeOps(), "start a")
	if st := h.vm("a").State; st != pb.VMState_VM_STATE_RUNNING {
		t.Fatalf("state %v", st)
	}
}

func TestVMCoreStopStartDelete(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("a", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	h.takeOps()
	h.takeReports()
	dir := filepath.Join(h.root, "a")
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}

	h.vm("a").Desired = pb.VMDesired_VM_DESIRED_STOPPED
	h.step()
	wantVMList(t, "stop ops", h.takeOps(), "stop a")
	wantVMList(t, "stop reports", h.takeReports(), "a STOPPING", "a STOPPED")
	if len(h.host.Running()) != 0 {
		t.Fatalf("still running: %v", h.host.Running())
	}
	h.advance(time.Minute)
	wantVMList(t, "ops while stopped", h.takeOps())

	// vm start: desired running again.
	h.vm("a").Desired = pb.VMDesired_VM_DESIRED_RUNNING
	h.step()
	wantVMList(t, "start ops", h.takeOps(), "start a")
	wantVMList(t, "start reports", h.takeReports(), "a STARTING", "a RUNNING")
	if got := h.vm("a").Restarts; got != 0 {
		t.Fatalf("a user stop/start counted %d restarts", got)
	}

	h.vm("a").Desired = pb.VMDesired_VM_DESIRED_DELETED
	h.step()
	wantVMList(t, "delete ops", h.takeOps(), "stop a", "remove a")
	wantVMList(t, "delete reports", h.takeReports(), "a STOPPING", "a STOPPED")
	if _, ok := h.model.vms["a"]; ok {
		t.Fatal("the record is still there after the STOPPED report of a deleted VM")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("state dir still there: %v", err)
	}
	if h.core.Known("a") {
		t.Fatal("the core still tracks a deleted VM")
	}
}

func TestVMCoreRestartSeq(t *testing.T) {
	h := newVMHarness(t, false)
	v := h.add("a", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	v.RestartSeq = 4 // restarts before placement are not acted on
	h.step()
	wantVMList(t, "ops", h.takeOps(), "start a")
	h.vm("a").RestartSeq = 5
	h.step()
	wantVMList(t, "restart ops", h.takeOps(), "stop a", "start a")
	h.step()
	wantVMList(t, "ops after", h.takeOps())
	if got := h.vm("a").Restarts; got != 0 {
		t.Fatalf("vm restart counted %d policy restarts", got)
	}
}

func TestVMCoreNewGenerationReplacesTheProcess(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("a", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	h.takeOps()
	h.takeReports()
	h.vm("a").Generation = 3
	h.step()
	wantVMList(t, "ops", h.takeOps(), "kill a", "start a")
	reps := h.reports
	wantVMList(t, "reports", h.takeReports(), "a STARTING", "a RUNNING")
	for _, r := range reps {
		if r.Generation != 3 {
			t.Fatalf("report for generation %d, want 3", r.Generation)
		}
	}
}

func TestVMCoreKillsWhatItNoLongerOwns(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("a", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	h.takeOps()
	h.takeReports()
	// Re-placed on another worker (this one was marked down).
	h.vm("a").WorkerId = 3
	h.vm("a").Generation = 2
	h.step()
	wantVMList(t, "ops", h.takeOps(), "kill a", "remove a")
	wantVMList(t, "reports", h.takeReports())
	if len(h.host.Running()) != 0 || h.core.Known("a") {
		t.Fatalf("running %v, known %v", h.host.Running(), h.core.Known("a"))
	}
}

func TestVMCoreStaleReportsAreFenced(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("a", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	for _, r := range h.reports {
		if r.Generation != 1 || r.WorkerId != vmTestWorker {
			t.Fatalf("report %v", r)
		}
	}
	if h.model.stale != 0 {
		t.Fatalf("%d stale reports", h.model.stale)
	}
}

// TestVMCoreRecoverAdoptsCurrentAndKillsTheRest restarts the "worker": a
// new driver and core over the same host. The VM at the current
// generation is adopted (same process, no start); one of an old
// generation is replaced; one no longer assigned is killed and its
// directory removed. At no point does a VM run twice.
func TestVMCoreRecoverAdoptsCurrentAndKillsTheRest(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("keep", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.add("old", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.add("gone", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	h.takeOps()
	h.takeReports()
	pid := func(name string, d *vm.Fake) int {
		st, err := d.Status(context.Background(), vm.ID(name))
		if err != nil {
			t.Fatal(err)
		}
		return st.PID
	}
	keepPID := pid("keep", h.drv)
	// While the worker process is down, the cluster moves on.
	h.vm("old").Generation = 2
	delete(h.model.vms, "gone")
	if err := os.MkdirAll(filepath.Join(h.root, "leftover"), 0o700); err != nil {
		t.Fatal(err)
	}
	h.restartWorker(1, "gone", "keep", "leftover", "old")
	h.step()
	wantVMList(t, "ops", h.takeOps(), "kill gone", "remove leftover", "kill old", "remove gone", "start old")
	if got := pid("keep", h.drv); got != keepPID {
		t.Fatalf("keep runs as pid %d, was %d: not adopted", got, keepPID)
	}
	if got := h.host.Running(); !slices.Equal(got, []vm.ID{"keep", "old"}) {
		t.Fatalf("host runs %v", got)
	}
	for _, d := range []string{"gone", "leftover"} {
		if _, err := os.Stat(filepath.Join(h.root, d)); !os.IsNotExist(err) {
			t.Fatalf("%s dir still there: %v", d, err)
		}
	}
	h.advance(time.Minute)
	wantVMList(t, "ops a minute later", h.takeOps())
}

// TestVMCoreRestartCountSurvivesAWorkerRestart: restarts are reported as
// an absolute count per generation, so a restarted worker process that
// adopts a VM counts on from what the cluster recorded rather than from 0
// (which the state would ignore) or by re-adding deltas.
func TestVMCoreRestartCountSurvivesAWorkerRestart(t *testing.T) {
	h := newVMHarness(t, false)
	h.add("db", pb.RestartPolicy_RESTART_POLICY_ALWAYS)
	h.step()
	for i := range 2 {
		if err := h.host.Crash("db", ""); err != nil {
			t.Fatal(err)
		}
		h.step()
		h.advance(time.Duration(1<<i) * time.Second)
	}
	h.takeOps()
	h.takeReports()
	if v := h.vm("db"); v.Restarts != 2 || v.GenerationRestarts != 2 {
		t.Fatalf("after two crashes: restarts %d, in generation %d", v.Restarts, v.GenerationRestarts)
	}

	h.restartWorker(1, "db")
	h.step()
	wantVMList(t, "ops after adoption", h.takeOps())
	h.takeReports()

	if err := h.host.Crash("db", ""); err != nil {
		t.Fatal(err)
	}
	h.step()
	wantVMList(t, "reports after the adopted VM crashed", h.takeReports(), "db STARTING restarts=3")
	if v := h.vm("db"); v.Restarts != 3 {
		t.Fatalf("after a crash of the adopted VM: restarts %d, want 3", v.Restarts)
	}
}

// shellCluster is a VMCluster over a vmModel, safe for the shell's
// goroutines; every applied report closes the Changed channel.
type shellCluster struct {
	mu    sync.Mutex
	model *vmModel
	ver   uint64
	ch    chan struct{}
}

func newShellCluster() *shellCluster {
	return &shellCluster{model: &vmModel{worker: vmTestWorker, vms: map[string]*pb.VM{}}, ch: make(chan struct{})}
}

func (c *shellCluster) change(f func(m *vmModel)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c.model)
	c.ver++
	close(c.ch)
	c.ch = make(chan struct{})
}

func (c *shellCluster) VMs() []*pb.VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.model.assigned()
}

func (c *shellCluster) VMsVersion() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ver
}

func (c *shellCluster) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

func (c *shellCluster) Sync(context.Context) error { return nil }

func (c *shellCluster) ReportVM(_ context.Context, r *pb.ReportVM) error {
	var err error
	c.change(func(m *vmModel) { err = m.report(r) })
	return err
}

// waitVM waits until cond holds for the cluster's VM name, failing with
// what it last saw after a deadline.
func (c *shellCluster) waitVM(t *testing.T, name, what string, cond func(v *pb.VM) bool) *pb.VM {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		ch := c.Changed()
		c.mu.Lock()
		v, ok := c.model.vms[name]
		var cp *pb.VM
		if ok {
			cp = proto.Clone(v).(*pb.VM)
		}
		c.mu.Unlock()
		if cond(cp) {
			return cp
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("vm %s: %s: not within 10s; last seen %v", name, what, cp)
		}
	}
}

func TestVMReconcilerShell(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	host := vm.NewFakeHost(vm.FakeOptions{Now: clk.Now})
	drv := host.NewDriver()
	root := t.TempDir()
	c := newShellCluster()
	r := NewVMReconciler(VMReconcilerConfig{
		Core:  VMCoreConfig{WorkerID: vmTestWorker, ImageDir: "/images", StateRoot: root},
		Clock: clk,
		Stale: func(err error) bool { return errors.Is(err, errModelStale) },
	}, c, drv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()

	c.change(func(m *vmModel) {
		m.vms["web"] = &pb.VM{
			Spec:    &pb.VMSpec{Name: "web", Vcpus: 1, MemoryMib: 128, Network: "user"},
			Desired: pb.VMDesired_VM_DESIRED_RUNNING, WorkerId: vmTestWorker, Generation: 1,
		}
	})
	c.waitVM(t, "web", "running", func(v *pb.VM) bool { return v.GetState() == pb.VMState_VM_STATE_RUNNING })
	if g := readGen(filepath.Join(root, "web")); g != 1 {
		t.Fatalf("generation file says %d", g)
	}
	if err := os.WriteFile(filepath.Join(root, "web", "console.log"), []byte("BLIXARD-READY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, ok := r.ConsoleLog("web"); !ok || p != filepath.Join(root, "web", "console.log") {
		t.Fatalf("ConsoleLog = %q, %v", p, ok)
	}
	if _, ok := r.ConsoleLog("../web"); ok {
		t.Fatal("ConsoleLog accepted a path")
	}

	// A crash: reported with the backoff, restarted once the (fake) clock
	// passes it.
	if err := host.Crash("web", ""); err != nil {
		t.Fatal(err)
	}
	c.waitVM(t, "web", "restart pending", func(v *pb.VM) bool {
		return v.GetRestarts() == 1 && v.GetState() == pb.VMState_VM_STATE_STARTING
	})
	if got := host.Running(); len(got) != 0 {
		t.Fatalf("restarted before the backoff: %v", got)
	}
	clk.Advance(time.Second)
	c.waitVM(t, "web", "running again", func(v *pb.VM) bool { return v.GetState() == pb.VMState_VM_STATE_RUNNING })

	// Re-placed elsewhere: killed here, its reports fenced.
	c.change(func(m *vmModel) { m.vms["web"].WorkerId, m.vms["web"].Generation = 3, 2 })
	deadline := time.Now().Add(10 * time.Second)
	for r.Running() != 0 || len(host.Running()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still running after it was re-placed: %v", host.Running())
		}
		clk.Advance(200 * time.Millisecond) // each tick re-plans
		select {
		case <-c.Changed():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestVMReconcilerLeavesVMsRunningOnExitUnlessAsked: VMs outlive the
// worker process (the next one adopts them); KillOnExit (a dev node whose
// data goes away) ends them.
func TestVMReconcilerLeavesVMsRunningOnExitUnlessAsked(t *testing.T) {
	for _, kill := range []bool{false, true} {
		t.Run(fmt.Sprintf("KillOnExit=%v", kill), func(t *testing.T) {
			clk := clock.NewFake(time.Unix(1_700_000_000, 0))
			host := vm.NewFakeHost(vm.FakeOptions{Now: clk.Now})
			c := newShellCluster()
			r := NewVMReconciler(VMReconcilerConfig{
				Core:  VMCoreConfig{WorkerID: vmTestWorker, ImageDir: "/images", StateRoot: t.TempDir()},
				Clock: clk, KillOnExit: kill,
			}, c, host.NewDriver())
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				r.Run(ctx)
			}()
			c.change(func(m *vmModel) {
				m.vms["a"] = &pb.VM{Spec: &pb.VMSpec{Name: "a", Network: "none"}, Desired: pb.VMDesired_VM_DESIRED_RUNNING, WorkerId: vmTestWorker, Generation: 1}
			})
			c.waitVM(t, "a", "running", func(v *pb.VM) bool { return v.GetState() == pb.VMState_VM_STATE_RUNNING })
			cancel()
			<-done
			running := len(host.Running()) == 1
			if running == kill {
				t.Fatalf("after Run returned: host runs %v", host.Running())
			}
		})
	}
}

// hangingStatus is a driver whose Status blocks, ignoring its context,
// while hang is set: a wedged QMP socket at its worst.
type hangingStatus struct {
	vm.Driver
	hang    atomic.Bool
	entered chan struct{} // closed when a Status call starts hanging
	once    sync.Once
	release chan struct{}
}

func (d *hangingStatus) Status(ctx context.Context, id vm.ID) (vm.Status, error) {
	if d.hang.Load() {
		d.once.Do(func() { close(d.entered) })
		<-d.release
	}
	return d.Driver.Status(ctx, id)
}

// A health check stuck on one VM does not hold up starting another.
func TestVMReconcilerHealthCheckDoesNotBlockPlanning(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	host := vm.NewFakeHost(vm.FakeOptions{Now: clk.Now})
	drv := &hangingStatus{Driver: host.NewDriver(), entered: make(chan struct{}), release: make(chan struct{})}
	c := newShellCluster()
	r := NewVMReconciler(VMReconcilerConfig{
		Core:        VMCoreConfig{WorkerID: vmTestWorker, ImageDir: "/images", StateRoot: t.TempDir()},
		Clock:       clk,
		HealthEvery: time.Second,
	}, c, drv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	defer func() {
		close(drv.release)
		cancel()
		<-done
	}()
	add := func(name string) {
		c.change(func(m *vmModel) {
			m.vms[name] = &pb.VM{
				Spec:    &pb.VMSpec{Name: name, Vcpus: 1, MemoryMib: 128, Network: "user"},
				Desired: pb.VMDesired_VM_DESIRED_RUNNING, WorkerId: vmTestWorker, Generation: 1,
			}
		})
	}
	add("wedged")
	c.waitVM(t, "wedged", "running", func(v *pb.VM) bool { return v.GetState() == pb.VMState_VM_STATE_RUNNING })
	drv.hang.Store(true)
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for waiting := true; waiting; {
		clk.Advance(time.Second) // the next tick is due for a health check
		select {
		case <-drv.entered:
			waiting = false
		case <-deadline.C:
			t.Fatal("no health check started within 10s")
		case <-time.After(10 * time.Millisecond):
		}
	}
	add("web")
	// Time keeps passing (ticks, report retries run on the fake clock);
	// the hung check holds healthBusy, so no new check starts meanwhile.
	for {
		ch := c.Changed()
		if v := c.VMs(); slices.ContainsFunc(v, func(v *pb.VM) bool {
			return v.GetSpec().GetName() == "web" && v.GetState() == pb.VMState_VM_STATE_RUNNING
		}) {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("vm web not running within 10s while a health check hangs; cluster has %v", c.VMs())
		case <-ch:
		case <-time.After(10 * time.Millisecond):
			clk.Advance(200 * time.Millisecond)
		}
	}
}
