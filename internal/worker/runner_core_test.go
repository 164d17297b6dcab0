package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/clock"
	"github.com/blixard/blixard/internal/state"
)

// coreHarness drives a RunnerCore against a real state machine with a fake
// clock, applying its proposals at once.
type coreHarness struct {
	t    *testing.T
	c    *machineCluster
	core *RunnerCore
	clk  *clock.Fake
	// fail makes proposals of that kind fail with the error.
	fail map[RunnerActionKind]error
	// log of every action the core asked for.
	log []string
}

func newCoreHarness(t *testing.T) *coreHarness {
	h := &coreHarness{t: t, c: newMachineCluster(1), clk: clock.NewFake(time.Unix(1000, 0)), fail: map[RunnerActionKind]error{}}
	for _, w := range []uint64{1, 2} {
		if _, err := h.c.apply(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: &pb.Worker{Id: w, Capacity: &pb.Resources{CpuMillis: 4000, MemoryMib: 4096}}}}}); err != nil {
			t.Fatal(err)
		}
	}
	h.core = NewRunnerCore(RunnerConfig{Stale: func(err error) bool { return errors.Is(err, state.ErrStaleAttempt) }})
	return h
}

// run executes proposals against the machine and answers launches with
// launchErr; it returns the launch, cancel and report actions for the test
// to look at.
func (h *coreHarness) run(acts []RunnerAction, launchErr error) []RunnerAction {
	var out []RunnerAction
	for _, a := range acts {
		h.log = append(h.log, a.String())
		out = append(out, a)
		now := h.clk.Now()
		switch a.Kind {
		case ActLaunch:
			out = append(out, h.run(h.core.Launched(now, a.TaskID, a.Attempt, launchErr), launchErr)...)
		case ActCancel:
		default:
			err := h.fail[a.Kind]
			if err == nil {
				err = h.propose(a)
			}
			out = append(out, h.run(h.core.Reported(now, a, err), launchErr)...)
		}
	}
	return out
}

func (h *coreHarness) propose(a RunnerAction) error {
	c := h.c
	ctx := context.Background()
	var err error
	switch a.Kind {
	case ActReportStarted:
		err = c.ReportStarted(ctx, a.TaskID, a.Attempt)
	case ActReportFinished:
		err = c.ReportFinished(ctx, a.TaskID, a.Attempt, a.Result)
	case ActReconcile:
		err = c.Reconcile(ctx, nil)
	case ActSetUnschedulable:
		err = c.SetSchedulable(ctx, false, a.Reason)
	}
	return err
}

func (h *coreHarness) converge(launchErr error) []RunnerAction {
	v := h.c.AssignedVersion()
	if !h.core.WantsAssignments(v) {
		return nil
	}
	return h.run(h.core.Converge(h.clk.Now(), v, h.c.Assigned()), launchErr)
}

func (h *coreHarness) advance(d time.Duration) []RunnerAction {
	h.clk.Advance(d)
	return h.run(h.core.Advance(h.clk.Now()), nil)
}

func (h *coreHarness) state(id string) pb.TaskState {
	tk, _ := h.c.m.Task(id)
	return tk.State
}

func kinds(acts []RunnerAction) []string {
	var out []string
	for _, a := range acts {
		out = append(out, a.String())
	}
	return out
}

func (h *coreHarness) start() {
	h.t.Helper()
	acts := h.run(h.core.Start(h.clk.Now()), nil)
	if got := kinds(acts); !slices.Equal(got, []string{"reconcile"}) || !h.core.Reconciled() {
		h.t.Fatalf("start: %v reconciled=%v", got, h.core.Reconciled())
	}
}

