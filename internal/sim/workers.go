package sim

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
)

type attemptKey struct {
	task    string
	attempt uint32
}

func (k attemptKey) String() string { return fmt.Sprintf("%s#%d", k.task, k.attempt) }

func compareKeys(a, b attemptKey) int {
	if c := strings.Compare(a.task, b.task); c != 0 {
		return c
	}
	return int(a.attempt) - int(b.attempt)
}

// attemptRun is a "process" of the simulated executor.
type attemptRun struct {
	cancelled bool
	over      bool
	startedAt int64 // wall clock, carried in the result
}

// simWorker is the worker side of a node, with worker.Agent's and
// worker.Runner's behaviour: register, heartbeat to the leader, reconcile
// after a start, converge on the assigned attempts, report starts and
// results (retrying until recorded or refused as stale). Attempts "run"
// for a random sim duration with a random outcome.
type simWorker struct {
	n          *node
	capacity   *pb.Resources
	registered bool
	reconciled bool
	running    map[attemptKey]*attemptRun
	finished   map[attemptKey]bool
	due        bool
	// seen is the state's AssignedVersion at the last converge: like the
	// Runner, a round is skipped when this worker's assignments did not
	// change.
	seen      uint64
	converged bool
}

func newWorker(n *node) *simWorker {
	r := n.s.rng
	return &simWorker{n: n, capacity: &pb.Resources{CpuMillis: int64(2000 + 1000*r.IntN(7)), MemoryMib: int64(2048 * (1 + r.IntN(4)))}}
}

// start runs when the node's process starts: nothing of ours runs (the
// executor killed orphans), so reconcile with an empty list.
func (w *simWorker) start() {
	w.registered, w.reconciled, w.due, w.converged = false, false, false, false
	w.running = map[attemptKey]*attemptRun{}
	w.finished = map[attemptKey]bool{}
	w.register()
	w.retry("reconcile", func() *pb.Command {
		return &pb.Command{Op: &pb.Command_ReconcileWorker{ReconcileWorker: &pb.ReconcileWorker{WorkerId: w.n.id, NowUnixNano: w.n.localNow().UnixNano()}}}
	}, func() {
		w.reconciled = true
		w.kick()
	})
	w.n.after(heartbeatInterval, w.heartbeatLoop)
}

func (w *simWorker) crash() {
	w.running, w.finished = nil, nil
}

func (w *simWorker) log(format string, args ...any) {
	if w.n.s.tracing() {
		w.n.s.logf("%s worker: %s", w.n.name(), fmt.Sprintf(format, args...))
	}
}

// propose sends cmd through the local node with timeout and calls done.
func (w *simWorker) propose(cmd *pb.Command, timeout time.Duration, done func(proto.Message, error)) {
	w.n.issue(&request{kind: rqPropose, payload: mustMarshal(cmd), done: done}, timeout)
}

// retry proposes mk() until it succeeds (or is refused as stale), backing
// off 50 ms → 2 s like worker.Runner.retry; it dies with the process.
func (w *simWorker) retry(what string, mk func() *pb.Command, ok func()) {
	n := w.n
	inc := n.inc
	backoff := 50 * time.Millisecond
	var try func()
	try = func() {
		w.propose(mk(), 10*time.Second, func(_ proto.Message, err error) {
			if n.inc != inc {
				return
			}
			if err == nil || errors.Is(err, state.ErrStaleAttempt) || errors.Is(err, state.ErrUnknownTask) {
				w.log("%s: %v", what, errOK(err))
				if ok != nil {
					ok()
				}
				return
			}
			n.after(backoff, try)
			backoff = min(2*backoff, 2*time.Second)
		})
	}
	try()
}

func errOK(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func (w *simWorker) register() {
	n := w.n
	inc := n.inc
	wk := &pb.Worker{Id: n.id, Addr: addrOf(n.id), Capacity: w.capacity}
	w.propose(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: wk, NowUnixNano: n.localNow().UnixNano()}}},
		3*heartbeatInterval+time.Second, func(_ proto.Message, err error) {
			if n.inc == inc && err == nil {
				w.registered = true
				w.log("registered")
			}
		})
}

