package scheduler

import (
	"cmp"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// wk is a ready worker that can also run VMs.
func wk(id uint64, cpu, mem int64, labels ...string) Worker {
	return Worker{ID: id, Capacity: Resources{cpu, mem}, Labels: kv(labels...), VMs: true}
}

func used(w Worker, cpu, mem int64) Worker {
	w.Used = Resources{cpu, mem}
	return w
}

// kv turns "k=v" strings into a map; nil for none, as callers would pass.
func kv(pairs ...string) map[string]string {
	if len(pairs) == 0 {
		return nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, _ := strings.Cut(p, "=")
		m[k] = v
	}
	return m
}

func tk(id string, cpu, mem int64) Task {
	return Task{ID: id, Resources: Resources{cpu, mem}}
}

type taskOpt func(*Task)

func with(t Task, opts ...taskOpt) Task {
	for _, o := range opts {
		o(&t)
	}
	return t
}

func prio(p int32) taskOpt    { return func(t *Task) { t.Priority = p } }
func seq(s uint64) taskOpt    { return func(t *Task) { t.Seq = s } }
func node(n uint64) taskOpt   { return func(t *Task) { t.Node = n } }
func spread() taskOpt         { return func(t *Task) { t.Policy = Spread } }
func policy(p Policy) taskOpt { return func(t *Task) { t.Policy = p } }
func notBefore(d time.Duration) taskOpt {
	return func(t *Task) { t.NotBefore = epoch.Add(d) }
}
func constraint(pairs ...string) taskOpt {
	return func(t *Task) { t.Constraints = kv(pairs...) }
}

func placed(pairs ...any) []Placement {
	var out []Placement
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, Placement{TaskID: pairs[i].(string), WorkerID: uint64(pairs[i+1].(int))})
	}
	return out
}

func unplaced(pairs ...string) []Unplaced {
	var out []Unplaced
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, Unplaced{TaskID: pairs[i], Reason: pairs[i+1]})
	}
	return out
}

