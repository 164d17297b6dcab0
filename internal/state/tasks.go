package state

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/storage"
)

// Task errors returned to proposers.
var (
	// ErrStaleAttempt fences results: a report for an attempt that is no
	// longer the task's current one (or already recorded) is refused.
	ErrStaleAttempt = errors.New("stale attempt")
	ErrUnknownTask  = errors.New("unknown task")
)

// Task defaults and limits. Persisted behaviour depends on them, so they
// are constants, changed only with care.
const (
	DefaultKillGrace    = 10 * time.Second
	DefaultBackoffBase  = time.Second
	DefaultBackoffMax   = time.Minute
	MaxLosses           = 10 // a task lost this many times (worker deaths) is given up as lost
	MaxRetries          = 1000
	maxCommandArgsBytes = 1 << 20
)

// FinalState says whether s is a final task state.
func FinalState(s pb.TaskState) bool {
	switch s {
	case pb.TaskState_TASK_STATE_SUCCEEDED, pb.TaskState_TASK_STATE_FAILED, pb.TaskState_TASK_STATE_CANCELLED,
		pb.TaskState_TASK_STATE_TIMED_OUT, pb.TaskState_TASK_STATE_LOST:
		return true
	}
	return false
}

// ValidateTaskSpec names the first invalid field of spec.
func ValidateTaskSpec(s *pb.TaskSpec) error {
	bad := func(field, format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidCommand, field, fmt.Sprintf(format, a...))
	}
	switch {
	case s == nil:
		return bad("spec", "is missing")
	case strings.TrimSpace(s.Command) == "":
		return bad("command", "must not be empty")
	case s.GetResources().GetCpuMillis() < 0:
		return bad("cpu", "must not be negative (got %dm)", s.GetResources().GetCpuMillis())
	case s.GetResources().GetMemoryMib() < 0:
		return bad("memory", "must not be negative (got %d MiB)", s.GetResources().GetMemoryMib())
	case s.TimeoutMs < 0:
		return bad("timeout", "must not be negative")
	case s.KillGraceMs < 0:
		return bad("kill_grace", "must not be negative")
	case s.MaxRetries < 0 || s.MaxRetries > MaxRetries:
		return bad("retries", "must be between 0 and %d (got %d)", MaxRetries, s.MaxRetries)
	case s.RetryBackoffBaseMs < 0 || s.RetryBackoffMaxMs < 0:
		return bad("backoff", "must not be negative")
	case s.Policy != pb.PlacementPolicy_PLACEMENT_POLICY_UNSPECIFIED && s.Policy != pb.PlacementPolicy_PLACEMENT_POLICY_BINPACK && s.Policy != pb.PlacementPolicy_PLACEMENT_POLICY_SPREAD:
		return bad("policy", "must be binpack or spread")
	}
	n := len(s.Command)
	for _, a := range s.Args {
		n += len(a)
	}
	if n > maxCommandArgsBytes {
		return bad("args", "command and arguments exceed %d bytes", maxCommandArgsBytes)
	}
	// Sorted: with several bad names every node must name the same one
	// (map order differs between processes; found by FuzzValidateTaskSpec).
	for _, k := range sortedStrings(s.Env) {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return bad("env", "invalid variable name %q", k)
		}
	}
	return nil
}

// touchTask marks a task changed for the next checkpoint and keeps the
// pending index in step; every change to a task ends with it.
func (m *Machine) touchTask(id string) {
	m.touch(storage.TableTasks, id)
	m.indexPending(m.tasks[id])
}