// heartbeatLoop is worker.Agent's loop. The heartbeat is an RPC to the
// leader, so it needs the leader's process running and both directions
// of the link; the leader's worker.Monitor records it.
func (w *simWorker) heartbeatLoop() {
	n := w.n
	s := n.s
	defer n.after(heartbeatInterval, w.heartbeatLoop)
	if !w.registered {
		w.register()
		return
	}
	l := s.nodes[n.lead]
	if l == nil || l.st != stUp || !l.core.IsLeader() {
		return
	}
	if l != n && (!s.net.connected(n.id, l.id) || !s.net.connected(l.id, n.id) || s.net.rng.Float64() < s.net.loss) {
		return
	}
	l.mon.Seen(n.id, l.monoNow())
	if _, ok := l.sm.Worker(n.id); !ok {
		w.registered = false
	}
}

// kick schedules a converge pass. The runner wakes on every apply; a
// few milliseconds of coalescing stand for its goroutine's scheduling
// latency and keep the cost of copying the assignments down.
func (w *simWorker) kick() {
	if w.due || w.running == nil {
		return
	}
	w.due = true
	w.n.after(time.Duration(2+w.n.s.rng.IntN(10))*time.Millisecond, w.converge)
}

// converge is worker.Runner.converge, run when the worker's assignments
// changed.
func (w *simWorker) converge() {
	w.due = false
	if !w.reconciled {
		return
	}
	n := w.n
	v := n.sm.AssignedVersion(n.id)
	if w.converged && v == w.seen {
		return
	}
	w.seen, w.converged = v, true
	want := map[attemptKey]bool{}
	for _, t := range n.sm.Assigned(n.id) {
		if len(t.Attempts) == 0 {
			continue
		}
		a := t.Attempts[len(t.Attempts)-1]
		k := attemptKey{t.Id, a.Number}
		want[k] = true
		run, running := w.running[k]
		switch {
		case running && t.CancelRequested:
			if !run.cancelled {
				run.cancelled = true
				// The kill grace: the process exits soon after SIGTERM.
				n.after(time.Duration(1+n.s.rng.IntN(200))*time.Millisecond, func() { w.exited(k, run) })
			}
		case running || w.finished[k]:
		case t.CancelRequested:
			w.finished[k] = true
			w.report(k, &pb.TaskResult{Cancelled: true})
		case a.State == pb.TaskState_TASK_STATE_ASSIGNED || a.State == pb.TaskState_TASK_STATE_RUNNING:
			w.launch(k)
		}
	}
	var kill []attemptKey
	for k := range w.running {
		if !want[k] {
			kill = append(kill, k)
		}
	}
	slices.SortFunc(kill, compareKeys)
	for _, k := range kill {
		w.log("killing %v: no longer owned", k)
		w.finished[k] = true
		w.running[k].over = true
		delete(w.running, k)
	}
	for k := range w.finished {
		if _, run := w.running[k]; !run && !want[k] {
			delete(w.finished, k)
		}
	}
}

func (w *simWorker) launch(k attemptKey) {
	n := w.n
	s := n.s
	if s.rng.IntN(50) == 0 {
		w.log("%v could not start", k)
		w.finished[k] = true
		w.report(k, &pb.TaskResult{ExitCode: -1, Error: "simulated launch failure"})
		return
	}
	run := &attemptRun{startedAt: n.localNow().UnixNano()}
	w.running[k] = run
	s.trace(evWorker, n.id, uint64(k.attempt), payloadHash([]byte(k.task)))
	w.log("starting %v", k)
	// Like the Runner, the start is proposed only once the attempt has
	// run for startedDelay; shorter attempts report just their result,
	// which carries the start time.
	n.after(startedDelay, func() {
		if run.over {
			return
		}
		w.propose(&pb.Command{Op: &pb.Command_TaskStarted{TaskStarted: &pb.TaskStarted{TaskId: k.task, Attempt: k.attempt, WorkerId: n.id, NowUnixNano: n.localNow().UnixNano()}}},
			10*time.Second, func(proto.Message, error) {})
	})
	n.after(time.Duration(5+s.rng.IntN(3000))*time.Millisecond, func() { w.exited(k, run) })
}