func TestSchedule(t *testing.T) {
	tests := []struct {
		name    string
		now     time.Duration // after epoch
		workers []Worker
		pending []Task
		want    Plan
	}{
		{
			name:    "fits",
			workers: []Worker{wk(1, 2000, 1024)},
			pending: []Task{tk("t1", 500, 128)},
			want:    Plan{Placements: placed("t1", 1)},
		},
		{
			name:    "exact fit is allowed",
			workers: []Worker{used(wk(1, 2000, 1024), 1500, 1000)},
			pending: []Task{tk("t1", 500, 24)},
			want:    Plan{Placements: placed("t1", 1)},
		},
		{
			name:    "zero request fits a full worker",
			workers: []Worker{used(wk(1, 2000, 1024), 2000, 1024)},
			pending: []Task{tk("t1", 0, 0)},
			want:    Plan{Placements: placed("t1", 1)},
		},
		{
			name:    "over-commit refused on CPU within one pass",
			workers: []Worker{used(wk(1, 1000, 1000), 600, 0)},
			pending: []Task{with(tk("t1", 300, 1), seq(1)), with(tk("t2", 200, 1), seq(2)), with(tk("t3", 100, 1), seq(3))},
			want: Plan{
				Placements: placed("t1", 1),
				Unplaced:   unplaced("t2", "waiting for room", "t3", "waiting for room (room held for t2, ahead in queue)"),
			},
		},
		{
			name:    "over-commit refused on memory",
			workers: []Worker{wk(1, 8000, 1024)},
			pending: []Task{with(tk("t1", 1, 1000), seq(1)), with(tk("t2", 1, 25), seq(2))},
			want: Plan{
				Placements: placed("t1", 1),
				Unplaced:   unplaced("t2", "waiting for room"),
			},
		},
		{
			name:    "worker already over-committed takes nothing",
			workers: []Worker{used(wk(1, 1000, 1000), 1200, 0)},
			pending: []Task{tk("t1", 0, 0)},
			want:    Plan{Unplaced: unplaced("t1", "waiting for room")},
		},
		{
			name:    "no workers",
			pending: []Task{tk("t1", 1, 1)},
			want:    Plan{Unplaced: unplaced("t1", "no worker is available")},
		},
		{
			name:    "too big for CPU",
			workers: []Worker{wk(1, 2000, 8192), wk(2, 1000, 8192)},
			pending: []Task{tk("t1", 4000, 128)},
			want:    Plan{Unplaced: unplaced("t1", "needs 4000m CPU, largest worker offers 2000m")},
		},
		{
			name:    "too big for memory",
			workers: []Worker{wk(1, 2000, 4096)},
			pending: []Task{tk("t1", 100, 8192)},
			want:    Plan{Unplaced: unplaced("t1", "needs 8192MiB memory, largest worker offers 4096MiB")},
		},
		{
			name:    "too big for both",
			workers: []Worker{wk(1, 2000, 4096)},
			pending: []Task{tk("t1", 3000, 8192)},
			want: Plan{Unplaced: unplaced("t1",
				"needs 3000m CPU, largest worker offers 2000m; needs 8192MiB memory, largest worker offers 4096MiB")},
		},
		{
			name:    "CPU on one worker, memory on another, never both",
			workers: []Worker{wk(1, 4000, 1024), wk(2, 1000, 8192)},
			pending: []Task{tk("t1", 3000, 4096)},
			want:    Plan{Unplaced: unplaced("t1", "needs 3000m CPU and 4096MiB memory, no worker offers both")},
		},
		{
			name:    "too big among matching workers names the labels",
			workers: []Worker{wk(1, 8000, 8192, "zone=b"), wk(2, 2000, 8192, "zone=a")},
			pending: []Task{with(tk("t1", 4000, 1), constraint("zone=a"))},
			want:    Plan{Unplaced: unplaced("t1", "needs 4000m CPU, largest worker with zone=a offers 2000m")},
		},
		{
			name:    "constraint selects the matching worker",
			workers: []Worker{wk(1, 2000, 1024, "zone=b"), wk(2, 2000, 1024, "zone=a", "disk=ssd"), wk(3, 2000, 1024)},
			pending: []Task{with(tk("t1", 100, 100), constraint("zone=a"))},
			want:    Plan{Placements: placed("t1", 2)},
		},
		{
			name:    "every constraint must match",
			workers: []Worker{wk(1, 2000, 1024, "zone=a"), wk(2, 2000, 1024, "zone=a", "disk=ssd")},
			pending: []Task{with(tk("t1", 100, 100), constraint("zone=a", "disk=ssd"))},
			want:    Plan{Placements: placed("t1", 2)},
		},
		{
			name:    "no worker has the label",
			workers: []Worker{wk(1, 2000, 1024, "zone=a")},
			pending: []Task{with(tk("t1", 100, 100), constraint("zone=b"))},
			want:    Plan{Unplaced: unplaced("t1", "no worker has label zone=b")},
		},
		{
			name:    "labels exist but never together",
			workers: []Worker{wk(1, 2000, 1024, "zone=a"), wk(2, 2000, 1024, "disk=ssd")},
			pending: []Task{with(tk("t1", 100, 100), constraint("zone=a", "disk=ssd"))},
			want:    Plan{Unplaced: unplaced("t1", "no worker has all of labels disk=ssd,zone=a")},
		},
		{
			name:    "empty constraint value needs the label present",
			workers: []Worker{wk(1, 2000, 1024), wk(2, 2000, 1024, "gpu=")},
			pending: []Task{with(tk("t1", 100, 100), constraint("gpu="))},
			want:    Plan{Placements: placed("t1", 2)},
		},
		{
			name: "node pinning overrides bin-pack preference",
			// Bin-pack alone would pick worker 1, the fuller one.
			workers: []Worker{used(wk(1, 2000, 1024), 1000, 0), wk(2, 2000, 1024)},
			pending: []Task{with(tk("t1", 100, 100), node(2))},
			want:    Plan{Placements: placed("t1", 2)},
		},
		{
			name:    "pinned to a worker that is not available",
			workers: []Worker{wk(1, 2000, 1024)},
			pending: []Task{with(tk("t1", 100, 100), node(7))},
			want:    Plan{Unplaced: unplaced("t1", "worker 7 is not available")},
		},
		{
			name:    "pinned worker lacks a label",
			workers: []Worker{wk(1, 2000, 1024, "zone=a")},
			pending: []Task{with(tk("t1", 100, 100), node(1), constraint("zone=b"))},
			want:    Plan{Unplaced: unplaced("t1", "worker 1 lacks label zone=b")},
		},
		{
			name:    "pinned worker too small",
			workers: []Worker{wk(1, 2000, 1024), wk(2, 8000, 8192)},
			pending: []Task{with(tk("t1", 4000, 100), node(1))},
			want:    Plan{Unplaced: unplaced("t1", "needs 4000m CPU, worker 1 offers 2000m")},
		},
		{
			name:    "pinned worker full",
			workers: []Worker{used(wk(1, 2000, 1024), 1900, 0), wk(2, 8000, 8192)},
			pending: []Task{with(tk("t1", 200, 100), node(1))},
			want:    Plan{Unplaced: unplaced("t1", "waiting for room")},
		},
		{
			name:    "priority first, then FIFO by Seq, then ID",
			workers: []Worker{wk(1, 3000, 8192)},
			// Room for three; given scrambled.
			pending: []Task{
				with(tk("low", 1000, 1), prio(0), seq(1)),
				with(tk("mid-late", 1000, 1), prio(5), seq(9)),
				with(tk("b-mid-early", 1000, 1), prio(5), seq(3)),
				with(tk("a-mid-early", 1000, 1), prio(5), seq(3)),
				with(tk("high", 1000, 1), prio(9), seq(100)),
			},
			want: Plan{
				Placements: placed("high", 1, "a-mid-early", 1, "b-mid-early", 1),
				Unplaced: unplaced(
					"mid-late", "waiting for room",
					// The worker is full, so low is not told it is held.
					"low", "waiting for room"),
			},
		},
		{
			name:    "negative priorities sort below zero",
			workers: []Worker{wk(1, 1000, 8192)},
			pending: []Task{with(tk("neg", 1000, 1), prio(-1)), with(tk("zero", 1000, 1), seq(5))},
			want: Plan{
				Placements: placed("zero", 1),
				Unplaced:   unplaced("neg", "waiting for room"),
			},
		},
		{
			name:    "backoff skips the task until NotBefore",
			now:     10 * time.Second,
			workers: []Worker{wk(1, 2000, 1024)},
			pending: []Task{
				with(tk("later", 100, 1), notBefore(15*time.Second), seq(1)),
				with(tk("due", 100, 1), notBefore(10*time.Second), seq(2)),
				with(tk("past", 100, 1), notBefore(time.Second), seq(3)),
			},
			want: Plan{
				Placements: placed("due", 1, "past", 1),
				Unplaced:   unplaced("later", "backoff until 2025-01-01T00:00:15Z"),
			},
		},
		{
			name:    "a task in backoff holds nothing",
			now:     0,
			workers: []Worker{wk(1, 2000, 1024)},
			pending: []Task{
				with(tk("big", 2000, 1), prio(9), notBefore(time.Minute)),
				with(tk("small", 100, 1), prio(0)),
			},
			want: Plan{
				Placements: placed("small", 1),
				Unplaced:   unplaced("big", "backoff until 2025-01-01T00:01:00Z"),
			},
		},
		{
			name: "bin-pack picks the fullest worker that fits",
			workers: []Worker{
				used(wk(1, 4000, 4096), 1000, 1024),
				used(wk(2, 4000, 4096), 3000, 1024), // fullest that fits
				used(wk(3, 4000, 4096), 3900, 1024), // fuller, but no room
			},
			pending: []Task{tk("t1", 500, 128)},
			want:    Plan{Placements: placed("t1", 2)},
		},
		{
			name: "spread picks the emptiest worker",
			workers: []Worker{
				used(wk(1, 4000, 4096), 1000, 1024),
				used(wk(2, 4000, 4096), 3000, 1024),
				used(wk(3, 4000, 4096), 500, 2048), // least CPU, but memory dominates
			},
			pending: []Task{with(tk("t1", 500, 128), spread())},
			want:    Plan{Placements: placed("t1", 1)},
		},
		{
			name: "dominant share, not raw free amount, decides",
			// Worker 2 has more free CPU in absolute terms but is the fuller
			// one by share: 6000/8000 = 0.75 against 1000/2000 = 0.5.
			workers: []Worker{used(wk(1, 2000, 1024), 1000, 0), used(wk(2, 8000, 1024), 6000, 0)},
			pending: []Task{tk("pack", 100, 1), with(tk("spread", 100, 1), spread(), seq(1))},
			want:    Plan{Placements: placed("pack", 2, "spread", 1)},
		},
		{
			name:    "a resource a worker offers none of counts as full",
			workers: []Worker{wk(1, 1000, 0), wk(2, 1000, 1024)},
			pending: []Task{
				with(tk("pack", 100, 0), seq(1)),
				with(tk("spread", 100, 0), seq(2), spread()),
				with(tk("needs-mem", 100, 1), seq(3)),
			},
			want: Plan{Placements: placed("pack", 1, "spread", 2, "needs-mem", 2)},
		},
		{
			name:    "bin-pack fills one worker before starting the next",
			workers: []Worker{wk(1, 1000, 1024), wk(2, 1000, 1024)},
			pending: []Task{with(tk("a", 400, 1), seq(1)), with(tk("b", 400, 1), seq(2)), with(tk("c", 400, 1), seq(3))},
			// a ties (nil rng: lowest ID), b joins a, c no longer fits there.
			want: Plan{Placements: placed("a", 1, "b", 1, "c", 2)},
		},
		{
			name:    "spread alternates",
			workers: []Worker{wk(1, 1000, 1024), wk(2, 1000, 1024)},
			pending: []Task{
				with(tk("a", 400, 1), seq(1), spread()),
				with(tk("b", 400, 1), seq(2), spread()),
				with(tk("c", 100, 1), seq(3), spread()),
			},
			want: Plan{Placements: placed("a", 1, "b", 2, "c", 1)},
		},
		{
			name: "waiting task holds the workers it could use; backfill goes elsewhere",
			workers: []Worker{
				used(wk(1, 8000, 8192), 6000, 0), // big could use it once drained
				wk(2, 2000, 8192),                // too small for big: free for backfill
			},
			pending: []Task{
				with(tk("big", 4000, 1), prio(9)),
				// Bin-pack would prefer worker 1 (fuller), but big holds it.
				with(tk("small", 500, 1), prio(1)),
			},
			want: Plan{
				Placements: placed("small", 2),
				Unplaced:   unplaced("big", "waiting for room"),
			},
		},
		{
			name: "held worker blocks lower tasks that fit nowhere else",
			workers: []Worker{
				used(wk(1, 8000, 8192), 6000, 0),
			},
			pending: []Task{
				with(tk("big", 4000, 1), prio(9)),
				with(tk("small", 500, 1), prio(1)),
			},
			want: Plan{Unplaced: unplaced(
				"big", "waiting for room",
				"small", "waiting for room (room held for big, ahead in queue)")},
		},
		{
			name: "a waiting task holds only workers matching its constraints",
			workers: []Worker{
				used(wk(1, 8000, 8192, "zone=a"), 6000, 0),
				used(wk(2, 8000, 8192, "zone=b"), 6000, 0),
			},
			pending: []Task{
				with(tk("big", 4000, 1), prio(9), constraint("zone=a")),
				with(tk("small", 500, 1), prio(1)),
			},
			want: Plan{
				Placements: placed("small", 2),
				Unplaced:   unplaced("big", "waiting for room"),
			},
		},
		{
			name:    "a task that never fits holds nothing",
			workers: []Worker{wk(1, 2000, 8192)},
			pending: []Task{with(tk("huge", 4000, 1), prio(9)), with(tk("small", 500, 1), prio(1))},
			want: Plan{
				Placements: placed("small", 1),
				Unplaced:   unplaced("huge", "needs 4000m CPU, largest worker offers 2000m"),
			},
		},
		{
			name:    "duplicate worker IDs: the first is used",
			workers: []Worker{wk(1, 1000, 1024), wk(1, 8000, 8192)},
			pending: []Task{tk("t1", 2000, 1)},
			want:    Plan{Unplaced: unplaced("t1", "needs 2000m CPU, largest worker offers 1000m")},
		},
		{
			name:    "negative figures are refused, not trusted",
			workers: []Worker{used(wk(1, 1000, 1024), -5000, -5000)},
			pending: []Task{with(tk("neg", -1, 1), seq(1)), with(tk("big", 1001, 1), seq(2))},
			want: Plan{Unplaced: unplaced(
				"neg", "invalid request: -1m CPU, 1MiB memory",
				"big", "needs 1001m CPU, largest worker offers 1000m")},
		},
		{
			name:    "unknown policy",
			workers: []Worker{wk(1, 1000, 1024)},
			pending: []Task{with(tk("t1", 1, 1), policy(7))},
			want:    Plan{Unplaced: unplaced("t1", "unknown placement policy 7")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{Now: epoch.Add(tt.now), Workers: tt.workers, Pending: tt.pending}
			got := Schedule(in, nil)
			want := tt.want
			if want.Placements == nil {
				want.Placements = []Placement{}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("plan:\n got %+v\nwant %+v", got, want)
			}
			checkInvariants(t, in, got)
		})
	}
}

