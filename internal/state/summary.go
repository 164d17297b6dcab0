package state

import (
	"cmp"
	"slices"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// TaskSummary is what a dashboard or a metrics scrape needs of the task
// table, read without copying it: counts by state and the newest tasks.
type TaskSummary struct {
	Total   int
	ByState map[pb.TaskState]int
	Recent  []*pb.Task // the newest by submission, newest first (copies)
}

// SummarizeTasks counts the tasks by state and copies the newest recent
// ones. It walks the table once and copies only those, so it stays cheap
// with a large retained history.
func (m *Machine) SummarizeTasks(recent int) TaskSummary {
	m.mu.RLock()
	defer m.mu.RUnlock()
	s := TaskSummary{Total: len(m.tasks), ByState: map[pb.TaskState]int{}}
	// newest holds the recent highest Seqs seen, oldest first (a small
	// sorted window: recent is a few dozen).
	var newest []*pb.Task
	for _, t := range m.tasks {
		s.ByState[t.State]++
		if recent <= 0 || (len(newest) == recent && t.Seq <= newest[0].Seq) {
			continue
		}
		i, _ := slices.BinarySearchFunc(newest, t.Seq, func(x *pb.Task, seq uint64) int { return cmp.Compare(x.Seq, seq) })
		newest = slices.Insert(newest, i, t)
		if len(newest) > recent {
			newest = newest[1:]
		}
	}
	for i := len(newest) - 1; i >= 0; i-- {
		s.Recent = append(s.Recent, proto.Clone(newest[i]).(*pb.Task))
	}
	return s
}

// Reservations returns what the active attempts and placed VMs reserve on
// each worker (a copy).
func (m *Machine) Reservations() map[uint64]Usage {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[uint64]Usage, len(m.used))
	for id, u := range m.used {
		out[id] = u
	}
	return out
}
