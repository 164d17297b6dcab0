package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// logKey names one output stream of one attempt.
type logKey struct {
	id      string
	attempt uint32
	stderr  bool
}

// fakeTasks is a Cluster service that keeps tasks in memory.
type fakeTasks struct {
	rpcpb.UnimplementedClusterServer

	mu      sync.Mutex
	tasks   map[string]*blixardpb.Task
	byKey   map[string]string
	changed chan struct{} // closed and replaced on every change

	// next is what SubmitTask creates: its ID and state, with the spec
	// and key from the request.
	next       *blixardpb.Task
	submitErrs []error // the first SubmitTask calls fail with these
	submits    []*blixardpb.SubmitTaskRequest

	waitErrs  map[string][]error // the first WaitTask calls fail with these
	waitCalls map[string]int
	onWait    chan string // if set, gets a non-blocking send per WaitTask call

	logs map[logKey][]string // chunks of each stream
	// breakAfter makes the first open of a stream fail with Unavailable
	// after sending this many chunks.
	breakAfter map[logKey]int
	broken     map[logKey]bool
	logReqs    []*blixardpb.TaskLogsRequest
	ended      map[logKey]bool
	// onLogsEnd is called (without the lock) when a stream has sent
	// everything, before it ends.
	onLogsEnd func(req *blixardpb.TaskLogsRequest)

	lists   []*blixardpb.ListTasksRequest
	cancels []string
}

func newFakeTasks(tasks ...*blixardpb.Task) *fakeTasks {
	f := &fakeTasks{
		tasks:      map[string]*blixardpb.Task{},
		byKey:      map[string]string{},
		changed:    make(chan struct{}),
		waitErrs:   map[string][]error{},
		waitCalls:  map[string]int{},
		logs:       map[logKey][]string{},
		breakAfter: map[logKey]int{},
		broken:     map[logKey]bool{},
		ended:      map[logKey]bool{},
	}
	for _, t := range tasks {
		f.tasks[t.GetId()] = t
	}
	return f
}

// set replaces a task and wakes WaitTask calls.
func (f *fakeTasks) set(t *blixardpb.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks[t.GetId()] = t
	close(f.changed)
	f.changed = make(chan struct{})
}

func notFound(id string) error {
	return status.Errorf(codes.NotFound, "task %q not found", id)
}

func (f *fakeTasks) SubmitTask(_ context.Context, req *blixardpb.SubmitTaskRequest) (*blixardpb.TaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits = append(f.submits, req)
	if len(f.submitErrs) > 0 {
		err := f.submitErrs[0]
		f.submitErrs = f.submitErrs[1:]
		return nil, err
	}
	if id, ok := f.byKey[req.GetIdempotencyKey()]; ok {
		return &blixardpb.TaskResponse{Task: f.tasks[id]}, nil
	}
	t := proto.Clone(f.next).(*blixardpb.Task)
	t.Spec = req.GetSpec()
	t.IdempotencyKey = req.GetIdempotencyKey()
	f.tasks[t.GetId()] = t
	f.byKey[t.GetIdempotencyKey()] = t.GetId()
	return &blixardpb.TaskResponse{Task: t}, nil
}

func (f *fakeTasks) GetTask(_ context.Context, req *blixardpb.GetTaskRequest) (*blixardpb.TaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[req.GetId()]
	if !ok {
		return nil, notFound(req.GetId())
	}
	return &blixardpb.TaskResponse{Task: t}, nil
}

func (f *fakeTasks) ListTasks(_ context.Context, req *blixardpb.ListTasksRequest) (*blixardpb.ListTasksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists = append(f.lists, req)
	resp := &blixardpb.ListTasksResponse{}
	for _, t := range f.tasks {
		if req.GetState() == 0 || req.GetState() == t.GetState() {
			resp.Tasks = append(resp.Tasks, t)
		}
	}
	return resp, nil
}

func (f *fakeTasks) CancelTask(_ context.Context, req *blixardpb.CancelTaskRequest) (*blixardpb.TaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels = append(f.cancels, req.GetId())
	t, ok := f.tasks[req.GetId()]
	if !ok {
		return nil, notFound(req.GetId())
	}
	t = proto.Clone(t).(*blixardpb.Task)
	if !isFinalState(t.GetState()) {
		t.State = blixardpb.TaskState_TASK_STATE_CANCELLED
	}
	f.tasks[t.GetId()] = t
	return &blixardpb.TaskResponse{Task: t}, nil
}

func (f *fakeTasks) WaitTask(ctx context.Context, req *blixardpb.WaitTaskRequest) (*blixardpb.TaskResponse, error) {
	id := req.GetId()
	if f.onWait != nil {
		select {
		case f.onWait <- id:
		default:
		}
	}
	f.mu.Lock()
	f.waitCalls[id]++
	if errs := f.waitErrs[id]; len(errs) > 0 {
		f.waitErrs[id] = errs[1:]
		f.mu.Unlock()
		return nil, errs[0]
	}
	for {
		t, ok := f.tasks[id]
		if !ok {
			f.mu.Unlock()
			return nil, notFound(id)
		}
		if isFinalState(t.GetState()) {
			f.mu.Unlock()
			return &blixardpb.TaskResponse{Task: t}, nil
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-ch:
		}
		f.mu.Lock()
	}
}