func TestPolicyValues(t *testing.T) {
	// The values are part of the replicated format.
	if BinPack != 0 || Spread != 1 {
		t.Fatalf("BinPack=%d Spread=%d, want 0 and 1", BinPack, Spread)
	}
	var zero Task
	if zero.Policy != BinPack {
		t.Fatalf("zero policy is %v, want binpack", zero.Policy)
	}
	for p, want := range map[Policy]string{BinPack: "binpack", Spread: "spread", 3: "Policy(3)"} {
		if got := p.String(); got != want {
			t.Errorf("Policy(%d).String() = %q, want %q", int(p), got, want)
		}
	}
}

// TestReplacementAfterLoss: a task placed on a worker that is then lost
// comes back as pending and goes to another worker.
func TestReplacementAfterLoss(t *testing.T) {
	workers := []Worker{wk(1, 4000, 4096), wk(2, 4000, 4096), wk(3, 1000, 1024)}
	// Worker 1 is the fullest, so bin-pack puts t1 there.
	workers[0].Used = Resources{2000, 0}
	task := tk("t1", 1500, 512)

	first := Schedule(Input{Now: epoch, Workers: workers, Pending: []Task{task}}, rand.New(rand.NewPCG(1, 1)))
	if want := placed("t1", 1); !reflect.DeepEqual(first.Placements, want) {
		t.Fatalf("first pass placed %+v, want %+v", first.Placements, want)
	}

	// Worker 1 is lost; its attempt is gone with it and t1 is pending again.
	// Worker 3 is too small, so only worker 2 is left.
	second := Schedule(Input{Now: epoch.Add(time.Minute), Workers: workers[1:], Pending: []Task{task}}, rand.New(rand.NewPCG(1, 1)))
	if want := placed("t1", 2); !reflect.DeepEqual(second.Placements, want) || len(second.Unplaced) != 0 {
		t.Fatalf("after loss placed %+v unplaced %+v, want %+v", second.Placements, second.Unplaced, want)
	}
}

