package scheduler

import (
	"testing"
	"time"

	"github.com/blixard/blixard/internal/state"
)

func TestBackoffsTimeRetriesOnTheLeadersOwnClock(t *testing.T) {
	const backoff = 4 * time.Second
	pending := func(notBefore time.Time, attempt uint32) state.SchedulingView {
		return state.SchedulingView{Pending: []state.PendingTask{
			{ID: "t1", NotBefore: notBefore.UnixNano(), Backoff: backoff, Attempt: attempt},
			{ID: "fresh"}, // not in backoff: left alone
		}}
	}
	tests := []struct {
		name      string
		notBefore time.Time // as the placing leader stamped it
		passes    []time.Duration
		want      time.Time // NotBefore after the last pass
	}{
		{"same clock: NotBefore stands", epoch.Add(backoff), []time.Duration{0}, epoch.Add(backoff)},
		{"placing leader's clock ten minutes fast: one backoff from first sight",
			epoch.Add(10*time.Minute + backoff), []time.Duration{0}, epoch.Add(backoff)},
		{"first sight is remembered across passes",
			epoch.Add(10*time.Minute + backoff), []time.Duration{0, time.Second, 3 * time.Second}, epoch.Add(backoff)},
		{"placing leader's clock slow: the earlier NotBefore stands",
			epoch.Add(-time.Minute), []time.Duration{0}, epoch.Add(-time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Backoffs
			var v state.SchedulingView
			for _, d := range tt.passes {
				v = pending(tt.notBefore, 2)
				b.Apply(epoch.Add(d), &v)
			}
			if got := time.Unix(0, v.Pending[0].NotBefore); !got.Equal(tt.want) {
				t.Errorf("NotBefore = %v, want %v", got.UTC(), tt.want.UTC())
			}
			if v.Pending[1].NotBefore != 0 {
				t.Errorf("a task not in backoff got NotBefore %d", v.Pending[1].NotBefore)
			}
		})
	}
}

// A retry that becomes pending while this leader already leads is timed
// on its clock alone, from when it first saw it: not early even when
// NotBefore (which leaves out the worker's start-up latency) is earlier.
func TestBackoffsTimeALiveRetryFromFirstSightAlone(t *testing.T) {
	const backoff = 200 * time.Millisecond
	var b Backoffs
	v := state.SchedulingView{Pending: []state.PendingTask{{ID: "other"}}}
	b.Apply(epoch, &v) // this leader's first pass

	failedAt := epoch.Add(time.Second)
	for _, d := range []time.Duration{0, 100 * time.Millisecond} {
		v = state.SchedulingView{Pending: []state.PendingTask{
			{ID: "t1", NotBefore: failedAt.Add(backoff - 16*time.Millisecond).UnixNano(), Backoff: backoff, Attempt: 2},
		}}
		b.Apply(failedAt.Add(d), &v)
		if got, want := v.Pending[0].NotBefore, failedAt.Add(backoff).UnixNano(); got != want {
			t.Fatalf("pass at +%v: NotBefore = %v, want %v (first sight + backoff)", d, time.Unix(0, got).UTC(), time.Unix(0, want).UTC())
		}
	}
}

func TestBackoffsForgetWhatIsNoLongerPendingAndAfterReset(t *testing.T) {
	const backoff = 4 * time.Second
	far := epoch.Add(time.Hour).UnixNano()
	view := func(attempt uint32) state.SchedulingView {
		return state.SchedulingView{Pending: []state.PendingTask{{ID: "t1", NotBefore: far, Backoff: backoff, Attempt: attempt}}}
	}
	var b Backoffs
	v := view(2)
	b.Apply(epoch, &v)

	// The next retry of the same task is a new backoff, timed from its own
	// first sight (live: it became pending while this node led).
	later := epoch.Add(time.Minute)
	v = view(3)
	b.Apply(later, &v)
	if got, want := v.Pending[0].NotBefore, later.Add(backoff).UnixNano(); got != want {
		t.Errorf("retry 3: NotBefore = %v, want %v", time.Unix(0, got).UTC(), time.Unix(0, want).UTC())
	}
	if len(b.seen) != 1 {
		t.Errorf("remembers %d retries, want only the pending one", len(b.seen))
	}

	b.Reset()
	v = view(3)
	v.Pending[0].NotBefore = later.Add(time.Minute + time.Second).UnixNano()
	b.Apply(later.Add(time.Minute), &v)
	if got, want := v.Pending[0].NotBefore, later.Add(time.Minute+time.Second).UnixNano(); got != want {
		t.Errorf("after Reset (a first pass again: the earlier of the two): NotBefore = %v, want %v", time.Unix(0, got).UTC(), time.Unix(0, want).UTC())
	}
}
