package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
	"github.com/blixard/blixard/internal/worker"
)

type attemptKey struct {
	task    string
	attempt uint32
}

func (k attemptKey) String() string { return fmt.Sprintf("%s#%d", k.task, k.attempt) }

// attemptRun is a "process" of the simulated executor.
type attemptRun struct {
	cancelled bool
	startedAt int64 // wall clock, carried in the result
}

// simWorker is the worker side of a node. Registration and heartbeats
// re-enact worker.Agent; what runs is decided by the production
// worker.RunnerCore, fed the state's assignments, process exits,
// proposal outcomes and the node's monotonic time, as worker.Runner's
// goroutine shell feeds it in production. Its actions run against a
// simulated launcher: attempts "run" for a random sim duration with a
// random outcome.
type simWorker struct {
	n         *node
	capacity  *pb.Resources
	agent     worker.AgentCore
	agentBusy bool // a call is in flight: worker.Agent's loop blocks on it
	beatDue   bool // a tick came meanwhile (the ticker's channel keeps one)
	core      *worker.RunnerCore
	procs     map[attemptKey]*attemptRun
	due       bool
	wakeSet   bool
	wakeAt    time.Time
	vms       *vmProc
	contact   *worker.Contact // gates the VM lease (worker.RenewLease)
}

func newWorker(n *node) *simWorker {
	r := n.s.rng
	return &simWorker{n: n, capacity: &pb.Resources{CpuMillis: int64(2000 + 1000*r.IntN(7)), MemoryMib: int64(2048 * (1 + r.IntN(4)))}}
}

// isStale is the server's classification of report errors.
func isStale(err error) bool { return errors.Is(err, state.ErrStaleAttempt) }

// start runs when the node's process starts: a fresh runner core, whose
// first action is the start-up reconcile.
func (w *simWorker) start() {
	n := w.n
	w.agent, w.agentBusy, w.beatDue = worker.AgentCore{}, false, false
	w.due, w.wakeSet = false, false
	w.procs = map[attemptKey]*attemptRun{}
	cfg := worker.RunnerConfig{Stale: isStale}
	if n.s.tracing() {
		cfg.Logger = slog.New(&logHandler{s: n.s, node: n.id})
	}
	w.core = worker.NewRunnerCore(cfg)
	// server.vmLease: the gate counts from the last contact recorded on
	// the machine, else from the process start; the lease is renewed (if
	// in contact) before the driver adopts anything.
	start := n.monoNow()
	if at := n.vmh.contactAt; !at.IsZero() {
		start = at
	}
	w.contact = worker.NewContact(start)
	w.renewLoop()
	w.agentCall(w.agent.Start())
	w.do(w.core.Start(n.monoNow()))
	n.after(heartbeatInterval, w.heartbeatLoop)
	w.startVMs()
}

func (w *simWorker) crash() {
	w.core, w.procs = nil, nil
	if w.vms != nil {
		w.vms.crash()
		w.vms = nil
	}
}

func (w *simWorker) log(format string, args ...any) {
	if w.n.s.tracing() {
		w.n.s.logf("%s worker: %s", w.n.name(), fmt.Sprintf(format, args...))
	}
}

func errOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// agentCall makes a call the production worker.AgentCore asks for, as
// worker.Agent does, and hands it the outcome. Usage reports are not
// simulated.
func (w *simWorker) agentCall(call worker.AgentCall) {
	n := w.n
	s := n.s
	switch call {
	case worker.CallRegister:
		inc := n.inc
		w.agentBusy = true
		wk := &pb.Worker{Id: n.id, Addr: addrOf(n.id), Capacity: w.capacity, Capabilities: []string{state.CapabilityVMs}}
		n.issue(&request{kind: rqPropose, payload: mustMarshal(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: wk, NowUnixNano: n.localNow().UnixNano()}}}),
			done: func(_ proto.Message, err error) {
				if n.inc != inc {
					return
				}
				w.agentBusy = false
				if err == nil {
					w.log("registered")
				}
				w.agentCall(w.agent.Done(worker.CallRegister, false, err))
				if !w.agentBusy && w.beatDue {
					w.beatDue = false
					w.agentCall(w.agent.Beat())
				}
			}}, 3*heartbeatInterval+time.Second)
	case worker.CallHeartbeat:
		// The heartbeat is an RPC to the leader, so it needs the leader's
		// process running and both directions of the link; the leader's
		// worker.Monitor records it (server.heartbeat).
		l := s.nodes[n.lead]
		if l == nil || l.st != stUp || !l.core.IsLeader() ||
			(l != n && (!s.net.connected(n.id, l.id) || !s.net.connected(l.id, n.id) || s.net.rng.Float64() < s.net.loss)) {
			w.agentCall(w.agent.Done(worker.CallHeartbeat, false, errUnreachable))
			return
		}
		sent := n.monoNow() // the RPC takes no sim time
		l.mon.Seen(n.id, l.monoNow())
		wk, registered := l.sm.Worker(n.id)
		if worker.Contacted(&pb.HeartbeatResponse{Registered: registered, Down: registered && wk.GetState() == pb.WorkerState_WORKER_STATE_DOWN}) {
			w.contact.Succeeded(sent)
		}
		w.agentCall(w.agent.Done(worker.CallHeartbeat, registered, nil))
	}
}

// renewLoop is worker.RenewLease: it renews the machine's VM lease every
// fifth of the lease TTL while the worker is in contact (a successful
// heartbeat sent within the gate), recording the contact beside it.
func (w *simWorker) renewLoop() {
	n := w.n
	if now := n.monoNow(); w.contact.Within(now, contactGate) {
		n.vmh.leaseAt = now
		n.vmh.contactAt = w.contact.Last()
	}
	n.after(leaseRenewal, w.renewLoop)
}

// errUnreachable is a heartbeat that found no leader or did not get through.
var errUnreachable = errors.New("sim: leader unreachable")

// heartbeatLoop is worker.Agent's heartbeat ticker; ticks that come
// while a call blocks the agent's loop collapse into one, handled when
// the call returns.
func (w *simWorker) heartbeatLoop() {
	defer w.n.after(heartbeatInterval, w.heartbeatLoop)
	if w.agentBusy {
		w.beatDue = true
		return
	}
	w.agentCall(w.agent.Beat())
}

// kick schedules a converge pass. The runner wakes on every apply; a
// few milliseconds of coalescing stand for its goroutine's scheduling
// latency and keep the cost of copying the assignments down.
func (w *simWorker) kick() {
	if w.due || w.core == nil {
		return
	}
	w.due = true
	w.n.after(time.Duration(2+w.n.s.rng.IntN(10))*time.Millisecond, w.converge)
}

// converge is one round of worker.Runner's loop: the core converges when
// this worker's assignments changed.
func (w *simWorker) converge() {
	w.due = false
	n := w.n
	if v := n.sm.AssignedVersion(n.id); w.core.WantsAssignments(v) {
		w.do(w.core.Converge(n.monoNow(), v, n.sm.Assigned(n.id)))
	}
}

// do carries out the core's actions, as worker.Runner's shell does, then
// sets the wake-up for the core's next timer.
func (w *simWorker) do(acts []worker.RunnerAction) {
	for _, a := range acts {
		if w.core == nil {
			return
		}
		k := attemptKey{a.TaskID, a.Attempt}
		switch a.Kind {
		case worker.ActLaunch:
			err := w.launch(k)
			w.do(w.core.Launched(w.n.monoNow(), k.task, k.attempt, err))
		case worker.ActCancel:
			w.cancel(k)
		default:
			w.propose(a)
		}
	}
	w.wake()
}

