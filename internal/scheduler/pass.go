package scheduler

import (
	"math/rand/v2"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

// PassResult is what one scheduling pass on the leader decided.
type PassResult struct {
	// Place is the one proposal the pass makes; nil when nothing was
	// placed.
	Place *pb.PlaceTasks
	// Waiting says, for each pending task the pass left unplaced, why
	// (for task status); nil when nothing is pending.
	Waiting map[string]string
	// Input and Plan are the scheduler's input and answer, nil/zero when
	// the pass did not run it (nothing pending, no worker).
	Input Input
	Plan  Plan
}

// Pass is one scheduling pass of the leader over the state's view at now:
// it runs schedule (Schedule when nil) with rng and turns its plan into
// one PlaceTasks command stamped with now. It is pure, shared by the
// server's scheduling loop and the simulation.
func Pass(now time.Time, v state.SchedulingView, rng *rand.Rand, schedule func(Input, *rand.Rand) Plan) PassResult {
	if len(v.Pending) == 0 {
		return PassResult{}
	}
	if len(v.Workers) == 0 {
		waiting := make(map[string]string, len(v.Pending))
		for _, t := range v.Pending {
			waiting[t.ID] = "no worker is ready and schedulable"
		}
		return PassResult{Waiting: waiting}
	}
	if schedule == nil {
		schedule = Schedule
	}
	in, attempts := FromView(now, v)
	plan := schedule(in, rng)
	res := PassResult{Input: in, Plan: plan, Waiting: make(map[string]string, len(plan.Unplaced))}
	for _, u := range plan.Unplaced {
		res.Waiting[u.TaskID] = u.Reason
	}
	if len(plan.Placements) == 0 {
		return res
	}
	res.Place = &pb.PlaceTasks{NowUnixNano: now.UnixNano()}
	for _, p := range plan.Placements {
		res.Place.Placements = append(res.Place.Placements, &pb.Placement{TaskId: p.TaskID, Attempt: attempts[p.TaskID], WorkerId: p.WorkerID})
	}
	return res
}
