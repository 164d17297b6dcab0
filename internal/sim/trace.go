package sim

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
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
	evClock
	evVM
)

func (s *Sim) trace(k evKind, node, a, b uint64) { s.tr.mix(uint64(s.now), uint64(k), node, a, b) }

func (s *Sim) tracing() bool { return s.tr.w != nil }

// logf writes one readable trace line, stamped with sim time. Callers
// guard it with tracing() so that the arguments are not even built
// otherwise.
func (s *Sim) logf(format string, args ...any) {
	fmt.Fprintf(s.tr.w, "%11.6fs  %s\n", time.Duration(s.now).Seconds(), fmt.Sprintf(format, args...))
}

// logHandler routes a node's raftnode and etcd raft logs (Info and up)
// into the trace, prefixed with the node.
type logHandler struct {
	s     *Sim
	node  uint64
	attrs []slog.Attr
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	h.s.logf("n%d %s: %s", h.node, r.Level, b.String())
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{s: h.s, node: h.node, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *logHandler) WithGroup(string) slog.Handler { return h }