// startedDelay is worker.RunnerConfig.StartedDelay's default.
const startedDelay = 20 * time.Millisecond

// exited is the attempt's process ending: report its result if the
// attempt is still ours.
func (w *simWorker) exited(k attemptKey, run *attemptRun) {
	if run.over || w.running[k] != run {
		return
	}
	run.over = true
	delete(w.running, k)
	if w.finished[k] {
		return
	}
	w.finished[k] = true
	w.report(k, w.outcome(run))
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

func (w *simWorker) report(k attemptKey, r *pb.TaskResult) {
	n := w.n
	w.retry("report "+k.String(), func() *pb.Command {
		return &pb.Command{Op: &pb.Command_TaskFinished{TaskFinished: &pb.TaskFinished{TaskId: k.task, Attempt: k.attempt, WorkerId: n.id, Result: r, NowUnixNano: n.localNow().UnixNano()}}}
	}, nil)
}

// ---------------------------------------------------------------------------
// Leader duties: worker liveness and scheduling
// ---------------------------------------------------------------------------

// dutiesLoop is server.leaderDuties: the production worker.Monitor fed
// with sim-time heartbeats, proposing ready/down transitions.
func (n *node) dutiesLoop() {
	defer n.after(heartbeatInterval/2, n.dutiesLoop)
	// The monitor measures heartbeat gaps on the monotonic clock, as
	// time.Now's monotonic reading does in production; the command is
	// stamped with the wall clock.
	now := n.monoNow()
	if !n.core.IsLeader() {
		n.ledTerm = 0
		return
	}
	if n.term != n.ledTerm {
		n.ledTerm = n.term
		n.mon.Reset(now, n.sm.Workers())
		return
	}
	mon := n.mon
	for _, tr := range mon.Check(now, n.sm.Workers()) {
		id := tr.WorkerID
		if n.s.tracing() {
			n.s.logf("%s liveness: worker n%d → %v", n.name(), id, tr.To)
		}
		cmd := &pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: id, State: tr.To, NowUnixNano: n.localNow().UnixNano()}}}
		n.issue(&request{kind: rqPropose, payload: mustMarshal(cmd), done: func(proto.Message, error) { mon.Done(id) }}, 5*time.Second)
	}
}

func (n *node) schedLoop() {
	n.schedPass()
	n.after(schedulerEvery, n.schedLoop)
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

// schedPass is server.schedulePass: one pass, one PlaceTasks proposal,
// and no new pass until it is applied.
func (n *node) schedPass() {
	s := n.s
	if n.schedBusy || !n.core.IsLeader() {
		return
	}
	n.schedDue = false
	v := n.sm.ForScheduling()
	if len(v.Pending) == 0 || len(v.Workers) == 0 {
		return
	}
	now := n.localNow()
	in, attempts := scheduler.FromView(now, v)
	schedule := scheduler.Schedule
	if s.cfg.Schedule != nil {
		schedule = s.cfg.Schedule
	}
	plan := schedule(in, n.schedRng)
	s.chk.plan(n, in, plan)
	if len(plan.Placements) == 0 {
		return
	}
	cmd := &pb.PlaceTasks{NowUnixNano: now.UnixNano()}
	for _, p := range plan.Placements {
		cmd.Placements = append(cmd.Placements, &pb.Placement{TaskId: p.TaskID, Attempt: attempts[p.TaskID], WorkerId: p.WorkerID})
	}
	s.stats.Placements += len(cmd.Placements)
	s.trace(evSched, n.id, uint64(len(cmd.Placements)), 0)
	if s.tracing() {
		var ps []string
		for _, p := range cmd.Placements {
			ps = append(ps, fmt.Sprintf("%s#%d→n%d", p.TaskId, p.Attempt, p.WorkerId))
		}
		s.logf("%s scheduler: place %s", n.name(), strings.Join(ps, " "))
	}
	n.schedBusy = true
	inc := n.inc
	n.issue(&request{kind: rqPropose, payload: mustMarshal(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: cmd}}), done: func(proto.Message, error) {
		if n.inc != inc {
			return
		}
		n.schedBusy = false
		if n.schedDue {
			n.schedDue = false
			n.schedKick()
		}
	}}, 10*time.Second)
}