// wake arranges for Advance to run at the core's next timer.
func (w *simWorker) wake() {
	if w.core == nil {
		return
	}
	at, ok := w.core.NextWake()
	if !ok || (w.wakeSet && !at.Before(w.wakeAt)) {
		return
	}
	w.wakeSet, w.wakeAt = true, at
	core := w.core
	// At least a microsecond: the node's clock rate may round a wait of
	// a few nanoseconds to nothing.
	w.n.after(max(at.Sub(w.n.monoNow()), time.Microsecond), func() {
		if w.core != core || !w.wakeSet || !w.wakeAt.Equal(at) {
			return
		}
		w.wakeSet = false
		w.do(w.core.Advance(w.n.monoNow()))
	})
}

// launch is the simulated executor starting an attempt: now and then it
// fails, half of the time because of the task (bad command) and half
// because of the worker (which counts towards marking it unschedulable).
func (w *simWorker) launch(k attemptKey) error {
	n := w.n
	s := n.s
	if s.rng.IntN(50) == 0 {
		w.log("%v could not start", k)
		if s.rng.IntN(2) == 0 {
			return fmt.Errorf("%w: simulated: no such command", worker.ErrTaskSpec)
		}
		return errors.New("simulated launch failure")
	}
	run := &attemptRun{startedAt: n.localNow().UnixNano()}
	w.procs[k] = run
	s.trace(evWorker, n.id, uint64(k.attempt), payloadHash([]byte(k.task)))
	w.log("starting %v", k)
	n.after(time.Duration(5+s.rng.IntN(3000))*time.Millisecond, func() { w.exited(k, run) })
	return nil
}

// cancel is SIGTERM: the process exits soon after (the kill grace).
func (w *simWorker) cancel(k attemptKey) {
	run := w.procs[k]
	if run == nil || run.cancelled {
		return
	}
	run.cancelled = true
	w.log("cancelling %v", k)
	w.n.after(time.Duration(1+w.n.s.rng.IntN(200))*time.Millisecond, func() { w.exited(k, run) })
}

// exited is the attempt's process ending.
func (w *simWorker) exited(k attemptKey, run *attemptRun) {
	if w.procs[k] != run {
		return
	}
	delete(w.procs, k)
	w.do(w.core.Exited(w.n.monoNow(), k.task, k.attempt, w.outcome(run)))
}

func (w *simWorker) outcome(run *attemptRun) *pb.TaskResult {
	var r *pb.TaskResult
	switch k := w.n.s.rng.IntN(100); {
	case run.cancelled:
		r = &pb.TaskResult{Cancelled: true, Signal: "SIGTERM"}
	case k < 70:
		r = &pb.TaskResult{ExitCode: 0}
	case k < 88:
		r = &pb.TaskResult{ExitCode: 1}
	case k < 94:
		r = &pb.TaskResult{TimedOut: true, Signal: "SIGKILL"}
	default:
		r = &pb.TaskResult{OomKilled: true, Signal: "SIGKILL"}
	}
	r.StartedAtUnixNano = run.startedAt
	return r
}

// propose makes one try of a proposal action through the local node, as
// the server's taskCluster does (10 s per try), and hands the outcome to
// the core.
func (w *simWorker) propose(a worker.RunnerAction) {
	n := w.n
	now := n.localNow().UnixNano()
	var cmd *pb.Command
	switch a.Kind {
	case worker.ActReportStarted:
		cmd = &pb.Command{Op: &pb.Command_TaskStarted{TaskStarted: &pb.TaskStarted{TaskId: a.TaskID, Attempt: a.Attempt, WorkerId: n.id, NowUnixNano: now}}}
	case worker.ActReportFinished:
		cmd = &pb.Command{Op: &pb.Command_TaskFinished{TaskFinished: &pb.TaskFinished{TaskId: a.TaskID, Attempt: a.Attempt, WorkerId: n.id, Result: a.Result, NowUnixNano: now}}}
	case worker.ActReconcile:
		cmd = &pb.Command{Op: &pb.Command_ReconcileWorker{ReconcileWorker: &pb.ReconcileWorker{WorkerId: n.id, NowUnixNano: now}}}
	case worker.ActSetUnschedulable:
		cmd = &pb.Command{Op: &pb.Command_SetWorkerSchedulable{SetWorkerSchedulable: &pb.SetWorkerSchedulable{WorkerId: n.id, Reason: a.Reason, NowUnixNano: now}}}
	default:
		n.s.violate("runner", "n%d: unknown runner action %v", n.id, a)
		return
	}
	core := w.core
	n.issue(&request{kind: rqPropose, payload: mustMarshal(cmd), done: func(_ proto.Message, err error) {
		if w.core != core {
			return // the process died meanwhile
		}
		w.log("%v: %v", a, errOK(err))
		w.do(w.core.Reported(n.monoNow(), a, err))
		if a.Kind == worker.ActReconcile && err == nil {
			w.kick()
		}
	}}, 10*time.Second)
}

