package state

import (
	"errors"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// taskHarness applies task commands to a fresh machine with workers of 1
// CPU and 1024 MiB each.
type taskHarness struct{ *cmdHarness }

func newTaskHarness(t *testing.T, workers ...uint64) *taskHarness {
	return &taskHarness{newCmdHarness(t, 1000, 1024, workers...)}
}

func (h *taskHarness) submit(key string, cpu int64, retries int32) *pb.Task {
	h.t.Helper()
	return h.ok(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{
		Spec:           &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{CpuMillis: cpu, MemoryMib: 100}, MaxRetries: retries, RetryBackoffBaseMs: 100},
		IdempotencyKey: key, NowUnixNano: 1000,
	}}}).(*pb.Task)
}

func (h *taskHarness) place(id string, attempt uint32, worker uint64) {
	h.t.Helper()
	h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: id, Attempt: attempt, WorkerId: worker}}, NowUnixNano: 2000}}})
}

func (h *taskHarness) finish(id string, attempt uint32, worker uint64, r *pb.TaskResult) error {
	_, err := h.apply(&pb.Command{Op: &pb.Command_TaskFinished{TaskFinished: &pb.TaskFinished{TaskId: id, Attempt: attempt, WorkerId: worker, Result: r, NowUnixNano: 5000}}})
	return err
}

func (h *taskHarness) task(id string) *pb.Task {
	h.t.Helper()
	t, ok := h.m.Task(id)
	if !ok {
		h.t.Fatalf("task %s missing", id)
	}
	return t
}

func TestSubmitIsIdempotentAndValidated(t *testing.T) {
	h := newTaskHarness(t)
	a := h.submit("k1", 100, 0)
	b := h.submit("k1", 100, 0)
	if a.Id != b.Id || len(h.m.Tasks(pb.TaskState_TASK_STATE_UNSPECIFIED)) != 1 {
		t.Fatalf("retried submit created a second task: %s %s", a.Id, b.Id)
	}
	if c := h.submit("k2", 100, 0); c.Id == a.Id {
		t.Fatal("different key returned the same task")
	}
	for _, spec := range []*pb.TaskSpec{{}, {Command: "x", Resources: &pb.Resources{CpuMillis: -1}}, {Command: "x", MaxRetries: -2}, {Command: "x", Env: map[string]string{"A=B": "c"}}} {
		_, err := h.apply(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{Spec: spec}}})
		if !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("spec %v: err %v, want invalid", spec, err)
		}
	}
}

func TestPlacementIsRecheckedAndReserves(t *testing.T) {
	h := newTaskHarness(t, 1)
	a := h.submit("a", 600, 0)
	b := h.submit("b", 600, 0)
	h.place(a.Id, 1, 1)
	h.place(b.Id, 1, 1) // would over-commit 1000m: skipped
	if got := h.task(b.Id).State; got != pb.TaskState_TASK_STATE_PENDING {
		t.Fatalf("over-committing placement applied: b is %v", got)
	}
	h.place(a.Id, 1, 1) // stale duplicate: skipped
	if n := len(h.task(a.Id).Attempts); n != 1 {
		t.Fatalf("duplicate placement created %d attempts", n)
	}
	if u := h.m.ForScheduling().Used[1]; u.CPUMillis != 600 {
		t.Fatalf("reserved %dm, want 600m", u.CPUMillis)
	}
	h.place(b.Id, 1, 9) // unknown worker: skipped
	if err := h.finish(a.Id, 1, 1, &pb.TaskResult{}); err != nil {
		t.Fatal(err)
	}
	h.place(b.Id, 1, 1) // room now
	if got := h.task(b.Id).State; got != pb.TaskState_TASK_STATE_ASSIGNED {
		t.Fatalf("b after room freed: %v", got)
	}
	if n := h.m.PendingCount(); n != 0 {
		t.Fatalf("pending index holds %d tasks, want 0", n)
	}
}

func (h *taskHarness) submitOn(key string, cpu int64, worker uint64) *pb.Task {
	h.t.Helper()
	return h.ok(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{
		Spec:           &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{CpuMillis: cpu, MemoryMib: 100}},
		IdempotencyKey: key, NowUnixNano: 1000, PlaceWorkerId: worker,
	}}}).(*pb.Task)
}

