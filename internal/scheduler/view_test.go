package scheduler

import (
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

func TestFromView(t *testing.T) {
	now := time.Unix(100, 0)
	v := state.SchedulingView{
		Workers: []*pb.Worker{{Id: 2, Labels: map[string]string{"zone": "a"}, Capacity: &pb.Resources{CpuMillis: 2000, MemoryMib: 512}}},
		Used:    map[uint64]state.Usage{2: {CPUMillis: 500, MemoryMiB: 64}},
		Pending: []state.PendingTask{
			{ID: "t1", Priority: 3, Seq: 7, CPUMillis: 100, MemoryMiB: 10, Node: 2, Policy: pb.PlacementPolicy_PLACEMENT_POLICY_SPREAD, NotBefore: 200e9, Attempt: 4},
			{ID: "t2", Attempt: 1},
		},
	}
	in, attempts := FromView(now, v)
	if !in.Now.Equal(now) || len(in.Workers) != 1 || len(in.Pending) != 2 {
		t.Fatalf("input = %+v", in)
	}
	w := in.Workers[0]
	if w.ID != 2 || w.Capacity != (Resources{2000, 512}) || w.Used != (Resources{500, 64}) || w.Labels["zone"] != "a" {
		t.Fatalf("worker = %+v", w)
	}
	t1 := in.Pending[0]
	if t1.Policy != Spread || t1.Node != 2 || !t1.NotBefore.Equal(time.Unix(200, 0)) || t1.Resources != (Resources{100, 10}) || t1.Priority != 3 || t1.Seq != 7 {
		t.Fatalf("t1 = %+v", t1)
	}
	if t2 := in.Pending[1]; t2.Policy != BinPack || !t2.NotBefore.IsZero() {
		t.Fatalf("t2 = %+v", t2)
	}
	if attempts["t1"] != 4 || attempts["t2"] != 1 {
		t.Fatalf("attempts = %v", attempts)
	}
}
