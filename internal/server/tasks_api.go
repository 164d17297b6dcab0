package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/acl"
	"github.com/blixard/blixard/internal/state"
)

// AttemptID names one attempt of a task on disk and in the executor.
func AttemptID(taskID string, attempt uint32) string { return fmt.Sprintf("%s.%d", taskID, attempt) }

func (a *api) SubmitTask(ctx context.Context, req *pb.SubmitTaskRequest) (*pb.TaskResponse, error) {
	if err := state.ValidateTaskSpec(req.GetSpec()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := checkTaskBounds(req.Spec); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	p := acl.FromContext(ctx)
	if u := req.Spec.GetUser(); u != "" && !p.Has(acl.CapRunAs) {
		return nil, status.Errorf(codes.PermissionDenied, "user: %s may not choose the user a task runs as (%q); leave --user out to run as the workers' task user, or use an operator token", p, u)
	}
	key := req.GetIdempotencyKey()
	if key == "" {
		// Without a key from the client a retry cannot be recognised;
		// a server-made one at least makes this call's own internal
		// handling unambiguous.
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, status.Errorf(codes.Internal, "make idempotency key: %v", err)
		}
		key = hex.EncodeToString(b[:])
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{
		Spec: req.Spec, IdempotencyKey: key, NowUnixNano: a.s.clock.Now().UnixNano(), Owner: p.Owner(),
		PlaceWorkerId: a.s.placeOnSubmit(req.Spec),
	}}})
	if err != nil {
		return nil, toStatus(err)
	}
	t, _ := res.(*pb.Task)
	return &pb.TaskResponse{Task: t}, nil
}

// Upper bounds of a task spec, checked when it is submitted (not when its
// entry is applied, so entries written before these bounds replay as they
// did): past them a value is a typo or an attack, not a real need.
const (
	maxTaskCPUMillis   = 1 << 30 // about a million cores
	maxTaskMemoryMiB   = 1 << 24 // 16 TiB
	maxTaskDurationMs  = 366 * 24 * 3600 * 1000
	maxTaskBackoffMs   = 24 * 3600 * 1000
	maxTaskKillGraceMs = 24 * 3600 * 1000
)

func checkTaskBounds(s *pb.TaskSpec) error {
	r := s.GetResources()
	switch {
	case r.GetCpuMillis() > maxTaskCPUMillis:
		return fmt.Errorf("cpu: %dm is more than any machine has (at most %dm)", r.GetCpuMillis(), maxTaskCPUMillis)
	case r.GetMemoryMib() > maxTaskMemoryMiB:
		return fmt.Errorf("memory: %d MiB is more than any machine has (at most %d MiB)", r.GetMemoryMib(), maxTaskMemoryMiB)
	case s.TimeoutMs > maxTaskDurationMs:
		return fmt.Errorf("timeout: at most 366 days (got %d ms); pass 0 for none", s.TimeoutMs)
	case s.KillGraceMs > maxTaskKillGraceMs:
		return fmt.Errorf("kill_grace: at most 24h (got %d ms)", s.KillGraceMs)
	case s.RetryBackoffBaseMs > maxTaskBackoffMs || s.RetryBackoffMaxMs > maxTaskBackoffMs:
		return fmt.Errorf("backoff: at most 24h (got base %d ms, max %d ms)", s.RetryBackoffBaseMs, s.RetryBackoffMaxMs)
	}
	return nil
}

// readTask returns a task as of a linearizable read, if the caller may
// read it.
func (a *api) readTask(ctx context.Context, id string) (*pb.Task, error) {
	t, err := linearGet(ctx, a, "task", "id", id, a.s.sm.Task)
	if err != nil {
		return nil, err
	}
	if err := ownerCheck(ctx, "task", t.Id, t.Owner, false); err != nil {
		return nil, err
	}
	return t, nil
}

// linearGet reads one record (a task, a VM) by key after a linearizable
// read barrier, with the API's errors for an empty key (naming field) and
// an unknown one.
func linearGet[T any](ctx context.Context, a *api, kind, field, key string, get func(string) (T, bool)) (T, error) {
	var zero T
	if key == "" {
		return zero, status.Errorf(codes.InvalidArgument, "%s: must not be empty", field)
	}
	if err := a.s.node.ReadIndex(ctx); err != nil {
		return zero, toStatus(err)
	}
	v, ok := get(key)
	if !ok {
		return zero, status.Errorf(codes.NotFound, "%s %q not found", kind, key)
	}
	return v, nil
}

