package server

import (
	"context"
	"math/rand/v2"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
)

// schedulerLoop runs a scheduling pass on the leader whenever something
// was applied (a submission, a finished attempt, a worker change), and at
// least every half second so retries whose backoff ends are placed. One
// pass becomes one PlaceTasks proposal; the next pass starts only after it
// is applied, so passes never overlap.
func (s *Server) schedulerLoop() {
	rng := rand.New(rand.NewPCG(s.cfg.ID, uint64(s.clock.Now().UnixNano())))
	tick := s.clock.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		ch := s.applied.Wait()
		if s.node.IsLeader() {
			start := time.Now()
			s.schedulePass(rng)
			// A pass over a huge backlog can take long; leave the raft
			// loop and the API at least as much time again before the
			// next one, so scheduling can never starve them.
			if cost := time.Since(start); cost > 5*time.Millisecond {
				t := time.NewTimer(cost)
				select {
				case <-s.ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
		}
		select {
		case <-s.ctx.Done():
			return
		case <-ch:
		case <-tick.C():
		}
	}
}

func (s *Server) schedulePass(rng *rand.Rand) {
	v := s.sm.ForScheduling()
	if len(v.Pending) == 0 {
		s.setWaiting(nil)
		return
	}
	if len(v.Workers) == 0 {
		waiting := make(map[string]string, len(v.Pending))
		for _, t := range v.Pending {
			waiting[t.ID] = "no worker is ready and schedulable"
		}
		s.setWaiting(waiting)
		return
	}
	in, attempts := schedulerInput(s.clock.Now(), v)
	plan := scheduler.Schedule(in, rng)
	waiting := make(map[string]string, len(plan.Unplaced))
	for _, u := range plan.Unplaced {
		waiting[u.TaskID] = u.Reason
	}
	s.setWaiting(waiting)
	if len(plan.Placements) == 0 {
		return
	}
	cmd := &pb.PlaceTasks{NowUnixNano: s.clock.Now().UnixNano()}
	for _, p := range plan.Placements {
		cmd.Placements = append(cmd.Placements, &pb.Placement{TaskId: p.TaskID, Attempt: attempts[p.TaskID], WorkerId: p.WorkerID})
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if _, err := s.propose(ctx, &pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: cmd}}); err != nil {
		s.log.Warn("proposing placements failed; the next pass retries", "placements", len(cmd.Placements), "err", err)
	}
}

// schedulerInput converts the state's view into the scheduler's types,
// and returns the attempt number each pending task's placement gets.
func schedulerInput(now time.Time, v state.SchedulingView) (scheduler.Input, map[string]uint32) {
	in := scheduler.Input{Now: now}
	attempts := make(map[string]uint32, len(v.Pending))
	for _, w := range v.Workers {
		u := v.Used[w.Id]
		in.Workers = append(in.Workers, scheduler.Worker{
			ID:       w.Id,
			Labels:   w.Labels,
			Capacity: scheduler.Resources{CPUMillis: w.GetCapacity().GetCpuMillis(), MemoryMiB: w.GetCapacity().GetMemoryMib()},
			Used:     scheduler.Resources{CPUMillis: u.CPUMillis, MemoryMiB: u.MemoryMiB},
		})
	}
	for _, t := range v.Pending {
		pol := scheduler.BinPack
		if t.Policy == pb.PlacementPolicy_PLACEMENT_POLICY_SPREAD {
			pol = scheduler.Spread
		}
		var nb time.Time
		if t.NotBefore != 0 {
			nb = time.Unix(0, t.NotBefore)
		}
		in.Pending = append(in.Pending, scheduler.Task{
			ID: t.ID, Priority: t.Priority, Seq: t.Seq,
			Resources:   scheduler.Resources{CPUMillis: t.CPUMillis, MemoryMiB: t.MemoryMiB},
			Constraints: t.Constraints, Node: t.Node, Policy: pol, NotBefore: nb,
		})
		attempts[t.ID] = t.Attempt
	}
	return in, attempts
}

// setWaiting records why each pending task was left unplaced by the last
// pass, for task status.
func (s *Server) setWaiting(w map[string]string) {
	s.waitMu.Lock()
	s.waiting = w
	s.waitMu.Unlock()
}

// withReason fills t.PendingReason when this node is the leader and knows it.
func (s *Server) withReason(t *pb.Task) *pb.Task {
	if t == nil || t.State != pb.TaskState_TASK_STATE_PENDING || !s.node.IsLeader() {
		return t
	}
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	t.PendingReason = s.waiting[t.Id]
	return t
}
