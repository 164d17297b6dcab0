package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
	"github.com/blixard/blixard/internal/vm"
	"github.com/blixard/blixard/internal/vm/guard"
	"github.com/blixard/blixard/internal/worker"
)

// VMs in the simulation.
//
// Every node runs on a simulated machine (vmHost) with a hypervisor, the
// production deterministic fake vm.FakeHost, and a disk holding the VMs'
// state directories with their generation files. The machine outlives the
// node's process, as QEMU processes outlive `blixard node`: when the
// process crashes the VMs keep running and the next process adopts them
// through the driver's Recover; when the machine itself dies (chosen per
// crash at random) the VMs die with it and only their directories remain.
//
// The node's process runs the production worker.VMCore, fed as
// worker.VMReconciler (vms_shell.go) feeds it: Recover and the directories
// first, a read barrier (Sync) before the first Plan, a Plan whenever the
// VM table changed or an operation, readiness or exit came back or the
// core's wake-up is due; operations performed against a vm.Fake driver
// after a random latency; reports proposed one at a time, each retried
// until applied or refused as stale. Guests boot after a random delay
// (FakeHost.MarkReady), and now and then crash or exit on their own.
//
// The VM lease is modelled on the machine (leaseAt, contactAt): the
// process renews it while the production worker.Contact says it is in
// contact, and the guards, which run whether the process does or not,
// stop the machine's copies once it has expired; no start succeeds over
// an expired lease. The checker holds the cluster to issue 5: no two
// machines run the same VM (creation seq) at once.

// vmCopy is the simulation's record of one VM instance on a machine: which
// VM record (seq) and placement (generation) it was started for.
type vmCopy struct {
	inst       uint64
	seq        uint64
	gen        uint32
	staleSince time.Duration
	stale      bool
	fencing    bool // its guard found the lease expired and is stopping it
}

// vmHost is a node's machine.
type vmHost struct {
	n      *node
	host   *vm.FakeHost
	dirs   map[string]uint32 // state directories → generation file
	copies map[string]*vmCopy
	inst   uint64
	// The VM lease (server.vmLease, guard.Run) on the machine's monotonic
	// clock, which runs on across process restarts like CLOCK_BOOTTIME:
	// leaseAt is its last renewal (zero: never renewed), contactAt the
	// last contact the process recorded beside it (<data-dir>/vms/.contact).
	leaseAt   time.Time
	contactAt time.Time
}

// The lease timing of the simulated workers, as server.VMFencingFor and
// the guard derive it from the worker TTL: lease TTL W/2, contact gate W.
var (
	leaseTTL     = workerTTL / 2
	contactGate  = workerTTL
	guardCheck   = guard.CheckFor(leaseTTL)
	guardGrace   = guard.GraceFor(leaseTTL)
	leaseRenewal = leaseTTL / 5
)

func newVMHost(n *node) *vmHost {
	h := &vmHost{
		n:      n,
		host:   vm.NewFakeHost(vm.FakeOptions{Now: n.monoNow, ManualReady: true}),
		dirs:   map[string]uint32{},
		copies: map[string]*vmCopy{},
	}
	n.s.after(guardCheck, h.guardLoop)
	return h
}

// leaseExpired says whether the guards on the machine find the lease
// expired now.
func (h *vmHost) leaseExpired() bool {
	return h.leaseAt.IsZero() || h.n.monoNow().Sub(h.leaseAt) > leaseTTL
}

// guardLoop is every guard's lease check (each check period, on the
// machine, whether the node's process runs or not): a copy whose lease
// expired is stopped after the guard's grace (the longest it may take).
func (h *vmHost) guardLoop() {
	s := h.n.s
	if s.phase == phaseDone {
		return
	}
	defer s.after(guardCheck, h.guardLoop)
	if !h.leaseExpired() {
		return
	}
	for _, name := range sortedNames(h.copies) {
		c := h.copies[name]
		if c.fencing {
			continue
		}
		c.fencing = true
		inst := c.inst
		s.after(guardGrace, func() {
			if c := h.copies[name]; c == nil || c.inst != inst {
				return
			}
			_ = h.host.Crash(vm.ID(name), "stopped by its guard (self-fencing): lease not renewed")
			s.stats.VMFenced++
			if s.tracing() {
				s.logf("%s machine: vm %s stopped by its guard: the lease was last renewed at %v", h.n.name(), name, h.leaseAt)
			}
			h.reap()
			h.n.after(0, func() {
				if p := h.n.w.vms; p != nil {
					p.pollExits()
				}
			})
		})
	}
}