// A submission carrying a placement is placed when applied only where a
// PlaceTasks placement would be, and never ahead of a waiting task.
func TestPlaceOnSubmitIsRecheckedAndNeverOvertakes(t *testing.T) {
	h := newTaskHarness(t, 1, 2)
	a := h.submitOn("a", 600, 1)
	if a.State != pb.TaskState_TASK_STATE_ASSIGNED || len(a.Attempts) != 1 || a.Attempts[0].WorkerId != 1 || a.Attempts[0].AssignedAtUnixNano != 1000 {
		t.Fatalf("placed on submit: %v", a)
	}
	if u := h.m.ForScheduling().Used[1]; u.CPUMillis != 600 {
		t.Fatalf("reserved %dm on worker 1, want 600m", u.CPUMillis)
	}
	if again := h.submitOn("a", 600, 2); again.Id != a.Id || len(again.Attempts) != 1 || again.Attempts[0].WorkerId != 1 {
		t.Fatalf("retried submission placed again: %v", again)
	}
	if b := h.submitOn("b", 600, 1); b.State != pb.TaskState_TASK_STATE_PENDING {
		t.Fatalf("over-committing placement on submit applied: %v", b)
	}
	// b waits; c would fit on worker 2 but must not overtake it.
	if c := h.submitOn("c", 100, 2); c.State != pb.TaskState_TASK_STATE_PENDING {
		t.Fatalf("c overtook the waiting b: %v", c)
	}
	if d := h.submitOn("d", 100, 9); d.State != pb.TaskState_TASK_STATE_PENDING {
		t.Fatalf("placement on an unknown worker applied: %v", d)
	}
	if n := h.m.PendingCount(); n != 3 {
		t.Fatalf("pending index holds %d tasks, want 3 (b, c, d)", n)
	}
}

func TestResultsAreFencedAndRecordedOnce(t *testing.T) {
	h := newTaskHarness(t, 1, 2)
	a := h.submit("a", 100, 0)
	h.place(a.Id, 1, 1)
	if err := h.finish(a.Id, 1, 2, &pb.TaskResult{}); !errors.Is(err, ErrStaleAttempt) {
		t.Fatalf("result from the wrong worker: %v", err)
	}
	if err := h.finish(a.Id, 2, 1, &pb.TaskResult{}); !errors.Is(err, ErrStaleAttempt) {
		t.Fatalf("result for a future attempt: %v", err)
	}
	if err := h.finish(a.Id, 1, 1, &pb.TaskResult{ExitCode: 0}); err != nil {
		t.Fatal(err)
	}
	if err := h.finish(a.Id, 1, 1, &pb.TaskResult{ExitCode: 1}); !errors.Is(err, ErrStaleAttempt) {
		t.Fatalf("second result for the same attempt: %v", err)
	}
	if got := h.task(a.Id); got.State != pb.TaskState_TASK_STATE_SUCCEEDED || got.Attempts[0].Result.ExitCode != 0 {
		t.Fatalf("task after duplicate report: %v", got)
	}
}

func TestRetriesWithBackoffThenFail(t *testing.T) {
	h := newTaskHarness(t, 1)
	a := h.submit("a", 100, 2)
	for attempt := uint32(1); attempt <= 3; attempt++ {
		h.place(a.Id, attempt, 1)
		if err := h.finish(a.Id, attempt, 1, &pb.TaskResult{ExitCode: 3}); err != nil {
			t.Fatal(err)
		}
		got := h.task(a.Id)
		if attempt < 3 {
			// Placed at 2000 on the leader's clock; the result carries no
			// start time, so the attempt counts as having run for no time.
			want := int64(2000) + int64(100<<(attempt-1))*1e6
			if got.State != pb.TaskState_TASK_STATE_PENDING || got.NotBeforeUnixNano != want {
				t.Fatalf("after failure %d: state %v not_before %d, want pending %d", attempt, got.State, got.NotBeforeUnixNano, want)
			}
			// The scheduler is told the backoff itself too, to time it on
			// its own clock after a leader change.
			v := h.m.ForScheduling()
			if len(v.Pending) != 1 || v.Pending[0].Backoff != time.Duration(100<<(attempt-1))*time.Millisecond || v.Pending[0].Attempt != attempt+1 {
				t.Fatalf("after failure %d: scheduling view %+v", attempt, v.Pending)
			}
		} else if got.State != pb.TaskState_TASK_STATE_FAILED || got.RetriesUsed != 2 {
			t.Fatalf("after last failure: %v retries %d", got.State, got.RetriesUsed)
		}
	}
	b := h.submit("b", 100, 0)
	h.place(b.Id, 1, 1)
	if err := h.finish(b.Id, 1, 1, &pb.TaskResult{TimedOut: true, Signal: "SIGTERM"}); err != nil {
		t.Fatal(err)
	}
	if got := h.task(b.Id).State; got != pb.TaskState_TASK_STATE_TIMED_OUT {
		t.Fatalf("timed out task is %v", got)
	}
}

func TestCancel(t *testing.T) {
	h := newTaskHarness(t, 1)
	p := h.submit("p", 100, 0)
	h.ok(&pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: p.Id}}})
	if got := h.task(p.Id).State; got != pb.TaskState_TASK_STATE_CANCELLED {
		t.Fatalf("cancelled pending task is %v", got)
	}
	r := h.submit("r", 100, 5)
	h.place(r.Id, 1, 1)
	h.ok(&pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: r.Id}}})
	if got := h.task(r.Id); got.State != pb.TaskState_TASK_STATE_ASSIGNED || !got.CancelRequested {
		t.Fatalf("cancel of assigned task: %v", got)
	}
	// The worker kills it; even a failure exit is recorded as cancelled, not retried.
	if err := h.finish(r.Id, 1, 1, &pb.TaskResult{Signal: "SIGTERM"}); err != nil {
		t.Fatal(err)
	}
	if got := h.task(r.Id).State; got != pb.TaskState_TASK_STATE_CANCELLED {
		t.Fatalf("killed cancelled task is %v", got)
	}
	if _, err := h.apply(&pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: "nope"}}}); !errors.Is(err, ErrUnknownTask) {
		t.Fatalf("cancel unknown: %v", err)
	}
}