func TestDoesNotModifyInput(t *testing.T) {
	in := randomInput(rand.New(rand.NewPCG(7, 7)), 20, 200)
	before := cloneInput(in)
	Schedule(in, rand.New(rand.NewPCG(1, 2)))
	if !reflect.DeepEqual(in, before) {
		t.Fatal("Schedule modified its input")
	}
}

func cloneInput(in Input) Input {
	out := Input{Now: in.Now, Workers: slices.Clone(in.Workers), Pending: slices.Clone(in.Pending)}
	for i := range out.Workers {
		out.Workers[i].Labels = cloneMap(in.Workers[i].Labels)
	}
	for i := range out.Pending {
		out.Pending[i].Constraints = cloneMap(in.Pending[i].Constraints)
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestDeterminism(t *testing.T) {
	tests := []struct {
		name   string
		seed   uint64
		worker int
		tasks  int
	}{
		{"small", 1, 5, 50},
		{"medium", 2, 50, 2000},
		{"oversubscribed", 3, 20, 5000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := randomInput(rand.New(rand.NewPCG(tt.seed, 0)), tt.worker, tt.tasks)
			a := Schedule(in, rand.New(rand.NewPCG(42, 42)))
			// Same input in a different slice order, same seed: same plan.
			shuffled := cloneInput(in)
			r := rand.New(rand.NewPCG(tt.seed, 1))
			r.Shuffle(len(shuffled.Workers), func(i, j int) {
				shuffled.Workers[i], shuffled.Workers[j] = shuffled.Workers[j], shuffled.Workers[i]
			})
			r.Shuffle(len(shuffled.Pending), func(i, j int) {
				shuffled.Pending[i], shuffled.Pending[j] = shuffled.Pending[j], shuffled.Pending[i]
			})
			for i, in := range []Input{in, in, shuffled} {
				b := Schedule(in, rand.New(rand.NewPCG(42, 42)))
				if !reflect.DeepEqual(a, b) {
					t.Fatalf("run %d: same input and seed gave a different plan", i)
				}
			}
		})
	}
}

// TestSeedsDifferOnlyInTies: without ties every seed gives the same plan;
// with ties, seeds pick different workers but the same tasks are placed.
func TestSeedsDifferOnlyInTies(t *testing.T) {
	tests := []struct {
		name      string
		workers   []Worker
		wantSame  bool // all seeds give an identical plan
		wantPlace int
	}{
		{
			name: "distinct loads, no ties",
			workers: []Worker{
				used(wk(1, 10000, 10000), 100, 0),
				used(wk(2, 10000, 10000), 200, 0),
				used(wk(3, 10000, 10000), 300, 0),
			},
			wantSame:  true,
			wantPlace: 20,
		},
		{
			name:      "identical empty workers tie",
			workers:   []Worker{wk(1, 10000, 10000), wk(2, 10000, 10000), wk(3, 10000, 10000)},
			wantSame:  false,
			wantPlace: 20,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pending []Task
			for i := range 20 {
				pending = append(pending, with(tk(fmt.Sprintf("t%02d", i), 1000, 1000), seq(uint64(i)), policy(Policy(i%2))))
			}
			in := Input{Now: epoch, Workers: tt.workers, Pending: pending}
			plans := map[string]bool{}
			for seed := range uint64(16) {
				p := Schedule(in, rand.New(rand.NewPCG(seed, seed)))
				if len(p.Placements) != tt.wantPlace || len(p.Unplaced) != 0 {
					t.Fatalf("seed %d: %d placed, %d unplaced; want %d placed", seed, len(p.Placements), len(p.Unplaced), tt.wantPlace)
				}
				checkInvariants(t, in, p)
				plans[fmt.Sprint(p.Placements)] = true
			}
			if same := len(plans) == 1; same != tt.wantSame {
				t.Fatalf("%d distinct plans over 16 seeds, want same=%v", len(plans), tt.wantSame)
			}
		})
	}
}

