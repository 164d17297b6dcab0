package observe

import (
	"sync"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// readBudget bounds what observing costs: the tables are read again only
// once the last read is older than readBudget times the time that read
// took. The task table is summarized, not copied (state.SummarizeTasks),
// so a read stays cheap with a large history and is rarely reused for
// long; the budget still caps the cost of the VM and worker copies.
const readBudget = 10

// tables is one read of the source's tables, reduced to what metrics and
// the overview show (so a large task table is not kept).
type tables struct {
	readAt       time.Time
	members      []*pb.Member
	workers      []*pb.Worker
	statuses     map[uint64]*pb.WorkerStatus
	reserved     map[uint64]Reserved
	taskCount    map[pb.TaskState]int
	taskTotal    int
	recent       []*pb.Task // newest first, at most RecentTasks
	pendingTasks int
	vms          []*pb.VM
}

func readTables(src Source, now time.Time) *tables {
	sum := src.TaskSummary(RecentTasks)
	t := &tables{
		readAt:       now,
		members:      src.Members(),
		workers:      src.Workers(),
		statuses:     map[uint64]*pb.WorkerStatus{},
		reserved:     map[uint64]Reserved{},
		taskCount:    sum.ByState,
		taskTotal:    sum.Total,
		recent:       sum.Recent,
		pendingTasks: src.PendingTasks(),
		vms:          src.VMs(),
	}
	if t.taskCount == nil {
		t.taskCount = map[pb.TaskState]int{}
	}
	for id, u := range src.Reservations() {
		t.reserved[id] = Reserved{CPUMillis: u.CPUMillis, MemoryMiB: u.MemoryMiB}
	}
	for _, w := range t.workers {
		if st, ok := src.WorkerStatus(w.Id); ok {
			t.statuses[w.Id] = st
		}
	}
	return t
}

// tableCache shares reads between scrapes and overview requests (see
// readBudget).
type tableCache struct {
	src Source

	mu   sync.Mutex
	last *tables
	cost time.Duration
}

func (c *tableCache) get() *tables {
	c.mu.Lock()
	defer c.mu.Unlock()
	start := time.Now()
	if c.last != nil && start.Sub(c.last.readAt) < readBudget*c.cost {
		return c.last
	}
	c.last = readTables(c.src, start)
	c.cost = time.Since(start)
	return c.last
}