func (m *Machine) indexPending(t *pb.Task) {
	if t == nil {
		// Purged: drop it from every index.
		return
	}
	if t.State == pb.TaskState_TASK_STATE_PENDING && !t.CancelRequested {
		m.pending[t.Id] = struct{}{}
	} else {
		delete(m.pending, t.Id)
	}
	// The active index: which worker runs the task's current attempt.
	// Any change to a task active on a worker (before or after) bumps
	// that worker's version, so its runner can skip unchanged rounds.
	if w, ok := m.activeOn[t.Id]; ok {
		m.activeVer[w]++
		delete(m.active[w], t.Id)
		if len(m.active[w]) == 0 {
			delete(m.active, w)
		}
		delete(m.activeOn, t.Id)
	}
	if a := currentAttempt(t); activeAttempt(a) {
		set := m.active[a.WorkerId]
		if set == nil {
			set = map[string]struct{}{}
			m.active[a.WorkerId] = set
		}
		set[t.Id] = struct{}{}
		m.activeOn[t.Id] = a.WorkerId
		m.activeVer[a.WorkerId]++
	}
}

// AssignedVersion changes whenever the set of tasks active on worker, or
// one of those tasks, changes.
func (m *Machine) AssignedVersion(worker uint64) uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.activeVer[worker]
}

// currentAttempt returns the task's latest attempt, if any.
func currentAttempt(t *pb.Task) *pb.Attempt {
	if len(t.Attempts) == 0 {
		return nil
	}
	return t.Attempts[len(t.Attempts)-1]
}

func activeAttempt(a *pb.Attempt) bool {
	return a != nil && (a.State == pb.TaskState_TASK_STATE_ASSIGNED || a.State == pb.TaskState_TASK_STATE_RUNNING)
}

func (m *Machine) reserve(w uint64, r *pb.Resources, sign int64) {
	u := m.used[w]
	u.CPUMillis += sign * r.GetCpuMillis()
	u.MemoryMiB += sign * r.GetMemoryMib()
	if u.CPUMillis == 0 && u.MemoryMiB == 0 {
		delete(m.used, w)
	} else {
		m.used[w] = u
	}
}

// idemKey scopes an idempotency key to the owner of the submitting token,
// so one token's key can neither find nor shadow another's task.
func idemKey(owner, key string) string {
	if owner == "" {
		return key
	}
	return owner + "\x00" + key
}

func (m *Machine) submitTask(index uint64, c *pb.SubmitTask) (proto.Message, error) {
	if c.IdempotencyKey != "" {
		if id, ok := m.idem[idemKey(c.Owner, c.IdempotencyKey)]; ok {
			return proto.Clone(m.tasks[id]), nil
		}
	}
	if err := ValidateTaskSpec(c.Spec); err != nil {
		return nil, err
	}
	t := &pb.Task{
		Id:                fmt.Sprintf("t%d", index),
		Spec:              proto.Clone(c.Spec).(*pb.TaskSpec),
		State:             pb.TaskState_TASK_STATE_PENDING,
		IdempotencyKey:    c.IdempotencyKey,
		CreatedAtUnixNano: c.NowUnixNano,
		Seq:               index,
		Owner:             c.Owner,
	}
	m.tasks[t.Id] = t
	if t.IdempotencyKey != "" {
		m.idem[idemKey(t.Owner, t.IdempotencyKey)] = t.Id
	}
	m.touchTask(t.Id)
	// Place on submit: the proposer's scheduler saw no pending task and
	// chose a worker. Taken only if this task is still the only pending
	// one (so it never overtakes an older or higher-priority task that is
	// waiting) and the placement passes PlaceTasks' checks.
	if c.PlaceWorkerId != 0 && len(m.pending) == 1 {
		m.assign(t, 1, c.PlaceWorkerId, c.NowUnixNano)
	}
	return proto.Clone(t), nil
}

// placeTasks records a scheduler pass. Each placement is re-checked
// against the current state: the scheduler may have read an older one, so
// a stale or over-committing placement is skipped, not applied.
func (m *Machine) placeTasks(c *pb.PlaceTasks) (proto.Message, error) {
	placed := 0
	for _, p := range c.Placements {
		if t, ok := m.tasks[p.TaskId]; ok && m.assign(t, p.Attempt, p.WorkerId, c.NowUnixNano) {
			placed++
		}
	}
	return &pb.PutResponse{Index: uint64(placed)}, nil
}