func TestRunnerCoreStartedDelayAndResult(t *testing.T) {
	h := newCoreHarness(t)
	h.start()
	a := submitAndPlace(t, h.c, "a", 1)
	b := submitAndPlace(t, h.c, "b", 1)
	if got := kinds(h.converge(nil)); !slices.Equal(got, []string{"launch " + a + "#1", "launch " + b + "#1"}) {
		t.Fatalf("converge launched %v", got)
	}
	if h.core.Running() != 2 {
		t.Fatalf("running %d, want 2", h.core.Running())
	}
	// Nothing is due before the started delay; the wake-up says when.
	if at, ok := h.core.NextWake(); !ok || !at.Equal(h.clk.Now().Add(20*time.Millisecond)) {
		t.Fatalf("next wake %v %v, want in 20ms", at, ok)
	}
	// b ends within the delay: only its result is proposed.
	if got := kinds(h.run(h.core.Exited(h.clk.Now(), b, 1, &pb.TaskResult{ExitCode: 0}), nil)); !slices.Equal(got, []string{"report-finished " + b + "#1"}) {
		t.Fatalf("exit of b: %v", got)
	}
	if got := kinds(h.advance(19 * time.Millisecond)); len(got) != 0 {
		t.Fatalf("actions before the delay: %v", got)
	}
	if got := kinds(h.advance(time.Millisecond)); !slices.Equal(got, []string{"report-started " + a + "#1"}) {
		t.Fatalf("after the delay: %v", got)
	}
	if h.state(a) != pb.TaskState_TASK_STATE_RUNNING || h.state(b) != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("a %v, b %v", h.state(a), h.state(b))
	}
	h.run(h.core.Exited(h.clk.Now(), a, 1, &pb.TaskResult{ExitCode: 3}), nil)
	if h.state(a) != pb.TaskState_TASK_STATE_FAILED {
		t.Fatalf("a %v, want failed", h.state(a))
	}
	if _, ok := h.core.NextWake(); ok || h.core.Running() != 0 {
		t.Fatalf("idle core still has timers or attempts (running %d)", h.core.Running())
	}
	// Applying the results changed the assignments; converging again
	// launches nothing.
	if got := kinds(h.converge(nil)); len(got) != 0 {
		t.Fatalf("second converge: %v", got)
	}
}

func TestRunnerCoreAssignmentsWaitForReconcileAndSkipUnchangedVersions(t *testing.T) {
	h := newCoreHarness(t)
	h.fail[ActReconcile] = errors.New("no leader")
	acts := h.run(h.core.Start(h.clk.Now()), nil)
	if h.core.Reconciled() || len(acts) != 1 {
		t.Fatalf("reconciled despite the failure: %v", kinds(acts))
	}
	if h.core.WantsAssignments(h.c.AssignedVersion()) {
		t.Fatal("wants assignments before the start-up reconcile")
	}
	// Retried after 50 ms, then 100 ms.
	if got := kinds(h.advance(49 * time.Millisecond)); len(got) != 0 {
		t.Fatalf("retry too early: %v", got)
	}
	if got := kinds(h.advance(time.Millisecond)); !slices.Equal(got, []string{"reconcile"}) {
		t.Fatalf("first retry: %v", got)
	}
	if got := kinds(h.advance(99 * time.Millisecond)); len(got) != 0 {
		t.Fatalf("second retry too early: %v", got)
	}
	delete(h.fail, ActReconcile)
	if got := kinds(h.advance(time.Millisecond)); !slices.Equal(got, []string{"reconcile"}) || !h.core.Reconciled() {
		t.Fatalf("second retry: %v reconciled=%v", got, h.core.Reconciled())
	}
	v := h.c.AssignedVersion()
	if !h.core.WantsAssignments(v) {
		t.Fatal("first round after reconcile skipped")
	}
	h.core.Converge(h.clk.Now(), v, h.c.Assigned())
	if h.core.WantsAssignments(v) {
		t.Fatal("round with unchanged assignments not skipped")
	}
	submitAndPlace(t, h.c, "a", 2) // another worker's
	if h.core.WantsAssignments(h.c.AssignedVersion()) {
		t.Fatal("another worker's placement woke this runner")
	}
}

