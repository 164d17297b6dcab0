package scheduler

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/state"
)

func vmItem(id string, cpu, mem int64, opts ...taskOpt) Task {
	return with(Task{ID: id, Kind: KindVM, Resources: Resources{cpu, mem}}, opts...)
}

func ports(p ...string) taskOpt { return func(t *Task) { t.HostPorts = p } }

func withPorts(w Worker, port, vm string) Worker {
	w.HostPorts = map[string]string{port: vm}
	return w
}

func TestScheduleVMs(t *testing.T) {
	tests := []struct {
		name    string
		workers []Worker
		pending []Task
		want    Plan
	}{
		{
			name:    "a VM reserves capacity a later task cannot take",
			workers: []Worker{wk(1, 2000, 1024)},
			pending: []Task{vmItem("a", 1000, 1000, seq(1)), with(tk("t2", 100, 100), seq(2))},
			want: Plan{
				Placements: []Placement{{TaskID: "a", WorkerID: 1, Kind: KindVM}},
				Unplaced:   []Unplaced{{TaskID: "t2", Reason: "waiting for room"}},
			},
		},
		{
			name:    "tasks and VMs queue FIFO together",
			workers: []Worker{wk(1, 2000, 1024)},
			pending: []Task{vmItem("a", 1000, 1000, seq(2)), with(tk("t1", 100, 100), seq(1))},
			want: Plan{
				Placements: []Placement{{TaskID: "t1", WorkerID: 1}},
				Unplaced:   []Unplaced{{TaskID: "a", Reason: "waiting for room", Kind: KindVM}},
			},
		},
		{
			name:    "a waiting VM is named as the holder",
			workers: []Worker{used(wk(1, 2000, 1024), 0, 512)},
			pending: []Task{vmItem("big", 1000, 1000, seq(1)), with(tk("t2", 100, 100), seq(2))},
			want: Plan{Unplaced: []Unplaced{
				{TaskID: "big", Reason: "waiting for room", Kind: KindVM},
				{TaskID: "t2", Reason: "waiting for room (room held for vm big, ahead in queue)"},
			}},
		},
		{
			name:    "a VM and a task with the same ID are both placed",
			workers: []Worker{wk(1, 4000, 4096)},
			pending: []Task{vmItem("x", 1000, 128, seq(1)), with(tk("x", 100, 64), seq(2))},
			want:    Plan{Placements: []Placement{{TaskID: "x", WorkerID: 1, Kind: KindVM}, {TaskID: "x", WorkerID: 1}}},
		},
		{
			name:    "constraints, node and too big",
			workers: []Worker{wk(1, 4000, 4096, "kvm=yes"), wk(2, 4000, 8192)},
			pending: []Task{
				vmItem("kvm", 1000, 128, seq(1), constraint("kvm=yes")),
				vmItem("pin", 1000, 128, seq(2), node(2)),
				vmItem("huge", 1000, 16384, seq(3)),
			},
			want: Plan{
				Placements: []Placement{{TaskID: "kvm", WorkerID: 1, Kind: KindVM}, {TaskID: "pin", WorkerID: 2, Kind: KindVM}},
				Unplaced:   []Unplaced{{TaskID: "huge", Reason: "needs 16384MiB memory, largest worker offers 8192MiB", Kind: KindVM}},
			},
		},
		{
			name:    "VMs forwarding one host port go to different workers",
			workers: []Worker{wk(1, 4000, 4096), wk(2, 4000, 4096)},
			pending: []Task{
				vmItem("a", 1000, 128, seq(1), ports("8080/tcp")),
				vmItem("b", 1000, 128, seq(2), ports("8080/tcp", "9000/tcp")),
				vmItem("c", 1000, 128, seq(3), ports("8080/udp")), // another protocol: no clash
				vmItem("d", 1000, 128, seq(4), ports("8080/tcp")),
			},
			want: Plan{
				Placements: []Placement{{TaskID: "a", WorkerID: 1, Kind: KindVM}, {TaskID: "b", WorkerID: 2, Kind: KindVM}, {TaskID: "c", WorkerID: 1, Kind: KindVM}},
				Unplaced:   []Unplaced{{TaskID: "d", Reason: "host port 8080/tcp is forwarded by vm a on worker 1, and its host ports clash on all 2 workers that could run it", Kind: KindVM}},
			},
		},
		{
			name:    "a host port forwarded by a VM already on the worker",
			workers: []Worker{withPorts(wk(1, 4000, 4096), "22/tcp", "old"), wk(2, 4000, 4096, "zone=b")},
			pending: []Task{
				vmItem("pinned", 1000, 128, seq(1), ports("22/tcp"), node(1)),
				vmItem("free", 1000, 128, seq(2), ports("22/tcp")),
			},
			want: Plan{
				Placements: []Placement{{TaskID: "free", WorkerID: 2, Kind: KindVM}},
				Unplaced:   []Unplaced{{TaskID: "pinned", Reason: "host port 22/tcp is forwarded by vm old on worker 1", Kind: KindVM}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := Input{Now: epoch, Workers: tc.workers, Pending: tc.pending}
			got := Schedule(in, nil)
			checkInvariants(t, in, got)
			if got.Placements == nil {
				got.Placements = []Placement{}
			}
			if tc.want.Placements == nil {
				tc.want.Placements = []Placement{}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("plan\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestScheduleVMsRandom turns some random items into VMs (some with the
// ID of a task) and checks the plan's invariants and determinism.
func TestScheduleVMsRandom(t *testing.T) {
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 11))
		in := randomInput(r, 1+r.IntN(12), r.IntN(80))
		for i := range in.Pending {
			if r.IntN(3) == 0 {
				in.Pending[i].Kind = KindVM
				in.Pending[i].Priority = 0
				in.Pending[i].Policy = BinPack
				in.Pending[i].NotBefore = time.Time{}
				// A few host ports from a small pool, so they clash.
				for _, port := range []string{"80/tcp", "443/tcp", "80/udp"} {
					if r.IntN(4) == 0 {
						in.Pending[i].HostPorts = append(in.Pending[i].HostPorts, port)
					}
				}
				if i > 0 && r.IntN(2) == 0 {
					// Collide with the previous item's ID (a task, or
					// a VM whose ID then moves on).
					in.Pending[i].ID = in.Pending[i-1].ID
					if in.Pending[i-1].Kind == KindVM {
						in.Pending[i].ID = fmt.Sprintf("vm%d", i)
					}
				}
			}
		}
		for i := range in.Workers {
			if r.IntN(4) == 0 {
				in.Workers[i].HostPorts = map[string]string{"80/tcp": "running"}
			}
		}
		a := Schedule(in, rand.New(rand.NewPCG(seed, seed)))
		checkInvariants(t, in, a)
		if b := Schedule(in, rand.New(rand.NewPCG(seed, seed))); !reflect.DeepEqual(a, b) {
			t.Fatalf("seed %d: same input and seed gave a different plan", seed)
		}
	}
}

func TestAddVMs(t *testing.T) {
	in := Input{Pending: []Task{tk("t1", 1, 1)}}
	gens := AddVMs(&in, []state.PendingVM{
		{Name: "web", Seq: 9, CPUMillis: 2000, MemoryMiB: 256, Constraints: map[string]string{"k": "v"}, Node: 3, Generation: 4},
	})
	if len(in.Pending) != 2 || gens["web"] != 4 {
		t.Fatalf("in = %+v gens = %v", in, gens)
	}
	v := in.Pending[1]
	if v.Kind != KindVM || v.ID != "web" || v.Seq != 9 || v.Resources != (Resources{2000, 256}) || v.Node != 3 || v.Constraints["k"] != "v" || v.Policy != BinPack || v.Priority != 0 {
		t.Fatalf("vm item = %+v", v)
	}
}
