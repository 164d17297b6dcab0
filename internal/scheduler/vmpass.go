package scheduler

import (
	"math/rand/v2"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

// FullPassResult is one leader pass over tasks and VMs together.
type FullPassResult struct {
	// PassResult is the tasks' part, as Pass returns it (Input and Plan
	// hold both kinds).
	PassResult
	// PlaceVMs is the VM proposal of the pass; nil when no VM was placed.
	PlaceVMs *pb.PlaceVMs
	// VMWaiting says, for each pending VM left unplaced, why.
	VMWaiting map[string]string
	// NextWake is the earliest time a task now in retry backoff becomes
	// placeable (zero if none): nothing is applied then, so the caller
	// runs a pass at that time itself. Every other reason to run a pass
	// is an applied command.
	NextWake time.Time
}

// FullPass is Pass with the pending VMs scheduled in the same call, so
// tasks and VMs share the workers' free capacity and queue together. It
// is pure. schedule nil means Schedule.
func FullPass(now time.Time, v state.SchedulingView, vms []state.PendingVM, rng *rand.Rand, schedule func(Input, *rand.Rand) Plan) FullPassResult {
	if len(v.Pending) == 0 && len(vms) == 0 {
		return FullPassResult{}
	}
	if len(v.Workers) == 0 {
		const why = "no worker is ready and schedulable"
		res := FullPassResult{}
		if len(v.Pending) > 0 {
			res.Waiting = make(map[string]string, len(v.Pending))
			for _, t := range v.Pending {
				res.Waiting[t.ID] = why
			}
		}
		if len(vms) > 0 {
			res.VMWaiting = make(map[string]string, len(vms))
			for _, vm := range vms {
				res.VMWaiting[vm.Name] = why
			}
		}
		return res
	}
	if schedule == nil {
		schedule = Schedule
	}
	in, attempts := FromView(now, v)
	gens := AddVMs(&in, vms)
	plan := schedule(in, rng)
	res := FullPassResult{PassResult: PassResult{Input: in, Plan: plan, Waiting: map[string]string{}}, VMWaiting: map[string]string{}}
	for _, t := range in.Pending {
		if t.NotBefore.After(now) && (res.NextWake.IsZero() || t.NotBefore.Before(res.NextWake)) {
			res.NextWake = t.NotBefore
		}
	}
	for _, u := range plan.Unplaced {
		if u.Kind == KindVM {
			res.VMWaiting[u.TaskID] = u.Reason
		} else {
			res.Waiting[u.TaskID] = u.Reason
		}
	}
	for _, p := range plan.Placements {
		if p.Kind == KindVM {
			if res.PlaceVMs == nil {
				res.PlaceVMs = &pb.PlaceVMs{NowUnixNano: now.UnixNano()}
			}
			res.PlaceVMs.Placements = append(res.PlaceVMs.Placements, &pb.VMPlacement{Name: p.TaskID, Generation: gens[p.TaskID], WorkerId: p.WorkerID})
			continue
		}
		if res.Place == nil {
			res.Place = &pb.PlaceTasks{NowUnixNano: now.UnixNano()}
		}
		res.Place.Placements = append(res.Place.Placements, &pb.Placement{TaskId: p.TaskID, Attempt: attempts[p.TaskID], WorkerId: p.WorkerID})
	}
	return res
}
