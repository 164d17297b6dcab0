package storage

import (
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

type opKind int

const (
	opSave    opKind = 1
	opCreate  opKind = 2
	opCompact opKind = 3
)

// logOp is one call made on both a LogStore and a raft.MemoryStorage.
type logOp struct {
	name string
	kind opKind
	// opSave
	hs   *raftpb.HardState
	ents []*raftpb.Entry
	snap *raftpb.Snapshot
	// opCreate, opCompact
	index uint64
	cs    *raftpb.ConfState
	data  []byte
	keep  uint64
}

func save(name string, hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) logOp {
	return logOp{name: name, kind: opSave, hs: hs, ents: ents, snap: snap}
}

func create(name string, index uint64, cs *raftpb.ConfState, data string, keep uint64) logOp {
	var d []byte
	if data != "" {
		d = []byte(data)
	}
	return logOp{name: name, kind: opCreate, index: index, cs: cs, data: d, keep: keep}
}

func compact(name string, index uint64) logOp {
	return logOp{name: name, kind: opCompact, index: index}
}

// applyRef does to a MemoryStorage what LogStore promises to do.
func applyRef(ms *raft.MemoryStorage, o logOp) error {
	switch o.kind {
	case opSave:
		if o.snap != nil && !raft.IsEmptySnap(o.snap) {
			if err := ms.ApplySnapshot(proto.CloneOf(o.snap)); err != nil {
				return err
			}
		}
		if err := ms.Append(cloneEntries(o.ents)); err != nil {
			return err
		}
		if o.hs != nil && !raft.IsEmptyHardState(o.hs) {
			return ms.SetHardState(proto.CloneOf(o.hs))
		}
	case opCreate:
		if _, err := ms.CreateSnapshot(o.index, o.cs, o.data); err != nil {
			return err
		}
		first, _ := ms.FirstIndex()
		if o.keep < o.index && o.index-o.keep >= first {
			return ms.Compact(o.index - o.keep)
		}
	case opCompact:
		return ms.Compact(o.index)
	}
	return nil
}

func applyLog(s *LogStore, o logOp) error {
	switch o.kind {
	case opSave:
		var snap *raftpb.Snapshot
		if o.snap != nil {
			snap = proto.CloneOf(o.snap)
		}
		return s.Save(o.hs, cloneEntries(o.ents), snap)
	case opCreate:
		return s.CreateSnapshot(o.index, o.cs, o.data, o.keep)
	case opCompact:
		return s.Compact(o.index)
	}
	return nil
}

// bigEntries returns entries whose data makes segments roll.
func bigEntries(lo, hi, term uint64) []*raftpb.Entry {
	es := entRange(lo, hi, term)
	for _, e := range es {
		e.Data = []byte(strings.Repeat("x", 300) + string(e.Data))
	}
	return es
}

var conformanceOps = []logOp{
	save("first entries", hardState(1, 1, 0), entRange(1, 5, 1), nil),
	save("conflicting suffix", hardState(2, 1, 2), entRange(3, 6, 2), nil),
	save("append", hardState(2, 1, 8), entRange(7, 10, 2), nil),
	save("hard state only", hardState(2, 1, 9), nil, nil),
	create("snapshot keep 2", 6, confState(1, 2, 3), "state@6", 2),
	save("stale prefix trimmed", nil, entRange(3, 12, 2), nil),
	compact("compact to snapshot", 6),
	compact("compact below first", 5),
	create("snapshot out of date", 4, confState(1), "old", 0),
	create("snapshot inherits conf, keep 0", 9, nil, "state@9", 0),
	save("install snapshot", hardState(4, 0, 20), nil, snapshot(20, 4, confState(1, 2), "state@20")),
	save("append after install", nil, entRange(21, 23, 4), nil),
	save("conflict after install", hardState(5, 2, 21), entRange(22, 24, 5), nil),
	save("stale snapshot", hardState(5, 2, 22), entRange(25, 25, 5), snapshot(15, 3, confState(1), "stale")),
	save("nothing", nil, nil, nil),
	save("empty hard state", hardState(0, 0, 0), nil, nil),
	create("snapshot keep more than exists", 23, confState(1, 2, 4), "state@23", 100),
	save("install with entries", hardState(6, 0, 30), entRange(29, 32, 6), snapshot(30, 6, confState(1, 2, 4), "state@30")),
	save("big entries", hardState(6, 0, 38), bigEntries(33, 40, 6), nil),
	create("snapshot nil data keep 3", 38, nil, "", 3),
	save("conflict after snapshot", hardState(7, 3, 39), bigEntries(40, 42, 7), nil),
	compact("compact to snapshot again", 38),
	create("snapshot at last index, compact to first index", 42, confState(1, 2), "state@42", 3),
}

// TestConformance drives a LogStore and a MemoryStorage with the same calls
// and checks that every raft.Storage answer matches, then reopens the
// LogStore from disk after every step and checks again.
func TestConformance(t *testing.T) {
	for _, segBytes := range []int64{defaultSegmentBytes, 512, 1} {
		t.Run(fmt.Sprintf("segment=%d", segBytes), func(t *testing.T) {
			dir := t.TempDir()
			ref := raft.NewMemoryStorage()
			s := mustOpen(t, dir, segBytes)
			defer func() { mustClose(t, s) }()
			compareStorage(t, "fresh", ref, s)
			for _, o := range conformanceOps {
				werr := applyRef(ref, o)
				gerr := applyLog(s, o)
				if !sameErr(werr, gerr) {
					t.Fatalf("%s: LogStore error %v, MemoryStorage error %v", o.name, gerr, werr)
				}
				compareStorage(t, o.name, ref, s)

				mustClose(t, s)
				s = mustOpen(t, dir, segBytes)
				if w := s.Warnings(); len(w) > 0 {
					t.Fatalf("%s: reopen warnings: %v", o.name, w)
				}
				compareStorage(t, o.name+" (reopened)", ref, s)
			}
			if segBytes == 1 {
				// Every write rolled, and compaction must have deleted
				// the segments behind it.
				if n := len(segmentsIn(t, dir)); n > 8 {
					t.Errorf("%d segments left after compaction", n)
				}
			}
		})
	}
}
