package state

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
)

func TestSummarizeTasksCountsAndKeepsTheNewest(t *testing.T) {
	h := newTaskHarness(t, 1)
	var ids []string
	for i := range 7 {
		ids = append(ids, h.submit(string(rune('a'+i)), 100, 0).Id)
	}
	h.ok(&pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: ids[0], Attempt: 1, WorkerId: 1}}}}})
	s := h.m.SummarizeTasks(3)
	if s.Total != 7 || s.ByState[pb.TaskState_TASK_STATE_PENDING] != 6 || s.ByState[pb.TaskState_TASK_STATE_ASSIGNED] != 1 {
		t.Fatalf("summary counts: total %d, by state %v", s.Total, s.ByState)
	}
	if len(s.Recent) != 3 || s.Recent[0].Id != ids[6] || s.Recent[1].Id != ids[5] || s.Recent[2].Id != ids[4] {
		var got []string
		for _, r := range s.Recent {
			got = append(got, r.Id)
		}
		t.Fatalf("recent = %v, want the three newest, newest first (%v)", got, ids[4:])
	}
	s.Recent[0].State = pb.TaskState_TASK_STATE_FAILED // a copy
	if got, _ := h.m.Task(ids[6]); got.State != pb.TaskState_TASK_STATE_PENDING {
		t.Fatal("SummarizeTasks returned the stored task, not a copy")
	}
	if r := h.m.Reservations(); r[1].CPUMillis != 100 {
		t.Fatalf("reservations = %v, want 100m CPU on worker 1", r)
	}
	if s := h.m.SummarizeTasks(0); len(s.Recent) != 0 || s.Total != 7 {
		t.Fatalf("recent 0: %+v", s)
	}
}

// BenchmarkSummarizeTasks is a metrics scrape's read of a large retained
// task history.
func BenchmarkSummarizeTasks(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			m := New()
			for i := range n {
				c, err := proto.Marshal(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{
					Spec: &pb.TaskSpec{Command: "/bin/true"}, IdempotencyKey: fmt.Sprint(i)}}})
				if err == nil {
					_, err = m.ApplyCommand(uint64(i+1), c)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				if s := m.SummarizeTasks(50); s.Total != n {
					b.Fatalf("total %d", s.Total)
				}
			}
		})
	}
}
