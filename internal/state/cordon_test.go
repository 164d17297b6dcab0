package state

import (
	"errors"
	"testing"

	pb "github.com/blixard/blixard/api/blixardpb"
)

func TestCordonKeepsNewWorkOffAndSurvivesReRegistration(t *testing.T) {
	h := newTaskHarness(t, 1, 2)
	cordon := func(id uint64, on bool, reason string) (*pb.Worker, error) {
		r, err := h.apply(&pb.Command{Op: &pb.Command_CordonWorker{CordonWorker: &pb.CordonWorker{WorkerId: id, Cordoned: on, Reason: reason}}})
		w, _ := r.(*pb.Worker)
		return w, err
	}
	if _, err := cordon(9, true, ""); !errors.Is(err, ErrUnknownWorker) {
		t.Fatalf("cordon of an unknown worker: %v", err)
	}
	w, err := cordon(1, true, "disk swap")
	if err != nil || !w.Cordoned || w.CordonReason != "disk swap" || Schedulable(w) {
		t.Fatalf("cordon: %v %v", w, err)
	}
	// Not offered to the scheduler, and a placement there is refused.
	for _, sw := range h.m.ForScheduling().Workers {
		if sw.Id == 1 {
			t.Fatal("a cordoned worker is offered to the scheduler")
		}
	}
	a := h.submit("a", 100, 0)
	if r := h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: a.Id, Attempt: 1, WorkerId: 1}}}}}); r.(*pb.PutResponse).Index != 0 {
		t.Fatal("a task was placed on a cordoned worker")
	}
	h.ok(&pb.Command{Op: &pb.Command_CreateVm{CreateVm: &pb.CreateVM{Spec: &pb.VMSpec{Name: "v", Vcpus: 1, MemoryMib: 128}}}})
	v, _ := h.m.VM("v")
	if r := h.ok(&pb.Command{Op: &pb.Command_PlaceVms{PlaceVms: &pb.PlaceVMs{Placements: []*pb.VMPlacement{{Name: "v", Generation: v.Generation + 1, WorkerId: 1}}}}}); r.(*pb.PutResponse).Index != 0 {
		t.Fatal("a VM was placed on a cordoned worker")
	}
	// The worker restarts and registers again: still cordoned. A worker
	// cannot cordon (or uncordon) itself through its registration.
	h.ok(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{
		Worker: &pb.Worker{Id: 1, Capacity: &pb.Resources{CpuMillis: 1000, MemoryMib: 1024}}}}})
	h.ok(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{
		Worker: &pb.Worker{Id: 3, Capacity: &pb.Resources{CpuMillis: 1000, MemoryMib: 1024}, Cordoned: true}}}})
	if w, _ := h.m.Worker(1); !w.Cordoned || w.CordonReason != "disk swap" {
		t.Fatalf("after re-registration: %v", w)
	}
	if w, _ := h.m.Worker(3); w.Cordoned {
		t.Fatal("a registration cordoned its worker")
	}
	// Uncordon also clears the worker's own unschedulable mark.
	h.ok(&pb.Command{Op: &pb.Command_SetWorkerSchedulable{SetWorkerSchedulable: &pb.SetWorkerSchedulable{WorkerId: 1, Schedulable: false, Reason: "executor keeps failing"}}})
	if w, err := cordon(1, false, ""); err != nil || w.Cordoned || w.Unschedulable || w.CordonReason != "" || w.UnschedulableReason != "" || !Schedulable(w) {
		t.Fatalf("uncordon: %v %v", w, err)
	}
	if r := h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: a.Id, Attempt: 1, WorkerId: 1}}}}}); r.(*pb.PutResponse).Index != 1 {
		t.Fatal("not placed after uncordon")
	}
}
