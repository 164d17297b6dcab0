package worker

import (
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// LeaderDuties decides what a node proposes as leader on each tick of its
// duty loop: worker state changes from the heartbeat Monitor, releases of
// the VMs of workers that stayed down for the VM grace, and purges of old
// final tasks. It is deterministic and single-threaded (no clock,
// no goroutines, no I/O): the server's loop and the simulation call Tick
// with what the node knows and carry out the plan; the caller serialises
// calls.
type LeaderDuties struct {
	mon       *Monitor
	retention time.Duration
	vmGrace   time.Duration
	ledTerm   uint64 // the term this node last led; 0: not leading
	purging   bool
	// downSince is when this leadership first saw each down worker that
	// holds VMs; releasing, the releases proposed and not yet done.
	downSince map[uint64]time.Time
	releasing map[uint64]bool
}

// DutyInput is what one tick knows.
type DutyInput struct {
	Now    time.Time
	Leader bool   // this node leads
	Term   uint64 // its current term
	// Workers is the registered workers (state.Machine.Workers).
	Workers []*pb.Worker
	// OldestFinished is when the oldest final task finished (unix nanos,
	// wall clock); 0 when there is none.
	OldestFinished int64
	// DownVMHolders is the down workers that still hold VMs
	// (state.Machine.VMsHeldByDownWorkers).
	DownVMHolders []uint64
}

// DutyPlan is what to propose. Each Transition's proposal must end with
// Monitor.Done(WorkerID), whatever its outcome; a purge must end with
// PurgeDone.
type DutyPlan struct {
	Transitions []Transition
	// PurgeBefore, if not zero, asks for PurgeTasks with
	// FinishedBeforeUnixNano = PurgeBefore.
	PurgeBefore int64
	// ReleaseVMs is the workers whose VMs to release (ReleaseVMs, one
	// proposal each); each must end with ReleaseDone.
	ReleaseVMs []uint64
}

// NewLeaderDuties returns the duties over mon, purging final tasks that
// finished more than retention ago and releasing the VMs of a down worker
// once this leader has seen it down, and heard nothing from it, for
// vmGrace.
func NewLeaderDuties(mon *Monitor, retention, vmGrace time.Duration) *LeaderDuties {
	return &LeaderDuties{mon: mon, retention: retention, vmGrace: vmGrace,
		downSince: map[uint64]time.Time{}, releasing: map[uint64]bool{}}
}

// Tick is one round of the leader's duties. A node that starts leading (a
// new term) first gives every worker a full TTL of grace: heartbeats went
// to the previous leader.
func (d *LeaderDuties) Tick(in DutyInput) DutyPlan {
	if !in.Leader {
		d.ledTerm = 0
		return DutyPlan{}
	}
	if in.Term != d.ledTerm {
		// The VM grace starts over too: this leader measures it on its
		// own clock from when it sees the worker down.
		d.ledTerm = in.Term
		d.mon.Reset(in.Now, in.Workers)
		clear(d.downSince)
		clear(d.releasing)
		return DutyPlan{}
	}
	p := DutyPlan{Transitions: d.mon.Check(in.Now, in.Workers)}
	p.ReleaseVMs = d.releases(in)
	if cutoff := in.Now.Add(-d.retention).UnixNano(); !d.purging && in.OldestFinished != 0 && in.OldestFinished < cutoff {
		d.purging = true
		p.PurgeBefore = cutoff
	}
	return p
}

// releases returns the down workers whose VMs are due for release: seen
// down by this leadership, with no heartbeat heard, for the VM grace.
func (d *LeaderDuties) releases(in DutyInput) []uint64 {
	var out []uint64
	held := map[uint64]bool{}
	for _, id := range in.DownVMHolders {
		held[id] = true
		since, ok := d.downSince[id]
		if !ok {
			since = in.Now
			d.downSince[id] = since
		}
		if seen := d.mon.LastSeen(id); seen.After(since) {
			since = seen
		}
		if in.Now.Sub(since) >= d.vmGrace && !d.releasing[id] {
			d.releasing[id] = true
			out = append(out, id)
		}
	}
	for id := range d.downSince {
		if !held[id] {
			// Back, or released: a later down transition starts over.
			delete(d.downSince, id)
		}
	}
	return out
}

// ReleaseDone says a release the plan asked for has ended (applied or
// not); the next tick may ask again if the worker still holds VMs.
func (d *LeaderDuties) ReleaseDone(id uint64) { delete(d.releasing, id) }

// PurgeDone says the purge a plan asked for has ended (applied or not);
// the next tick may ask again.
func (d *LeaderDuties) PurgeDone() { d.purging = false }
