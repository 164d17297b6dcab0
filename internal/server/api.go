package server

import (
	"context"
	"errors"
	"sort"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/raftnode"
	"github.com/blixard/blixard/internal/state"
)

// api implements the Cluster gRPC service. Requests that only the leader
// can answer are forwarded to it, so a client may talk to any node.
type api struct {
	rpcpb.UnimplementedClusterServer
	s *Server
}

// toStatus maps internal errors to gRPC codes a client can act on:
// Unavailable means "retry" (the CLI says so), the rest are final.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var me *state.MembershipError
	switch {
	case errors.As(err, &me):
		switch me.Code {
		case state.CodeExists:
			return status.Error(codes.AlreadyExists, me.Msg)
		case state.CodeRemoved:
			return status.Error(codes.FailedPrecondition, me.Msg)
		case state.CodeNotFound:
			return status.Error(codes.NotFound, me.Msg)
		default:
			return status.Error(codes.InvalidArgument, me.Msg)
		}
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, raftnode.ErrRemoved):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, raftnode.ErrNoLeader), errors.Is(err, raftnode.ErrLeaderChanged),
		errors.Is(err, raftnode.ErrConfChangePending), errors.Is(err, raftnode.ErrLeaderCatchingUp),
		errors.Is(err, raftnode.ErrNotLeader), errors.Is(err, raftnode.ErrStopped):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, state.ErrInvalidCommand):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, state.ErrVMExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, state.ErrStaleVM), errors.Is(err, state.ErrVMDeleting):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, state.ErrUnknownVM):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, state.ErrUnknownWorker), errors.Is(err, state.ErrUnknownTask):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, state.ErrStaleAttempt):
		return status.Error(codes.FailedPrecondition, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

// forward reports whether the request should go to the leader, and the
// client for it.
func (a *api) forward() (rpcpb.ClusterClient, bool, error) {
	if a.s.node.IsLeader() {
		return nil, false, nil
	}
	c, err := a.s.leaderClient()
	if err != nil {
		return nil, true, toStatus(err)
	}
	return c, true, nil
}

// fromLeader asks the leader with call when this node is not the leader,
// for answers only the leader has (its view of members, heartbeats, why
// work waits). ok is false when this node leads or the leader cannot be
// reached: the caller then answers from its own view rather than failing.
func fromLeader[R any](a *api, call func(rpcpb.ClusterClient) (R, error)) (resp R, ok bool) {
	c, fwd, err := a.forward()
	if !fwd || err != nil {
		return resp, false
	}
	resp, err = call(c)
	return resp, err == nil
}

func (a *api) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	if !req.GetLocal() {
		if resp, ok := fromLeader(a, func(c rpcpb.ClusterClient) (*pb.StatusResponse, error) {
			return c.Status(ctx, &pb.StatusRequest{})
		}); ok {
			return resp, nil
		}
	}
	st, applied, err := a.s.node.Status(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.StatusResponse{
		NodeId:       a.s.cfg.ID,
		Leader:       st.Lead,
		Term:         st.HardState.GetTerm(),
		CommitIndex:  st.HardState.GetCommit(),
		AppliedIndex: applied,
		Removed:      a.s.sm.Removed(),
	}
	for _, m := range a.s.sm.Members() {
		ms := &pb.MemberStatus{Id: m.Id, Addr: m.Addr, Role: m.Role, State: "unknown"}
		switch {
		case m.Id == a.s.cfg.ID:
			ms.State = stateName(st.RaftState)
			ms.AppliedIndex = applied
		case st.RaftState == raft.StateLeader:
			if pr, ok := st.Progress[m.Id]; ok {
				ms.AppliedIndex = pr.Match
				ms.State = progressName(pr)
			}
		}
		resp.Members = append(resp.Members, ms)
	}
	return resp, nil
}

func stateName(s raft.StateType) string {
	switch s {
	case raft.StateLeader:
		return "leader"
	case raft.StateCandidate, raft.StatePreCandidate:
		return "candidate"
	default:
		return "follower"
	}
}

func progressName(pr tracker.Progress) string {
	if !pr.RecentActive {
		return "unreachable"
	}
	switch pr.State {
	case tracker.StateReplicate:
		return "replicating"
	case tracker.StateSnapshot:
		return "snapshot"
	default:
		return "probing"
	}
}

func (a *api) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	if req.GetId() == 0 {
		return nil, status.Error(codes.InvalidArgument, "id: must be a positive integer")
	}
	if req.GetAddr() == "" {
		return nil, status.Error(codes.InvalidArgument, "addr: the joining node must give its address")
	}
	if err := sameNode(ctx, "id", req.Id); err != nil {
		return nil, err
	}
	if !a.s.node.IsLeader() {
		// Not forwarded: the leader must see the joiner's own certificate.
		lead := a.s.node.Leader()
		if m, ok := a.s.sm.Member(lead); ok && lead != 0 && m.Addr != "" {
			return &pb.JoinResponse{LeaderAddr: m.Addr}, nil
		}
		return nil, toStatus(raftnode.ErrNoLeader)
	}
	if err := a.s.node.ProposeConfChange(ctx, raftpb.ConfChangeAddLearnerNode, req.Id, req.Addr); err != nil {
		return nil, toStatus(err)
	}
	a.s.log.Info("member joined as learner", "id", req.Id, "addr", req.Addr)
	return &pb.JoinResponse{Members: a.s.sm.Members()}, nil
}