// assign starts attempt n of t on worker wid if t is pending (and not being
// cancelled), n is its next attempt, and the worker is ready, schedulable
// and has room; it reports whether it did. Every placement, from a
// scheduler pass or made on submit, goes through here.
func (m *Machine) assign(t *pb.Task, n uint32, wid uint64, now int64) bool {
	if t.State != pb.TaskState_TASK_STATE_PENDING || n != uint32(len(t.Attempts))+1 || t.CancelRequested {
		return false
	}
	w, ok := m.workers[wid]
	if !ok || !Schedulable(w) {
		return false
	}
	req := t.Spec.GetResources()
	u := m.used[w.Id]
	if u.CPUMillis+req.GetCpuMillis() > w.GetCapacity().GetCpuMillis() || u.MemoryMiB+req.GetMemoryMib() > w.GetCapacity().GetMemoryMib() {
		return false
	}
	t.Attempts = append(t.Attempts, &pb.Attempt{Number: n, WorkerId: w.Id, State: pb.TaskState_TASK_STATE_ASSIGNED, AssignedAtUnixNano: now})
	t.State = pb.TaskState_TASK_STATE_ASSIGNED
	m.reserve(w.Id, req, 1)
	m.touchTask(t.Id)
	return true
}

// fenced returns the task and its current attempt if the report is for
// that attempt on that worker and the attempt is still active.
func (m *Machine) fenced(taskID string, attempt uint32, worker uint64) (*pb.Task, *pb.Attempt, error) {
	t, ok := m.tasks[taskID]
	if !ok {
		return nil, nil, fmt.Errorf("%w %s", ErrUnknownTask, taskID)
	}
	a := currentAttempt(t)
	if a == nil || a.Number != attempt || a.WorkerId != worker || !activeAttempt(a) {
		return nil, nil, fmt.Errorf("%w: task %s attempt %d on worker %d is not current", ErrStaleAttempt, taskID, attempt, worker)
	}
	return t, a, nil
}

func (m *Machine) taskStarted(c *pb.TaskStarted) (proto.Message, error) {
	t, a, err := m.fenced(c.TaskId, c.Attempt, c.WorkerId)
	if err != nil {
		return nil, err
	}
	if a.State == pb.TaskState_TASK_STATE_ASSIGNED {
		a.State = pb.TaskState_TASK_STATE_RUNNING
		a.StartedAtUnixNano = c.NowUnixNano
		t.State = pb.TaskState_TASK_STATE_RUNNING
		m.touchTask(t.Id)
	}
	return proto.Clone(t), nil
}

