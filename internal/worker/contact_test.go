package worker

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/clock"
)

// steppedClock is a fake clock whose Now hands each call to the test and
// waits for it to go on, so the test sees RenewLease between iterations:
// every earlier iteration finished, the current one not yet acting.
type steppedClock struct {
	*clock.Fake
	nows chan time.Time
	goOn chan struct{}
}

func (c steppedClock) Now() time.Time {
	now := c.Fake.Now()
	c.nows <- now
	<-c.goOn
	return now
}

func TestRenewLeaseOnlyWhileInContact(t *testing.T) {
	t0 := time.Unix(5000, 0)
	const every, gate = 500 * time.Millisecond, 5 * time.Second
	clk := steppedClock{Fake: clock.NewFake(t0), nows: make(chan time.Time), goOn: make(chan struct{})}
	contact := NewContact(t0) // a fresh process: contact counts from its start
	var renewals atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		RenewLease(ctx, clk, every, contact, gate, func() error { renewals.Add(1); return nil }, nil)
	}()
	defer func() {
		cancel()
		// Let a pending Now through, then wait for the loop to end.
		close(clk.goOn)
		go func() {
			for range clk.nows {
			}
		}()
		wg.Wait()
		close(clk.nows)
	}()
	// waitNow waits for an iteration to start; the caller lets it go on.
	waitNow := func(what string) {
		t.Helper()
		select {
		case <-clk.nows:
		case <-time.After(10 * time.Second):
			t.Fatalf("RenewLease never reached the iteration %s", what)
		}
	}
	waitNow("at start")
	// step lets the current iteration go on, moves the clock a period and
	// returns how many renewals the iterations before the new one made.
	step := func(at time.Duration) int64 {
		t.Helper()
		clk.goOn <- struct{}{}
		clk.Advance(every)
		waitNow("at " + at.String())
		return renewals.Load()
	}
	// From the start: renewals for the gate (no heartbeat has succeeded).
	at := time.Duration(0)
	for at < gate-every {
		at += every
		if got, want := step(at), int64(at/every); got != want {
			t.Fatalf("at %v: %d renewals, want %d (within the gate from the start)", at, got, want)
		}
	}
	before := renewals.Load()
	// Past the gate: no renewal.
	for range 6 {
		at += every
		step(at)
	}
	at += every
	if got := step(at); got != before+1 {
		// The iteration at gate-every (4.5 s) renewed; none after it.
		t.Fatalf("after the gate ran out: %d renewals, want %d", got, before+1)
	}
	// A heartbeat sent now succeeds: renewals resume with the iteration
	// now waiting (at 8 s) and the next.
	contact.Succeeded(clk.Fake.Now())
	n := renewals.Load()
	at += every
	step(at)
	at += every
	if got := step(at); got != n+2 {
		t.Fatalf("after a successful heartbeat: %d renewals, want %d", got, n+2)
	}
	// An answer to an older heartbeat does not move the contact back.
	contact.Succeeded(t0)
	if got := contact.Last(); !got.Equal(t0.Add(at - 2*every)) {
		t.Fatalf("Last = %v after a stale success, want %v", got, t0.Add(at-2*every))
	}
}

// hbCluster answers heartbeats with a fixed response or error.
type hbCluster struct {
	mu   sync.Mutex
	resp *pb.HeartbeatResponse
	err  error
}

func (c *hbCluster) Register(context.Context, *pb.Worker) error { return nil }
func (c *hbCluster) ReportUsage(context.Context, *pb.WorkerStatus) error {
	return nil
}
func (c *hbCluster) Heartbeat(context.Context, uint64) (*pb.HeartbeatResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resp, c.err
}

func TestAgentRecordsContactOnlyForHeartbeatsOfAReadyWorker(t *testing.T) {
	t0 := time.Unix(7000, 0)
	clk := clock.NewFake(t0)
	contact := NewContact(t0.Add(-time.Hour))
	cl := &hbCluster{resp: &pb.HeartbeatResponse{Registered: true, Down: true}}
	a := NewAgent(AgentConfig{Worker: &pb.Worker{Id: 3}, Clock: clk, Contact: contact}, cl)
	var core AgentCore
	a.do(context.Background(), &core, core.Start()) // registers
	a.do(context.Background(), &core, core.Beat())
	if got := contact.Last(); !got.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("a heartbeat answered 'down' counted as contact: last %v", got)
	}
	clk.Advance(time.Second)
	cl.resp = nil
	cl.err = context.DeadlineExceeded
	a.do(context.Background(), &core, core.Beat())
	if got := contact.Last(); !got.Equal(t0.Add(-time.Hour)) {
		t.Fatalf("a failed heartbeat counted as contact: last %v", got)
	}
	clk.Advance(time.Second)
	cl.resp, cl.err = &pb.HeartbeatResponse{Registered: true}, nil
	a.do(context.Background(), &core, core.Beat())
	if got := contact.Last(); !got.Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("contact after a successful heartbeat sent at +2s: %v", got)
	}
}
