package scheduler

import (
	"math/rand/v2"
	"slices"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

// FromView converts the state machine's SchedulingView into an Input, and
// returns the attempt number each pending task's placement gets. It is
// shared by the leader's scheduling loop and the simulation.
func FromView(now time.Time, v state.SchedulingView) (Input, map[string]uint32) {
	in := Input{Now: now}
	attempts := make(map[string]uint32, len(v.Pending))
	for _, w := range v.Workers {
		u := v.Used[w.Id]
		in.Workers = append(in.Workers, Worker{
			ID:        w.Id,
			Labels:    w.Labels,
			Capacity:  Resources{CPUMillis: w.GetCapacity().GetCpuMillis(), MemoryMiB: w.GetCapacity().GetMemoryMib()},
			Used:      Resources{CPUMillis: u.CPUMillis, MemoryMiB: u.MemoryMiB},
			VMs:       slices.Contains(w.Capabilities, state.CapabilityVMs),
			HostPorts: v.HostPorts[w.Id],
		})
	}
	for _, t := range v.Pending {
		pol := BinPack
		if t.Policy == pb.PlacementPolicy_PLACEMENT_POLICY_SPREAD {
			pol = Spread
		}
		var nb time.Time
		if t.NotBefore != 0 {
			nb = time.Unix(0, t.NotBefore)
		}
		in.Pending = append(in.Pending, Task{
			ID: t.ID, Priority: t.Priority, Seq: t.Seq,
			Resources:   Resources{CPUMillis: t.CPUMillis, MemoryMiB: t.MemoryMiB},
			Constraints: t.Constraints, Node: t.Node, Policy: pol, NotBefore: nb,
		})
		attempts[t.ID] = t.Attempt
	}
	return in, attempts
}

// AddVMs appends the pending VMs to in (as Tasks of KindVM, bin-packed,
// priority 0) and returns the generation each VM's placement gets.
func AddVMs(in *Input, vms []state.PendingVM) map[string]uint32 {
	gens := make(map[string]uint32, len(vms))
	for _, v := range vms {
		in.Pending = append(in.Pending, Task{
			ID: v.Name, Seq: v.Seq, Kind: KindVM,
			Resources:   Resources{CPUMillis: v.CPUMillis, MemoryMiB: v.MemoryMiB},
			Constraints: v.Constraints, Node: v.Node, Policy: BinPack,
			HostPorts: v.HostPorts,
		})
		gens[v.Name] = v.Generation
	}
	return gens
}

// PlaceOnSubmit chooses the worker for attempt 1 of a task being
// submitted, so the submission can carry its placement (one raft entry
// instead of a SubmitTask and a PlaceTasks). It runs the same pass as
// FullPass on a view holding only the new task, and chooses nothing (0)
// when anything else is pending (tasks, or pendingVMs VMs): a new task must
// not overtake them, which only the full pass orders correctly.
func PlaceOnSubmit(now time.Time, v state.SchedulingView, pendingVMs int, t state.PendingTask, rng *rand.Rand) uint64 {
	if len(v.Pending) > 0 || pendingVMs > 0 || len(v.Workers) == 0 {
		return 0
	}
	t.Attempt = 1
	v.Pending = []state.PendingTask{t}
	pass := FullPass(now, v, nil, rng, nil)
	if pass.Place == nil || len(pass.Place.Placements) != 1 {
		return 0
	}
	return pass.Place.Placements[0].WorkerId
}
