package sim

import (
	"fmt"
	"io"
	"time"
)

// tracer keeps a running hash of every simulation event and, when asked,
// writes them out readably. The hash is over structured values rather
// than the text, so hashing costs no formatting on the hot path; two runs
// of one seed must produce the same hash, which is how determinism is
// tested.
type tracer struct {
	w      io.Writer
	h      uint64
	events uint64
}

const (
	mixK1 = 0x9e3779b97f4a7c15
	mixK2 = 0xbf58476d1ce4e5b9
)

func (t *tracer) mix(vs ...uint64) {
	for _, v := range vs {
		t.h ^= v + mixK1 + (t.h << 6) + (t.h >> 2)
		t.h *= mixK2
	}
	t.events++
}

// evKind tags trace events in the hash.
type evKind uint64

const (
	evTick evKind = iota + 1
	evSend
	evDeliver
	evDrop
	evDup
	evReady
	evApply
	evLeader
	evCrash
	evRestart
	evPause
	evResume
	evPartition
	evHeal
	evDiskFault
	evClient
	evWorker
	evConf
	evSched
	evRemoved
)

func (s *Sim) trace(k evKind, node, a, b uint64) { s.tr.mix(uint64(s.now), uint64(k), node, a, b) }

func (s *Sim) tracing() bool { return s.tr.w != nil }

// logf writes one readable trace line, stamped with sim time. Callers
// guard it with tracing() so that the arguments are not even built
// otherwise.
func (s *Sim) logf(format string, args ...any) {
	fmt.Fprintf(s.tr.w, "%11.6fs  %s\n", time.Duration(s.now).Seconds(), fmt.Sprintf(format, args...))
}