// ---------------------------------------------------------------------------
// Leader duties: worker liveness and scheduling
// ---------------------------------------------------------------------------

// dutiesLoop is server.leaderDuties' loop: each tick asks the production
// worker.LeaderDuties what to propose (worker state changes from the
// worker.Monitor fed with sim-time heartbeats; purges of old tasks) and
// proposes it.
func (n *node) dutiesLoop() {
	defer n.after(heartbeatInterval/2, n.dutiesLoop)
	// The monitor measures heartbeat gaps on the monotonic clock, as
	// time.Now's monotonic reading does in production; commands are
	// stamped with the wall clock.
	in := worker.DutyInput{Now: n.monoNow(), Leader: n.core.IsLeader()}
	if in.Leader {
		in.Term, in.Workers = n.term, n.sm.Workers()
		in.DownVMHolders = n.sm.VMsHeldByDownWorkers()
		// The cutoff is compared with finish times, which are wall-clock
		// stamps, so the input is too.
		in.OldestFinished = n.sm.OldestFinished() - n.localNow().Sub(n.monoNow()).Nanoseconds()
	}
	plan := n.duties.Tick(in)
	mon := n.mon
	for _, tr := range plan.Transitions {
		id := tr.WorkerID
		if n.s.tracing() {
			n.s.logf("%s liveness: worker n%d → %v", n.name(), id, tr.To)
		}
		cmd := &pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: id, State: tr.To, NowUnixNano: n.localNow().UnixNano()}}}
		n.issue(&request{kind: rqPropose, payload: mustMarshal(cmd), done: func(proto.Message, error) { mon.Done(id) }}, 5*time.Second)
	}
	for _, id := range plan.ReleaseVMs {
		if n.s.tracing() {
			n.s.logf("%s liveness: release the VMs of down worker n%d", n.name(), id)
		}
		duties := n.duties
		cmd := &pb.Command{Op: &pb.Command_ReleaseVms{ReleaseVms: &pb.ReleaseVMs{WorkerId: id, NowUnixNano: n.localNow().UnixNano()}}}
		s := n.s
		n.issue(&request{kind: rqPropose, payload: mustMarshal(cmd), done: func(resp proto.Message, err error) {
			duties.ReleaseDone(id)
			if r, ok := resp.(*pb.PutResponse); ok && err == nil && r.Index > 0 {
				s.stats.VMReleases++
				if w := s.nodes[id]; w != nil && w.st != stDown && w.st != stGone {
					// Its process runs: it was cut off (or paused), and its
					// copies had to be fenced by their guards.
					s.stats.VMReleasesOfLiveWorkers++
				}
			}
		}}, 5*time.Second)
	}
	if plan.PurgeBefore != 0 {
		duties := n.duties
		cutoff := plan.PurgeBefore + n.localNow().Sub(n.monoNow()).Nanoseconds()
		cmd := &pb.Command{Op: &pb.Command_PurgeTasks{PurgeTasks: &pb.PurgeTasks{FinishedBeforeUnixNano: cutoff}}}
		n.issue(&request{kind: rqPropose, payload: mustMarshal(cmd), done: func(proto.Message, error) { duties.PurgeDone() }}, 10*time.Second)
	}
}

