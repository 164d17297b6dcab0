package worker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// RunnerActionKind says what a RunnerAction asks for. Not persisted.
type RunnerActionKind int

// What the runner core can ask its shell to do.
const (
	// ActLaunch starts an attempt; answer with RunnerCore.Launched.
	ActLaunch RunnerActionKind = 1
	// ActCancel stops a launched attempt (SIGTERM, then SIGKILL); its
	// exit still arrives through RunnerCore.Exited.
	ActCancel RunnerActionKind = 2
	// ActReportStarted proposes TaskStarted once; the answer may be
	// passed to RunnerCore.Reported, which only logs it.
	ActReportStarted RunnerActionKind = 3
	// ActReportFinished proposes TaskFinished with Result; answer with
	// RunnerCore.Reported (a failure is retried with backoff).
	ActReportFinished RunnerActionKind = 4
	// ActReconcile proposes ReconcileWorker with nothing running;
	// answer with RunnerCore.Reported.
	ActReconcile RunnerActionKind = 5
	// ActSetUnschedulable proposes SetWorkerSchedulable(false, Reason);
	// answer with RunnerCore.Reported.
	ActSetUnschedulable RunnerActionKind = 6
)

func (k RunnerActionKind) String() string {
	switch k {
	case ActLaunch:
		return "launch"
	case ActCancel:
		return "cancel"
	case ActReportStarted:
		return "report-started"
	case ActReportFinished:
		return "report-finished"
	case ActReconcile:
		return "reconcile"
	case ActSetUnschedulable:
		return "set-unschedulable"
	}
	return fmt.Sprintf("action(%d)", int(k))
}

// RunnerAction is one thing the runner core wants done.
type RunnerAction struct {
	Kind    RunnerActionKind
	TaskID  string
	Attempt uint32
	Spec    *pb.TaskSpec   // ActLaunch
	Result  *pb.TaskResult // ActReportFinished
	Reason  string         // ActSetUnschedulable
}

func (a RunnerAction) String() string {
	if a.TaskID == "" {
		return a.Kind.String()
	}
	return fmt.Sprintf("%v %s#%d", a.Kind, a.TaskID, a.Attempt)
}

// Report retry backoff: 50 ms doubling to 2 s.
const (
	reportBackoffMin = 50 * time.Millisecond
	reportBackoffMax = 2 * time.Second
)

type coreAttempt struct {
	startedDue time.Time // when to propose TaskStarted; zero once done or not needed
	cancelled  bool      // ActCancel sent
}

type reportKey struct {
	kind RunnerActionKind
	attemptKey
}

type pendingReport struct {
	act      RunnerAction
	backoff  time.Duration
	due      time.Time
	inFlight bool
}

// RunnerCore is the task runner's decision logic, deterministic and
// single-threaded: no goroutines, no timers, no I/O. It is fed events
// (the process started, this worker's assignments changed, a launch
// succeeded or failed, a process exited, a proposal returned, time passed)
// and answers with actions; its timers (the started-report delay, report
// retries) surface as NextWake. Runner is the production shell that runs
// it against a Launcher and the cluster; the simulation drives the same
// core from its event loop.
type RunnerCore struct {
	cfg RunnerConfig

	running  map[attemptKey]*coreAttempt // launched (or launching) and not yet exited
	finished map[attemptKey]bool         // result reported or being reported, or no longer ours
	reports  map[reportKey]*pendingReport
	failures int

	reconciled bool
	converged  bool
	seen       uint64
}

// NewRunnerCore returns a core; cfg's Clock is not used (time arrives with
// every event).
func NewRunnerCore(cfg RunnerConfig) *RunnerCore {
	cfg.setDefaults()
	return &RunnerCore{cfg: cfg, running: map[attemptKey]*coreAttempt{}, finished: map[attemptKey]bool{}, reports: map[reportKey]*pendingReport{}}
}

// Start is the process starting: nothing of this worker runs (the
// executor killed orphans), so it proposes a reconcile with an empty list,
// retried until applied; assignments are ignored until then.
func (c *RunnerCore) Start(now time.Time) []RunnerAction {
	return []RunnerAction{c.request(now, RunnerAction{Kind: ActReconcile})}
}

// Running is the number of attempts launched and not yet exited.
func (c *RunnerCore) Running() int { return len(c.running) }

