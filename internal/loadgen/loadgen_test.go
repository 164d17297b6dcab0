package loadgen

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testDeadline bounds every wait; a bug shows as a failure, not a hang.
const testDeadline = 20 * time.Second

func ms(n ...int) []time.Duration {
	out := make([]time.Duration, len(n))
	for i, v := range n {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func oneToN(n int) []time.Duration {
	var v []int
	for i := 1; i <= n; i++ {
		v = append(v, i)
	}
	return ms(v...)
}

func TestPercentile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"none", nil, 50, 0},
		{"one", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"three p50", ms(1, 2, 3), 50, 2 * time.Millisecond},
		{"four p50", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"four p90", ms(1, 2, 3, 4), 90, 4 * time.Millisecond},
		{"hundred p50", oneToN(100), 50, 50 * time.Millisecond},
		{"hundred p90", oneToN(100), 90, 90 * time.Millisecond},
		{"hundred p99", oneToN(100), 99, 99 * time.Millisecond},
		{"hundred p100", oneToN(100), 100, 100 * time.Millisecond},
		{"thousand p99", oneToN(1000), 99, 990 * time.Millisecond},
		{"tiny p", ms(5, 6), 0.0001, 5 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.samples, tc.p); got != tc.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tc.samples, tc.p, got, tc.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	if got := Summarize(nil); got != (Stats{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", got)
	}
	got := Summarize(ms(1, 2, 3, 4, 100))
	want := Stats{
		Count: 5,
		Min:   1 * time.Millisecond,
		Mean:  22 * time.Millisecond,
		P50:   3 * time.Millisecond,
		P90:   100 * time.Millisecond,
		P99:   100 * time.Millisecond,
		Max:   100 * time.Millisecond,
	}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
}

func TestResultRate(t *testing.T) {
	r := Result{Done: 30, Errors: 10, Elapsed: 2 * time.Second}
	if got := r.Rate(); got != 10 {
		t.Errorf("Rate = %v, want 10 (20 successes in 2s)", got)
	}
	if got := (Result{Done: 5}).Rate(); got != 0 {
		t.Errorf("Rate with no elapsed time = %v, want 0", got)
	}
}

// runBounded runs Run under testDeadline.
func runBounded(t *testing.T, ctx context.Context, cfg Config, op Op) Result {
	t.Helper()
	type out struct {
		r   Result
		err error
	}
	ch := make(chan out, 1)
	go func() {
		r, err := Run(ctx, cfg, op)
		ch <- out{r, err}
	}()
	select {
	case o := <-ch:
		if o.err != nil {
			t.Fatalf("Run: %v", o.err)
		}
		return o.r
	case <-time.After(testDeadline):
		t.Fatalf("Run did not return within %s", testDeadline)
		return Result{}
	}
}

func TestRunDoesEachOperationOnce(t *testing.T) {
	for _, tc := range []struct{ clients, total int }{
		{1, 1}, {1, 50}, {8, 1000}, {8, 3}, {3, 0}, {100, 100},
	} {
		t.Run(fmt.Sprintf("%d clients %d ops", tc.clients, tc.total), func(t *testing.T) {
			var mu sync.Mutex
			seen := map[int]int{}
			var inFlight, maxInFlight atomic.Int64
			clientsSeen := map[int]bool{}
			r := runBounded(t, context.Background(), Config{Clients: tc.clients, Total: tc.total}, func(_ context.Context, client, seq int) error {
				n := inFlight.Add(1)
				defer inFlight.Add(-1)
				for {
					m := maxInFlight.Load()
					if n <= m || maxInFlight.CompareAndSwap(m, n) {
						break
					}
				}
				mu.Lock()
				defer mu.Unlock()
				seen[seq]++
				clientsSeen[client] = true
				return nil
			})
			if len(seen) != tc.total {
				t.Errorf("%d distinct seqs ran, want %d", len(seen), tc.total)
			}
			for seq := range tc.total {
				if seen[seq] != 1 {
					t.Errorf("seq %d ran %d times, want once", seq, seen[seq])
				}
			}
			for c := range clientsSeen {
				if c < 0 || c >= tc.clients {
					t.Errorf("client number %d out of range [0,%d)", c, tc.clients)
				}
			}
			if got := maxInFlight.Load(); got > int64(tc.clients) {
				t.Errorf("%d operations ran at once, more than %d clients", got, tc.clients)
			}
			if r.Done != tc.total || r.Errors != 0 || r.Succeeded() != tc.total || r.Interrupted || r.GaveUp {
				t.Errorf("result %+v, want %d done, no errors", r, tc.total)
			}
			if len(r.Latencies) != tc.total || !slices.IsSorted(r.Latencies) {
				t.Errorf("%d latencies (sorted %v), want %d sorted", len(r.Latencies), slices.IsSorted(r.Latencies), tc.total)
			}
			if r.Clients != tc.clients || r.Total != tc.total {
				t.Errorf("result clients/total %d/%d, want %d/%d", r.Clients, r.Total, tc.clients, tc.total)
			}
		})
	}
}

func TestRunUsesAllClientsConcurrently(t *testing.T) {
	// Each of the first 4 operations waits until all 4 have started: it
	// can only finish if 4 clients run at once.
	const clients = 4
	var started atomic.Int64
	all := make(chan struct{})
	r := runBounded(t, context.Background(), Config{Clients: clients, Total: 20}, func(ctx context.Context, _, seq int) error {
		if seq < clients {
			if started.Add(1) == clients {
				close(all)
			}
			select {
			case <-all:
			case <-time.After(testDeadline):
				return errors.New("the other clients never started")
			}
		}
		return nil
	})
	if r.Done != 20 || r.Errors != 0 {
		t.Fatalf("result %+v, want 20 done and no errors (groups %v)", r, r.ErrorGroups)
	}
}

func TestRunCountsAndGroupsErrors(t *testing.T) {
	boom, bang := errors.New("boom"), errors.New("bang")
	r := runBounded(t, context.Background(), Config{Clients: 5, Total: 300}, func(_ context.Context, _, seq int) error {
		switch {
		case seq%3 == 0:
			return fmt.Errorf("op %d: %w", seq, boom)
		case seq%5 == 0:
			return bang
		}
		return nil
	})
	// seq%3==0: 100; seq%5==0 but not %3: 60 - 20 = 40.
	if r.Done != 300 || r.Errors != 140 || r.Succeeded() != 160 || len(r.Latencies) != 160 {
		t.Fatalf("done %d errors %d succeeded %d latencies %d, want 300/140/160/160", r.Done, r.Errors, r.Succeeded(), len(r.Latencies))
	}
	// Grouped by err.Error() by default: each "op N: boom" is its own,
	// up to MaxGroups per client.
	total := 0
	for _, g := range r.ErrorGroups {
		total += g.Count
	}
	if total != 140 {
		t.Errorf("groups count %d errors, want 140", total)
	}

	// With a GroupKey: two groups, most frequent first, each with an
	// example error.
	r = runBounded(t, context.Background(), Config{
		Clients: 5, Total: 300,
		GroupKey: func(err error) string {
			if errors.Is(err, boom) {
				return "boom"
			}
			return err.Error()
		},
	}, func(_ context.Context, _, seq int) error {
		switch {
		case seq%3 == 0:
			return fmt.Errorf("op %d: %w", seq, boom)
		case seq%5 == 0:
			return bang
		}
		return nil
	})
	if len(r.ErrorGroups) != 2 {
		t.Fatalf("groups %+v, want boom and bang", r.ErrorGroups)
	}
	if g := r.ErrorGroups[0]; g.Message != "boom" || g.Count != 100 || !errors.Is(g.First, boom) {
		t.Errorf("first group %+v, want boom ×100 with a boom error", g)
	}
	if g := r.ErrorGroups[1]; g.Message != "bang" || g.Count != 40 || !errors.Is(g.First, bang) {
		t.Errorf("second group %+v, want bang ×40", g)
	}
}

func TestRunCapsDistinctErrorMessages(t *testing.T) {
	r := runBounded(t, context.Background(), Config{Clients: 1, Total: MaxGroups + 36}, func(_ context.Context, _, seq int) error {
		return fmt.Errorf("e%03d", seq)
	})
	if len(r.ErrorGroups) != MaxGroups+1 {
		t.Fatalf("%d groups, want %d plus %q", len(r.ErrorGroups), MaxGroups, OtherErrors)
	}
	if g := r.ErrorGroups[0]; g.Message != OtherErrors || g.Count != 36 {
		t.Errorf("first group %+v, want %q ×36", g, OtherErrors)
	}
}

func TestRunInterruptedReportsPartialCount(t *testing.T) {
	const clients, fast = 4, 10
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	blocked := make(chan int, 1000)
	var after atomic.Int64
	resc := make(chan Result, 1)
	go func() {
		r, err := Run(ctx, Config{Clients: clients, Total: 1000}, func(ctx context.Context, _, seq int) error {
			if seq < fast {
				return nil
			}
			blocked <- seq
			<-ctx.Done()
			after.Add(1)
			return ctx.Err()
		})
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		resc <- r
	}()
	// Once every client is stuck in a slow operation, the fast ones are
	// all done.
	for range clients {
		select {
		case <-blocked:
		case <-time.After(testDeadline):
			t.Fatal("the clients never reached the slow operations")
		}
	}
	cancel()
	var r Result
	select {
	case r = <-resc:
	case <-time.After(testDeadline):
		t.Fatal("Run did not stop after cancel")
	}
	if !r.Interrupted || r.GaveUp {
		t.Errorf("interrupted %v gave up %v, want interrupted only", r.Interrupted, r.GaveUp)
	}
	if r.Done != fast || r.Errors != 0 || len(r.Latencies) != fast {
		t.Errorf("done %d errors %d latencies %d, want %d done, the cut-short ones not counted", r.Done, r.Errors, len(r.Latencies), fast)
	}
	if got := after.Load(); got != clients {
		t.Errorf("%d slow operations ran, want %d (no new ones after cancel)", got, clients)
	}
}

func TestRunNotInterruptedWhenAllDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := runBounded(t, ctx, Config{Clients: 2, Total: 6}, func(context.Context, int, int) error { return nil })
	cancel()
	if r.Interrupted {
		t.Error("a run that finished every operation is not interrupted")
	}
}