// TestTieBreakIsUniform: with k tied workers each is picked about 1/k of
// the time, so the rng, not worker order, decides.
func TestTieBreakIsUniform(t *testing.T) {
	workers := []Worker{wk(1, 100, 100), wk(2, 100, 100), wk(3, 100, 100), wk(4, 100, 100)}
	in := Input{Now: epoch, Workers: workers, Pending: []Task{tk("t", 1, 1)}}
	r := rand.New(rand.NewPCG(9, 9))
	counts := map[uint64]int{}
	const n = 4000
	for range n {
		counts[Schedule(in, r).Placements[0].WorkerID]++
	}
	for id := uint64(1); id <= 4; id++ {
		// Expect 1000 each; ±150 is more than 5 standard deviations.
		if c := counts[id]; c < 850 || c > 1150 {
			t.Errorf("worker %d picked %d of %d times, want about %d", id, c, n, n/4)
		}
	}
}

// TestInvariantsRandom checks the plan's guarantees on many random inputs.
func TestInvariantsRandom(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 99))
		in := randomInput(r, 1+r.IntN(12), r.IntN(120))
		p := Schedule(in, rand.New(rand.NewPCG(seed, 1)))
		checkInvariants(t, in, p)
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
	}
}

// randomInput builds a cluster with a mix of sizes, labels, load, pinning,
// priorities and backoff, small enough that ties and contention are common.
func randomInput(r *rand.Rand, workers, tasks int) Input {
	in := Input{Now: epoch.Add(time.Minute)}
	zones := []string{"a", "b", "c"}
	for i := range workers {
		w := wk(uint64(i+1)*3, int64(1+r.IntN(8))*1000, int64(1+r.IntN(8))*1024, "zone="+zones[r.IntN(len(zones))])
		if r.IntN(3) == 0 {
			w.Labels["disk"] = "ssd"
		}
		w.Used = Resources{r.Int64N(w.Capacity.CPUMillis + 1), r.Int64N(w.Capacity.MemoryMiB + 1)}
		in.Workers = append(in.Workers, w)
	}
	for i := range tasks {
		t := tk(fmt.Sprintf("t%04d", i), int64(r.IntN(40))*100, int64(r.IntN(40))*128)
		t.Priority = int32(r.IntN(4))
		t.Seq = uint64(r.IntN(tasks + 1))
		t.Policy = Policy(r.IntN(2))
		switch r.IntN(10) {
		case 0:
			t.Constraints = kv("zone=" + zones[r.IntN(len(zones))])
		case 1:
			t.Constraints = kv("zone="+zones[r.IntN(len(zones))], "disk=ssd")
		case 2:
			t.Node = uint64(1+r.IntN(workers+2)) * 3 // sometimes absent
		case 3:
			t.NotBefore = epoch.Add(time.Duration(r.IntN(120)) * time.Second)
		}
		in.Pending = append(in.Pending, t)
	}
	return in
}

