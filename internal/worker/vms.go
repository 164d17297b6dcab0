package worker

import (
	"errors"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"sort"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/vm"
)

// The VM reconciler converges what a worker's hypervisor driver runs to
// what the replicated state assigns the worker. It is split in two:
//
//   - VMCore (this file) decides. It is deterministic and single-threaded:
//     no goroutines, no clock, no I/O. It is told what the state says (Plan),
//     what the driver did (Done) and what the VMs did (Ready, Exited), and it
//     answers with operations to perform (VMOp) and reports to propose
//     (pb.ReportVM). The simulation can drive it directly.
//   - VMReconciler (vms_shell.go) performs: it runs the operations against a
//     vm.Driver in goroutines it owns, watches the VMs, proposes the reports
//     and wakes the core on state changes, VM events and backoff timers.

// VMOpKind is what a VMOp asks for. The numbers are not persisted.
type VMOpKind int

// Operation kinds.
const (
	// VMOpStart launches the VM (Spec) for generation Gen.
	VMOpStart VMOpKind = 1
	// VMOpStop shuts the VM down gracefully (the driver kills it after its
	// grace period).
	VMOpStop VMOpKind = 2
	// VMOpKill ends the VM at once.
	VMOpKill VMOpKind = 3
	// VMOpRemove deletes the VM's state directory (Dir). The VM does not run.
	VMOpRemove VMOpKind = 4
)

func (k VMOpKind) String() string {
	switch k {
	case VMOpStart:
		return "start"
	case VMOpStop:
		return "stop"
	case VMOpKill:
		return "kill"
	case VMOpRemove:
		return "remove"
	}
	return fmt.Sprintf("VMOpKind(%d)", int(k))
}

// VMOp is one thing the core wants done. Its result goes back through
// VMCore.Done with the same op.
type VMOp struct {
	Kind VMOpKind
	Name string
	// Run is the core's incarnation number of the VM; events about the
	// process started by a VMOpStart carry it back (Ready, Exited).
	Run uint64
	Gen uint32
	// Spec is the VM to launch (VMOpStart).
	Spec vm.Spec
	// DefaultImage is set when the kernel and initrd come from the node's
	// image directory (VMOpStart): the performer may build the image first.
	DefaultImage bool
	// Dir is the VM's state directory.
	Dir string
}

// VMPlan is what one call of Plan asks for.
type VMPlan struct {
	Ops     []VMOp
	Reports []*pb.ReportVM
	// Wake is when Plan wants to be called again although nothing changed
	// (a restart backoff ends); zero means not needed.
	Wake time.Time
}

// RecoveredVM is a VM the driver adopted after a worker restart.
type RecoveredVM struct {
	Name string
	// Gen is the generation it was started for (recorded beside it); 0
	// when unknown, which makes it never current.
	Gen       uint32
	Ready     bool
	StartedAt time.Time
}

// VMCoreConfig configures a VMCore.
type VMCoreConfig struct {
	WorkerID uint64
	// ImageDir holds the default guest image (vmlinux, initrd.img) used
	// when a spec names no kernel.
	ImageDir string
	// StateRoot is the driver's state root; a VM's directory is
	// StateRoot/<name>.
	StateRoot string
	// PortAddr is the host address port forwards listen on; empty means
	// 0.0.0.0 (every address of the worker).
	PortAddr string
	// Restart backoff: BackoffBase·2ⁿ capped at BackoffMax; a VM that ran
	// BackoffReset before it exited starts over at BackoffBase. Defaults
	// 1 s, 1 min, 10 min.
	BackoffBase, BackoffMax, BackoffReset time.Duration
	// RetryAfter is how long a failed stop, kill or remove waits before it
	// is tried again; default 1 s.
	RetryAfter time.Duration
}

type procState int

const (
	procNone     procState = 1 // nothing runs
	procStarting procState = 2 // a start op is in flight
	procLive     procState = 3 // the process runs
	procStopping procState = 4 // a stop or kill op is in flight
	procRemoving procState = 5 // a remove op is in flight
)