// backoff is the delay before retry n (1-based): base·2^(n-1), capped.
func backoff(spec *pb.TaskSpec, n uint32) time.Duration {
	base := time.Duration(spec.RetryBackoffBaseMs) * time.Millisecond
	if base == 0 {
		base = DefaultBackoffBase
	}
	max := time.Duration(spec.RetryBackoffMaxMs) * time.Millisecond
	if max == 0 {
		max = DefaultBackoffMax
	}
	d := base
	for i := uint32(1); i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// retryBase is when a failed attempt ended, on the clock of the leader
// that placed it, which is what the scheduling leader compares NotBefore
// with: the time of the placement (leader-stamped) plus how long the
// attempt ran, measured on the worker's clock from its start to its end
// (both worker-stamped, so the worker's clock offset cancels out). Using
// the worker's clock directly delayed every retry by the worker's skew
// (found by the simulation). An attempt whose start is unknown counts as
// having run for no time.
func retryBase(a *pb.Attempt, workerNow int64) int64 {
	if a.AssignedAtUnixNano == 0 {
		return workerNow
	}
	var ran int64
	if a.StartedAtUnixNano != 0 && workerNow > a.StartedAtUnixNano {
		ran = workerNow - a.StartedAtUnixNano
	}
	return a.AssignedAtUnixNano + ran
}

func (m *Machine) taskFinished(c *pb.TaskFinished) (proto.Message, error) {
	t, a, err := m.fenced(c.TaskId, c.Attempt, c.WorkerId)
	if err != nil {
		return nil, err
	}
	r := c.Result
	if r == nil {
		r = &pb.TaskResult{Error: "worker reported no result"}
	}
	a.Result = proto.Clone(r).(*pb.TaskResult)
	a.FinishedAtUnixNano = c.NowUnixNano
	if a.StartedAtUnixNano == 0 && r.Error == "" {
		// Short attempts finish before the worker reports their start.
		a.StartedAtUnixNano = r.StartedAtUnixNano
		if a.StartedAtUnixNano == 0 {
			a.StartedAtUnixNano = c.NowUnixNano
		}
	}
	m.reserve(a.WorkerId, t.Spec.GetResources(), -1)
	switch {
	case r.Cancelled || t.CancelRequested:
		a.State = pb.TaskState_TASK_STATE_CANCELLED
		m.finishTask(t, pb.TaskState_TASK_STATE_CANCELLED, c.NowUnixNano)
	case r.ExitCode == 0 && r.Signal == "" && !r.TimedOut && !r.OomKilled && r.Error == "":
		a.State = pb.TaskState_TASK_STATE_SUCCEEDED
		m.finishTask(t, pb.TaskState_TASK_STATE_SUCCEEDED, c.NowUnixNano)
	default:
		final := pb.TaskState_TASK_STATE_FAILED
		if r.TimedOut {
			final = pb.TaskState_TASK_STATE_TIMED_OUT
		}
		a.State = final
		if t.RetriesUsed < uint32(t.Spec.MaxRetries) {
			t.RetriesUsed++
			t.State = pb.TaskState_TASK_STATE_PENDING
			t.NotBeforeUnixNano = retryBase(a, c.NowUnixNano) + int64(backoff(t.Spec, t.RetriesUsed))
		} else {
			m.finishTask(t, final, c.NowUnixNano)
		}
	}
	m.touchTask(t.Id)
	return proto.Clone(t), nil
}

func (m *Machine) finishTask(t *pb.Task, s pb.TaskState, now int64) {
	t.State = s
	t.FinishedAtUnixNano = now
	m.touchTask(t.Id)
}

func (m *Machine) cancelTask(c *pb.CancelTask) (proto.Message, error) {
	t, ok := m.tasks[c.TaskId]
	if !ok {
		return nil, fmt.Errorf("%w %s", ErrUnknownTask, c.TaskId)
	}
	switch {
	case FinalState(t.State):
		// Cancelling a finished task changes nothing; say what it is.
	case activeAttempt(currentAttempt(t)):
		// The worker kills the process and reports it cancelled.
		t.CancelRequested = true
	default:
		t.CancelRequested = true
		m.finishTask(t, pb.TaskState_TASK_STATE_CANCELLED, c.NowUnixNano)
	}
	m.touchTask(t.Id)
	return proto.Clone(t), nil
}

// loseAttempts marks every active attempt on worker as lost (except the
// tasks in keep) and re-queues their tasks at once.
func (m *Machine) loseAttempts(worker uint64, keep map[string]bool, now int64) int {
	var ids []string
	for id := range m.active[worker] {
		if !keep[id] {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		t := m.tasks[id]
		a := currentAttempt(t)
		a.State = pb.TaskState_TASK_STATE_LOST
		a.FinishedAtUnixNano = now
		m.reserve(worker, t.Spec.GetResources(), -1)
		t.Losses++
		switch {
		case t.CancelRequested:
			m.finishTask(t, pb.TaskState_TASK_STATE_CANCELLED, now)
		case t.Losses >= MaxLosses:
			m.finishTask(t, pb.TaskState_TASK_STATE_LOST, now)
		default:
			t.State = pb.TaskState_TASK_STATE_PENDING
			t.NotBeforeUnixNano = 0
		}
		m.touchTask(id)
	}
	return len(ids)
}

func (m *Machine) reconcileWorker(c *pb.ReconcileWorker) (proto.Message, error) {
	if _, ok := m.workers[c.WorkerId]; !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownWorker, c.WorkerId)
	}
	keep := map[string]bool{}
	for _, id := range c.RunningTaskIds {
		keep[id] = true
	}
	n := m.loseAttempts(c.WorkerId, keep, c.NowUnixNano)
	return &pb.PutResponse{Index: uint64(n)}, nil
}