// checkInvariants verifies, independently of the implementation, what a
// plan promises: every task accounted for once, placements only on
// matching workers that had room, no over-commit, and no placement on a
// worker that a task ahead in the queue was waiting for.
func checkInvariants(t *testing.T, in Input, p Plan) {
	t.Helper()
	in, p = flattenKinds(in, p)
	workers := map[uint64]Worker{}
	for _, w := range in.Workers {
		if _, dup := workers[w.ID]; !dup {
			workers[w.ID] = w
		}
	}
	tasks := map[string]Task{}
	for _, task := range in.Pending {
		tasks[task.ID] = task
	}
	seen := map[string]int{}
	for _, pl := range p.Placements {
		seen[pl.TaskID]++
	}
	for _, u := range p.Unplaced {
		seen[u.TaskID]++
		if u.Reason == "" {
			t.Errorf("%s unplaced without a reason", u.TaskID)
		}
	}
	for _, task := range in.Pending {
		if seen[task.ID] != 1 {
			t.Errorf("task %s appears %d times in the plan, want 1", task.ID, seen[task.ID])
		}
	}

	load := map[uint64]Resources{}
	ports := map[uint64]map[string]string{}
	for id, w := range workers {
		load[id] = Resources{max(w.Used.CPUMillis, 0), max(w.Used.MemoryMiB, 0)}
		ports[id] = maps.Clone(w.HostPorts)
		if ports[id] == nil {
			ports[id] = map[string]string{}
		}
	}
	for _, pl := range p.Placements {
		task := tasks[pl.TaskID]
		w, ok := workers[pl.WorkerID]
		if !ok {
			t.Errorf("%s placed on unknown worker %d", pl.TaskID, pl.WorkerID)
			continue
		}
		for _, port := range task.HostPorts {
			if other, taken := ports[w.ID][port]; taken {
				t.Errorf("%s placed on worker %d where %s already forwards host port %s", pl.TaskID, w.ID, other, port)
			}
			ports[w.ID][port] = pl.TaskID
		}
		if in.Now.Before(task.NotBefore) {
			t.Errorf("%s placed during backoff", pl.TaskID)
		}
		if task.Node != 0 && task.Node != w.ID {
			t.Errorf("%s pinned to %d placed on %d", pl.TaskID, task.Node, w.ID)
		}
		for k, v := range task.Constraints {
			if got, ok := w.Labels[k]; !ok || got != v {
				t.Errorf("%s needs %s=%s, placed on worker %d without it", pl.TaskID, k, v, w.ID)
			}
		}
		l := load[w.ID]
		l.CPUMillis += task.Resources.CPUMillis
		l.MemoryMiB += task.Resources.MemoryMiB
		load[w.ID] = l
		if l.CPUMillis > w.Capacity.CPUMillis || l.MemoryMiB > w.Capacity.MemoryMiB {
			t.Errorf("worker %d over-committed by %s: %+v of %+v", w.ID, pl.TaskID, l, w.Capacity)
		}
	}

	// Placements must come in queue order, interleaved with the unplaced.
	order := slices.Clone(in.Pending)
	slices.SortStableFunc(order, func(a, b Task) int {
		return cmp.Or(cmp.Compare(b.Priority, a.Priority), cmp.Compare(a.Seq, b.Seq), strings.Compare(a.ID, b.ID))
	})
	pos := map[string]int{}
	for i, task := range order {
		pos[task.ID] = i
	}
	for _, list := range [][]string{ids(p.Placements, func(x Placement) string { return x.TaskID }), ids(p.Unplaced, func(x Unplaced) string { return x.TaskID })} {
		if !slices.IsSortedFunc(list, func(a, b string) int { return cmp.Compare(pos[a], pos[b]) }) {
			t.Errorf("plan not in queue order: %v", list)
		}
	}

	// Hold rule: a task waiting for room is ahead of every placement on a
	// worker it could have used.
	waiting := map[string]bool{}
	for _, u := range p.Unplaced {
		if strings.HasPrefix(u.Reason, ReasonWaiting) {
			waiting[u.TaskID] = true
		}
	}
	for _, pl := range p.Placements {
		w := workers[pl.WorkerID]
		for id := range waiting {
			wt := tasks[id]
			if pos[id] < pos[pl.TaskID] && couldUse(wt, w) {
				t.Errorf("%s placed on worker %d, which %s (ahead, waiting) could use", pl.TaskID, w.ID, id)
			}
		}
	}
}

