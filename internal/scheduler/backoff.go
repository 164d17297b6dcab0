package scheduler

import (
	"time"

	"github.com/blixard/blixard/internal/state"
)

// Backoffs is the scheduling leader's memory of when it first saw each
// retry waiting out its backoff. A retry's NotBefore is stamped on the
// clock of the leader that placed the failed attempt, and only
// approximates when the attempt ended (the worker's start-up latency is
// not in it). So each leader times backoffs on its own clock:
//
//   - A retry that became pending while this node was already leading
//     (first seen after its first pass) is placeable one backoff after
//     this leader first saw it, that is after the failure was applied:
//     never early, and NotBefore does not matter.
//   - A retry already pending when this node took over (seen in its first
//     pass) is placeable at the earlier of NotBefore and one backoff after
//     first sight: never more than one backoff late however far the old
//     leader's clock was from this one's, and early only by how far the
//     old leader's clock was behind.
//
// It is leader-local and not replicated: a new leader starts empty. It
// does no I/O and keeps the pass pure: the caller owns it and passes the
// time in. Not safe for concurrent use.
type Backoffs struct {
	started bool // a pass has run since the last Reset
	seen    map[backoffKey]backoffSight
}

type backoffKey struct {
	task    string
	attempt uint32
}

type backoffSight struct {
	first time.Time
	live  bool // became pending while this node led: time it on this clock alone
}

// Apply sets each pending retry's NotBefore in v by the rules above,
// remembering first sights for the next pass and forgetting retries that
// are no longer pending.
func (b *Backoffs) Apply(now time.Time, v *state.SchedulingView) {
	live := b.started
	b.started = true
	// Built on the first retry in backoff: most passes have none, and
	// this runs on every pass.
	var next map[backoffKey]backoffSight
	for i := range v.Pending {
		t := &v.Pending[i]
		if t.NotBefore == 0 {
			continue
		}
		if next == nil {
			next = make(map[backoffKey]backoffSight, len(b.seen))
		}
		k := backoffKey{t.ID, t.Attempt}
		sight, ok := b.seen[k]
		if !ok {
			sight = backoffSight{first: now, live: live}
		}
		next[k] = sight
		own := sight.first.Add(t.Backoff).UnixNano()
		if sight.live || own < t.NotBefore {
			t.NotBefore = own
		}
	}
	b.seen = next
}

// Reset forgets everything; a node calls it when it stops leading, so a
// later term times its retries afresh.
func (b *Backoffs) Reset() { *b = Backoffs{} }
