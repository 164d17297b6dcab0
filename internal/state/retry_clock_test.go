package state

import (
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// The retry backoff must not depend on the worker's clock: NotBefore is
// compared with the leader's clock, so a worker ten minutes fast must not
// delay the retry by ten minutes (found by the simulation with
// -sim.clock-skew).
func TestRetryBackoffIndependentOfWorkerClock(t *testing.T) {
	leaderPlace := time.Unix(100_000, 0) // the leader's clock at placement
	for _, skew := range []time.Duration{0, 10 * time.Minute, -10 * time.Minute} {
		h := newTaskHarness(t, 1)
		a := h.submit("a", 100, 1) // base backoff 100 ms
		h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{
			Placements: []*pb.Placement{{TaskId: a.Id, Attempt: 1, WorkerId: 1}}, NowUnixNano: leaderPlace.UnixNano()}}})
		// The worker's clock is off by skew; the attempt starts 1 s after
		// the placement and runs for 3 s.
		start := leaderPlace.Add(time.Second + skew)
		end := start.Add(3 * time.Second)
		h.ok(&pb.Command{Op: &pb.Command_TaskStarted{TaskStarted: &pb.TaskStarted{TaskId: a.Id, Attempt: 1, WorkerId: 1, NowUnixNano: start.UnixNano()}}})
		h.ok(&pb.Command{Op: &pb.Command_TaskFinished{TaskFinished: &pb.TaskFinished{TaskId: a.Id, Attempt: 1, WorkerId: 1,
			Result: &pb.TaskResult{ExitCode: 1, StartedAtUnixNano: start.UnixNano()}, NowUnixNano: end.UnixNano()}}})
		got := time.Unix(0, h.task(a.Id).NotBeforeUnixNano)
		// Placement + 3 s run + 100 ms backoff on the leader's clock; the
		// second between placement and start is not seen by anyone's
		// common clock and so not counted.
		if want := leaderPlace.Add(3*time.Second + 100*time.Millisecond); !got.Equal(want) {
			t.Errorf("worker clock off by %v: not_before %v after placement, want %v", skew, got.Sub(leaderPlace), want.Sub(leaderPlace))
		}
	}
}