func (f *fakeTasks) TaskLogs(req *blixardpb.TaskLogsRequest, stream grpc.ServerStreamingServer[blixardpb.LogChunk]) error {
	f.mu.Lock()
	f.logReqs = append(f.logReqs, req)
	t, ok := f.tasks[req.GetId()]
	if !ok {
		f.mu.Unlock()
		return notFound(req.GetId())
	}
	n := req.GetAttempt()
	if n == 0 {
		n = latestAttempt(t).GetNumber()
	}
	key := logKey{req.GetId(), n, req.GetStderr()}
	chunks := f.logs[key]
	limit, breaks := f.breakAfter[key]
	breaks = breaks && !f.broken[key]
	if breaks {
		f.broken[key] = true
		chunks = chunks[:limit]
	}
	f.mu.Unlock()

	pos := int64(0)
	for _, c := range chunks {
		end := pos + int64(len(c))
		if end > req.GetOffset() {
			from := max(req.GetOffset()-pos, 0)
			if err := stream.Send(&blixardpb.LogChunk{Data: []byte(c[from:])}); err != nil {
				return err
			}
		}
		pos = end
	}
	if breaks {
		return status.Error(codes.Unavailable, "worker connection lost")
	}
	f.mu.Lock()
	f.ended[key] = true
	hook := f.onLogsEnd
	f.mu.Unlock()
	if hook != nil {
		hook(req)
	}
	return nil
}

// Fixtures.

var (
	created  = testNow.Add(-2 * time.Minute)
	assigned = created.Add(time.Second)
	started  = assigned.Add(500 * time.Millisecond)
	finished = started.Add(30 * time.Second)
)

func ns(t time.Time) int64 { return t.UnixNano() }

func specFixture() *blixardpb.TaskSpec {
	return &blixardpb.TaskSpec{
		Name: "build", Command: "make", Args: []string{"test", "a b"},
		Resources:  &blixardpb.Resources{CpuMillis: 1500, MemoryMib: 512},
		MaxRetries: 2, Priority: 5,
	}
}

// failedTask failed twice: attempt 1 killed by a signal, attempt 2 exit 3.
func failedTask() *blixardpb.Task {
	return &blixardpb.Task{
		Id: "t-1", Spec: specFixture(), State: blixardpb.TaskState_TASK_STATE_FAILED,
		CreatedAtUnixNano: ns(created), FinishedAtUnixNano: ns(finished.Add(time.Minute)),
		RetriesUsed: 1, Seq: 10,
		Attempts: []*blixardpb.Attempt{
			{
				Number: 2, WorkerId: 3, State: blixardpb.TaskState_TASK_STATE_FAILED,
				AssignedAtUnixNano: ns(finished.Add(time.Second)), StartedAtUnixNano: ns(finished.Add(2 * time.Second)),
				FinishedAtUnixNano: ns(finished.Add(time.Minute)),
				Result:             &blixardpb.TaskResult{ExitCode: 3},
			},
			{
				Number: 1, WorkerId: 2, State: blixardpb.TaskState_TASK_STATE_FAILED,
				AssignedAtUnixNano: ns(assigned), StartedAtUnixNano: ns(started), FinishedAtUnixNano: ns(finished),
				Result: &blixardpb.TaskResult{ExitCode: -1, Signal: "SIGKILL", OomKilled: true},
			},
		},
	}
}

func runningTask(id string) *blixardpb.Task {
	return &blixardpb.Task{
		Id: id, Spec: &blixardpb.TaskSpec{Command: "sleep", Args: []string{"60"}},
		State: blixardpb.TaskState_TASK_STATE_RUNNING, CreatedAtUnixNano: ns(testNow.Add(-30 * time.Second)), Seq: 5,
		Attempts: []*blixardpb.Attempt{{
			Number: 1, WorkerId: 1, State: blixardpb.TaskState_TASK_STATE_RUNNING,
			AssignedAtUnixNano: ns(testNow.Add(-20 * time.Second)), StartedAtUnixNano: ns(testNow.Add(-19 * time.Second)),
		}},
	}
}

func pendingTask(id string) *blixardpb.Task {
	return &blixardpb.Task{
		Id: id, Spec: &blixardpb.TaskSpec{Command: "true"},
		State: blixardpb.TaskState_TASK_STATE_PENDING, CreatedAtUnixNano: ns(testNow.Add(-90 * time.Minute)), Seq: 20,
	}
}

// finalTask is a one-attempt task in state st with the given result.
func finalTask(id string, st blixardpb.TaskState, r *blixardpb.TaskResult) *blixardpb.Task {
	return &blixardpb.Task{
		Id: id, Spec: &blixardpb.TaskSpec{Command: "job", TimeoutMs: 30000}, State: st,
		CreatedAtUnixNano: ns(created), FinishedAtUnixNano: ns(finished),
		Attempts: []*blixardpb.Attempt{{
			Number: 1, WorkerId: 1, State: st, AssignedAtUnixNano: ns(assigned),
			StartedAtUnixNano: ns(started), FinishedAtUnixNano: ns(finished), Result: r,
		}},
	}
}

func taskFieldNames() []string {
	return sorted("id", "name", "state", "exit_code", "worker", "attempt", "attempts", "created_at", "started_at",
		"finished_at", "command", "args", "priority", "cpu", "memory_mib", "retries_used", "max_retries")
}

func attemptFieldNames() []string {
	return sorted("number", "worker", "state", "exit_code", "signal", "assigned_at", "started_at", "finished_at",
		"oom_killed", "timed_out", "error")
}

// runAsync runs the CLI in a goroutine; the returned function waits for
// its exit code.
func (h *harness) runAsync(args ...string) func() int {
	done := make(chan int, 1)
	go func() { done <- h.run(args...) }()
	return func() int {
		h.t.Helper()
		select {
		case code := <-done:
			return code
		case <-time.After(testDeadline):
			h.t.Fatalf("%v did not finish; stdout %q stderr %q", args, h.stdout.String(), h.stderr.String())
			return -1
		}
	}
}

