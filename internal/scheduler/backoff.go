package scheduler

import (
	"time"

	"github.com/blixard/blixard/internal/state"
)

// Backoffs is the scheduling leader's memory of when it first saw each
// retry waiting out its backoff. A retry's NotBefore is stamped on the
// clock of the leader that placed the failed attempt; after a leader
// change the new leader's clock may be minutes away from it, which would
// delay the retry by the difference (or run it early). So each leader also
// times the backoff on its own clock from the moment it first sees the
// retry pending, and a retry becomes placeable at the earlier of the two:
// never later than one full backoff after the current leader took over,
// and exactly at NotBefore while one leader (one clock) does it all.
//
// It is leader-local and not replicated: a new leader starts empty. It
// does no I/O and keeps the pass pure: the caller owns it and passes the
// time in. Not safe for concurrent use.
type Backoffs struct {
	seen map[backoffKey]time.Time
}

type backoffKey struct {
	task    string
	attempt uint32
}

// Apply caps each pending task's NotBefore in v at first sight + its
// backoff, remembering first sights for the next pass and forgetting
// retries that are no longer pending.
func (b *Backoffs) Apply(now time.Time, v *state.SchedulingView) {
	next := make(map[backoffKey]time.Time, len(b.seen))
	for i := range v.Pending {
		t := &v.Pending[i]
		if t.NotBefore == 0 {
			continue
		}
		k := backoffKey{t.ID, t.Attempt}
		first, ok := b.seen[k]
		if !ok {
			first = now
		}
		next[k] = first
		if own := first.Add(t.Backoff).UnixNano(); own < t.NotBefore {
			t.NotBefore = own
		}
	}
	b.seen = next
}

// Reset forgets everything; a node calls it when it stops leading, so a
// later term times its retries afresh.
func (b *Backoffs) Reset() { b.seen = nil }