func (m *Machine) purgeTasks(c *pb.PurgeTasks) (proto.Message, error) {
	n := 0
	for _, id := range sortedStrings(m.tasks) {
		t := m.tasks[id]
		if !FinalState(t.State) || t.FinishedAtUnixNano == 0 || t.FinishedAtUnixNano >= c.FinishedBeforeUnixNano {
			continue
		}
		delete(m.tasks, id)
		if t.IdempotencyKey != "" {
			delete(m.idem, idemKey(t.Owner, t.IdempotencyKey))
		}
		m.touchTask(id)
		n++
	}
	return &pb.PutResponse{Index: uint64(n)}, nil
}

// OldestFinished returns the earliest finish time of a final task (0 if
// none), so the leader proposes a purge only when there is work.
func (m *Machine) OldestFinished() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var oldest int64
	for _, t := range m.tasks {
		if FinalState(t.State) && t.FinishedAtUnixNano != 0 && (oldest == 0 || t.FinishedAtUnixNano < oldest) {
			oldest = t.FinishedAtUnixNano
		}
	}
	return oldest
}

func (m *Machine) setSchedulable(c *pb.SetWorkerSchedulable) (proto.Message, error) {
	w, ok := m.workers[c.WorkerId]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownWorker, c.WorkerId)
	}
	w.Unschedulable = !c.Schedulable
	w.UnschedulableReason = ""
	if !c.Schedulable {
		w.UnschedulableReason = c.Reason
	}
	m.touch(storage.TableWorkers, idKey(w.Id))
	return proto.Clone(w), nil
}

// cordonWorker applies an operator's cordon or uncordon. Uncordon also
// clears the worker's own unschedulable mark: it is how an operator puts a
// worker whose executor kept failing back into service once fixed.
func (m *Machine) cordonWorker(c *pb.CordonWorker) (proto.Message, error) {
	w, ok := m.workers[c.GetWorkerId()]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownWorker, c.GetWorkerId())
	}
	w.Cordoned, w.CordonReason = c.Cordoned, ""
	if c.Cordoned {
		w.CordonReason = c.Reason
	} else {
		w.Unschedulable, w.UnschedulableReason = false, ""
	}
	m.touch(storage.TableWorkers, idKey(w.Id))
	return proto.Clone(w), nil
}

// Schedulable says whether the scheduler may place new work on w: ready,
// not cordoned by an operator, not marked unschedulable by itself.
func Schedulable(w *pb.Worker) bool {
	return w.GetState() == pb.WorkerState_WORKER_STATE_READY && !w.GetUnschedulable() && !w.GetCordoned()
}

// rebuildDerived recomputes indexes that are not stored: idempotency keys
// and per-worker reservations.
func (m *Machine) rebuildDerived() {
	m.idem = map[string]string{}
	m.used = map[uint64]Usage{}
	m.pending = map[string]struct{}{}
	m.active = map[uint64]map[string]struct{}{}
	m.activeOn = map[string]uint64{}
	for w := range m.activeVer {
		m.activeVer[w]++ // a restored state may differ: make every runner look
	}
	for id, t := range m.tasks {
		m.indexPending(t)
		if t.IdempotencyKey != "" {
			m.idem[idemKey(t.Owner, t.IdempotencyKey)] = id
		}
		if a := currentAttempt(t); activeAttempt(a) {
			m.reserve(a.WorkerId, t.Spec.GetResources(), 1)
		}
	}
}