func (h *harness) await(b *syncBuffer, s string) {
	h.t.Helper()
	select {
	case <-b.waitFor(s):
	case <-time.After(testDeadline):
		h.t.Fatalf("output never contained %q; got %q", s, b.String())
	}
}

// ---------------------------------------------------------------------------

func TestTaskUsageErrors(t *testing.T) {
	sub := func(args ...string) []string { return append([]string{"task", "submit"}, args...) }
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"no command", sub(), []string{"missing command after --", "usage: blixard task submit [flags] -- CMD [ARGS...]"}},
		{"nothing after dash", sub("--cpu", "1", "--"), []string{"missing command after --"}},
		{"no dash", sub("echo", "hi"), []string{`missing -- before the command (got "echo")`}},
		{"argument before dash", sub("x", "--", "echo"), []string{`unexpected argument "x" before --`}},
		{"empty command", sub("--", ""), []string{"the command after -- must not be empty"}},
		{"timeout not a duration", sub("--timeout", "soon", "--", "x"), []string{`--timeout must be a duration like 500ms, 2s or 1m (got "soon")`}},
		{"timeout negative", sub("--timeout", "-1s", "--", "x"), []string{`--timeout must be a non-negative duration (0 for none) (got "-1s")`}},
		{"timeout below 1ms", sub("--timeout", "10us", "--", "x"), []string{`--timeout must be at least 1ms (got "10µs")`}},
		{"kill grace zero", sub("--kill-grace", "0s", "--", "x"), []string{`--kill-grace must be a positive duration (got "0s")`}},
		{"backoff base negative", sub("--backoff-base", "-1s", "--", "x"), []string{`--backoff-base must be a positive duration (got "-1s")`}},
		{"backoff max not a duration", sub("--backoff-max", "1", "--", "x"), []string{`--backoff-max must be a duration like 500ms, 2s or 1m (got "1")`}},
		{"backoff max below base", sub("--backoff-base", "2m", "--", "x"), []string{"--backoff-max must not be less than --backoff-base (got 1m0s and 2m0s)"}},
		{"cpu negative", sub("--cpu", "-1", "--", "x"), []string{`--cpu must be a non-negative number of cores`, `(got "-1")`}},
		{"cpu not a number", sub("--cpu", "lots", "--", "x"), []string{`--cpu must be a non-negative number of cores, e.g. 2 or 0.5 (got "lots")`}},
		{"cpu too small", sub("--cpu", "0.0001", "--", "x"), []string{`--cpu must be a non-negative number of cores, at least 0.001`}},
		{"cpu NaN", sub("--cpu", "NaN", "--", "x"), []string{`--cpu must be a non-negative number of cores`}},
		{"memory negative", sub("--memory", "-5", "--", "x"), []string{`--memory must be a non-negative number of MiB (got "-5")`}},
		{"memory not a number", sub("--memory", "1G", "--", "x"), []string{`--memory must be a non-negative number of MiB (got "1G")`}},
		{"retries negative", sub("--retries", "-1", "--", "x"), []string{`--retries must be a non-negative integer (got "-1")`}},
		{"priority negative", sub("--priority", "-3", "--", "x"), []string{`--priority must be a non-negative integer (got "-3")`}},
		{"node negative", sub("--node", "-1", "--", "x"), []string{`--node must be a worker ID (a non-negative integer) (got "-1")`}},
		{"constraint without =", sub("--constraint", "zone", "--", "x"), []string{`--constraint "zone" is not KEY=VALUE`}},
		{"constraint empty key", sub("--constraint", "=eu", "--", "x"), []string{`--constraint "=eu" has an empty key`}},
		{"constraint bad key", sub("--constraint", "a b=c", "--", "x"), []string{`--constraint key "a b" may only contain`}},
		{"constraint twice", sub("--constraint", "a=1", "--constraint", "a=2", "--", "x"), []string{`--constraint sets key "a" more than once`}},
		{"env without =", sub("--env", "HOME", "--", "x"), []string{`--env "HOME" is not KEY=VALUE`}},
		{"env empty key", sub("--env", "=v", "--", "x"), []string{`--env "=v" has an empty key`}},
		{"env twice", sub("--env", "A=1", "--env", "A=2", "--", "x"), []string{`--env sets key "A" more than once`}},
		{"policy", sub("--policy", "random", "--", "x"), []string{`--policy must be "binpack" or "spread" (got "random")`}},
		{"empty idempotency key", sub("--idempotency-key", "", "--", "x"), []string{"--idempotency-key must not be empty"}},
		{"unknown flag", sub("--bogus", "--", "x"), []string{"unknown flag: --bogus", "blixard task submit --help"}},
		{"status without ID", []string{"task", "status"}, []string{"missing ID — usage: blixard task status ID"}},
		{"status empty ID", []string{"task", "status", ""}, []string{"ID must not be empty"}},
		{"cancel two IDs", []string{"task", "cancel", "a", "b"}, []string{"too many arguments"}},
		{"list bad state", []string{"task", "list", "--state", "done"}, []string{`--state must be one of pending, assigned, running, succeeded, failed, cancelled, timed_out, lost (got "done")`}},
		{"logs attempt zero", []string{"task", "logs", "t-1", "--attempt", "0"}, []string{`--attempt must be a positive integer (got "0")`}},
		{"logs attempt negative", []string{"task", "logs", "t-1", "--attempt", "-2"}, []string{`--attempt must be a positive integer (got "-2")`}},
		{"wait without ID", []string{"task", "wait"}, []string{"missing ID — usage: blixard task wait ID..."}},
		{"unknown subcommand", []string{"task", "sumbit"}, []string{`unknown command "sumbit" for "blixard task"`, `did you mean "submit"?`}},
	}
	// Nothing listens there: a request would fail with exit code 1, not 2.
	addr := closedAddr(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(append([]string{"--addr", addr}, tc.args...)...); code != exitUsage {
				t.Errorf("exit code = %d, want %d", code, exitUsage)
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Errorf("stdout = %q, want nothing", h.stdout.String())
			}
		})
	}
}

