package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/clock"
)

// ErrTaskSpec marks a launch failure caused by the task itself (command
// not found, bad working directory, unknown user): the task fails, the
// worker stays healthy.
var ErrTaskSpec = errors.New("task cannot be started")

// RunSpec is one attempt to launch.
type RunSpec struct {
	TaskID  string
	Attempt uint32
	Spec    *pb.TaskSpec
}

// Process is a launched attempt.
type Process interface {
	Done() <-chan struct{}
	Result() *pb.TaskResult // valid once Done is closed
	Cancel()
}

// Launcher starts attempts (the executor in production, a fake in tests
// and the simulation).
type Launcher interface {
	Launch(ctx context.Context, r RunSpec) (Process, error)
}

// TaskCluster is the runner's view of the replicated state and the
// proposals it makes.
type TaskCluster interface {
	// Assigned returns the tasks whose current attempt is on this worker.
	Assigned() []*pb.Task
	// AssignedVersion changes whenever Assigned's answer may have.
	AssignedVersion() uint64
	// Changed returns a channel closed after the next applied change.
	Changed() <-chan struct{}
	ReportStarted(ctx context.Context, taskID string, attempt uint32) error
	ReportFinished(ctx context.Context, taskID string, attempt uint32, r *pb.TaskResult) error
	// Reconcile reports which of this worker's attempts are running; the
	// rest are marked lost.
	Reconcile(ctx context.Context, running []string) error
	SetSchedulable(ctx context.Context, ok bool, reason string) error
}

// IsStale reports whether a proposal error means the attempt is no longer
// current (so retrying the report is pointless). Set by the wiring.
type IsStale func(error) bool

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	Clock  clock.Clock
	Logger *slog.Logger
	// Stale classifies report errors; nil treats none as stale.
	Stale IsStale
	// MaxLaunchFailures is how many consecutive infrastructure launch
	// failures make the worker mark itself unschedulable; default 3.
	MaxLaunchFailures int
	// StartedDelay is how long an attempt must run before its start is
	// proposed; shorter attempts only propose their result (which carries
	// the start time), saving a raft entry each. Default 20ms; negative
	// reports every start at once.
	StartedDelay time.Duration
}

type attemptKey struct {
	task    string
	attempt uint32
}

// Runner converges what this worker runs to what the state assigns it:
// it launches assigned attempts, cancels attempts it no longer owns or
// whose task was cancelled, and reports starts and results through raft.
type Runner struct {
	cfg     RunnerConfig
	cluster TaskCluster
	launch  Launcher

	mu       sync.Mutex
	running  map[attemptKey]Process
	finished map[attemptKey]bool // result reported or being reported
	failures int
	wg       sync.WaitGroup
}

// NewRunner returns a runner; Run drives it.
func NewRunner(cfg RunnerConfig, c TaskCluster, l Launcher) *Runner {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxLaunchFailures == 0 {
		cfg.MaxLaunchFailures = 3
	}
	if cfg.StartedDelay == 0 {
		cfg.StartedDelay = 20 * time.Millisecond
	}
	if cfg.Stale == nil {
		cfg.Stale = func(error) bool { return false }
	}
	return &Runner{cfg: cfg, cluster: c, launch: l, running: map[attemptKey]Process{}, finished: map[attemptKey]bool{}}
}

// RunningCount is the number of attempts running now.
func (r *Runner) RunningCount() int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int32(len(r.running))
}

