package scheduler

import (
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