// flattenKinds gives VMs IDs that cannot collide with tasks' and sort
// where the scheduler sorts them (after a task of the same ID), so the
// checks above can key everything by ID.
func flattenKinds(in Input, p Plan) (Input, Plan) {
	id := func(k Kind, s string) string {
		if k == KindVM {
			return s + "\x00vm"
		}
		return s
	}
	in.Pending = slices.Clone(in.Pending)
	for i := range in.Pending {
		in.Pending[i].ID = id(in.Pending[i].Kind, in.Pending[i].ID)
	}
	p.Placements = slices.Clone(p.Placements)
	for i := range p.Placements {
		p.Placements[i].TaskID = id(p.Placements[i].Kind, p.Placements[i].TaskID)
	}
	p.Unplaced = slices.Clone(p.Unplaced)
	for i := range p.Unplaced {
		p.Unplaced[i].TaskID = id(p.Unplaced[i].Kind, p.Unplaced[i].TaskID)
	}
	return in, p
}

func couldUse(task Task, w Worker) bool {
	if task.Node != 0 && task.Node != w.ID {
		return false
	}
	for k, v := range task.Constraints {
		if got, ok := w.Labels[k]; !ok || got != v {
			return false
		}
	}
	return task.Resources.CPUMillis <= w.Capacity.CPUMillis && task.Resources.MemoryMiB <= w.Capacity.MemoryMiB
}

func ids[T any](xs []T, f func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// FuzzSchedule checks the invariants and determinism on generated
// clusters; `go test -fuzz FuzzSchedule` explores beyond the seeds.
func FuzzSchedule(f *testing.F) {
	f.Add(uint64(1), uint8(4), uint8(40), uint64(7))
	f.Add(uint64(2), uint8(1), uint8(200), uint64(0))
	f.Add(uint64(3), uint8(30), uint8(0), uint64(9))
	f.Fuzz(func(t *testing.T, seed uint64, workers, tasks uint8, rngSeed uint64) {
		in := randomInput(rand.New(rand.NewPCG(seed, 5)), int(workers%32)+1, int(tasks))
		a := Schedule(in, rand.New(rand.NewPCG(rngSeed, rngSeed)))
		checkInvariants(t, in, a)
		if b := Schedule(in, rand.New(rand.NewPCG(rngSeed, rngSeed))); !reflect.DeepEqual(a, b) {
			t.Fatal("same input and seed gave a different plan")
		}
	})
}