// Run reconciles once, then follows the state until ctx ends; on exit it
// cancels every running attempt and waits for their goroutines.
func (r *Runner) Run(ctx context.Context) {
	defer r.wg.Wait()
	defer r.cancelAll()
	// After a restart nothing of ours runs (the executor killed orphans):
	// tell the cluster so it re-places what we had.
	r.retry(ctx, "reconcile after start", func(c context.Context) error { return r.cluster.Reconcile(c, nil) })
	seen, first := uint64(0), true
	for {
		ch := r.cluster.Changed()
		// Most applied entries concern other workers: skip the round
		// unless this worker's assignments changed.
		if v := r.cluster.AssignedVersion(); first || v != seen {
			seen, first = v, false
			r.converge(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

func (r *Runner) cancelAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.running {
		p.Cancel()
	}
}

func (r *Runner) converge(ctx context.Context) {
	assigned := r.cluster.Assigned()
	want := map[attemptKey]bool{}
	sort.Slice(assigned, func(i, j int) bool { return assigned[i].Id < assigned[j].Id })
	for _, t := range assigned {
		if len(t.Attempts) == 0 {
			continue
		}
		a := t.Attempts[len(t.Attempts)-1]
		k := attemptKey{t.Id, a.Number}
		want[k] = true
		r.mu.Lock()
		p, running := r.running[k]
		done := r.finished[k]
		r.mu.Unlock()
		switch {
		case running && t.CancelRequested:
			p.Cancel()
		case running || done:
		case t.CancelRequested:
			// Cancelled before it started here: report it so.
			r.finish(ctx, k, &pb.TaskResult{Cancelled: true})
		case a.State == pb.TaskState_TASK_STATE_ASSIGNED || a.State == pb.TaskState_TASK_STATE_RUNNING:
			r.start(ctx, k, t.Spec)
		}
	}
	// Attempts we run but no longer own (lost, re-placed) are killed; their
	// results would be refused anyway.
	r.mu.Lock()
	for k, p := range r.running {
		if !want[k] {
			r.cfg.Logger.Info("killing attempt this worker no longer owns", "task", k.task, "attempt", k.attempt)
			r.finished[k] = true
			p.Cancel()
		}
	}
	for k := range r.finished {
		if _, run := r.running[k]; !run && !want[k] {
			delete(r.finished, k)
		}
	}
	r.mu.Unlock()
}

func (r *Runner) start(ctx context.Context, k attemptKey, spec *pb.TaskSpec) {
	p, err := r.launch.Launch(ctx, RunSpec{TaskID: k.task, Attempt: k.attempt, Spec: spec})
	if err != nil {
		r.cfg.Logger.Warn("task attempt could not start", "task", k.task, "attempt", k.attempt, "err", err)
		if !errors.Is(err, ErrTaskSpec) {
			r.launchFailed(ctx, err)
		}
		r.finish(ctx, k, &pb.TaskResult{ExitCode: -1, Error: err.Error()})
		return
	}
	r.mu.Lock()
	r.failures = 0
	r.running[k] = p
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		var delay <-chan time.Time
		if r.cfg.StartedDelay > 0 {
			t := time.NewTimer(r.cfg.StartedDelay)
			defer t.Stop()
			delay = t.C
		}
		if delay != nil {
			select {
			case <-delay:
			case <-p.Done():
			case <-ctx.Done():
			}
		}
		select {
		case <-p.Done():
		default:
			if err := r.cluster.ReportStarted(ctx, k.task, k.attempt); err != nil && !r.cfg.Stale(err) {
				r.cfg.Logger.Debug("reporting task start failed", "task", k.task, "err", err)
			}
		}
		select {
		case <-p.Done():
		case <-ctx.Done():
			p.Cancel()
			<-p.Done()
			return // shutting down: the attempt is lost, reconciled on restart
		}
		// Leaving running and entering finished in one step keeps
		// converge from launching the attempt again in between.
		r.mu.Lock()
		delete(r.running, k)
		owned := !r.finished[k]
		r.finished[k] = true
		r.mu.Unlock()
		if owned {
			r.report(ctx, k, p.Result())
		}
	}()
}

func (r *Runner) launchFailed(ctx context.Context, err error) {
	r.mu.Lock()
	r.failures++
	n := r.failures
	r.mu.Unlock()
	if n == r.cfg.MaxLaunchFailures {
		reason := fmt.Sprintf("%d task launches in a row failed; last: %v", n, err)
		r.cfg.Logger.Error("marking this worker unschedulable", "reason", reason)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.retry(ctx, "mark unschedulable", func(c context.Context) error { return r.cluster.SetSchedulable(c, false, reason) })
		}()
	}
}

// finish marks an attempt finished and reports its result.
func (r *Runner) finish(ctx context.Context, k attemptKey, res *pb.TaskResult) {
	r.mu.Lock()
	r.finished[k] = true
	r.mu.Unlock()
	r.report(ctx, k, res)
}

// report proposes a result until it is recorded or refused as stale.
func (r *Runner) report(ctx context.Context, k attemptKey, res *pb.TaskResult) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.retry(ctx, "report task result", func(c context.Context) error {
			err := r.cluster.ReportFinished(c, k.task, k.attempt, res)
			if err != nil && r.cfg.Stale(err) {
				return nil
			}
			return err
		})
	}()
}

// retry calls f until it succeeds or ctx ends, backing off 50 ms → 2 s.
func (r *Runner) retry(ctx context.Context, what string, f func(context.Context) error) {
	backoff := 50 * time.Millisecond
	for {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(c)
		cancel()
		if err == nil || ctx.Err() != nil {
			return
		}
		r.cfg.Logger.Debug(what+" failed; retrying", "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
