// Package loadgen runs one operation a fixed number of times over a number
// of concurrent clients, and summarizes how long the operations took and how
// they failed. It knows nothing of Blixard: the operation is a function,
// which keeps the load loop testable without a cluster.
package loadgen

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Op is one operation. client is the number, from 0, of the client running
// it; seq the operation's number, from 0, unique within a run. ctx carries
// the per-operation timeout.
type Op func(ctx context.Context, client, seq int) error

// OtherErrors is the message of the group that collects errors once a
// client has seen MaxGroups different messages.
const OtherErrors = "(other errors)"

// MaxGroups bounds the different error messages kept per client, so that
// messages naming unique things (IDs, ports) cannot grow without bound.
const MaxGroups = 64

// Config says how to run the load.
type Config struct {
	Clients int // concurrent clients, at least 1
	Total   int // operations in all, spread over the clients as they free up
	// Timeout bounds each operation; 0 means none.
	Timeout time.Duration
	// GroupKey names the group an error is counted in; nil groups by
	// err.Error().
	GroupKey func(error) string
	// GiveUpAfter, if positive, stops the run once that many operations
	// have finished and none of them succeeded (nothing there to measure).
	GiveUpAfter int
	// Progress, if set, is called every ProgressEvery (from one goroutine,
	// never two at once) while the run goes on, and once more when it ends.
	Progress      func(Progress)
	ProgressEvery time.Duration
}

// Progress is a snapshot of a running load.
type Progress struct {
	Done    int // operations finished, succeeded or failed
	Errors  int // of them, failed
	Total   int
	Elapsed time.Duration
}

// ErrorGroup counts the failures with one message.
type ErrorGroup struct {
	Message string
	Count   int
	First   error // one of the errors, for callers that map it further
}

// Result is what a run did.
type Result struct {
	Clients int
	Total   int // operations asked for
	Done    int // operations finished, succeeded or failed
	Errors  int // of them, failed
	Elapsed time.Duration
	// Latencies of the operations that succeeded, sorted.
	Latencies []time.Duration
	// ErrorGroups by message, most frequent first (then by message).
	ErrorGroups []ErrorGroup
	// Interrupted is set when ctx ended before every operation finished;
	// operations cut short by it are counted nowhere.
	Interrupted bool
	// GaveUp is set when the run stopped after GiveUpAfter failures and no
	// success.
	GaveUp bool
}

// Succeeded is the number of operations that succeeded.
func (r Result) Succeeded() int { return r.Done - r.Errors }

// Rate is the number of successful operations per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Succeeded()) / r.Elapsed.Seconds()
}

// Stats summarizes the latencies of the successful operations.
func (r Result) Stats() Stats { return Summarize(r.Latencies) }

// Stats summarizes a set of latencies.
type Stats struct {
	Count                         int
	Min, Mean, P50, P90, P99, Max time.Duration
}

// Summarize computes the statistics of sorted (ascending) latencies; all
// zero when there are none.
func Summarize(sorted []time.Duration) Stats {
	n := len(sorted)
	if n == 0 {
		return Stats{}
	}
	var sum float64
	for _, d := range sorted {
		sum += float64(d)
	}
	return Stats{
		Count: n,
		Min:   sorted[0],
		Mean:  time.Duration(math.Round(sum / float64(n))),
		P50:   Percentile(sorted, 50),
		P90:   Percentile(sorted, 90),
		P99:   Percentile(sorted, 99),
		Max:   sorted[n-1],
	}
}

// Percentile is the p-th percentile (0 < p <= 100) of sorted latencies by
// the nearest-rank method: the smallest sample that at least p percent of
// the samples do not exceed. It is always one of the samples; 0 when there
// are none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	return sorted[min(max(rank, 1), n)-1]
}

// clientRecord is what one client saw; only that client writes it.
type clientRecord struct {
	lats   []time.Duration
	groups map[string]*ErrorGroup
}

func (c *clientRecord) fail(key string, err error) {
	g, ok := c.groups[key]
	if !ok {
		if len(c.groups) >= MaxGroups {
			key = OtherErrors
			g, ok = c.groups[key]
		}
		if !ok {
			g = &ErrorGroup{Message: key, First: err}
			c.groups[key] = g
		}
	}
	g.Count++
}

