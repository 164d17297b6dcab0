package server

import (
	"context"
	"math/rand/v2"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/scheduler"
)

// schedulerLoop runs a scheduling pass on the leader whenever something
// was applied (a submission, a finished attempt, a worker change, a VM
// created, started or removed), and at least every half second so retries
// whose backoff ends are placed. One pass places tasks and VMs together
// and becomes at most one PlaceTasks and one PlaceVMs proposal; the next
// pass starts only after they are applied, so passes never overlap.
func (s *Server) schedulerLoop() {
	rng := rand.New(rand.NewPCG(s.cfg.ID, uint64(s.clock.Now().UnixNano())))
	tick := s.clock.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var backoffs scheduler.Backoffs
	for {
		ch := s.applied.Wait()
		if !s.node.IsLeader() {
			backoffs.Reset()
		} else {
			start := time.Now()
			s.schedulePass(rng, &backoffs)
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

func (s *Server) schedulePass(rng *rand.Rand, backoffs *scheduler.Backoffs) {
	// The two reads are not one snapshot; a placement applied between
	// them only makes this pass plan against an older view, and applying
	// re-checks every placement, so nothing can over-commit.
	now := s.clock.Now()
	view := s.sm.ForScheduling()
	backoffs.Apply(now, &view)
	pass := scheduler.FullPass(now, view, s.sm.PendingVMs(), rng, nil)
	s.setWaiting(pass.Waiting)
	s.setVMWaiting(pass.VMWaiting)
	if pass.Place == nil && pass.PlaceVMs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if pass.Place != nil {
		if _, err := s.propose(ctx, &pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: pass.Place}}); err != nil {
			s.log.Warn("proposing placements failed; the next pass retries", "placements", len(pass.Place.Placements), "err", err)
		}
	}
	if pass.PlaceVMs != nil {
		if _, err := s.propose(ctx, &pb.Command{Op: &pb.Command_PlaceVms{PlaceVms: pass.PlaceVMs}}); err != nil {
			s.log.Warn("proposing VM placements failed; the next pass retries", "placements", len(pass.PlaceVMs.Placements), "err", err)
		}
	}
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
