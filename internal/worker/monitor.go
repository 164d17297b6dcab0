// Package worker is the worker side of a node (registration, heartbeats,
// usage reports) and the leader's view of worker liveness.
package worker

import (
	"sort"
	"sync"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// Monitor is the leader's in-memory record of worker heartbeats. Only
// state transitions (ready→down, down→ready) go through raft; a heartbeat
// itself never does, so a thousand workers cost no log writes.
type Monitor struct {
	ttl time.Duration

	mu       sync.Mutex
	lastSeen map[uint64]time.Time
	inFlight map[uint64]pb.WorkerState // transitions proposed but not yet applied
}

// NewMonitor returns a monitor that declares a worker down after ttl
// without a heartbeat.
func NewMonitor(ttl time.Duration) *Monitor {
	return &Monitor{ttl: ttl, lastSeen: map[uint64]time.Time{}, inFlight: map[uint64]pb.WorkerState{}}
}

// Reset starts a fresh leadership: every known worker gets a full TTL of
// grace from now, since the new leader has no heartbeat history.
func (m *Monitor) Reset(now time.Time, workers []*pb.Worker) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastSeen = map[uint64]time.Time{}
	m.inFlight = map[uint64]pb.WorkerState{}
	for _, w := range workers {
		m.lastSeen[w.GetId()] = now
	}
}

// Seen records a heartbeat.
func (m *Monitor) Seen(id uint64, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lastSeen[id] = now
}

// LastSeen returns the last heartbeat time (zero if none).
func (m *Monitor) LastSeen(id uint64) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastSeen[id]
}

// Transition is a worker state change the leader should propose.
type Transition struct {
	WorkerID uint64
	To       pb.WorkerState
}

// Check compares heartbeats with the replicated worker states and returns
// the transitions to propose, marking them in flight so they are proposed
// once. Call Done when a proposal finishes (applied or failed).
func (m *Monitor) Check(now time.Time, workers []*pb.Worker) []Transition {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Transition
	for _, w := range workers {
		id := w.GetId()
		seen, ok := m.lastSeen[id]
		if !ok {
			// Registered since this leadership began: start its clock now.
			m.lastSeen[id] = now
			seen = now
		}
		alive := now.Sub(seen) <= m.ttl
		want := pb.WorkerState_WORKER_STATE_DOWN
		if alive {
			want = pb.WorkerState_WORKER_STATE_READY
		}
		if w.GetState() == want {
			continue
		}
		if st, busy := m.inFlight[id]; busy && st == want {
			continue
		}
		m.inFlight[id] = want
		out = append(out, Transition{WorkerID: id, To: want})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].WorkerID < out[j].WorkerID })
	return out
}

// Done forgets an in-flight transition so it can be proposed again if
// still needed.
func (m *Monitor) Done(id uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.inFlight, id)
}
