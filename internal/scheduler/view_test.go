package scheduler

import (
	"math/rand/v2"
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

func TestPlaceOnSubmit(t *testing.T) {
	now := time.Unix(100, 0)
	workers := []*pb.Worker{
		{Id: 1, Labels: map[string]string{"zone": "a"}, Capacity: &pb.Resources{CpuMillis: 1000, MemoryMib: 1024}},
		{Id: 2, Labels: map[string]string{"zone": "b"}, Capacity: &pb.Resources{CpuMillis: 4000, MemoryMib: 1024}},
	}
	used := map[uint64]state.Usage{1: {CPUMillis: 500}}
	spec := func(cpu int64, zone string, node uint64) *pb.TaskSpec {
		s := &pb.TaskSpec{Command: "x", Resources: &pb.Resources{CpuMillis: cpu, MemoryMib: 1}, Node: node}
		if zone != "" {
			s.Constraints = map[string]string{"zone": zone}
		}
		return s
	}
	for _, tc := range []struct {
		name    string
		pending []state.PendingTask
		vms     int
		spec    *pb.TaskSpec
		want    uint64
	}{
		{"binpack takes the fuller worker with room", nil, 0, spec(400, "", 0), 1},
		{"no room on the fuller one", nil, 0, spec(600, "", 0), 2},
		{"constraint", nil, 0, spec(100, "b", 0), 2},
		{"pinned", nil, 0, spec(100, "", 2), 2},
		{"fits nowhere", nil, 0, spec(5000, "", 0), 0},
		{"unsatisfiable constraint", nil, 0, spec(100, "c", 0), 0},
		{"a task is pending", []state.PendingTask{{ID: "t1", Attempt: 1}}, 0, spec(100, "", 0), 0},
		{"a VM is pending", nil, 1, spec(100, "", 0), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := state.SchedulingView{Workers: workers, Used: used, Pending: tc.pending}
			got := PlaceOnSubmit(now, v, tc.vms, state.PendingOf("new", 0, tc.spec), rand.New(rand.NewPCG(1, 2)))
			if got != tc.want {
				t.Fatalf("worker %d, want %d", got, tc.want)
			}
		})
	}
	if got := PlaceOnSubmit(now, state.SchedulingView{}, 0, state.PendingOf("new", 0, spec(1, "", 0)), nil); got != 0 {
		t.Fatalf("no workers: %d", got)
	}
}
