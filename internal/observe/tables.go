package observe

import (
	"sync"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// readBudget bounds what observing costs: the tables are read again only
// once the last read is older than readBudget times the time that read
// took. A small state is read on every request (a read of 1 000 tasks
// takes about 3 ms, so it is reused for 30 ms); a large one is read at most
// about a tenth of the time (100 000 tasks: about 0.5 s, reused for 5 s).
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
	tasks := src.Tasks()
	t := &tables{
		readAt:       now,
		members:      src.Members(),
		workers:      src.Workers(),
		statuses:     map[uint64]*pb.WorkerStatus{},
		taskCount:    map[pb.TaskState]int{},
		taskTotal:    len(tasks),
		pendingTasks: src.PendingTasks(),
		vms:          src.VMs(),
	}
	t.reserved = reservations(tasks, t.vms)
	for _, w := range t.workers {
		if st, ok := src.WorkerStatus(w.Id); ok {
			t.statuses[w.Id] = st
		}
	}
	for _, task := range tasks {
		t.taskCount[task.State]++
	}
	for i := len(tasks) - 1; i >= 0 && len(t.recent) < RecentTasks; i-- {
		t.recent = append(t.recent, tasks[i])
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