func (a *api) RemoveMember(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	if req.GetId() == 0 {
		return nil, status.Error(codes.InvalidArgument, "id: must be a positive integer")
	}
	if c, fwd, err := a.forward(); fwd {
		if err != nil {
			return nil, err
		}
		return c.RemoveMember(ctx, req)
	}
	if req.Id == a.s.cfg.ID {
		// Hand leadership over first so the cluster keeps a leader that
		// stays a member.
		if err := a.handOff(ctx); err != nil {
			return nil, err
		}
		c, err := a.s.leaderClient()
		if err != nil {
			return nil, toStatus(err)
		}
		return c.RemoveMember(ctx, req)
	}
	if err := a.s.node.ProposeConfChange(ctx, raftpb.ConfChangeRemoveNode, req.Id, ""); err != nil {
		return nil, toStatus(err)
	}
	a.s.log.Info("member removed", "id", req.Id)
	return &pb.RemoveMemberResponse{}, nil
}

// handOff transfers leadership to the most caught-up other voter.
func (a *api) handOff(ctx context.Context) error {
	st, _, err := a.s.node.Status(ctx)
	if err != nil {
		return toStatus(err)
	}
	var ids []uint64
	for id, pr := range st.Progress {
		if id != a.s.cfg.ID && !pr.IsLearner {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return status.Error(codes.FailedPrecondition, "this node is the last voter; a cluster cannot remove its last voter")
	}
	sort.Slice(ids, func(i, j int) bool { return st.Progress[ids[i]].Match > st.Progress[ids[j]].Match })
	if err := a.s.node.TransferLeader(ctx, ids[0]); err != nil {
		return toStatus(err)
	}
	return nil
}

func (a *api) TransferLeader(ctx context.Context, req *pb.TransferLeaderRequest) (*pb.TransferLeaderResponse, error) {
	m, ok := a.s.sm.Member(req.GetId())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "node %d is not a member; see 'blixard cluster status'", req.GetId())
	}
	if m.Role != pb.MemberRole_MEMBER_ROLE_VOTER {
		return nil, status.Errorf(codes.FailedPrecondition, "node %d is a learner and cannot lead; wait until it is promoted to voter", m.Id)
	}
	if c, fwd, err := a.forward(); fwd {
		if err != nil {
			return nil, err
		}
		return c.TransferLeader(ctx, req)
	}
	if a.s.node.Leader() != req.Id {
		if err := a.s.node.TransferLeader(ctx, req.Id); err != nil {
			return nil, toStatus(err)
		}
	}
	return &pb.TransferLeaderResponse{Leader: a.s.node.Leader()}, nil
}

