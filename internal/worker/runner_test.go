package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

// machineCluster runs the runner against a real state machine, applying
// its reports directly as if raft had committed them.
type machineCluster struct {
	mu     sync.Mutex
	m      *state.Machine
	index  uint64
	worker uint64
	ch     chan struct{}
	// reconciled is closed by the runner's start-up reconcile.
	reconciled chan struct{}
	recOnce    sync.Once
}

func newMachineCluster(worker uint64) *machineCluster {
	return &machineCluster{m: state.New(), worker: worker, ch: make(chan struct{}), reconciled: make(chan struct{})}
}

func (c *machineCluster) apply(cmd *pb.Command) (proto.Message, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index++
	b, _ := proto.Marshal(cmd)
	res, err := c.m.ApplyCommand(c.index, b)
	close(c.ch)
	c.ch = make(chan struct{})
	return res, err
}

func (c *machineCluster) Assigned() []*pb.Task    { return c.m.Assigned(c.worker) }
func (c *machineCluster) AssignedVersion() uint64 { return c.m.AssignedVersion(c.worker) }
func (c *machineCluster) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}
func (c *machineCluster) ReportStarted(_ context.Context, id string, n uint32) error {
	_, err := c.apply(&pb.Command{Op: &pb.Command_TaskStarted{TaskStarted: &pb.TaskStarted{TaskId: id, Attempt: n, WorkerId: c.worker}}})
	return err
}
func (c *machineCluster) ReportFinished(_ context.Context, id string, n uint32, r *pb.TaskResult) error {
	_, err := c.apply(&pb.Command{Op: &pb.Command_TaskFinished{TaskFinished: &pb.TaskFinished{TaskId: id, Attempt: n, WorkerId: c.worker, Result: r}}})
	return err
}
func (c *machineCluster) Reconcile(_ context.Context, running []string) error {
	_, err := c.apply(&pb.Command{Op: &pb.Command_ReconcileWorker{ReconcileWorker: &pb.ReconcileWorker{WorkerId: c.worker, RunningTaskIds: running}}})
	c.recOnce.Do(func() { close(c.reconciled) })
	return err
}
func (c *machineCluster) SetSchedulable(_ context.Context, ok bool, reason string) error {
	_, err := c.apply(&pb.Command{Op: &pb.Command_SetWorkerSchedulable{SetWorkerSchedulable: &pb.SetWorkerSchedulable{WorkerId: c.worker, Schedulable: ok, Reason: reason}}})
	return err
}

// fakeProc finishes when the test says so, or when cancelled.
type fakeProc struct {
	once   sync.Once
	done   chan struct{}
	result *pb.TaskResult
}

func (p *fakeProc) Done() <-chan struct{}  { return p.done }
func (p *fakeProc) Result() *pb.TaskResult { return p.result }
func (p *fakeProc) exit(r *pb.TaskResult)  { p.once.Do(func() { p.result = r; close(p.done) }) }
func (p *fakeProc) Cancel()                { p.exit(&pb.TaskResult{Cancelled: true, Signal: "SIGTERM"}) }

type fakeLauncher struct {
	mu       sync.Mutex
	procs    map[string]*fakeProc
	launched chan string
	fail     error
}

func (l *fakeLauncher) Launch(_ context.Context, r RunSpec) (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return nil, l.fail
	}
	p := &fakeProc{done: make(chan struct{})}
	id := fmt.Sprintf("%s.%d", r.TaskID, r.Attempt)
	l.procs[id] = p
	l.launched <- id
	return p, nil
}

func (l *fakeLauncher) proc(id string) *fakeProc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.procs[id]
}

func setup(t *testing.T) (*machineCluster, *fakeLauncher, func()) {
	c := newMachineCluster(1)
	for _, w := range []uint64{1, 2} {
		if _, err := c.apply(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: &pb.Worker{Id: w, Capacity: &pb.Resources{CpuMillis: 4000, MemoryMib: 4096}}}}}); err != nil {
			t.Fatal(err)
		}
	}
	l := &fakeLauncher{procs: map[string]*fakeProc{}, launched: make(chan string, 16)}
	r := NewRunner(RunnerConfig{Stale: func(err error) bool { return errors.Is(err, state.ErrStaleAttempt) }}, c, l)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	// Placements made before the runner's start-up reconcile would be
	// (correctly) declared lost by it; the tests place after it.
	select {
	case <-c.reconciled:
	case <-time.After(10 * time.Second):
		t.Fatal("runner never reconciled at start")
	}
	return c, l, func() { cancel(); <-done }
}

func submitAndPlace(t *testing.T, c *machineCluster, key string, worker uint64) string {
	t.Helper()
	res, err := c.apply(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{Spec: &pb.TaskSpec{Command: "x"}, IdempotencyKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	id := res.(*pb.Task).Id
	if _, err := c.apply(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: id, Attempt: 1, WorkerId: worker}}}}}); err != nil {
		t.Fatal(err)
	}
	return id
}

func waitState(t *testing.T, c *machineCluster, id string, want pb.TaskState) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		ch := c.Changed()
		if tk, _ := c.m.Task(id); tk.State == want {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			tk, _ := c.m.Task(id)
			t.Fatalf("task %s is %v, want %v", id, tk.State, want)
		}
	}
}

func waitLaunch(t *testing.T, l *fakeLauncher, want string) {
	t.Helper()
	select {
	case got := <-l.launched:
		if got != want {
			t.Fatalf("launched %s, want %s", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never launched", want)
	}
}

func TestRunnerRunsReportsAndCancels(t *testing.T) {
	c, l, stop := setup(t)
	defer stop()
	a := submitAndPlace(t, c, "a", 1)
	waitLaunch(t, l, a+".1")
	waitState(t, c, a, pb.TaskState_TASK_STATE_RUNNING)
	l.proc(a + ".1").exit(&pb.TaskResult{ExitCode: 0})
	waitState(t, c, a, pb.TaskState_TASK_STATE_SUCCEEDED)

	b := submitAndPlace(t, c, "b", 1)
	waitLaunch(t, l, b+".1")
	if _, err := c.apply(&pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: b}}}); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, b, pb.TaskState_TASK_STATE_CANCELLED)
}

func TestRunnerKillsAttemptsItNoLongerOwns(t *testing.T) {
	c, l, stop := setup(t)
	defer stop()
	a := submitAndPlace(t, c, "a", 1)
	waitLaunch(t, l, a+".1")
	// The leader declares worker 1 down: the attempt is lost and re-placed
	// elsewhere; the local process must die.
	if _, err := c.apply(&pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_DOWN}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.proc(a + ".1").Done():
	case <-time.After(10 * time.Second):
		t.Fatal("process of a lost attempt still running")
	}
	if tk, _ := c.m.Task(a); tk.State != pb.TaskState_TASK_STATE_PENDING || tk.Attempts[0].State != pb.TaskState_TASK_STATE_LOST {
		t.Fatalf("task after loss: %v", tk)
	}
}

func TestRunnerMarksItselfUnschedulable(t *testing.T) {
	c, l, stop := setup(t)
	defer stop()
	l.mu.Lock()
	l.fail = errors.New("cgroup: read-only file system")
	l.mu.Unlock()
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, submitAndPlace(t, c, fmt.Sprint("k", i), 1))
	}
	for _, id := range ids {
		waitState(t, c, id, pb.TaskState_TASK_STATE_FAILED)
	}
	deadline := time.After(10 * time.Second)
	for {
		ch := c.Changed()
		if w, _ := c.m.Worker(1); w.Unschedulable {
			break
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatal("worker not marked unschedulable after 3 launch failures")
		}
	}
}