// Run runs op cfg.Total times over cfg.Clients concurrent clients and
// waits for all of them. It stops early when ctx ends (Result.Interrupted)
// or when cfg.GiveUpAfter says so (Result.GaveUp). Every goroutine it starts
// has ended when it returns.
func Run(ctx context.Context, cfg Config, op Op) (Result, error) {
	if cfg.Clients < 1 {
		return Result{}, fmt.Errorf("loadgen: clients must be at least 1 (got %d)", cfg.Clients)
	}
	if cfg.Total < 0 {
		return Result{}, fmt.Errorf("loadgen: total must not be negative (got %d)", cfg.Total)
	}
	if op == nil {
		return Result{}, errors.New("loadgen: op is nil")
	}
	groupKey := cfg.GroupKey
	if groupKey == nil {
		groupKey = func(err error) string { return err.Error() }
	}

	// stop ends the run early without touching the caller's ctx: a give-up
	// is not an interruption.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var next, done, failed, succeeded atomic.Int64
	var gaveUp atomic.Bool
	start := time.Now()

	snapshot := func() Progress {
		return Progress{Done: int(done.Load()), Errors: int(failed.Load()), Total: cfg.Total, Elapsed: time.Since(start)}
	}
	var progressWG sync.WaitGroup
	progressDone := make(chan struct{})
	if cfg.Progress != nil && cfg.ProgressEvery > 0 {
		progressWG.Add(1)
		go func() {
			defer progressWG.Done()
			tick := time.NewTicker(cfg.ProgressEvery)
			defer tick.Stop()
			for {
				select {
				case <-progressDone:
					return
				case <-tick.C:
					cfg.Progress(snapshot())
				}
			}
		}()
	}

	workers := min(cfg.Clients, cfg.Total)
	records := make([]clientRecord, workers)
	var wg sync.WaitGroup
	for c := range workers {
		rec := &records[c]
		rec.groups = map[string]*ErrorGroup{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for runCtx.Err() == nil {
				seq := int(next.Add(1) - 1)
				if seq >= cfg.Total {
					return
				}
				opCtx, cancel := runCtx, context.CancelFunc(func() {})
				if cfg.Timeout > 0 {
					opCtx, cancel = context.WithTimeout(runCtx, cfg.Timeout)
				}
				t0 := time.Now()
				err := op(opCtx, c, seq)
				lat := time.Since(t0)
				cancel()
				if err != nil && runCtx.Err() != nil {
					return // cut short by the end of the run: not a result
				}
				if err == nil {
					rec.lats = append(rec.lats, lat)
					succeeded.Add(1)
					done.Add(1)
					continue
				}
				rec.fail(groupKey(err), err)
				failed.Add(1)
				n := done.Add(1)
				if cfg.GiveUpAfter > 0 && n >= int64(cfg.GiveUpAfter) && succeeded.Load() == 0 {
					// Every operation so far failed: nothing to measure.
					gaveUp.Store(true)
					stop()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(progressDone)
	progressWG.Wait()

	res := Result{
		Clients: cfg.Clients,
		Total:   cfg.Total,
		Done:    int(done.Load()),
		Errors:  int(failed.Load()),
		Elapsed: elapsed,
		GaveUp:  gaveUp.Load(),
	}
	res.Interrupted = ctx.Err() != nil && res.Done < res.Total
	res.Latencies, res.ErrorGroups = merge(records)
	if cfg.Progress != nil {
		cfg.Progress(Progress{Done: res.Done, Errors: res.Errors, Total: res.Total, Elapsed: elapsed})
	}
	return res, nil
}

// merge combines the clients' records: all latencies, sorted, and the
// error groups by message.
func merge(records []clientRecord) ([]time.Duration, []ErrorGroup) {
	n := 0
	for _, r := range records {
		n += len(r.lats)
	}
	lats := make([]time.Duration, 0, n)
	byMsg := map[string]*ErrorGroup{}
	for _, r := range records {
		lats = append(lats, r.lats...)
		for msg, g := range r.groups {
			if m, ok := byMsg[msg]; ok {
				m.Count += g.Count
			} else {
				cp := *g
				byMsg[msg] = &cp
			}
		}
	}
	slices.Sort(lats)
	groups := make([]ErrorGroup, 0, len(byMsg))
	for _, g := range byMsg {
		groups = append(groups, *g)
	}
	slices.SortFunc(groups, func(a, b ErrorGroup) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return cmp.Compare(a.Message, b.Message)
	})
	return lats, groups
}