func TestRunTimeoutAppliesToEachOperation(t *testing.T) {
	r := runBounded(t, context.Background(), Config{Clients: 2, Total: 4, Timeout: 20 * time.Millisecond}, func(ctx context.Context, _, seq int) error {
		if seq%2 == 0 {
			return nil
		}
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("no deadline")
		}
		<-ctx.Done()
		return ctx.Err()
	})
	if r.Done != 4 || r.Errors != 2 || r.Interrupted {
		t.Fatalf("result %+v, want 4 done with 2 timeouts", r)
	}
	if len(r.ErrorGroups) != 1 || !errors.Is(r.ErrorGroups[0].First, context.DeadlineExceeded) {
		t.Errorf("groups %+v, want one deadline group", r.ErrorGroups)
	}
}

func TestRunGivesUpWhenNothingSucceeds(t *testing.T) {
	var ran atomic.Int64
	r := runBounded(t, context.Background(), Config{Clients: 2, Total: 100000, GiveUpAfter: 10}, func(context.Context, int, int) error {
		ran.Add(1)
		return errors.New("nobody home")
	})
	if !r.GaveUp || r.Interrupted {
		t.Fatalf("gave up %v interrupted %v, want a give-up", r.GaveUp, r.Interrupted)
	}
	if r.Done < 10 || r.Done > 12 || r.Errors != r.Done {
		t.Errorf("done %d errors %d, want 10 to 12 failures (one more per other client at most)", r.Done, r.Errors)
	}

	// One success keeps the run going.
	r = runBounded(t, context.Background(), Config{Clients: 1, Total: 50, GiveUpAfter: 10}, func(_ context.Context, _, seq int) error {
		if seq == 0 {
			return nil
		}
		return errors.New("flaky")
	})
	if r.GaveUp || r.Done != 50 || r.Errors != 49 {
		t.Errorf("result gave up %v done %d errors %d, want all 50 done", r.GaveUp, r.Done, r.Errors)
	}
}