func TestTaskSubmitRequest(t *testing.T) {
	f := newFakeTasks()
	f.next = pendingTask("t-9")
	addr := startFake(t, f)
	h := newHarness(t)
	code := h.run("--addr", addr, "task", "submit", "--name", "build", "--cpu", "0.25", "--memory", "512",
		"--timeout", "1m30s", "--kill-grace", "5s", "--retries", "3", "--backoff-base", "200ms", "--backoff-max", "10s",
		"--priority", "7", "--constraint", "zone=eu-1", "--constraint", "disk=", "--node", "4", "--policy", "spread",
		"--env", "A=1", "--env", "B=x=y", "--workdir", "/srv", "--user", "nobody", "--idempotency-key", "k-1",
		"--", "make", "-j2", "--keep-going", "")
	if code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "t-9\n" {
		t.Errorf("stdout = %q, want the task ID", got)
	}
	want := &blixardpb.SubmitTaskRequest{
		IdempotencyKey: "k-1",
		Spec: &blixardpb.TaskSpec{
			Name: "build", Command: "make", Args: []string{"-j2", "--keep-going", ""},
			Env: map[string]string{"A": "1", "B": "x=y"}, Workdir: "/srv",
			Resources: &blixardpb.Resources{CpuMillis: 250, MemoryMib: 512},
			TimeoutMs: 90000, KillGraceMs: 5000, MaxRetries: 3, RetryBackoffBaseMs: 200, RetryBackoffMaxMs: 10000,
			Priority: 7, Constraints: map[string]string{"zone": "eu-1", "disk": ""}, Node: 4,
			Policy: blixardpb.PlacementPolicy_PLACEMENT_POLICY_SPREAD, User: "nobody",
		},
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.submits) != 1 || !proto.Equal(f.submits[0], want) {
		t.Errorf("submits = %v\nwant %v", f.submits, want)
	}
}