func TestWorkerLossRequeuesAndReconcile(t *testing.T) {
	h := newTaskHarness(t, 1, 2)
	a := h.submit("a", 100, 0)
	b := h.submit("b", 100, 0)
	h.place(a.Id, 1, 1)
	h.place(b.Id, 1, 1)
	h.ok(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_DOWN, NowUnixNano: 3000}}})
	for _, id := range []string{a.Id, b.Id} {
		got := h.task(id)
		if got.State != pb.TaskState_TASK_STATE_PENDING || got.Attempts[0].State != pb.TaskState_TASK_STATE_LOST || got.Losses != 1 {
			t.Fatalf("task %s after worker loss: %v", id, got)
		}
	}
	if u := h.m.ForScheduling().Used[1]; u.CPUMillis != 0 {
		t.Fatalf("lost attempts still reserve %dm", u.CPUMillis)
	}
	if v := h.m.ForScheduling(); len(v.Pending) != 2 || v.Pending[0].Attempt != 2 {
		t.Fatalf("pending after loss: %+v, want both tasks, next attempt 2", v.Pending)
	}
	// The lost attempt's late result is refused: exactly-once recording.
	if err := h.finish(a.Id, 1, 1, &pb.TaskResult{}); !errors.Is(err, ErrStaleAttempt) {
		t.Fatalf("late result from lost attempt: %v", err)
	}
	h.place(a.Id, 2, 2)
	h.place(b.Id, 2, 2)
	// Worker 2 restarts and only runs b: a is lost.
	h.ok(&pb.Command{Op: &pb.Command_ReconcileWorker{ReconcileWorker: &pb.ReconcileWorker{WorkerId: 2, RunningTaskIds: []string{b.Id}}}})
	if got := h.task(a.Id); got.State != pb.TaskState_TASK_STATE_PENDING || got.Losses != 2 {
		t.Fatalf("a after reconcile: %v", got)
	}
	if got := h.task(b.Id); got.State != pb.TaskState_TASK_STATE_ASSIGNED {
		t.Fatalf("b after reconcile: %v", got)
	}
}

func TestTasksSurviveSnapshotAndRecords(t *testing.T) {
	h := newTaskHarness(t, 1)
	a := h.submit("a", 300, 0)
	h.place(a.Id, 1, 1)
	snap, err := h.m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if u := r.ForScheduling().Used[1]; u.CPUMillis != 300 {
		t.Fatalf("restored reservation %dm, want 300m", u.CPUMillis)
	}
	l := New()
	for _, c := range h.m.AllRecords() {
		if err := l.LoadRecord(c.Table, c.Key, c.Value); err != nil {
			t.Fatal(err)
		}
	}
	if u := l.ForScheduling().Used[1]; u.CPUMillis != 300 {
		t.Fatalf("loaded reservation %dm, want 300m", u.CPUMillis)
	}
	// Idempotency survives a restart too.
	hh := &taskHarness{&cmdHarness{t: t, m: l, index: h.index}}
	if again := hh.submit("a", 300, 0); again.Id != a.Id {
		t.Fatalf("after reload a retried submit made %s, want %s", again.Id, a.Id)
	}
}

func TestPurgeForgetsOldFinishedTasksOnly(t *testing.T) {
	h := newTaskHarness(t, 1)
	old := h.submit("old", 100, 0)
	h.place(old.Id, 1, 1)
	if err := h.finish(old.Id, 1, 1, &pb.TaskResult{}); err != nil { // finished at 5000
		t.Fatal(err)
	}
	running := h.submit("running", 100, 0)
	h.place(running.Id, 1, 1)
	pending := h.submit("pending", 5000, 0) // too big: stays pending
	h.ok(&pb.Command{Op: &pb.Command_PurgeTasks{PurgeTasks: &pb.PurgeTasks{FinishedBeforeUnixNano: 6000}}})
	if _, ok := h.m.Task(old.Id); ok {
		t.Fatal("old finished task survived the purge")
	}
	for _, id := range []string{running.Id, pending.Id} {
		if _, ok := h.m.Task(id); !ok {
			t.Fatalf("unfinished task %s was purged", id)
		}
	}
	// Its key is forgotten: the same key now makes a new task.
	if again := h.submit("old", 100, 0); again.Id == old.Id {
		t.Fatal("purged task's idempotency key still maps to it")
	}
	changes := h.m.TakeChanges()
	deleted := false
	for _, c := range changes {
		if c.Table == "tasks" && string(c.Key) == old.Id && c.Value == nil {
			deleted = true
		}
	}
	if !deleted {
		t.Fatal("purge did not delete the task's stored record")
	}
}