// reap forgets the copies whose VM has ended.
func (h *vmHost) reap() {
	running := h.host.Running()
	for _, name := range sortedNames(h.copies) {
		if !slices.Contains(running, vm.ID(name)) {
			delete(h.copies, name)
		}
	}
}

// powerLoss ends every VM on the machine: it crashed or was switched off.
func (h *vmHost) powerLoss(why string) {
	for _, id := range h.host.Running() {
		_ = h.host.Crash(id, why)
	}
	h.reap()
	if h.n.s.tracing() && len(h.dirs) > 0 {
		h.n.s.logf("%s machine: %s; every VM on it is gone", h.n.name(), why)
	}
}

// started records a new instance and checks that no other machine runs the
// same VM (the same creation, whatever the placement) at once.
func (h *vmHost) started(name string, seq uint64, gen uint32) {
	s := h.n.s
	h.inst++
	c := &vmCopy{inst: h.inst, seq: seq, gen: gen}
	h.copies[name] = c
	s.stats.VMStarts++
	for _, id := range s.ids {
		o := s.nodes[id]
		if o == h.n {
			continue
		}
		if oc, ok := o.vmh.copies[name]; ok && oc.seq == seq {
			s.violate("vms", "vm %s (seq %d) runs on n%d (generation %d) and n%d (generation %d) at once", name, seq, o.id, oc.gen, h.n.id, gen)
		}
	}
	inst := c.inst
	boot := time.Duration(50+s.rng.IntN(2000)) * time.Millisecond
	s.after(boot, func() {
		if c := h.copies[name]; c == nil || c.inst != inst {
			return
		}
		if h.host.MarkReady(vm.ID(name)) != nil {
			return
		}
		// The driver's WaitReady returns in the process that watches it.
		h.n.after(0, func() {
			if p := h.n.w.vms; p != nil {
				p.ready(name)
			}
		})
	})
}

// guestFault makes one running VM on the machine crash or exit on its own.
func (h *vmHost) guestFault() bool {
	s := h.n.s
	running := h.host.Running()
	if len(running) == 0 {
		return false
	}
	id := running[s.rng.IntN(len(running))]
	switch k := s.rng.IntN(10); {
	case k < 6:
		_ = h.host.Crash(id, "simulated: hypervisor killed")
	default:
		_ = h.host.GuestExit(id, s.rng.IntN(2))
	}
	s.stats.VMFaults++
	s.trace(evVM, h.n.id, 1, payloadHash([]byte(id)))
	if s.tracing() {
		s.logf("%s machine: vm %s ended on its own", h.n.name(), id)
	}
	h.reap()
	h.n.after(0, func() {
		if p := h.n.w.vms; p != nil {
			p.pollExits()
		}
	})
	return true
}

// vmFaultLoop crashes a VM now and then while the workload runs.
func (s *Sim) vmFaultLoop() {
	if s.phase != phaseWorkload {
		return
	}
	for _, i := range s.rng.Perm(len(s.ids)) {
		if s.nodes[s.ids[i]].vmh.guestFault() {
			break
		}
	}
	s.after(time.Duration(float64(8*time.Second)*s.rng.ExpFloat64()), s.vmFaultLoop)
}

// vmCheckLoop checks that no machine keeps running a VM instance that the
// state, as its own node applied it, no longer gives that machine, for
// longer than vmStaleBound while the node's reconciler is running.
func (s *Sim) vmCheckLoop() {
	if s.phase == phaseDone {
		return
	}
	for _, id := range s.ids {
		n := s.nodes[id]
		h := n.vmh
		for _, name := range sortedNames(h.copies) {
			c := h.copies[name]
			if n.st != stUp || n.w.vms == nil || !n.w.vms.synced {
				c.stale = false
				continue
			}
			v, ok := n.sm.VM(name)
			if ok && v.WorkerId == n.id && v.Generation == c.gen && v.Seq == c.seq {
				c.stale = false
				continue
			}
			if !c.stale {
				c.stale, c.staleSince = true, s.now
				continue
			}
			if s.now-c.staleSince > vmStaleBound {
				what := "it is deleted"
				if ok {
					what = fmt.Sprintf("the state has seq %d generation %d on worker %d", v.Seq, v.Generation, v.WorkerId)
				}
				s.violate("vms", "n%d still runs vm %s (seq %d generation %d) %v after its own state stopped giving it that VM: %s",
					n.id, name, c.seq, c.gen, s.now-c.staleSince, what)
				return
			}
		}
	}
	s.after(250*time.Millisecond, s.vmCheckLoop)
}

