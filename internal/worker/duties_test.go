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
	d := NewLeaderDuties(mon, time.Hour, 10*time.Second)

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
	d := NewLeaderDuties(NewMonitor(5*time.Second), time.Hour, 10*time.Second)
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

func TestLeaderDutiesReleaseVMsAfterTheGraceFromDown(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const grace = 10 * time.Second
	mon := NewMonitor(5 * time.Second)
	d := NewLeaderDuties(mon, time.Hour, grace)
	down := []*pb.Worker{{Id: 1, State: pb.WorkerState_WORKER_STATE_DOWN}, {Id: 2, State: pb.WorkerState_WORKER_STATE_DOWN}}
	tick := func(at time.Duration, holders ...uint64) DutyPlan {
		return d.Tick(DutyInput{Now: t0.Add(at), Leader: true, Term: 2, Workers: down, DownVMHolders: holders})
	}
	tick(0) // the term's first tick
	// Worker 1 is seen down (holding VMs) at 6s; worker 2 holds none.
	for _, at := range []time.Duration{6 * time.Second, 10 * time.Second, 15900 * time.Millisecond} {
		if p := tick(at, 1); len(p.ReleaseVMs) != 0 {
			t.Fatalf("at %v, within the grace from 6s: released %v", at, p.ReleaseVMs)
		}
	}
	p := tick(16*time.Second, 1)
	if len(p.ReleaseVMs) != 1 || p.ReleaseVMs[0] != 1 {
		t.Fatalf("at 16s (grace over): release %v, want [1]", p.ReleaseVMs)
	}
	if p := tick(17*time.Second, 1); len(p.ReleaseVMs) != 0 {
		t.Fatalf("a second release while one is in flight: %v", p.ReleaseVMs)
	}
	d.ReleaseDone(1)
	if p := tick(18*time.Second, 1); len(p.ReleaseVMs) != 1 {
		t.Fatalf("no retry after a failed release: %v", p.ReleaseVMs)
	}
	d.ReleaseDone(1)
	// Released (no longer a holder); a later down period starts over, and
	// a heartbeat heard meanwhile restarts the grace.
	tick(19 * time.Second)
	tick(30*time.Second, 1)
	mon.Seen(1, t0.Add(35*time.Second))
	if p := tick(41*time.Second, 1); len(p.ReleaseVMs) != 0 {
		t.Fatalf("released 6s after a heartbeat: %v", p.ReleaseVMs)
	}
	if p := tick(45*time.Second, 1); len(p.ReleaseVMs) != 1 {
		t.Fatalf("not released a grace after the last heartbeat: %v", p.ReleaseVMs)
	}
}

func TestLeaderDutiesNewLeaderRestartsTheVMGrace(t *testing.T) {
	t0 := time.Unix(1000, 0)
	mon := NewMonitor(5 * time.Second)
	d := NewLeaderDuties(mon, time.Hour, 10*time.Second)
	down := []*pb.Worker{{Id: 1, State: pb.WorkerState_WORKER_STATE_DOWN}}
	in := func(at time.Duration, leader bool, term uint64) DutyInput {
		return DutyInput{Now: t0.Add(at), Leader: leader, Term: term, Workers: down, DownVMHolders: []uint64{1}}
	}
	d.Tick(in(0, true, 2))
	d.Tick(in(time.Second, true, 2)) // worker 1 seen down at 1s
	// Leadership lost at 5s and won again (term 4) at 8s: the grace counts
	// from the new term's first look at the worker (9s), not from 1s.
	d.Tick(in(5*time.Second, false, 3))
	d.Tick(in(8*time.Second, true, 4))
	for _, at := range []time.Duration{9 * time.Second, 12 * time.Second, 18 * time.Second} {
		if p := d.Tick(in(at, true, 4)); len(p.ReleaseVMs) != 0 {
			t.Fatalf("at %v: released %v within the new leadership's grace", at, p.ReleaseVMs)
		}
	}
	if p := d.Tick(in(19*time.Second, true, 4)); len(p.ReleaseVMs) != 1 {
		t.Fatalf("at 19s: release %v, want [1]", p.ReleaseVMs)
	}
	// A follower releases nothing.
	if p := d.Tick(in(40*time.Second, false, 5)); len(p.ReleaseVMs) != 0 {
		t.Fatalf("a follower released %v", p.ReleaseVMs)
	}
}