func TestTaskSubmitDefaults(t *testing.T) {
	f := newFakeTasks()
	f.next = pendingTask("t-9")
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "task", "submit", "--", "true"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	f.mu.Lock()
	req := f.submits[0]
	f.mu.Unlock()
	want := &blixardpb.TaskSpec{
		Command: "true", Args: []string{}, Env: map[string]string{}, Constraints: map[string]string{},
		Resources: &blixardpb.Resources{}, KillGraceMs: 10000, RetryBackoffBaseMs: 1000, RetryBackoffMaxMs: 60000,
	}
	if !proto.Equal(req.GetSpec(), want) {
		t.Errorf("spec = %v\nwant %v", req.GetSpec(), want)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(req.GetIdempotencyKey()) {
		t.Errorf("generated idempotency key %q is not 16 hex bytes", req.GetIdempotencyKey())
	}
	jsonEqual(t, h.stdout.String(), `{"id": "t-9", "name": "", "state": "pending", "exit_code": null, "worker": null,
		"attempt": 0, "attempts": [], "created_at": "2026-03-01T10:30:00Z", "started_at": null, "finished_at": null,
		"command": "true", "args": [], "priority": 0, "cpu": 0, "memory_mib": 0, "retries_used": 0, "max_retries": 0}`)
}

func TestTaskSubmitRetriesWithSameKey(t *testing.T) {
	f := newFakeTasks()
	f.next = pendingTask("t-7")
	f.submitErrs = []error{
		status.Error(codes.Unavailable, "leader changed"),
		status.Error(codes.DeadlineExceeded, "proposal timed out"),
	}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "task", "submit", "--", "echo", "hi"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "t-7\n" {
		t.Errorf("stdout = %q", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.submits) != 3 {
		t.Fatalf("SubmitTask called %d times, want 3", len(f.submits))
	}
	key := f.submits[0].GetIdempotencyKey()
	if key == "" {
		t.Fatal("no idempotency key sent")
	}
	for i, req := range f.submits {
		if req.GetIdempotencyKey() != key {
			t.Errorf("submit %d key %q, want the first key %q", i, req.GetIdempotencyKey(), key)
		}
		if !proto.Equal(req, f.submits[0]) {
			t.Errorf("submit %d differs from the first: %v", i, req)
		}
	}
	if len(f.tasks) != 1 {
		t.Errorf("%d tasks created, want 1", len(f.tasks))
	}
}

func TestTaskSubmitGivesUp(t *testing.T) {
	t.Run("not retried", func(t *testing.T) {
		f := newFakeTasks()
		f.submitErrs = []error{status.Error(codes.InvalidArgument, "command must not be empty")}
		addr := startFake(t, f)
		h := newHarness(t)
		if code := h.run("--addr", addr, "task", "submit", "--", "x"); code != exitFailure {
			t.Errorf("exit code = %d, want %d", code, exitFailure)
		}
		h.wantErrorLine("error: command must not be empty — check the arguments")
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.submits) != 1 {
			t.Errorf("SubmitTask called %d times, want 1", len(f.submits))
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		h := newHarness(t)
		addr := closedAddr(t)
		if code := h.run("--addr", addr, "task", "submit", "--", "x"); code != exitFailure {
			t.Errorf("exit code = %d, want %d", code, exitFailure)
		}
		h.wantErrorLine("cannot reach blixard at " + addr)
	})
}

// TestTaskSubmitDeadline checks the retry loop gives up at --timeout with
// the last reason. (In 'task submit' --timeout is the task's own, so this
// drives the loop directly.)
func TestTaskSubmitDeadline(t *testing.T) {
	f := newFakeTasks()
	for range 1000 {
		f.submitErrs = append(f.submitErrs, status.Error(codes.Unavailable, "no leader"))
	}
	a := &app{addr: startFake(t, f), timeout: 300 * time.Millisecond}
	tc, err := a.dialTasks(&cobra.Command{})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.close()
	req := &blixardpb.SubmitTaskRequest{IdempotencyKey: "k", Spec: &blixardpb.TaskSpec{Command: "x"}}
	start := time.Now()
	_, err = tc.submit(context.Background(), req)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("gave up after %s, want about 300ms", took)
	}
	if code, line := exitCodeAndLine(err); code != exitFailure || !strings.Contains(line, "is unavailable: no leader") {
		t.Errorf("error = %d %q", code, line)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.submits) < 3 {
		t.Errorf("SubmitTask called %d times, want several retries", len(f.submits))
	}
	for _, r := range f.submits {
		if r.GetIdempotencyKey() != "k" {
			t.Errorf("retry with key %q", r.GetIdempotencyKey())
		}
	}
}

func TestTaskSubmitWaitExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		task     *blixardpb.Task
		code     int
		summary  string
		waitErrs []error
	}{
		{"succeeded", finalTask("t-1", blixardpb.TaskState_TASK_STATE_SUCCEEDED, &blixardpb.TaskResult{}), 0, "", nil},
		{"failed", finalTask("t-1", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{ExitCode: 3}), 3,
			"error: task t-1 failed with exit code 3 — see its output with 'blixard task logs t-1 --stderr'",
			[]error{status.Error(codes.DeadlineExceeded, "still running")}},
		{"failed by signal", finalTask("t-1", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{ExitCode: -1, Signal: "SIGSEGV"}), 1,
			"error: task t-1 was killed by SIGSEGV", nil},
		{"timed out", finalTask("t-1", blixardpb.TaskState_TASK_STATE_TIMED_OUT, &blixardpb.TaskResult{ExitCode: -1, Signal: "SIGKILL", TimedOut: true}), 124,
			"error: task t-1 timed out after 30s — raise --timeout", nil},
		{"cancelled", finalTask("t-1", blixardpb.TaskState_TASK_STATE_CANCELLED, &blixardpb.TaskResult{ExitCode: -1, Cancelled: true}), 130,
			"error: task t-1 was cancelled — see 'blixard task status t-1'", nil},
		{"lost", finalTask("t-1", blixardpb.TaskState_TASK_STATE_LOST, nil), 1, "error: task t-1 was lost", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeTasks()
			f.next = tc.task
			f.waitErrs["t-1"] = tc.waitErrs
			f.logs[logKey{"t-1", 1, false}] = []string{"hello ", "world\n"}
			f.logs[logKey{"t-1", 1, true}] = []string{"warning: x\n"}
			addr := startFake(t, f)
			h := newHarness(t)
			if code := h.run("--addr", addr, "task", "submit", "--wait", "--timeout", "30s", "--", "job"); code != tc.code {
				t.Errorf("exit code = %d, want %d; stderr %q", code, tc.code, h.stderr.String())
			}
			if got := h.stdout.String(); got != "hello world\n" {
				t.Errorf("stdout = %q, want the task's stdout", got)
			}
			stderr := h.stderr.String()
			if !strings.HasPrefix(stderr, "warning: x\n") {
				t.Errorf("stderr = %q, want the task's stderr first", stderr)
			}
			rest := strings.TrimPrefix(stderr, "warning: x\n")
			if tc.summary == "" {
				if rest != "" {
					t.Errorf("stderr after the task's = %q, want nothing", rest)
				}
			} else if !strings.HasPrefix(rest, tc.summary) || strings.Count(rest, "\n") != 1 {
				t.Errorf("summary = %q, want one line starting %q", rest, tc.summary)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if want := len(tc.waitErrs) + 1; f.waitCalls["t-1"] != want {
				t.Errorf("WaitTask called %d times, want %d", f.waitCalls["t-1"], want)
			}
			for _, req := range f.logReqs {
				if !req.GetFollow() || req.GetAttempt() != 1 {
					t.Errorf("logs request %v, want follow on attempt 1", req)
				}
			}
		})
	}
}

func TestTaskSubmitWaitJSON(t *testing.T) {
	f := newFakeTasks()
	f.next = finalTask("t-1", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{ExitCode: 3})
	f.logs[logKey{"t-1", 1, false}] = []string{"not shown\n"}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "task", "submit", "--wait", "--", "job"); code != 3 {
		t.Errorf("exit code = %d, want 3", code)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &obj); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, h.stdout.String())
	}
	if obj["state"] != "failed" || obj["exit_code"] != float64(3) {
		t.Errorf("object = %v", obj)
	}
	h.wantErrorLine("task t-1 failed with exit code 3")
}