// vmSlot is everything the core knows about one VM name on this worker.
type vmSlot struct {
	name string
	gen  uint32 // generation of the current or last process; 0: none yet
	run  uint64
	spec *pb.VMSpec
	proc procState

	ready     bool
	startedAt time.Time
	// dirMaybe is false only once the state dir is known to be gone.
	dirMaybe bool
	// adopted: found running after a restart; the restart_seq it last
	// acted on is unknown, so the state's current one is taken as acted on.
	adopted bool
	// unhealthy is why a live VM is being killed for failing its health
	// check; its exit then counts as a failure.
	unhealthy string
	// retryAt delays a retry of a failed stop, kill or remove.
	retryAt time.Time

	// Restart policy.
	restartSeq uint32 // the VM's restart_seq last acted on
	failures   int    // consecutive restarts, for the backoff
	notBefore  time.Time
	lastExit   string // why the last process ended (reason of the next reports)
	final      bool   // policy says no more starts (until restart, stop or a new generation)
	finalState pb.VMState
	// restarts counts restarts by policy in this generation (reported
	// absolute, so a retried report cannot count one twice).
	restarts uint32

	// What was last reported, to report each change once.
	repGen      uint32
	repState    pb.VMState
	repReason   string
	repStarted  int64
	repRestarts uint32
}

func (s *vmSlot) busy() bool {
	return s.proc == procStarting || s.proc == procStopping || s.proc == procRemoving
}

// VMCore decides what a worker does about its VMs. It is not safe for
// concurrent use; the caller serialises calls.
type VMCore struct {
	cfg   VMCoreConfig
	slots map[string]*vmSlot
	runs  uint64
}

// NewVMCore returns a core that knows no VM yet; call Recovered first after
// a restart.
func NewVMCore(cfg VMCoreConfig) *VMCore {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.BackoffBase, time.Second)
	def(&cfg.BackoffMax, time.Minute)
	def(&cfg.BackoffReset, 10*time.Minute)
	def(&cfg.RetryAfter, time.Second)
	if cfg.PortAddr == "" {
		cfg.PortAddr = "0.0.0.0"
	}
	return &VMCore{cfg: cfg, slots: map[string]*vmSlot{}}
}

// Dir is the state directory of VM name.
func (c *VMCore) Dir(name string) string { return filepath.Join(c.cfg.StateRoot, name) }

// Recovered tells the core what the driver adopted after a restart (live)
// and which VM directories exist (dirs, names). VMs the state does not
// assign to this worker at their generation are killed and their
// directories removed by the next Plans.
func (c *VMCore) Recovered(live []RecoveredVM, dirs []string) {
	for _, r := range live {
		c.runs++
		c.slots[r.Name] = &vmSlot{
			name: r.Name, gen: r.Gen, run: c.runs, proc: procLive,
			ready: r.Ready, startedAt: r.StartedAt, dirMaybe: true, adopted: true,
		}
	}
	for _, d := range dirs {
		if _, ok := c.slots[d]; !ok {
			c.slots[d] = &vmSlot{name: d, proc: procNone, dirMaybe: true}
		}
	}
}

// Live lists the VMs whose process runs (or is being started or stopped),
// with the incarnation the events about them carry, sorted by name.
func (c *VMCore) Live() []VMOp {
	var out []VMOp
	for _, name := range c.names() {
		s := c.slots[name]
		if s.proc == procLive || s.proc == procStarting || s.proc == procStopping {
			out = append(out, VMOp{Name: name, Run: s.run, Gen: s.gen, Dir: c.Dir(name)})
		}
	}
	return out
}

// Known reports whether the core tracks VM name (running, or with a state
// directory it has not removed).
func (c *VMCore) Known(name string) bool {
	_, ok := c.slots[name]
	return ok
}