// setSchedWake makes at (zero: none) the time of the next pass that no
// applied entry asks for, replacing the previous one, as the server's
// scheduling loop does with its timer.
func (n *node) setSchedWake(at time.Time) {
	n.schedWakeSeq++
	n.schedWake = at
	if at.IsZero() {
		return
	}
	seq := n.schedWakeSeq
	n.after(max(at.Sub(n.localNow()), time.Millisecond), func() {
		if n.schedWakeSeq == seq {
			n.schedWake = time.Time{}
			n.schedKick()
		}
	})
}

// schedKick runs a pass soon after something was applied on the leader.
func (n *node) schedKick() {
	if n.schedBusy {
		n.schedDue = true
		return
	}
	if !n.schedDue && n.core.IsLeader() {
		n.schedDue = true
		n.after(time.Duration(1+n.s.rng.IntN(5))*time.Millisecond, n.schedPass)
	}
}

// schedPass is server.schedulePass: one production scheduler.FullPass, one
// PlaceTasks proposal, and no new pass until it is applied.
func (n *node) schedPass() {
	s := n.s
	if n.schedBusy {
		return // the pass in flight runs another when it is done (schedDue)
	}
	// Cleared before the leader check: a kick that finds the node no
	// longer leading must not leave schedDue set, or no later kick would
	// schedule a pass (the server's loop has no such flag).
	n.schedDue = false
	if !n.core.IsLeader() {
		n.backoffs.Reset()
		n.setSchedWake(time.Time{})
		return
	}
	// The server's pass: tasks and VMs together.
	now := n.localNow()
	view := n.sm.ForScheduling()
	n.backoffs.Apply(now, &view)
	pass := scheduler.FullPass(now, view, n.sm.PendingVMs(), n.schedRng, s.cfg.Schedule)
	n.setSchedWake(pass.NextWake)
	if len(pass.Input.Pending) > 0 {
		s.chk.plan(n, pass.Input, pass.Plan)
	}
	var cmds []*pb.Command
	if cmd := pass.Place; cmd != nil {
		s.stats.Placements += len(cmd.Placements)
		s.trace(evSched, n.id, uint64(len(cmd.Placements)), 0)
		if s.tracing() {
			var ps []string
			for _, p := range cmd.Placements {
				ps = append(ps, fmt.Sprintf("%s#%d→n%d", p.TaskId, p.Attempt, p.WorkerId))
			}
			s.logf("%s scheduler: place %s", n.name(), strings.Join(ps, " "))
		}
		cmds = append(cmds, &pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: cmd}})
	}
	if cmd := pass.PlaceVMs; cmd != nil {
		s.stats.VMPlacements += len(cmd.Placements)
		s.trace(evSched, n.id, uint64(len(cmd.Placements)), 1)
		if s.tracing() {
			var ps []string
			for _, p := range cmd.Placements {
				ps = append(ps, fmt.Sprintf("vm %s gen %d→n%d", p.Name, p.Generation, p.WorkerId))
			}
			s.logf("%s scheduler: place %s", n.name(), strings.Join(ps, " "))
		}
		cmds = append(cmds, &pb.Command{Op: &pb.Command_PlaceVms{PlaceVms: cmd}})
	}
	if len(cmds) == 0 {
		return
	}
	n.schedBusy = true
	n.proposePass(cmds, n.inc)
}

// proposePass proposes a pass's commands one after the other, as
// server.schedulePass does, and allows the next pass after the last.
func (n *node) proposePass(cmds []*pb.Command, inc int) {
	n.issue(&request{kind: rqPropose, payload: mustMarshal(cmds[0]), done: func(_ proto.Message, err error) {
		if n.inc != inc {
			return
		}
		if retry := n.localNow().Add(time.Second); err != nil && (n.schedWake.IsZero() || retry.Before(n.schedWake)) {
			// As the server: a pass retries a second after a failed proposal.
			n.setSchedWake(retry)
		}
		if len(cmds) > 1 {
			n.proposePass(cmds[1:], inc)
			return
		}
		n.schedBusy = false
		if n.schedDue {
			n.schedDue = false
			n.schedKick()
		}
	}}, 10*time.Second)
}