// Reconciled says whether the start-up reconcile was applied.
func (c *RunnerCore) Reconciled() bool { return c.reconciled }

// WantsAssignments says whether Converge should run for the state whose
// AssignedVersion is version: most applied entries concern other workers,
// so a round is skipped unless this worker's assignments changed.
func (c *RunnerCore) WantsAssignments(version uint64) bool {
	return c.reconciled && (!c.converged || version != c.seen)
}

// Converge compares the attempts assigned to this worker (at version)
// with what runs: it launches new attempts, cancels attempts whose task
// was cancelled, reports attempts cancelled before they started, and
// kills attempts this worker no longer owns.
func (c *RunnerCore) Converge(now time.Time, version uint64, assigned []*pb.Task) []RunnerAction {
	if !c.reconciled {
		return nil
	}
	c.seen, c.converged = version, true
	assigned = slices.Clone(assigned)
	slices.SortFunc(assigned, func(a, b *pb.Task) int { return strings.Compare(a.Id, b.Id) })
	var acts []RunnerAction
	want := map[attemptKey]bool{}
	for _, t := range assigned {
		if len(t.Attempts) == 0 {
			continue
		}
		a := t.Attempts[len(t.Attempts)-1]
		k := attemptKey{t.Id, a.Number}
		want[k] = true
		run, running := c.running[k]
		switch {
		case running && t.CancelRequested:
			if !run.cancelled {
				run.cancelled = true
				acts = append(acts, RunnerAction{Kind: ActCancel, TaskID: k.task, Attempt: k.attempt})
			}
		case running || c.finished[k]:
		case t.CancelRequested:
			// Cancelled before it started here: report it so.
			c.finished[k] = true
			acts = append(acts, c.request(now, RunnerAction{Kind: ActReportFinished, TaskID: k.task, Attempt: k.attempt, Result: &pb.TaskResult{Cancelled: true}}))
		case a.State == pb.TaskState_TASK_STATE_ASSIGNED || a.State == pb.TaskState_TASK_STATE_RUNNING:
			c.running[k] = &coreAttempt{}
			acts = append(acts, RunnerAction{Kind: ActLaunch, TaskID: k.task, Attempt: k.attempt, Spec: t.Spec})
		}
	}
	// Attempts we run but no longer own (lost, re-placed) are killed; their
	// results would be refused anyway.
	for _, k := range sortedAttempts(c.running) {
		if run := c.running[k]; !want[k] && !run.cancelled {
			c.cfg.Logger.Info("killing attempt this worker no longer owns", "task", k.task, "attempt", k.attempt)
			c.finished[k] = true
			run.cancelled = true
			acts = append(acts, RunnerAction{Kind: ActCancel, TaskID: k.task, Attempt: k.attempt})
		}
	}
	for k := range c.finished {
		if _, run := c.running[k]; !run && !want[k] {
			delete(c.finished, k)
		}
	}
	return acts
}

// Launched is the outcome of an ActLaunch. A failure not caused by the
// task (see ErrTaskSpec) counts towards marking the worker unschedulable;
// either way the attempt's failure is reported.
func (c *RunnerCore) Launched(now time.Time, taskID string, attempt uint32, err error) []RunnerAction {
	k := attemptKey{taskID, attempt}
	run, ok := c.running[k]
	if !ok {
		return nil
	}
	if err != nil {
		delete(c.running, k)
		c.cfg.Logger.Warn("task attempt could not start", "task", k.task, "attempt", k.attempt, "err", err)
		var acts []RunnerAction
		if !errors.Is(err, ErrTaskSpec) {
			c.failures++
			if c.failures == c.cfg.MaxLaunchFailures {
				reason := fmt.Sprintf("%d task launches in a row failed; last: %v", c.failures, err)
				c.cfg.Logger.Error("marking this worker unschedulable", "reason", reason)
				acts = append(acts, c.request(now, RunnerAction{Kind: ActSetUnschedulable, Reason: reason}))
			}
		}
		c.finished[k] = true
		return append(acts, c.request(now, RunnerAction{Kind: ActReportFinished, TaskID: k.task, Attempt: k.attempt, Result: &pb.TaskResult{ExitCode: -1, Error: err.Error()}}))
	}
	c.failures = 0
	if c.cfg.StartedDelay > 0 {
		// Attempts shorter than the delay only report their result (which
		// carries the start time), saving a raft entry each.
		run.startedDue = now.Add(c.cfg.StartedDelay)
		return nil
	}
	return []RunnerAction{{Kind: ActReportStarted, TaskID: k.task, Attempt: k.attempt}}
}

