package transport

import (
	"sync"

	"go.etcd.io/raft/v3"
)

// reportQueue hands reports from Send and the peer goroutines to the one
// goroutine that calls the Reporter. Send is called from the raft loop and
// the Reporter typically posts back into that same loop, so calling it
// synchronously from Send could deadlock; going through this queue, nothing
// but runReporter ever waits on the Reporter.
type reportQueue struct {
	mu sync.Mutex
	// unreachable is a set: a burst of drops to one peer becomes a single
	// report, which is all raft needs.
	unreachable map[uint64]struct{}
	// snapshots are kept in full and in order: raft waits for exactly one
	// status per MsgSnap.
	snapshots []snapshotStatus
	wake      chan struct{} // capacity 1: "there is something to report"
}

type snapshotStatus struct {
	id     uint64
	status raft.SnapshotStatus
}

func newReportQueue() *reportQueue {
	return &reportQueue{unreachable: make(map[uint64]struct{}), wake: make(chan struct{}, 1)}
}

func (q *reportQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default: // already signalled; runReporter will see our entry too
	}
}

// reportUnreachable queues ReportUnreachable(id); it never blocks.
func (t *Transport) reportUnreachable(id uint64) {
	q := t.reports
	q.mu.Lock()
	q.unreachable[id] = struct{}{}
	q.mu.Unlock()
	q.signal()
}

// reportSnapshot queues ReportSnapshot(id, st); it never blocks.
func (t *Transport) reportSnapshot(id uint64, st raft.SnapshotStatus) {
	q := t.reports
	q.mu.Lock()
	q.snapshots = append(q.snapshots, snapshotStatus{id, st})
	q.mu.Unlock()
	q.signal()
}

// runReporter delivers queued reports until Stop. Reports still queued at
// Stop are dropped: raft is going away too.
func (t *Transport) runReporter() {
	defer t.wg.Done()
	q := t.reports
	var ids []uint64
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-q.wake:
		}
		q.mu.Lock()
		ids = ids[:0]
		for id := range q.unreachable {
			ids = append(ids, id)
		}
		clear(q.unreachable)
		snaps := q.snapshots
		q.snapshots = nil
		q.mu.Unlock()

		for _, id := range ids {
			if t.stopping() {
				return
			}
			t.reporter.ReportUnreachable(id)
		}
		for _, s := range snaps {
			if t.stopping() {
				return
			}
			t.reporter.ReportSnapshot(s.id, s.status)
		}
	}
}
