package scheduler

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

func TestFullPassSplitsTasksAndVMs(t *testing.T) {
	now := time.Unix(5000, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	if got := FullPass(now, state.SchedulingView{}, nil, rng, nil); got.Place != nil || got.PlaceVMs != nil || got.Waiting != nil || got.VMWaiting != nil {
		t.Fatalf("nothing pending: %+v", got)
	}
	v := state.SchedulingView{Pending: []state.PendingTask{{ID: "t1", Seq: 1, CPUMillis: 500, MemoryMiB: 100, Attempt: 2}}}
	vms := []state.PendingVM{
		{Name: "t1", Seq: 2, CPUMillis: 1000, MemoryMiB: 512, Generation: 3},
		{Name: "big", Seq: 3, CPUMillis: 1000, MemoryMiB: 4096, Generation: 1},
	}
	got := FullPass(now, v, vms, rng, nil)
	if got.Place != nil || got.PlaceVMs != nil || got.Waiting["t1"] == "" || got.VMWaiting["big"] != "no worker is ready and schedulable" {
		t.Fatalf("no worker: %+v", got)
	}
	// A worker that did not register the VM capability (no QEMU) gets
	// tasks but no VMs.
	v.Workers = []*pb.Worker{{Id: 7, Capacity: &pb.Resources{CpuMillis: 2000, MemoryMib: 1024}}}
	v.Used = map[uint64]state.Usage{7: {CPUMillis: 0, MemoryMiB: 100}}
	got = FullPass(now, v, vms, rng, nil)
	if got.Place == nil || got.PlaceVMs != nil || !strings.Contains(got.VMWaiting["t1"], "can run VMs") {
		t.Fatalf("worker without the vm capability: tasks %v, vms %v, waiting %v", got.Place, got.PlaceVMs, got.VMWaiting)
	}
	v.Workers[0].Capabilities = []string{"gpu", state.CapabilityVMs}
	got = FullPass(now, v, vms, rng, nil)
	if got.Place == nil || len(got.Place.Placements) != 1 || got.Place.Placements[0].TaskId != "t1" || got.Place.Placements[0].Attempt != 2 {
		t.Fatalf("task placements: %v", got.Place)
	}
	if got.PlaceVMs == nil || got.PlaceVMs.NowUnixNano != now.UnixNano() || len(got.PlaceVMs.Placements) != 1 {
		t.Fatalf("vm placements: %v", got.PlaceVMs)
	}
	if p := got.PlaceVMs.Placements[0]; p.Name != "t1" || p.Generation != 3 || p.WorkerId != 7 {
		t.Fatalf("vm placement %v, want t1 generation 3 on 7", p)
	}
	if len(got.Waiting) != 0 || got.VMWaiting["big"] != "needs 4096MiB memory, largest worker offers 1024MiB" {
		t.Fatalf("waiting %v / %v", got.Waiting, got.VMWaiting)
	}
}

// TestFullPassSaysWhenTheNextBackoffEnds: retries in backoff are the one
// reason to run a pass that no applied entry announces, so the pass says
// when the earliest ends.
func TestFullPassSaysWhenTheNextBackoffEnds(t *testing.T) {
	now := time.Unix(5000, 0)
	v := state.SchedulingView{
		Workers: []*pb.Worker{{Id: 1, Capacity: &pb.Resources{CpuMillis: 1000, MemoryMib: 1024}}},
		Pending: []state.PendingTask{
			{ID: "later", Seq: 1, NotBefore: now.Add(3 * time.Second).UnixNano(), Attempt: 2},
			{ID: "sooner", Seq: 2, NotBefore: now.Add(time.Second).UnixNano(), Attempt: 3},
			{ID: "due", Seq: 3, NotBefore: now.Add(-time.Second).UnixNano(), Attempt: 2},
			{ID: "fresh", Seq: 4, Attempt: 1},
		},
	}
	got := FullPass(now, v, nil, rand.New(rand.NewPCG(1, 2)), nil)
	if want := now.Add(time.Second); !got.NextWake.Equal(want) {
		t.Fatalf("NextWake = %v, want %v (the end of sooner's backoff)", got.NextWake, want)
	}
	if got.Place == nil || len(got.Place.Placements) != 2 {
		t.Fatalf("placements %v, want due and fresh", got.Place)
	}
	v.Pending = v.Pending[2:]
	if got := FullPass(now, v, nil, rand.New(rand.NewPCG(1, 2)), nil); !got.NextWake.IsZero() {
		t.Fatalf("nothing in backoff: NextWake = %v", got.NextWake)
	}
}
