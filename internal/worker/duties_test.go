package worker

import (
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

func TestLeaderDutiesGraceOnNewTermThenDown(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ws := []*pb.Worker{{Id: 1, State: pb.WorkerState_WORKER_STATE_READY}}
	mon := NewMonitor(5 * time.Second)
	d := NewLeaderDuties(mon, time.Hour)

	if p := d.Tick(DutyInput{Now: t0, Leader: false, Term: 3, Workers: ws}); len(p.Transitions) != 0 || p.PurgeBefore != 0 {
		t.Fatalf("a follower planned %+v", p)
	}
	// Leading term 3 from t0+10s: the worker last heartbeated to someone
	// else, so it gets a full TTL from the first tick of the term.
	if p := d.Tick(DutyInput{Now: t0.Add(10 * time.Second), Leader: true, Term: 3, Workers: ws}); len(p.Transitions) != 0 {
		t.Fatalf("first tick of a term planned %+v", p)
	}
	if p := d.Tick(DutyInput{Now: t0.Add(14 * time.Second), Leader: true, Term: 3, Workers: ws}); len(p.Transitions) != 0 {
		t.Fatalf("within the grace: %+v", p)
	}
	p := d.Tick(DutyInput{Now: t0.Add(16 * time.Second), Leader: true, Term: 3, Workers: ws})
	if len(p.Transitions) != 1 || p.Transitions[0] != (Transition{1, pb.WorkerState_WORKER_STATE_DOWN}) {
		t.Fatalf("after the TTL: %+v, want worker 1 down", p)
	}
	// Losing and regaining leadership (a new term) grants grace again.
	mon.Done(1)
	d.Tick(DutyInput{Now: t0.Add(17 * time.Second), Leader: false, Term: 4, Workers: ws})
	if p := d.Tick(DutyInput{Now: t0.Add(30 * time.Second), Leader: true, Term: 5, Workers: ws}); len(p.Transitions) != 0 {
		t.Fatalf("first tick of term 5 planned %+v", p)
	}
}

func TestLeaderDutiesPurgeOnceUntilDone(t *testing.T) {
	t0 := time.Unix(100000, 0)
	d := NewLeaderDuties(NewMonitor(5*time.Second), time.Hour)
	in := DutyInput{Now: t0, Leader: true, Term: 1}
	d.Tick(in) // the term's first tick
	in.OldestFinished = t0.Add(-30 * time.Minute).UnixNano()
	if p := d.Tick(in); p.PurgeBefore != 0 {
		t.Fatalf("purge of tasks younger than the retention: %+v", p)
	}
	in.OldestFinished = t0.Add(-2 * time.Hour).UnixNano()
	p := d.Tick(in)
	if want := t0.Add(-time.Hour).UnixNano(); p.PurgeBefore != want {
		t.Fatalf("PurgeBefore = %d, want %d", p.PurgeBefore, want)
	}
	if p := d.Tick(in); p.PurgeBefore != 0 {
		t.Fatalf("a second purge while one is in flight: %+v", p)
	}
	d.PurgeDone()
	if p := d.Tick(in); p.PurgeBefore == 0 {
		t.Fatal("no purge after the previous one ended")
	}
}