func (c *VMCore) names() []string {
	names := make([]string, 0, len(c.slots))
	for n := range c.slots {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Plan compares the VMs the state assigns to this worker with what runs
// and returns what to do. assigned holds the VMs whose worker_id is this
// worker (others are ignored). Calling it again without new information
// returns nothing new: every operation and report is issued once.
func (c *VMCore) Plan(now time.Time, assigned []*pb.VM) VMPlan {
	var p VMPlan
	want := map[string]*pb.VM{}
	for _, v := range assigned {
		if v.GetWorkerId() != c.cfg.WorkerID || v.GetSpec().GetName() == "" {
			continue
		}
		want[v.Spec.Name] = v
		if _, ok := c.slots[v.Spec.Name]; !ok {
			c.slots[v.Spec.Name] = &vmSlot{name: v.Spec.Name, proc: procNone, dirMaybe: true}
		}
	}
	for _, name := range c.names() {
		s := c.slots[name]
		if v, ok := want[name]; ok {
			c.planOwned(now, s, v, &p)
		} else {
			c.planUnowned(now, s, &p)
		}
	}
	return p
}

// planUnowned ends and forgets a VM this worker no longer holds: deleted
// while the worker was away, re-placed elsewhere, or left from a previous
// run. It is killed (its new owner runs it; never two copies), its
// directory removed; nothing is reported (the record is gone or not ours).
func (c *VMCore) planUnowned(now time.Time, s *vmSlot, p *VMPlan) {
	switch {
	case s.busy():
	case now.Before(s.retryAt):
		p.wakeAt(s.retryAt)
	case s.proc == procLive:
		s.proc = procStopping
		p.Ops = append(p.Ops, VMOp{Kind: VMOpKill, Name: s.name, Run: s.run, Gen: s.gen, Dir: c.Dir(s.name)})
	case s.dirMaybe:
		s.proc = procRemoving
		p.Ops = append(p.Ops, VMOp{Kind: VMOpRemove, Name: s.name, Run: s.run, Gen: s.gen, Dir: c.Dir(s.name)})
	default:
		delete(c.slots, s.name)
	}
}

func (c *VMCore) planOwned(now time.Time, s *vmSlot, v *pb.VM, p *VMPlan) {
	if s.busy() {
		return
	}
	if now.Before(s.retryAt) {
		p.wakeAt(s.retryAt)
		return
	}
	dir := c.Dir(s.name)
	if s.gen != v.Generation {
		if s.proc == procLive {
			// A process of another placement (adopted after a restart, or
			// from before this worker was marked down): it is not this
			// generation's VM, so it goes before a fresh one starts.
			s.proc = procStopping
			p.Ops = append(p.Ops, VMOp{Kind: VMOpKill, Name: s.name, Run: s.run, Gen: s.gen, Dir: dir})
			return
		}
		*s = vmSlot{
			name: s.name, gen: v.Generation, run: s.run, proc: procNone, dirMaybe: s.dirMaybe,
			restartSeq: v.RestartSeq,
		}
	}
	// After this process restarted (adoption) it counts on from what the
	// cluster last recorded for the generation.
	s.restarts = max(s.restarts, v.GenerationRestarts)
	if s.adopted {
		s.adopted = false
		s.restartSeq = v.RestartSeq
	}
	s.spec = v.Spec
	switch v.Desired {
	case pb.VMDesired_VM_DESIRED_STOPPED:
		s.final, s.failures, s.notBefore = false, 0, time.Time{}
		s.restartSeq = v.RestartSeq
		switch s.proc {
		case procLive:
			s.proc = procStopping
			p.Ops = append(p.Ops, VMOp{Kind: VMOpStop, Name: s.name, Run: s.run, Gen: s.gen, Dir: dir})
			c.report(now, s, p, pb.VMState_VM_STATE_STOPPING, "stop requested")
		default:
			c.report(now, s, p, pb.VMState_VM_STATE_STOPPED, "stopped")
		}
	case pb.VMDesired_VM_DESIRED_DELETED:
		switch {
		case s.proc == procLive:
			s.proc = procStopping
			p.Ops = append(p.Ops, VMOp{Kind: VMOpStop, Name: s.name, Run: s.run, Gen: s.gen, Dir: dir})
			c.report(now, s, p, pb.VMState_VM_STATE_STOPPING, "deleting")
		case s.dirMaybe:
			s.proc = procRemoving
			p.Ops = append(p.Ops, VMOp{Kind: VMOpRemove, Name: s.name, Run: s.run, Gen: s.gen, Dir: dir})
		default:
			// Stopped and its files gone: this report removes the record.
			c.report(now, s, p, pb.VMState_VM_STATE_STOPPED, "deleted")
		}
	default: // running
		if v.RestartSeq > s.restartSeq {
			s.restartSeq = v.RestartSeq
			s.final, s.failures, s.notBefore = false, 0, time.Time{}
			s.lastExit = ""
			if s.proc == procLive {
				s.proc = procStopping
				p.Ops = append(p.Ops, VMOp{Kind: VMOpStop, Name: s.name, Run: s.run, Gen: s.gen, Dir: dir})
				c.report(now, s, p, pb.VMState_VM_STATE_STOPPING, "restart requested")
				return
			}
		}
		switch {
		case s.proc == procLive && s.unhealthy != "":
			s.proc = procStopping
			p.Ops = append(p.Ops, VMOp{Kind: VMOpKill, Name: s.name, Run: s.run, Gen: s.gen, Dir: dir})
		case s.proc == procLive && s.ready:
			c.report(now, s, p, pb.VMState_VM_STATE_RUNNING, restartedReason(s.lastExit))
		case s.proc == procLive:
			c.report(now, s, p, pb.VMState_VM_STATE_STARTING, restartedReason(s.lastExit))
		case s.final:
			c.report(now, s, p, s.finalState, s.lastExit)
		case now.Before(s.notBefore):
			p.wakeAt(s.notBefore)
			c.report(now, s, p, pb.VMState_VM_STATE_STARTING,
				fmt.Sprintf("exited (%s); restarting after a %s backoff", s.lastExit, c.backoff(s.failures)))
		default:
			spec, image, err := c.buildSpec(v.Spec)
			if err != nil {
				s.final, s.finalState, s.lastExit = true, pb.VMState_VM_STATE_FAILED, err.Error()
				c.report(now, s, p, s.finalState, s.lastExit)
				return
			}
			c.runs++
			s.run = c.runs
			s.proc = procStarting
			s.ready = false
			s.startedAt = now
			s.dirMaybe = true
			p.Ops = append(p.Ops, VMOp{Kind: VMOpStart, Name: s.name, Run: s.run, Gen: s.gen, Spec: spec, DefaultImage: image, Dir: dir})
			c.report(now, s, p, pb.VMState_VM_STATE_STARTING, restartedReason(s.lastExit))
		}
	}
}

func restartedReason(lastExit string) string {
	if lastExit == "" {
		return ""
	}
	return "restarted after: " + lastExit
}

func (p *VMPlan) wakeAt(t time.Time) {
	if p.Wake.IsZero() || t.Before(p.Wake) {
		p.Wake = t
	}
}

// report adds a report when what the worker would say changed.
func (c *VMCore) report(now time.Time, s *vmSlot, p *VMPlan, st pb.VMState, reason string) {
	var started int64
	if (st == pb.VMState_VM_STATE_STARTING || st == pb.VMState_VM_STATE_RUNNING) && s.proc != procNone && !s.startedAt.IsZero() {
		started = s.startedAt.UnixNano()
	}
	if s.repGen == s.gen && s.repState == st && s.repReason == reason && s.repStarted == started && s.repRestarts == s.restarts {
		return
	}
	s.repGen, s.repState, s.repReason, s.repStarted, s.repRestarts = s.gen, st, reason, started, s.restarts
	p.Reports = append(p.Reports, &pb.ReportVM{
		Name: s.name, Generation: s.gen, WorkerId: c.cfg.WorkerID, State: st, Reason: reason,
		StartedAtUnixNano: started, GenerationRestarts: s.restarts, NowUnixNano: now.UnixNano(),
	})
}

// Done records the outcome of an operation Plan issued.
func (c *VMCore) Done(now time.Time, op VMOp, err error) {
	s, ok := c.slots[op.Name]
	if !ok || s.run != op.Run {
		return
	}
	switch op.Kind {
	case VMOpStart:
		if s.proc != procStarting {
			return
		}
		if err == nil {
			s.proc = procLive
			return
		}
		s.proc = procNone
		if errors.Is(err, vm.ErrInvalidSpec) {
			// The spec cannot run here; starting again would fail the same
			// way.
			s.final, s.finalState, s.lastExit = true, pb.VMState_VM_STATE_FAILED, "cannot start: "+err.Error()
			return
		}
		c.exited(now, s, true, -1, "start failed: "+err.Error())
	case VMOpStop, VMOpKill:
		if s.proc != procStopping {
			return
		}
		if err != nil && !errors.Is(err, vm.ErrNotFound) {
			s.proc = procLive
			s.retryAt = now.Add(c.cfg.RetryAfter)
			return
		}
		s.proc = procNone
		s.ready = false
		if why := s.unhealthy; why != "" {
			s.unhealthy = ""
			c.exited(now, s, true, -1, why)
		}
	case VMOpRemove:
		if s.proc != procRemoving {
			return
		}
		s.proc = procNone
		if err != nil {
			s.retryAt = now.Add(c.cfg.RetryAfter)
			return
		}
		s.dirMaybe = false
	}
}

// Ready records that the VM of incarnation run printed its readiness
// marker.
func (c *VMCore) Ready(name string, run uint64) {
	if s, ok := c.slots[name]; ok && s.run == run && s.proc == procLive {
		s.ready = true
	}
}

// Unhealthy records that the live VM of incarnation run fails its health
// check (e.g. the hypervisor reports the guest panicked): the next Plan
// kills it and the restart policy decides what follows.
func (c *VMCore) Unhealthy(name string, run uint64, reason string) {
	if s, ok := c.slots[name]; ok && s.run == run && s.proc == procLive && s.unhealthy == "" {
		s.unhealthy = reason
	}
}

// Exited records that the VM of incarnation run ended. An exit the core
// asked for (stop, kill) is expected; any other applies the restart
// policy.
func (c *VMCore) Exited(now time.Time, name string, run uint64, e vm.Exit) {
	s, ok := c.slots[name]
	if !ok || s.run != run || s.proc != procLive {
		return // expected (a stop or kill is in flight) or stale
	}
	s.proc = procNone
	s.ready = false
	s.unhealthy = ""
	reason := e.Reason
	if e.GuestExitCode >= 0 {
		reason = fmt.Sprintf("%s, guest command exited with status %d", reason, e.GuestExitCode)
	}
	c.exited(now, s, e.State == vm.StateFailed || e.GuestExitCode > 0, e.GuestExitCode, reason)
}

// exited applies the restart policy to a process that ended on its own.
func (c *VMCore) exited(now time.Time, s *vmSlot, failed bool, _ int, reason string) {
	s.lastExit = reason
	policy := s.spec.GetRestart()
	restart := true
	switch policy {
	case pb.RestartPolicy_RESTART_POLICY_NEVER:
		restart = false
	case pb.RestartPolicy_RESTART_POLICY_ON_FAILURE:
		restart = failed
	}
	if !restart {
		s.final = true
		s.finalState = pb.VMState_VM_STATE_STOPPED
		if failed {
			s.finalState = pb.VMState_VM_STATE_FAILED
		}
		return
	}
	if !s.startedAt.IsZero() && now.Sub(s.startedAt) >= c.cfg.BackoffReset {
		s.failures = 0
	}
	s.failures++
	s.restarts++
	s.notBefore = now.Add(c.backoff(s.failures))
}

// backoff is the delay before restart number n (1-based) of a run of
// failures.
func (c *VMCore) backoff(n int) time.Duration {
	d := c.cfg.BackoffBase
	for i := 1; i < n && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, c.cfg.BackoffMax)
}

// buildSpec turns the replicated spec into the driver's. Errors wrap
// vm.ErrInvalidSpec.
func (c *VMCore) buildSpec(ps *pb.VMSpec) (vm.Spec, bool, error) {
	s := vm.Spec{
		ID:        vm.ID(ps.GetName()),
		VCPUs:     int(ps.GetVcpus()),
		MemoryMiB: int(ps.GetMemoryMib()),
		Kernel:    ps.GetKernel(),
		Initrd:    ps.GetInitrd(),
		Cmdline:   ps.GetCmdline(),
	}
	if s.VCPUs == 0 {
		s.VCPUs = 1
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 128
	}
	image := false
	if s.Kernel == "" {
		if c.cfg.ImageDir == "" {
			return s, false, fmt.Errorf("%w: kernel: none given and this worker has no default image (start the node with --vm-image DIR)", vm.ErrInvalidSpec)
		}
		image = true
		s.Kernel = filepath.Join(c.cfg.ImageDir, "vmlinux")
		if s.Initrd == "" {
			s.Initrd = filepath.Join(c.cfg.ImageDir, "initrd.img")
		}
	}
	if d := ps.GetDisk(); d != "" {
		format := "raw"
		if filepath.Ext(d) == ".qcow2" {
			format = "qcow2"
		}
		s.Disk = &vm.Disk{Path: d, Format: format, ReadOnly: ps.GetDiskReadonly()}
	}
	switch ps.GetNetwork() {
	case "", "user":
		s.Network.Mode = vm.NetworkUser
		for _, f := range ps.GetPorts() {
			if f.GetHostPort() > 65535 || f.GetGuestPort() > 65535 {
				return s, image, fmt.Errorf("%w: ports: %d:%d is out of range", vm.ErrInvalidSpec, f.GetHostPort(), f.GetGuestPort())
			}
			s.Network.Forwards = append(s.Network.Forwards, vm.PortForward{
				Protocol: f.GetProtocol(), HostAddr: c.cfg.PortAddr,
				HostPort: uint16(f.GetHostPort()), GuestPort: uint16(f.GetGuestPort()),
			})
		}
	case "none":
		s.Network.Mode = vm.NetworkNone
	case "tap":
		s.Network.Mode = vm.NetworkTap
		s.Network.TapDevice = TapDevice(ps.GetName())
	default:
		return s, image, fmt.Errorf("%w: network must be user, none or tap (got %q)", vm.ErrInvalidSpec, ps.GetNetwork())
	}
	if err := s.Validate(); err != nil {
		return s, image, err
	}
	return s, image, nil
}

// TapDevice is the host tap interface of VM name with network tap:
// "bx" and 8 hex digits of a hash of the name (interface names are at
// most 15 bytes, VM names up to 63).
func TapDevice(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	return fmt.Sprintf("bx%08x", h.Sum32())
}