// vmStaleBound is how long a running, synced worker may keep a VM copy it
// does not own: operations take at most a few seconds, failed ones are
// retried after a second.
const vmStaleBound = 5 * time.Second

func sortedNames[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ---------------------------------------------------------------------------
// The process side: worker.VMReconciler's shell, around the production core
// ---------------------------------------------------------------------------

type vmWatch struct {
	run uint64
	ch  <-chan vm.Exit
}

// vmProc is one process's VM reconciler.
type vmProc struct {
	n       *node
	h       *vmHost
	core    *worker.VMCore
	drv     *vm.Fake
	watches map[string]vmWatch
	synced  bool
	due     bool
	seenVer uint64
	wakeSet bool
	wakeAt  time.Time
	repQ    []*pb.ReportVM
	sending bool
}

// startVMs is VMReconciler.Run's start: a driver over the machine adopts
// what still runs, the core learns it and the directories, and the first
// Plan waits for a read barrier.
func (w *simWorker) startVMs() {
	n := w.n
	p := &vmProc{n: n, h: n.vmh, watches: map[string]vmWatch{}}
	w.vms = p
	p.core = worker.NewVMCore(worker.VMCoreConfig{WorkerID: n.id, ImageDir: "/sim/image", StateRoot: "/sim/vms"})
	p.drv = p.h.host.NewDriver()
	ctx := context.Background()
	ids, err := p.drv.Recover(ctx)
	if err != nil {
		n.s.violate("vms", "n%d: recover: %v", n.id, err)
		return
	}
	var live []worker.RecoveredVM
	for _, id := range ids {
		rec := worker.RecoveredVM{Name: string(id), Gen: p.h.dirs[string(id)]}
		if st, err := p.drv.Status(ctx, id); err == nil {
			rec.Ready = !st.ReadyAt.IsZero() || st.State == vm.StateRunning
			rec.StartedAt = st.StartedAt
		}
		live = append(live, rec)
		n.s.stats.VMAdopted++
		w.log("adopted vm %s generation %d (ready %v)", id, rec.Gen, rec.Ready)
	}
	p.core.Recovered(live, sortedNames(p.h.dirs))
	for _, op := range p.core.Live() {
		p.watch(op.Name, op.Run)
	}
	p.sync(50 * time.Millisecond)
}

// crash ends the process's reconciler; the VMs stay on the machine.
func (p *vmProc) crash() {
	_ = p.drv.Close()
}

func (p *vmProc) current() bool { return p.n.w.vms == p && p.n.st != stDown && p.n.st != stGone }

// sync is cluster.Sync (a linearizable read barrier), retried until it
// succeeds.
func (p *vmProc) sync(backoff time.Duration) {
	n := p.n
	n.issue(&request{kind: rqRead, done: func(_ proto.Message, err error) {
		if !p.current() {
			return
		}
		if err != nil {
			n.after(backoff, func() {
				if p.current() {
					p.sync(min(2*backoff, 2*time.Second))
				}
			})
			return
		}
		p.synced = true
		p.plan()
	}}, 10*time.Second)
}

// applied is the wake-up on an applied change: only a changed VM table
// makes the shell plan (its ticker is replaced by the core's wake-up).
func (p *vmProc) applied() {
	if p.synced && p.n.sm.VMsVersion() != p.seenVer {
		p.kick()
	}
}

func (p *vmProc) kick() {
	if p.due || !p.synced {
		return
	}
	p.due = true
	p.n.after(time.Duration(1+p.n.s.rng.IntN(5))*time.Millisecond, func() {
		if p.current() {
			p.plan()
		}
	})
}

// plan is one round of the shell's loop.
func (p *vmProc) plan() {
	n := p.n
	s := n.s
	p.due = false
	if !p.synced {
		return
	}
	p.seenVer = n.sm.VMsVersion()
	assigned := n.sm.VMsOnWorker(n.id)
	if s.cfg.VMView != nil {
		assigned = s.cfg.VMView(n.id, assigned)
	}
	seqs := map[string]uint64{}
	for _, v := range assigned {
		seqs[v.GetSpec().GetName()] = v.Seq
	}
	now := n.monoNow()
	plan := p.core.Plan(now, assigned)
	p.repQ = append(p.repQ, plan.Reports...)
	if !p.sending && len(p.repQ) > 0 {
		p.report(50 * time.Millisecond)
	}
	for _, op := range plan.Ops {
		p.dispatch(op, seqs[op.Name])
	}
	if !plan.Wake.IsZero() && (!p.wakeSet || plan.Wake.Before(p.wakeAt)) {
		p.wakeSet, p.wakeAt = true, plan.Wake
		at := plan.Wake
		n.after(max(at.Sub(now), time.Microsecond), func() {
			if p.current() && p.wakeSet && p.wakeAt.Equal(at) {
				p.wakeSet = false
				p.plan()
			}
		})
	}
}

// dispatch performs op after a random latency, as the shell's goroutine
// does, and feeds the outcome back. The operation dies with the process.
func (p *vmProc) dispatch(op worker.VMOp, seq uint64) {
	n := p.n
	s := n.s
	var lat time.Duration
	switch op.Kind {
	case worker.VMOpStart:
		// The shell writes the directory and generation file first.
		p.h.dirs[op.Name] = op.Gen
		lat = time.Duration(20+s.rng.IntN(400)) * time.Millisecond
	case worker.VMOpStop:
		lat = time.Duration(5+s.rng.IntN(1500)) * time.Millisecond
	case worker.VMOpKill:
		lat = time.Duration(1+s.rng.IntN(30)) * time.Millisecond
	default:
		lat = time.Duration(1+s.rng.IntN(10)) * time.Millisecond
	}
	s.trace(evVM, n.id, 10+uint64(op.Kind), payloadHash([]byte(op.Name))^uint64(op.Gen))
	n.after(lat, func() {
		if !p.current() {
			return
		}
		err := p.exec(op, seq)
		if n.s.tracing() {
			n.s.logf("%s vms: %v %s generation %d: %s", n.name(), op.Kind, op.Name, op.Gen, errOK(err))
		}
		p.core.Done(n.monoNow(), op, err)
		if op.Kind == worker.VMOpStart && err == nil {
			p.watch(op.Name, op.Run)
		}
		p.pollExits()
		p.kick()
	})
}

func (p *vmProc) exec(op worker.VMOp, seq uint64) error {
	s := p.n.s
	id := vm.ID(op.Name)
	ctx := context.Background()
	switch op.Kind {
	case worker.VMOpStart:
		if s.phase == phaseWorkload {
			switch k := s.rng.IntN(200); {
			case k < 6:
				p.h.host.FailNextStart(errors.New("simulated: the hypervisor exited during start"))
			case k < 7:
				p.h.host.FailNextStart(fmt.Errorf("%w: simulated: the kernel does not boot", vm.ErrInvalidSpec))
			}
		}
		if p.h.leaseExpired() {
			// The guard starts no QEMU over an expired lease.
			return fmt.Errorf("vm %s: QEMU exited during startup (status %d): simulated: lease not renewed; not starting", op.Name, guard.ExitFenced)
		}
		if _, err := p.drv.Start(ctx, op.Spec); err != nil {
			return err
		}
		p.h.started(op.Name, seq, op.Gen)
		return nil
	case worker.VMOpStop:
		err := p.drv.Stop(ctx, id)
		p.h.reap()
		if errors.Is(err, vm.ErrNotFound) {
			return nil
		}
		return err
	case worker.VMOpKill:
		err := p.drv.Kill(id)
		p.h.reap()
		if errors.Is(err, vm.ErrNotFound) {
			return nil
		}
		return err
	case worker.VMOpRemove:
		delete(p.h.dirs, op.Name)
		return nil
	}
	return fmt.Errorf("unknown vm operation %v", op.Kind)
}

func (p *vmProc) watch(name string, run uint64) {
	p.watches[name] = vmWatch{run: run, ch: p.drv.Wait(vm.ID(name))}
}

// ready is the driver's WaitReady returning for the watched instance.
func (p *vmProc) ready(name string) {
	if w, ok := p.watches[name]; ok {
		p.core.Ready(name, w.run)
		p.kick()
	}
}

// pollExits hands every exit the driver has delivered to the core.
func (p *vmProc) pollExits() {
	for _, name := range sortedNames(p.watches) {
		w := p.watches[name]
		select {
		case e := <-w.ch:
			delete(p.watches, name)
			if e.Err == nil {
				p.core.Exited(p.n.monoNow(), name, w.run, e)
				p.kick()
			}
		default:
		}
	}
}

// report proposes the first queued report, until it is applied or refused
// as stale, then the next.
func (p *vmProc) report(backoff time.Duration) {
	n := p.n
	if len(p.repQ) == 0 {
		p.sending = false
		return
	}
	p.sending = true
	r := p.repQ[0]
	n.issue(&request{kind: rqPropose, payload: mustMarshal(&pb.Command{Op: &pb.Command_ReportVm{ReportVm: r}}), done: func(_ proto.Message, err error) {
		if !p.current() {
			return
		}
		if err == nil || errors.Is(err, state.ErrStaleVM) {
			p.repQ = p.repQ[1:]
			p.report(50 * time.Millisecond)
			return
		}
		n.after(backoff, func() {
			if p.current() {
				p.report(min(2*backoff, 2*time.Second))
			}
		})
	}}, 10*time.Second)
}

// ---------------------------------------------------------------------------
// Quiescence
// ---------------------------------------------------------------------------

// vmsQuiet says whether every VM has reached what its owner wants, as the
// leader's state says and the machines show.
func (s *Sim) vmsQuiet(l *node) (bool, string) {
	vms := l.sm.VMs()
	byName := map[string]*pb.VM{}
	for _, v := range vms {
		name := v.Spec.GetName()
		byName[name] = v
		switch v.Desired {
		case pb.VMDesired_VM_DESIRED_DELETED:
			return false, fmt.Sprintf("vm %s is still being deleted (%v on worker %d)", name, v.State, v.WorkerId)
		case pb.VMDesired_VM_DESIRED_STOPPED:
			if v.State != pb.VMState_VM_STATE_STOPPED {
				return false, fmt.Sprintf("vm %s wants stopped but is %v (%s)", name, v.State, v.Reason)
			}
		default:
			switch v.State {
			case pb.VMState_VM_STATE_RUNNING:
				h := s.nodes[v.WorkerId]
				if h == nil {
					return false, fmt.Sprintf("vm %s runs on unknown worker %d", name, v.WorkerId)
				}
				c := h.vmh.copies[name]
				if c == nil || c.seq != v.Seq || c.gen != v.Generation {
					return false, fmt.Sprintf("vm %s is running on worker %d by the state, but that machine does not run generation %d", name, v.WorkerId, v.Generation)
				}
			case pb.VMState_VM_STATE_FAILED, pb.VMState_VM_STATE_STOPPED:
				if v.Spec.GetRestart() == pb.RestartPolicy_RESTART_POLICY_ALWAYS && v.State == pb.VMState_VM_STATE_STOPPED {
					return false, fmt.Sprintf("vm %s (restart always) wants running but is stopped (%s)", name, v.Reason)
				}
				if v.Spec.GetRestart() == pb.RestartPolicy_RESTART_POLICY_ALWAYS && !isSpecFailure(v.Reason) {
					return false, fmt.Sprintf("vm %s (restart always) wants running but failed: %s", name, v.Reason)
				}
			case pb.VMState_VM_STATE_PENDING:
				if v.WorkerId == 0 && portsTakenEverywhere(l.sm, v.Spec) {
					continue // it rightly waits: another VM forwards its host port on every worker
				}
				return false, fmt.Sprintf("vm %s wants running but is pending (%s)", name, v.Reason)
			default:
				return false, fmt.Sprintf("vm %s wants running but is %v (%s) on worker %d", name, v.State, v.Reason, v.WorkerId)
			}
		}
	}
	for _, id := range s.ids {
		h := s.nodes[id].vmh
		for _, name := range sortedNames(h.copies) {
			c := h.copies[name]
			v := byName[name]
			if v == nil || v.Seq != c.seq || v.Generation != c.gen || v.WorkerId != id || v.Desired != pb.VMDesired_VM_DESIRED_RUNNING {
				return false, fmt.Sprintf("n%d still runs vm %s (seq %d generation %d), which the state does not want there", id, name, c.seq, c.gen)
			}
		}
	}
	return true, ""
}

// portsTakenEverywhere says whether every worker that could run VMs has
// one of spec's host ports forwarded by another VM placed there.
func portsTakenEverywhere(m *state.Machine, spec *pb.VMSpec) bool {
	if len(spec.GetPorts()) == 0 {
		return false
	}
	v := m.ForScheduling()
	for _, w := range v.Workers {
		if !slices.Contains(w.Capabilities, state.CapabilityVMs) {
			continue
		}
		taken := false
		for _, p := range spec.GetPorts() {
			if _, ok := v.HostPorts[w.Id][state.HostPortKey(p)]; ok {
				taken = true
			}
		}
		if !taken {
			return false
		}
	}
	return true
}

func isSpecFailure(reason string) bool {
	return len(reason) >= len("cannot start") && reason[:len("cannot start")] == "cannot start"
}
