package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
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

func (cfg *RunnerConfig) setDefaults() {
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
}

type attemptKey struct {
	task    string
	attempt uint32
}

// reportTimeout bounds one try of a proposal; a failed try is retried.
const reportTimeout = 10 * time.Second

// Runner converges what this worker runs to what the state assigns it:
// it launches assigned attempts, cancels attempts it no longer owns or
// whose task was cancelled, and reports starts and results through raft.
// The decisions are RunnerCore's; Runner is its goroutine shell: it feeds
// the core the state's changes, process exits, proposal outcomes and
// time, and carries out the core's actions against the Launcher and the
// cluster.
type Runner struct {
	cfg     RunnerConfig
	cluster TaskCluster
	launch  Launcher
	running atomic.Int32
}

// NewRunner returns a runner; Run drives it.
func NewRunner(cfg RunnerConfig, c TaskCluster, l Launcher) *Runner {
	cfg.setDefaults()
	return &Runner{cfg: cfg, cluster: c, launch: l}
}

// RunningCount is the number of attempts running now.
func (r *Runner) RunningCount() int32 { return r.running.Load() }

type exitEvent struct {
	k   attemptKey
	res *pb.TaskResult
}

type reportEvent struct {
	act RunnerAction
	err error
}

// runLoop is one Run: the core and the processes it launched, owned by
// Run's goroutine; process watchers and proposals report back on
// channels.
type runLoop struct {
	r       *Runner
	ctx     context.Context
	core    *RunnerCore
	procs   map[attemptKey]Process
	exits   chan exitEvent
	reports chan reportEvent
	wg      sync.WaitGroup
}

// Run reconciles once, then follows the state until ctx ends; on exit it
// cancels every running attempt and waits for its goroutines.
func (r *Runner) Run(ctx context.Context) {
	l := &runLoop{r: r, ctx: ctx, core: NewRunnerCore(r.cfg), procs: map[attemptKey]Process{},
		exits: make(chan exitEvent), reports: make(chan reportEvent)}
	defer l.wg.Wait()
	defer l.cancelAll()
	now := r.cfg.Clock.Now
	l.do(l.core.Start(now()))
	for {
		ch := r.cluster.Changed()
		if v := r.cluster.AssignedVersion(); l.core.WantsAssignments(v) {
			l.do(l.core.Converge(now(), v, r.cluster.Assigned()))
		}
		l.do(l.core.Advance(now()))
		r.running.Store(int32(l.core.Running()))
		var wake <-chan time.Time
		var t *time.Timer
		if at, ok := l.core.NextWake(); ok {
			t = time.NewTimer(max(at.Sub(now()), 0))
			wake = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-wake:
		case e := <-l.exits:
			delete(l.procs, e.k)
			l.do(l.core.Exited(now(), e.k.task, e.k.attempt, e.res))
		case e := <-l.reports:
			l.do(l.core.Reported(now(), e.act, e.err))
		}
		if t != nil {
			t.Stop()
		}
	}
}

func (l *runLoop) cancelAll() {
	for _, p := range l.procs {
		p.Cancel()
	}
}

// do carries out the core's actions, in order.
func (l *runLoop) do(acts []RunnerAction) {
	for _, a := range acts {
		k := attemptKey{a.TaskID, a.Attempt}
		switch a.Kind {
		case ActLaunch:
			p, err := l.r.launch.Launch(l.ctx, RunSpec{TaskID: a.TaskID, Attempt: a.Attempt, Spec: a.Spec})
			if err == nil {
				l.procs[k] = p
				l.watch(k, p)
			}
			l.do(l.core.Launched(l.r.cfg.Clock.Now(), a.TaskID, a.Attempt, err))
		case ActCancel:
			if p := l.procs[k]; p != nil {
				p.Cancel()
			}
		default:
			l.propose(a)
		}
	}
}

// watch waits for a process to exit and hands its result to the loop.
func (l *runLoop) watch(k attemptKey, p Process) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		select {
		case <-p.Done():
		case <-l.ctx.Done():
			p.Cancel()
			<-p.Done()
			return // shutting down: the attempt is lost, reconciled on restart
		}
		select {
		case l.exits <- exitEvent{k, p.Result()}:
		case <-l.ctx.Done():
		}
	}()
}

// propose makes one try of a proposal action and hands its outcome to
// the loop.
func (l *runLoop) propose(a RunnerAction) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		c, cancel := context.WithTimeout(l.ctx, reportTimeout)
		defer cancel()
		cl := l.r.cluster
		var err error
		switch a.Kind {
		case ActReportStarted:
			err = cl.ReportStarted(c, a.TaskID, a.Attempt)
		case ActReportFinished:
			err = cl.ReportFinished(c, a.TaskID, a.Attempt, a.Result)
		case ActReconcile:
			err = cl.Reconcile(c, nil)
		case ActSetUnschedulable:
			err = cl.SetSchedulable(c, false, a.Reason)
		default:
			err = errors.New("worker: unknown runner action " + a.Kind.String())
		}
		select {
		case l.reports <- reportEvent{a, err}:
		case <-l.ctx.Done():
		}
	}()
}
