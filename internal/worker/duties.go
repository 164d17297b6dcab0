package worker

import (
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// LeaderDuties decides what a node proposes as leader on each tick of its
// duty loop: worker state changes from the heartbeat Monitor, and purges
// of old final tasks. It is deterministic and single-threaded (no clock,
// no goroutines, no I/O): the server's loop and the simulation call Tick
// with what the node knows and carry out the plan; the caller serialises
// calls.
type LeaderDuties struct {
	mon       *Monitor
	retention time.Duration
	ledTerm   uint64 // the term this node last led; 0: not leading
	purging   bool
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
}

// DutyPlan is what to propose. Each Transition's proposal must end with
// Monitor.Done(WorkerID), whatever its outcome; a purge must end with
// PurgeDone.
type DutyPlan struct {
	Transitions []Transition
	// PurgeBefore, if not zero, asks for PurgeTasks with
	// FinishedBeforeUnixNano = PurgeBefore.
	PurgeBefore int64
}

// NewLeaderDuties returns the duties over mon, purging final tasks that
// finished more than retention ago.
func NewLeaderDuties(mon *Monitor, retention time.Duration) *LeaderDuties {
	return &LeaderDuties{mon: mon, retention: retention}
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
		d.ledTerm = in.Term
		d.mon.Reset(in.Now, in.Workers)
		return DutyPlan{}
	}
	p := DutyPlan{Transitions: d.mon.Check(in.Now, in.Workers)}
	if cutoff := in.Now.Add(-d.retention).UnixNano(); !d.purging && in.OldestFinished != 0 && in.OldestFinished < cutoff {
		d.purging = true
		p.PurgeBefore = cutoff
	}
	return p
}

// PurgeDone says the purge a plan asked for has ended (applied or not);
// the next tick may ask again.
func (d *LeaderDuties) PurgeDone() { d.purging = false }