func TestRunReportsProgress(t *testing.T) {
	var mu sync.Mutex
	var calls []Progress
	sawOne := make(chan struct{})
	var once sync.Once
	r := runBounded(t, context.Background(), Config{
		Clients: 3, Total: 30, ProgressEvery: time.Millisecond,
		Progress: func(p Progress) {
			mu.Lock()
			calls = append(calls, p)
			mu.Unlock()
			if p.Done >= 1 {
				once.Do(func() { close(sawOne) })
			}
		},
	}, func(_ context.Context, _, seq int) error {
		if seq == 0 {
			return nil
		}
		// The rest wait until a progress report has shown the first.
		select {
		case <-sawOne:
			return nil
		case <-time.After(testDeadline):
			return errors.New("no progress report")
		}
	})
	if r.Done != 30 || r.Errors != 0 {
		t.Fatalf("result %+v, want 30 done (groups %v)", r, r.ErrorGroups)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) < 2 {
		t.Fatalf("%d progress calls, want a periodic one and the final one", len(calls))
	}
	last := calls[len(calls)-1]
	if last.Done != 30 || last.Total != 30 || last.Errors != 0 {
		t.Errorf("final progress %+v, want 30/30", last)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i].Done < calls[i-1].Done {
			t.Errorf("progress went backwards: %+v then %+v", calls[i-1], calls[i])
		}
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	op := func(context.Context, int, int) error { return nil }
	for _, tc := range []struct {
		name string
		cfg  Config
		op   Op
	}{
		{"no clients", Config{Clients: 0, Total: 1}, op},
		{"negative total", Config{Clients: 1, Total: -1}, op},
		{"nil op", Config{Clients: 1, Total: 1}, nil},
	} {
		if _, err := Run(context.Background(), tc.cfg, tc.op); err == nil {
			t.Errorf("%s: Run accepted %+v", tc.name, tc.cfg)
		}
	}
}