func (a *api) ListWorkers(ctx context.Context, req *pb.ListWorkersRequest) (*pb.ListWorkersResponse, error) {
	if resp, ok := fromLeader(a, func(c rpcpb.ClusterClient) (*pb.ListWorkersResponse, error) {
		return c.ListWorkers(ctx, req)
	}); ok {
		return resp, nil
	}
	// Leader (or leader unreachable): answer from local state; heartbeat
	// times exist only in the leader's memory.
	leader := a.s.node.IsLeader()
	resp := &pb.ListWorkersResponse{}
	for _, w := range a.s.sm.Workers() {
		info := &pb.WorkerInfo{Worker: w}
		if st, ok := a.s.sm.WorkerStatus(w.Id); ok {
			info.Status = st
		}
		if leader {
			if t := a.s.mon.LastSeen(w.Id); !t.IsZero() {
				info.LastHeartbeatUnixNano = t.UnixNano()
			}
		}
		resp.Workers = append(resp.Workers, info)
	}
	return resp, nil
}

// maxCordonReason bounds the free text an operator attaches to a cordon.
const maxCordonReason = 256

func (a *api) CordonWorker(ctx context.Context, req *pb.CordonWorkerRequest) (*pb.CordonWorkerResponse, error) {
	if req.GetWorkerId() == 0 {
		return nil, status.Error(codes.InvalidArgument, "worker_id: must be a positive integer (see 'blixard worker list')")
	}
	if len(req.GetReason()) > maxCordonReason {
		return nil, status.Errorf(codes.InvalidArgument, "reason: at most %d bytes (got %d)", maxCordonReason, len(req.GetReason()))
	}
	if !req.GetCordon() && req.GetReason() != "" {
		return nil, status.Error(codes.InvalidArgument, "reason: only with a cordon")
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_CordonWorker{CordonWorker: &pb.CordonWorker{
		WorkerId: req.WorkerId, Cordoned: req.Cordon, Reason: req.Reason, NowUnixNano: a.s.clock.Now().UnixNano(),
	}}})
	if err != nil {
		if errors.Is(err, state.ErrUnknownWorker) {
			return nil, status.Errorf(codes.NotFound, "worker %d is not registered; see 'blixard worker list'", req.WorkerId)
		}
		return nil, toStatus(err)
	}
	w, _ := res.(*pb.Worker)
	return &pb.CordonWorkerResponse{Worker: w}, nil
}

func (a *api) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	if req.GetWorkerId() == 0 {
		return nil, status.Error(codes.InvalidArgument, "worker_id: must be a positive integer")
	}
	if err := sameNode(ctx, "worker_id", req.WorkerId); err != nil {
		return nil, err
	}
	// Not forwarded (the leader must see the worker's own certificate): a
	// worker that reached a former leader asks the new one next time.
	return a.s.heartbeat(ctx, req.WorkerId)
}

func (a *api) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	if req.GetKey() == "" {
		return nil, status.Error(codes.InvalidArgument, "key: must not be empty")
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_Put{Put: &pb.Put{Key: req.Key, Value: req.Value}}})
	if err != nil {
		return nil, toStatus(err)
	}
	kv, _ := res.(*pb.KV)
	return &pb.PutResponse{Index: kv.GetModIndex()}, nil
}

func (a *api) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetResponse, error) {
	if req.GetKey() == "" {
		return nil, status.Error(codes.InvalidArgument, "key: must not be empty")
	}
	if !req.GetSerializable() {
		if err := a.s.node.ReadIndex(ctx); err != nil {
			return nil, toStatus(err)
		}
	}
	kv, ok := a.s.sm.Get(req.Key)
	if !ok {
		return &pb.GetResponse{}, nil
	}
	return &pb.GetResponse{Found: true, Value: kv.Value, ModIndex: kv.ModIndex}, nil
}