// Exited is a launched attempt's process ending with res. Its result is
// reported unless the attempt was no longer this worker's.
func (c *RunnerCore) Exited(now time.Time, taskID string, attempt uint32, res *pb.TaskResult) []RunnerAction {
	k := attemptKey{taskID, attempt}
	if _, ok := c.running[k]; !ok {
		return nil
	}
	delete(c.running, k)
	owned := !c.finished[k]
	c.finished[k] = true
	if !owned {
		return nil
	}
	return []RunnerAction{c.request(now, RunnerAction{Kind: ActReportFinished, TaskID: k.task, Attempt: k.attempt, Result: res})}
}

// Reported is the outcome of a proposal action. A result refused as stale
// counts as done; any other failure is retried after a backoff (50 ms
// doubling to 2 s), surfacing through NextWake and Advance.
func (c *RunnerCore) Reported(now time.Time, a RunnerAction, err error) []RunnerAction {
	if a.Kind == ActReportStarted {
		if err != nil && !c.cfg.Stale(err) {
			c.cfg.Logger.Debug("reporting task start failed", "task", a.TaskID, "err", err)
		}
		return nil
	}
	rk := reportKey{a.Kind, attemptKey{a.TaskID, a.Attempt}}
	p, ok := c.reports[rk]
	if !ok || !p.inFlight {
		return nil
	}
	p.inFlight = false
	if err == nil || (a.Kind == ActReportFinished && c.cfg.Stale(err)) {
		delete(c.reports, rk)
		if a.Kind == ActReconcile {
			c.reconciled = true
		}
		return nil
	}
	c.cfg.Logger.Debug(a.Kind.String()+" failed; retrying", "task", a.TaskID, "err", err)
	p.due = now.Add(p.backoff)
	p.backoff = min(2*p.backoff, reportBackoffMax)
	return nil
}

// Advance fires the timers due at now: started reports of attempts that
// ran StartedDelay, and report retries whose backoff ended.
func (c *RunnerCore) Advance(now time.Time) []RunnerAction {
	var acts []RunnerAction
	for _, k := range sortedAttempts(c.running) {
		run := c.running[k]
		if run.startedDue.IsZero() || run.startedDue.After(now) {
			continue
		}
		run.startedDue = time.Time{}
		if !c.finished[k] {
			acts = append(acts, RunnerAction{Kind: ActReportStarted, TaskID: k.task, Attempt: k.attempt})
		}
	}
	var due []reportKey
	for rk, p := range c.reports {
		if !p.inFlight && !p.due.After(now) {
			due = append(due, rk)
		}
	}
	slices.SortFunc(due, compareReportKeys)
	for _, rk := range due {
		p := c.reports[rk]
		p.inFlight = true
		acts = append(acts, p.act)
	}
	return acts
}

// NextWake is the earliest time Advance has something to do, if any.
func (c *RunnerCore) NextWake() (time.Time, bool) {
	var at time.Time
	ok := false
	earlier := func(t time.Time) {
		if !ok || t.Before(at) {
			at, ok = t, true
		}
	}
	for _, run := range c.running {
		if !run.startedDue.IsZero() {
			earlier(run.startedDue)
		}
	}
	for _, p := range c.reports {
		if !p.inFlight {
			earlier(p.due)
		}
	}
	return at, ok
}

// request registers a proposal that is retried until it succeeds and
// returns its first try.
func (c *RunnerCore) request(now time.Time, a RunnerAction) RunnerAction {
	c.reports[reportKey{a.Kind, attemptKey{a.TaskID, a.Attempt}}] = &pendingReport{act: a, backoff: reportBackoffMin, due: now, inFlight: true}
	return a
}

func compareAttempts(a, b attemptKey) int {
	if c := strings.Compare(a.task, b.task); c != 0 {
		return c
	}
	return int(a.attempt) - int(b.attempt)
}

func compareReportKeys(a, b reportKey) int {
	if a.kind != b.kind {
		return int(a.kind) - int(b.kind)
	}
	return compareAttempts(a.attemptKey, b.attemptKey)
}

func sortedAttempts[V any](m map[attemptKey]V) []attemptKey {
	ks := make([]attemptKey, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, compareAttempts)
	return ks
}
