package server

import (
	"context"
	"math/rand/v2"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/clock"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
)

// schedulerLoop runs a scheduling pass on the leader whenever something
// was applied (a submission, a finished attempt, a worker change, a VM
// created, started or removed, a new term), when the earliest retry
// backoff ends (the pass says when), and a second after a pass whose
// proposal failed. Nothing else can make a pending task placeable, so
// it does not poll. One pass places tasks and VMs together and becomes
// at most one PlaceTasks and one PlaceVMs proposal; the next pass starts
// only after they are applied, so passes never overlap.
func (s *Server) schedulerLoop() {
	rng := rand.New(rand.NewPCG(s.cfg.ID, uint64(s.clock.Now().UnixNano())))
	var backoffs scheduler.Backoffs
	for {
		ch := s.applied.Wait()
		var next time.Time // when to run a pass without an applied entry
		if !s.node.IsLeader() {
			backoffs.Reset()
		} else {
			start := time.Now()
			next = s.schedulePass(rng, &backoffs)
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
		var wake <-chan time.Time
		var timer clock.Ticker
		if !next.IsZero() {
			// A one-shot on the node's clock: a ticker stopped after its
			// first tick (the clock has no timers).
			timer = s.clock.NewTicker(max(next.Sub(s.clock.Now()), time.Millisecond))
			wake = timer.C()
		}
		select {
		case <-s.ctx.Done():
		case <-ch:
		case <-wake:
		}
		if timer != nil {
			timer.Stop()
		}
		if s.ctx.Err() != nil {
			return
		}
	}
}

// schedulePass runs one pass and proposes its placements. It returns when
// the next pass is due if nothing is applied before: the end of the
// earliest retry backoff, or a second from now if a proposal failed.
func (s *Server) schedulePass(rng *rand.Rand, backoffs *scheduler.Backoffs) time.Time {
	// The two reads are not one snapshot; a placement applied between
	// them only makes this pass plan against an older view, and applying
	// re-checks every placement, so nothing can over-commit.
	now := s.clock.Now()
	view := s.sm.ForScheduling()
	backoffs.Apply(now, &view)
	pass := scheduler.FullPass(now, view, s.sm.PendingVMs(), rng, nil)
	s.setWaiting(pass.Waiting)
	s.setVMWaiting(pass.VMWaiting)
	next := pass.NextWake
	if pass.Place == nil && pass.PlaceVMs == nil {
		return next
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	failed := false
	if pass.Place != nil {
		if _, err := s.propose(ctx, &pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: pass.Place}}); err != nil {
			s.log.Warn("proposing placements failed; a pass retries in a second", "placements", len(pass.Place.Placements), "err", err)
			failed = true
		}
	}
	if pass.PlaceVMs != nil {
		if _, err := s.propose(ctx, &pb.Command{Op: &pb.Command_PlaceVms{PlaceVms: pass.PlaceVMs}}); err != nil {
			s.log.Warn("proposing VM placements failed; a pass retries in a second", "placements", len(pass.PlaceVMs.Placements), "err", err)
			failed = true
		}
	}
	if retry := s.clock.Now().Add(time.Second); failed && (next.IsZero() || retry.Before(next)) {
		next = retry
	}
	return next
}

// placeOnSubmit chooses the worker for a task being submitted through this
// node, from this node's state (scheduler.PlaceOnSubmit): any node's view
// will do, because applying re-checks the placement as it re-checks a
// pass's. 0 (something else is pending, no room) leaves the task to the
// leader's scheduler pass.
func (s *Server) placeOnSubmit(spec *pb.TaskSpec) uint64 {
	view := s.sm.ForScheduling()
	if len(view.Pending) > 0 {
		return 0 // checked here too: it saves listing the VMs
	}
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	return scheduler.PlaceOnSubmit(s.clock.Now(), view, len(s.sm.PendingVMs()), state.PendingOf("submitted", 0, spec), rng)
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