func (a *api) GetTask(ctx context.Context, req *pb.GetTaskRequest) (*pb.TaskResponse, error) {
	t, err := a.readTask(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	if t.State == pb.TaskState_TASK_STATE_PENDING {
		// Only the leader knows why a task waits: ask it.
		if resp, ok := fromLeader(a, func(c rpcpb.ClusterClient) (*pb.TaskResponse, error) {
			return c.GetTask(ctx, req)
		}); ok {
			return resp, nil
		}
	}
	return &pb.TaskResponse{Task: a.s.withReason(t)}, nil
}

func (a *api) ListTasks(ctx context.Context, req *pb.ListTasksRequest) (*pb.ListTasksResponse, error) {
	if err := a.s.node.ReadIndex(ctx); err != nil {
		return nil, toStatus(err)
	}
	p := acl.FromContext(ctx)
	ts := a.s.sm.Tasks(req.GetState())
	out := ts[:0]
	for _, t := range ts {
		if p.CanRead(t.Owner) {
			out = append(out, a.s.withReason(t))
		}
	}
	return &pb.ListTasksResponse{Tasks: out}, nil
}

func (a *api) CancelTask(ctx context.Context, req *pb.CancelTaskRequest) (*pb.TaskResponse, error) {
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id: must not be empty")
	}
	if p := acl.FromContext(ctx); !p.Has(acl.CapOperate) {
		// Owners never change, so the check made now still holds when
		// the cancellation applies.
		t, err := a.readTask(ctx, req.Id)
		if err != nil {
			return nil, err
		}
		if err := ownerCheck(ctx, "task", t.Id, t.Owner, true); err != nil {
			return nil, err
		}
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: req.Id, NowUnixNano: a.s.clock.Now().UnixNano()}}})
	if err != nil {
		return nil, toStatus(err)
	}
	t, _ := res.(*pb.Task)
	return &pb.TaskResponse{Task: t}, nil
}

func (a *api) WaitTask(ctx context.Context, req *pb.WaitTaskRequest) (*pb.TaskResponse, error) {
	t, err := a.readTask(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	for !state.FinalState(t.State) {
		ch := a.s.applied.Wait()
		if t, _ = a.s.sm.Task(req.Id); state.FinalState(t.State) {
			break
		}
		select {
		case <-ch:
			t, _ = a.s.sm.Task(req.Id)
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "task %s is still %s", req.Id, t.State)
		case <-a.s.ctx.Done():
			return nil, status.Error(codes.Unavailable, "node is shutting down; retry on another node")
		}
	}
	return &pb.TaskResponse{Task: t}, nil
}

func (a *api) TaskLogs(req *pb.TaskLogsRequest, stream rpcpb.Cluster_TaskLogsServer) error {
	ctx := stream.Context()
	t, err := a.readTask(ctx, req.GetId())
	if err != nil {
		return err
	}
	n := req.GetAttempt()
	if n == 0 {
		n = uint32(len(t.Attempts))
	}
	if n == 0 || int(n) > len(t.Attempts) {
		if n == 0 {
			return status.Errorf(codes.FailedPrecondition, "task %s has not been placed yet; no logs", t.Id)
		}
		return status.Errorf(codes.NotFound, "task %s has no attempt %d (it has %d)", t.Id, n, len(t.Attempts))
	}
	worker := t.Attempts[n-1].WorkerId
	if worker != a.s.cfg.ID {
		m, ok := a.s.sm.Member(worker)
		if !ok {
			return status.Errorf(codes.FailedPrecondition, "worker %d that ran %s.%d is no longer a member; its logs are gone", worker, t.Id, n)
		}
		cc, err := a.s.conns.get(m.Addr)
		if err != nil {
			return toStatus(err)
		}
		fwd := &pb.TaskLogsRequest{Id: req.Id, Attempt: n, Stderr: req.Stderr, Follow: req.Follow, Offset: req.Offset}
		in, err := rpcpb.NewClusterClient(cc).TaskLogs(ctx, fwd)
		if err != nil {
			return err
		}
		for {
			c, err := in.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := stream.Send(c); err != nil {
				return err
			}
		}
	}
	return a.s.serveLocalLogs(stream, t.Id, n, req.Stderr, req.Follow, req.Offset)
}

// serveLocalLogs streams an attempt's log file from offset; with follow it
// keeps going until the attempt is final and the file fully sent.
func (s *Server) serveLocalLogs(stream rpcpb.Cluster_TaskLogsServer, taskID string, n uint32, stderr, follow bool, offset int64) error {
	if s.exec == nil {
		return status.Error(codes.FailedPrecondition, "this node is not a worker; it has no task logs")
	}
	path := s.exec.LogPath(AttemptID(taskID, n), stderr)
	tick := s.clock.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 64<<10)
	for {
		done := true
		if follow {
			t, ok := s.sm.Task(taskID)
			done = !ok || int(n) > len(t.Attempts) || !activeAttempt(t.Attempts[n-1])
		}
		f, err := os.Open(path)
		if err != nil && !os.IsNotExist(err) {
			return status.Errorf(codes.Internal, "open log: %v", err)
		}
		if f != nil {
			for {
				k, rerr := f.ReadAt(buf, offset)
				if k > 0 {
					if err := stream.Send(&pb.LogChunk{Data: append([]byte(nil), buf[:k]...)}); err != nil {
						f.Close()
						return err
					}
					offset += int64(k)
				}
				if rerr != nil {
					break
				}
			}
			f.Close()
		}
		if done {
			// done was read before the last read, so the file was
			// complete when it was drained.
			return nil
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-s.ctx.Done():
			return status.Error(codes.Unavailable, "node is shutting down")
		case <-s.applied.Wait():
		case <-tick.C():
		}
	}
}

func activeAttempt(a *pb.Attempt) bool {
	return a.State == pb.TaskState_TASK_STATE_ASSIGNED || a.State == pb.TaskState_TASK_STATE_RUNNING
}