// TestTaskSubmitWaitFollowsAttempts streams a task that fails once and is
// retried, with the second attempt's stdout stream breaking halfway.
func TestTaskSubmitWaitFollowsAttempts(t *testing.T) {
	f := newFakeTasks()
	first := runningTask("t-5")
	f.next = first
	out1, err1 := logKey{"t-5", 1, false}, logKey{"t-5", 1, true}
	out2, err2 := logKey{"t-5", 2, false}, logKey{"t-5", 2, true}
	f.logs[out1] = []string{"one\n"}
	f.logs[err1] = []string{"oops\n"}
	f.logs[out2] = []string{"two-a\n", "two-b\n"}
	f.logs[err2] = []string{"fine\n"}
	f.breakAfter[out2] = 1

	retried := proto.Clone(first).(*blixardpb.Task)
	retried.State = blixardpb.TaskState_TASK_STATE_RUNNING
	retried.RetriesUsed = 1
	retried.Attempts[0].State = blixardpb.TaskState_TASK_STATE_FAILED
	retried.Attempts[0].Result = &blixardpb.TaskResult{ExitCode: 1}
	retried.Attempts = append(retried.Attempts, &blixardpb.Attempt{Number: 2, WorkerId: 2, State: blixardpb.TaskState_TASK_STATE_RUNNING})
	done := proto.Clone(retried).(*blixardpb.Task)
	done.State = blixardpb.TaskState_TASK_STATE_SUCCEEDED
	done.Attempts[1].State = blixardpb.TaskState_TASK_STATE_SUCCEEDED
	done.Attempts[1].Result = &blixardpb.TaskResult{}

	// An attempt ends once both its streams have been read to the end.
	f.onLogsEnd = func(req *blixardpb.TaskLogsRequest) {
		f.mu.Lock()
		stage := 0
		if f.ended[out1] && f.ended[err1] {
			stage = 1
		}
		if f.ended[out2] && f.ended[err2] {
			stage = 2
		}
		current := len(f.tasks["t-5"].GetAttempts())
		if isFinalState(f.tasks["t-5"].GetState()) {
			current = 3
		}
		f.mu.Unlock()
		switch {
		case stage == 1 && current == 1:
			f.set(retried)
		case stage == 2 && current == 2:
			f.set(done)
		}
	}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "task", "submit", "--wait", "--", "flaky"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got, want := h.stdout.String(), "one\ntwo-a\ntwo-b\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got, want := h.stderr.String(), "oops\nfine\n"; got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var offsets []int64
	for _, req := range f.logReqs {
		if req.GetAttempt() == 2 && !req.GetStderr() {
			offsets = append(offsets, req.GetOffset())
		}
	}
	if len(offsets) < 2 || offsets[0] != 0 || offsets[1] != int64(len("two-a\n")) {
		t.Errorf("attempt 2 stdout opened at offsets %v, want 0 then %d", offsets, len("two-a\n"))
	}
}

func TestTaskStatusJSON(t *testing.T) {
	f := newFakeTasks(failedTask(), runningTask("t-2"))
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "task", "status", "t-1"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &obj); err != nil {
		t.Fatal(err)
	}
	if got := sortedKeys(obj); !reflect.DeepEqual(got, taskFieldNames()) {
		t.Errorf("fields = %v\nwant %v", got, taskFieldNames())
	}
	for _, at := range obj["attempts"].([]any) {
		if got := sortedKeys(at.(map[string]any)); !reflect.DeepEqual(got, attemptFieldNames()) {
			t.Errorf("attempt fields = %v\nwant %v", got, attemptFieldNames())
		}
	}
	jsonEqual(t, h.stdout.String(), `{
		"id": "t-1", "name": "build", "state": "failed", "exit_code": 3, "worker": 3, "attempt": 2,
		"attempts": [
			{"number": 1, "worker": 2, "state": "failed", "exit_code": -1, "signal": "SIGKILL",
			 "assigned_at": "2026-03-01T11:58:01Z", "started_at": "2026-03-01T11:58:01.5Z", "finished_at": "2026-03-01T11:58:31.5Z",
			 "oom_killed": true, "timed_out": false, "error": null},
			{"number": 2, "worker": 3, "state": "failed", "exit_code": 3, "signal": null,
			 "assigned_at": "2026-03-01T11:58:32.5Z", "started_at": "2026-03-01T11:58:33.5Z", "finished_at": "2026-03-01T11:59:31.5Z",
			 "oom_killed": false, "timed_out": false, "error": null}
		],
		"created_at": "2026-03-01T11:58:00Z", "started_at": "2026-03-01T11:58:01.5Z", "finished_at": "2026-03-01T11:59:31.5Z",
		"command": "make", "args": ["test", "a b"], "priority": 5, "cpu": 1.5, "memory_mib": 512,
		"retries_used": 1, "max_retries": 2}`)

	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "task", "status", "t-2"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	jsonEqual(t, h.stdout.String(), `{
		"id": "t-2", "name": "", "state": "running", "exit_code": null, "worker": 1, "attempt": 1,
		"attempts": [
			{"number": 1, "worker": 1, "state": "running", "exit_code": null, "signal": null,
			 "assigned_at": "2026-03-01T11:59:40Z", "started_at": "2026-03-01T11:59:41Z", "finished_at": null,
			 "oom_killed": false, "timed_out": false, "error": null}
		],
		"created_at": "2026-03-01T11:59:30Z", "started_at": "2026-03-01T11:59:41Z", "finished_at": null,
		"command": "sleep", "args": ["60"], "priority": 0, "cpu": 0, "memory_mib": 0,
		"retries_used": 0, "max_retries": 0}`)
}

