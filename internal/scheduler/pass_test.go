package scheduler

import (
	"math/rand/v2"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

func TestPassTurnsThePlanIntoOneProposal(t *testing.T) {
	now := time.Unix(5000, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	if got := Pass(now, state.SchedulingView{}, rng, nil); got.Place != nil || got.Waiting != nil {
		t.Fatalf("nothing pending: %+v", got)
	}
	v := state.SchedulingView{Pending: []state.PendingTask{
		{ID: "t1", Seq: 1, CPUMillis: 1000, MemoryMiB: 100, Attempt: 3},
		{ID: "t2", Seq: 2, CPUMillis: 9000, MemoryMiB: 100, Attempt: 1},
	}}
	got := Pass(now, v, rng, nil)
	if got.Place != nil || len(got.Waiting) != 2 || got.Waiting["t1"] != "no worker is ready and schedulable" {
		t.Fatalf("no worker: %+v", got)
	}
	v.Workers = []*pb.Worker{{Id: 7, Capacity: &pb.Resources{CpuMillis: 2000, MemoryMib: 1024}}}
	v.Used = map[uint64]state.Usage{}
	got = Pass(now, v, rng, nil)
	if got.Place == nil || len(got.Place.Placements) != 1 || got.Place.NowUnixNano != now.UnixNano() {
		t.Fatalf("placements: %+v", got.Place)
	}
	if p := got.Place.Placements[0]; p.TaskId != "t1" || p.Attempt != 3 || p.WorkerId != 7 {
		t.Fatalf("placement %v, want t1 attempt 3 on 7", p)
	}
	if got.Waiting["t2"] == "" || len(got.Waiting) != 1 {
		t.Fatalf("waiting %v, want t2 with a reason", got.Waiting)
	}
	// A substitute scheduler is used when given.
	none := func(Input, *rand.Rand) Plan { return Plan{} }
	if got := Pass(now, v, rng, none); got.Place != nil || len(got.Waiting) != 0 {
		t.Fatalf("substitute scheduler ignored: %+v", got)
	}
}