// Usage is the CPU and memory reserved on a worker by active attempts.
type Usage struct {
	CPUMillis int64
	MemoryMiB int64
}

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

// Task returns a copy of one task.
func (m *Machine) Task(id string) (*pb.Task, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	t, ok := m.tasks[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(t).(*pb.Task), true
}

// Tasks returns copies of the tasks in state s (all if UNSPECIFIED), in
// submission order.
func (m *Machine) Tasks(s pb.TaskState) []*pb.Task {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*pb.Task
	for _, t := range m.tasks {
		if s == pb.TaskState_TASK_STATE_UNSPECIFIED || t.State == s {
			out = append(out, proto.Clone(t).(*pb.Task))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}

// Assigned returns the tasks whose current attempt is active on worker,
// plus those with a cancel request there, sorted by ID.
func (m *Machine) Assigned(worker uint64) []*pb.Task {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*pb.Task
	for id := range m.active[worker] {
		out = append(out, proto.Clone(m.tasks[id]).(*pb.Task))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// PendingTask is a pending task as the scheduler sees it. Constraints is
// shared with the stored spec, which is never modified after submission.
type PendingTask struct {
	ID          string
	Priority    int32
	Seq         uint64
	CPUMillis   int64
	MemoryMiB   int64
	Constraints map[string]string
	Node        uint64
	Policy      pb.PlacementPolicy
	NotBefore   int64 // unix nanos, on the clock of the leader that placed the failed attempt
	// Backoff is the retry delay that NotBefore ends (0 when not in
	// backoff), so a leader whose clock differs from the placing leader's
	// can time it on its own clock (scheduler.Backoffs).
	Backoff time.Duration
	Attempt uint32 // number the next attempt gets
}

// PendingOf is how the scheduler sees a task with this spec, before its
// first attempt.
func PendingOf(id string, seq uint64, s *pb.TaskSpec) PendingTask {
	return PendingTask{
		ID: id, Priority: s.Priority, Seq: seq,
		CPUMillis: s.GetResources().GetCpuMillis(), MemoryMiB: s.GetResources().GetMemoryMib(),
		Constraints: s.Constraints, Node: s.Node, Policy: s.Policy, Attempt: 1,
	}
}

// SchedulingView is what the scheduler needs: pending tasks and the
// ready, schedulable workers with their reservations. Copies.
type SchedulingView struct {
	Pending []PendingTask
	Workers []*pb.Worker
	Used    map[uint64]Usage
	// HostPorts are, per worker, the host ports forwarded by the VMs placed
	// there, each to the VM's name (shared maps: do not modify).
	HostPorts map[uint64]map[string]string
}

// ForScheduling returns the current SchedulingView.
func (m *Machine) ForScheduling() SchedulingView {
	m.mu.RLock()
	defer m.mu.RUnlock()
	v := SchedulingView{Used: map[uint64]Usage{}}
	for id := range m.pending {
		t := m.tasks[id]
		p := PendingOf(t.Id, t.Seq, t.Spec)
		p.NotBefore, p.Attempt = t.NotBeforeUnixNano, uint32(len(t.Attempts))+1
		if t.NotBeforeUnixNano != 0 {
			p.Backoff = backoff(t.Spec, t.RetriesUsed)
		}
		v.Pending = append(v.Pending, p)
	}
	sort.Slice(v.Pending, func(i, j int) bool { return v.Pending[i].Seq < v.Pending[j].Seq })
	for _, id := range sortedIDs(m.workers) {
		w := m.workers[id]
		if Schedulable(w) {
			v.Workers = append(v.Workers, proto.Clone(w).(*pb.Worker))
			v.Used[id] = m.used[id]
		}
	}
	v.HostPorts = m.vmHostPorts()
	return v
}

// PendingCount is the number of tasks waiting for placement.
func (m *Machine) PendingCount() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.pending)
}