func TestTaskStatusTable(t *testing.T) {
	addr := startFake(t, newFakeTasks(failedTask()))
	h := newHarness(t)
	if code := h.run("--addr", addr, "task", "status", "t-1"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	want := "" +
		"ID:         t-1\n" +
		"Name:       build\n" +
		"State:      failed\n" +
		"Exit code:  3\n" +
		"Worker:     3\n" +
		"Attempt:    2\n" +
		"Retries:    1 of 2 used\n" +
		"Command:    make test 'a b'\n" +
		"Priority:   5\n" +
		"CPU:        1.5\n" +
		"Memory:     512MiB\n" +
		"Created:    2026-03-01T11:58:00Z (2m0s ago)\n" +
		"Started:    2026-03-01T11:58:01Z (1m58s ago)\n" +
		"Finished:   2026-03-01T11:59:31Z (28s ago)\n" +
		"\n" +
		"ATTEMPT  WORKER  STATE   EXIT  SIGNAL   STARTED    DURATION  NOTE\n" +
		"1        2       failed  -1    SIGKILL  1m58s ago  30s       out of memory\n" +
		"2        3       failed  3     -        1m26s ago  58s       -\n"
	if got := h.stdout.String(); got != want {
		t.Errorf("table\n got:\n%s\nwant:\n%s", got, want)
	}
}

func TestTaskList(t *testing.T) {
	f := newFakeTasks(pendingTask("t-3"), failedTask(), runningTask("t-2"))
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "task", "list"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &list); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, obj := range list {
		if got := sortedKeys(obj); !reflect.DeepEqual(got, taskFieldNames()) {
			t.Errorf("fields = %v\nwant %v", got, taskFieldNames())
		}
		ids = append(ids, obj["id"].(string))
	}
	if want := []string{"t-2", "t-1", "t-3"}; !slices.Equal(ids, want) {
		t.Errorf("order = %v, want %v (by submission)", ids, want)
	}
	if list[2]["state"] != "pending" || list[2]["worker"] != nil || list[2]["attempt"] != float64(0) ||
		list[2]["exit_code"] != nil || list[2]["started_at"] != nil || len(list[2]["attempts"].([]any)) != 0 {
		t.Errorf("pending task = %v", list[2])
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "task", "list"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	want := "" +
		"ID   NAME   STATE    WORKER  ATTEMPT  EXIT  AGE\n" +
		"t-2  -      running  1       1        -     30s\n" +
		"t-1  build  failed   3       2        3     2m0s\n" +
		"t-3  -      pending  -       -        -     1h30m\n"
	if got := h.stdout.String(); got != want {
		t.Errorf("table\n got:\n%s\nwant:\n%s", got, want)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "task", "list", "--state", "running"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if err := json.Unmarshal([]byte(h.stdout.String()), &list); err != nil || len(list) != 1 || list[0]["id"] != "t-2" {
		t.Errorf("filtered list = %s", h.stdout.String())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if last := f.lists[len(f.lists)-1]; last.GetState() != blixardpb.TaskState_TASK_STATE_RUNNING {
		t.Errorf("state filter not sent: %v", last)
	}

	empty := startFake(t, newFakeTasks())
	h = newHarness(t)
	if code := h.run("--addr", empty, "-o", "json", "task", "list"); code != exitOK || strings.TrimSpace(h.stdout.String()) != "[]" {
		t.Errorf("empty list: code %d, stdout %q", code, h.stdout.String())
	}
}

func TestTaskLogs(t *testing.T) {
	f := newFakeTasks(failedTask(), pendingTask("t-3"))
	f.logs[logKey{"t-1", 2, false}] = []string{"second\n", "\x00\xffraw"}
	f.logs[logKey{"t-1", 1, true}] = []string{"first err\n"}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "task", "logs", "t-1"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "second\n\x00\xffraw" {
		t.Errorf("stdout = %q", got)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "task", "logs", "t-1", "--stderr", "--attempt", "1", "-f"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "first err\n" {
		t.Errorf("stdout = %q", got)
	}
	f.mu.Lock()
	last := f.logReqs[len(f.logReqs)-1]
	f.mu.Unlock()
	want := &blixardpb.TaskLogsRequest{Id: "t-1", Attempt: 1, Stderr: true, Follow: true}
	if !proto.Equal(last, want) {
		t.Errorf("request = %v, want %v", last, want)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "task", "logs", "t-1", "--attempt", "5"); code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("task t-1 has no attempt 5 (latest is 2)")

	h = newHarness(t)
	if code := h.run("--addr", addr, "task", "logs", "t-3"); code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("task t-3 has not started yet (it is pending) — follow its output with 'blixard task logs -f t-3'")
}

func TestTaskCancel(t *testing.T) {
	f := newFakeTasks(runningTask("t-2"))
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "task", "cancel", "t-2"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "cancelled\n" {
		t.Errorf("stdout = %q", got)
	}
	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "task", "cancel", "t-2"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &obj); err != nil || obj["state"] != "cancelled" {
		t.Errorf("json = %s", h.stdout.String())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Equal(f.cancels, []string{"t-2", "t-2"}) {
		t.Errorf("cancels = %v", f.cancels)
	}
}

func TestTaskNotFound(t *testing.T) {
	addr := startFake(t, newFakeTasks())
	for _, args := range [][]string{
		{"task", "status", "nope"}, {"task", "cancel", "nope"}, {"task", "wait", "nope"},
		{"task", "logs", "nope"}, {"task", "logs", "-f", "nope"},
	} {
		h := newHarness(t)
		if code := h.run(append([]string{"--addr", addr}, args...)...); code != exitFailure {
			t.Errorf("%v: exit code = %d, want %d", args, code, exitFailure)
		}
		want := "error: task \"nope\" not found — list tasks with 'blixard task list'\n"
		if got := h.stderr.String(); got != want {
			t.Errorf("%v: stderr\n got %q\nwant %q", args, got, want)
		}
	}
}

func TestTaskUnreachable(t *testing.T) {
	addr := closedAddr(t)
	for _, args := range [][]string{
		{"task", "status", "x"}, {"task", "list"}, {"task", "cancel", "x"}, {"task", "wait", "x", "y"},
		{"task", "logs", "x"}, {"task", "submit", "--wait", "--", "x"},
	} {
		h := newHarness(t)
		if code := h.run(append([]string{"--addr", addr}, args...)...); code != exitFailure {
			t.Errorf("%v: exit code = %d, want %d", args, code, exitFailure)
		}
		h.wantErrorLine("cannot reach blixard at " + addr)
	}
}

// waitFixture has a finished task a and running tasks b and c.
func waitFixture() *fakeTasks {
	return newFakeTasks(
		finalTask("a", blixardpb.TaskState_TASK_STATE_SUCCEEDED, &blixardpb.TaskResult{}),
		runningTask("b"), runningTask("c"))
}

func TestTaskWaitProgressLines(t *testing.T) {
	f := waitFixture()
	f.waitErrs["c"] = []error{status.Error(codes.DeadlineExceeded, "still running")}
	addr := startFake(t, f)
	h := newHarness(t)
	wait := h.runAsync("--addr", addr, "task", "wait", "a", "b", "c", "a")
	h.await(h.stderr, "1/3 done")
	f.set(finalTask("b", blixardpb.TaskState_TASK_STATE_FAILED, &blixardpb.TaskResult{ExitCode: 3}))
	h.await(h.stderr, "2/3 done")
	f.set(finalTask("c", blixardpb.TaskState_TASK_STATE_SUCCEEDED, &blixardpb.TaskResult{}))
	if code := wait(); code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	wantErr := "" +
		"[###.......] 1/3 done, 0 failed (a succeeded)\n" +
		"[######....] 2/3 done, 1 failed (b failed, exit code 3)\n" +
		"[##########] 3/3 done, 1 failed (c succeeded)\n" +
		"error: 1 of 3 tasks did not succeed (b failed) — see 'blixard task status ID' for each\n"
	if got := h.stderr.String(); got != wantErr {
		t.Errorf("stderr\n got %q\nwant %q", got, wantErr)
	}
	wantOut := "" +
		"ID  NAME  STATE      WORKER  ATTEMPT  EXIT  AGE\n" +
		"a   -     succeeded  1       1        0     2m0s\n" +
		"b   -     failed     1       1        3     2m0s\n" +
		"c   -     succeeded  1       1        0     2m0s\n"
	if got := h.stdout.String(); got != wantOut {
		t.Errorf("stdout\n got:\n%s\nwant:\n%s", got, wantOut)
	}
}

func TestTaskWaitProgressTerminal(t *testing.T) {
	f := waitFixture()
	addr := startFake(t, f)
	h := newHarness(t)
	h.deps.isTerminal = func(w io.Writer) bool { return w == h.stderr }
	wait := h.runAsync("--addr", addr, "-o", "json", "task", "wait", "a", "b", "c")
	h.await(h.stderr, "1/3 done")
	f.set(finalTask("b", blixardpb.TaskState_TASK_STATE_SUCCEEDED, &blixardpb.TaskResult{}))
	h.await(h.stderr, "2/3 done")
	f.set(finalTask("c", blixardpb.TaskState_TASK_STATE_SUCCEEDED, &blixardpb.TaskResult{}))
	if code := wait(); code != exitOK {
		t.Errorf("exit code = %d, want 0; stderr %q", code, h.stderr.String())
	}
	wantErr := "" +
		"\r[..........] 0/3 done, 0 failed" +
		"\r[###.......] 1/3 done, 0 failed" +
		"\r[######....] 2/3 done, 0 failed" +
		"\r[##########] 3/3 done, 0 failed\n"
	if got := h.stderr.String(); got != wantErr {
		t.Errorf("stderr\n got %q\nwant %q", got, wantErr)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &list); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, obj := range list {
		got = append(got, fmt.Sprint(obj["id"], " ", obj["state"]))
	}
	if want := []string{"a succeeded", "b succeeded", "c succeeded"}; !slices.Equal(got, want) {
		t.Errorf("tasks = %v, want %v", got, want)
	}
}

func TestTaskWaitOne(t *testing.T) {
	f := newFakeTasks(finalTask("t-4", blixardpb.TaskState_TASK_STATE_TIMED_OUT, &blixardpb.TaskResult{TimedOut: true}))
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "task", "wait", "t-4"); code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	// No progress line for a single task: just the error.
	h.wantErrorLine("task t-4 timed out after 30s")
}

func TestTaskWaitInterrupted(t *testing.T) {
	f := waitFixture()
	f.onWait = make(chan string, 10)
	addr := startFake(t, f)
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- h.runCtx(ctx, "--addr", addr, "task", "wait", "b") }()
	select {
	case <-f.onWait: // the wait is under way on the server
	case <-time.After(testDeadline):
		t.Fatal("WaitTask never called")
	}
	cancel()
	select {
	case code := <-done:
		if code != exitInterrupted {
			t.Errorf("exit code = %d, want %d", code, exitInterrupted)
		}
	case <-time.After(testDeadline):
		t.Fatal("wait did not stop")
	}
	h.wantErrorLine("interrupted — task b keeps running; see 'blixard task status b'")
}