func TestRunnerCoreReportRetriesUntilAppliedOrStale(t *testing.T) {
	h := newCoreHarness(t)
	h.start()
	a := submitAndPlace(t, h.c, "a", 1)
	h.converge(nil)
	h.fail[ActReportFinished] = errors.New("leader changed")
	h.run(h.core.Exited(h.clk.Now(), a, 1, &pb.TaskResult{ExitCode: 0}), nil)
	var waits []time.Duration
	start := h.clk.Now()
	for i := 0; i < 8; i++ {
		at, ok := h.core.NextWake()
		if !ok {
			t.Fatal("failed report not retried")
		}
		waits = append(waits, at.Sub(start))
		start = at
		h.clk.Advance(at.Sub(h.clk.Now()))
		if got := kinds(h.run(h.core.Advance(h.clk.Now()), nil)); !slices.Equal(got, []string{"report-finished " + a + "#1"}) {
			t.Fatalf("retry %d: %v", i, got)
		}
	}
	ms := time.Millisecond
	if want := []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms}; !slices.Equal(waits, want) {
		t.Fatalf("backoffs %v, want %v", waits, want)
	}
	// The attempt is lost meanwhile (its worker was declared down): the
	// report is refused as stale and not retried again.
	if _, err := h.c.apply(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_DOWN}}}); err != nil {
		t.Fatal(err)
	}
	delete(h.fail, ActReportFinished)
	h.advance(2 * time.Second)
	if _, ok := h.core.NextWake(); ok {
		t.Fatal("stale report still retried")
	}
	if tk, _ := h.c.m.Task(a); tk.Attempts[0].State != pb.TaskState_TASK_STATE_LOST {
		t.Fatalf("attempt %v, want lost", tk.Attempts[0].State)
	}
}

func TestRunnerCoreCancelsAndKillsWhatItNoLongerOwns(t *testing.T) {
	h := newCoreHarness(t)
	h.start()
	a := submitAndPlace(t, h.c, "a", 1)
	b := submitAndPlace(t, h.c, "b", 1)
	h.converge(nil)
	if _, err := h.c.apply(&pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: a}}}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(h.converge(nil)); !slices.Equal(got, []string{"cancel " + a + "#1"}) {
		t.Fatalf("after cancel: %v", got)
	}
	h.run(h.core.Exited(h.clk.Now(), a, 1, &pb.TaskResult{Cancelled: true, Signal: "SIGTERM"}), nil)
	if h.state(a) != pb.TaskState_TASK_STATE_CANCELLED {
		t.Fatalf("a %v, want cancelled", h.state(a))
	}
	// b is lost (worker declared down): kill it; its exit reports nothing.
	if _, err := h.c.apply(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_DOWN}}}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(h.converge(nil)); !slices.Equal(got, []string{"cancel " + b + "#1"}) {
		t.Fatalf("after loss: %v", got)
	}
	if got := kinds(h.advance(time.Second)); len(got) != 0 {
		t.Fatalf("started report for an attempt no longer owned: %v", got)
	}
	if got := kinds(h.run(h.core.Exited(h.clk.Now(), b, 1, &pb.TaskResult{Cancelled: true}), nil)); len(got) != 0 {
		t.Fatalf("exit of a killed attempt: %v", got)
	}
	// A task cancelled before its attempt started here is reported
	// cancelled without launching.
	if _, err := h.c.apply(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_READY}}}); err != nil {
		t.Fatal(err)
	}
	c := submitAndPlace(t, h.c, "c", 1)
	if _, err := h.c.apply(&pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: c}}}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(h.converge(nil)); !slices.Equal(got, []string{"report-finished " + c + "#1"}) {
		t.Fatalf("cancelled before start: %v", got)
	}
	if h.state(c) != pb.TaskState_TASK_STATE_CANCELLED {
		t.Fatalf("c %v, want cancelled", h.state(c))
	}
}

func TestRunnerCoreLaunchFailuresMarkUnschedulable(t *testing.T) {
	h := newCoreHarness(t)
	h.start()
	infra := errors.New("cgroup: read-only file system")
	place := func(i int) string { return submitAndPlace(t, h.c, fmt.Sprint("k", i), 1) }
	// A failure caused by the task does not count; a success resets the
	// count.
	place(0)
	h.converge(infra)
	place(1)
	h.converge(fmt.Errorf("%w: no such file", ErrTaskSpec))
	place(2)
	h.converge(infra)
	place(3)
	h.converge(nil)
	if w, _ := h.c.m.Worker(1); w.Unschedulable {
		t.Fatal("unschedulable after 2 non-consecutive infrastructure failures")
	}
	var last []string
	for i := 4; i < 7; i++ {
		id := place(i)
		last = kinds(h.converge(infra))
		if h.state(id) != pb.TaskState_TASK_STATE_FAILED {
			t.Fatalf("%s %v, want failed", id, h.state(id))
		}
	}
	if !slices.Contains(last, "set-unschedulable") {
		t.Fatalf("third failure in a row: %v", last)
	}
	if w, _ := h.c.m.Worker(1); !w.Unschedulable {
		t.Fatal("worker not marked unschedulable after 3 launch failures in a row")
	}
}
