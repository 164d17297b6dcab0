package server

import (
	"context"
	"errors"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/executor"
	"github.com/blixard/blixard/internal/state"
	"github.com/blixard/blixard/internal/worker"
)

// taskCluster is the worker runner's view of this node.
type taskCluster struct{ s *Server }

func (c taskCluster) Assigned() []*pb.Task     { return c.s.sm.Assigned(c.s.cfg.ID) }
func (c taskCluster) AssignedVersion() uint64  { return c.s.sm.AssignedVersion(c.s.cfg.ID) }
func (c taskCluster) Changed() <-chan struct{} { return c.s.applied.Wait() }
func (c taskCluster) now() int64               { return c.s.clock.Now().UnixNano() }

func (c taskCluster) ReportStarted(ctx context.Context, id string, n uint32) error {
	_, err := c.s.propose(ctx, &pb.Command{Op: &pb.Command_TaskStarted{TaskStarted: &pb.TaskStarted{TaskId: id, Attempt: n, WorkerId: c.s.cfg.ID, NowUnixNano: c.now()}}})
	return err
}

func (c taskCluster) ReportFinished(ctx context.Context, id string, n uint32, r *pb.TaskResult) error {
	_, err := c.s.propose(ctx, &pb.Command{Op: &pb.Command_TaskFinished{TaskFinished: &pb.TaskFinished{TaskId: id, Attempt: n, WorkerId: c.s.cfg.ID, Result: r, NowUnixNano: c.now()}}})
	return err
}

func (c taskCluster) Reconcile(ctx context.Context, running []string) error {
	_, err := c.s.propose(ctx, &pb.Command{Op: &pb.Command_ReconcileWorker{ReconcileWorker: &pb.ReconcileWorker{WorkerId: c.s.cfg.ID, RunningTaskIds: running, NowUnixNano: c.now()}}})
	return err
}

func (c taskCluster) SetSchedulable(ctx context.Context, ok bool, reason string) error {
	_, err := c.s.propose(ctx, &pb.Command{Op: &pb.Command_SetWorkerSchedulable{SetWorkerSchedulable: &pb.SetWorkerSchedulable{WorkerId: c.s.cfg.ID, Schedulable: ok, Reason: reason, NowUnixNano: c.now()}}})
	return err
}

func isStale(err error) bool { return errors.Is(err, state.ErrStaleAttempt) }

// execLauncher adapts the executor to the runner.
type execLauncher struct {
	e *executor.Executor
	// taskUser runs the tasks that name no user (Config.TaskUser); they
	// start in / rather than in the node's working directory, which that
	// user may not be able to read.
	taskUser string
}

func (l execLauncher) Launch(ctx context.Context, r worker.RunSpec) (worker.Process, error) {
	s := r.Spec
	user, dir := s.User, s.Workdir
	if user == "" && l.taskUser != "" {
		user = l.taskUser
		if dir == "" {
			dir = "/"
		}
	}
	h, err := l.e.Start(ctx, executor.Spec{
		AttemptID: AttemptID(r.TaskID, r.Attempt),
		Command:   s.Command,
		Args:      s.Args,
		Env:       s.Env,
		Dir:       dir,
		CPUMillis: s.GetResources().GetCpuMillis(),
		MemoryMiB: s.GetResources().GetMemoryMib(),
		Timeout:   time.Duration(s.TimeoutMs) * time.Millisecond,
		KillGrace: time.Duration(s.KillGraceMs) * time.Millisecond,
		User:      user,
	})
	if err != nil {
		if errors.Is(err, executor.ErrSpec) {
			return nil, errors.Join(worker.ErrTaskSpec, err)
		}
		return nil, err
	}
	return execProcess{h}, nil
}

type execProcess struct{ h *executor.Handle }

func (p execProcess) Done() <-chan struct{} { return p.h.Done() }
func (p execProcess) Cancel()               { p.h.Cancel() }
func (p execProcess) Result() *pb.TaskResult {
	r := p.h.Wait()
	return &pb.TaskResult{
		ExitCode:        int32(r.ExitCode),
		Signal:          r.Signal,
		TimedOut:        r.TimedOut,
		OomKilled:       r.OOMKilled,
		Cancelled:       r.Cancelled,
		StdoutTail:      r.StdoutTail,
		StderrTail:      r.StderrTail,
		PeakMemoryBytes: r.PeakMemoryBytes,
		CpuTimeMs:       r.CPUTime.Milliseconds(),
		Error:           r.Err,
		StartedAtUnixNano: func() int64 {
			if r.StartedAt.IsZero() {
				return 0
			}
			return r.StartedAt.UnixNano()
		}(),
	}
}
