package worker

import (
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

func TestMonitorTransitions(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ready := func(id uint64) *pb.Worker { return &pb.Worker{Id: id, State: pb.WorkerState_WORKER_STATE_READY} }
	down := func(id uint64) *pb.Worker { return &pb.Worker{Id: id, State: pb.WorkerState_WORKER_STATE_DOWN} }
	m := NewMonitor(5 * time.Second)
	m.Reset(t0, []*pb.Worker{ready(1), ready(2)})

	if got := m.Check(t0.Add(4*time.Second), []*pb.Worker{ready(1), ready(2)}); len(got) != 0 {
		t.Fatalf("within TTL: %v", got)
	}
	m.Seen(1, t0.Add(4*time.Second))
	got := m.Check(t0.Add(6*time.Second), []*pb.Worker{ready(1), ready(2)})
	if len(got) != 1 || got[0] != (Transition{2, pb.WorkerState_WORKER_STATE_DOWN}) {
		t.Fatalf("after TTL: %v, want worker 2 down", got)
	}
	// In flight: not proposed twice.
	if again := m.Check(t0.Add(7*time.Second), []*pb.Worker{ready(1), ready(2)}); len(again) != 0 {
		t.Fatalf("in-flight transition proposed again: %v", again)
	}
	m.Done(2)
	// Applied as down; a heartbeat brings it back.
	m.Seen(2, t0.Add(8*time.Second))
	got = m.Check(t0.Add(8*time.Second), []*pb.Worker{ready(1), down(2)})
	if len(got) != 1 || got[0] != (Transition{2, pb.WorkerState_WORKER_STATE_READY}) {
		t.Fatalf("after heartbeat: %v, want worker 2 ready", got)
	}
	// A worker registered after Reset gets a full TTL from first sight.
	if got := m.Check(t0.Add(20*time.Second), []*pb.Worker{ready(3)}); len(got) != 0 {
		t.Fatalf("new worker marked at first sight: %v", got)
	}
	if got := m.Check(t0.Add(26*time.Second), []*pb.Worker{ready(3)}); len(got) != 1 {
		t.Fatalf("new worker silent past TTL: %v", got)
	}
}
