package storage

import (
	"errors"
	"fmt"
	"math"
	"os"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func ent(index, term uint64, data string) *raftpb.Entry {
	return &raftpb.Entry{Index: new(index), Term: new(term), Type: new(raftpb.EntryNormal), Data: []byte(data)}
}

// entRange returns entries lo..hi (inclusive) at term.
func entRange(lo, hi, term uint64) []*raftpb.Entry {
	var out []*raftpb.Entry
	for i := lo; i <= hi; i++ {
		out = append(out, ent(i, term, fmt.Sprintf("e%d-t%d", i, term)))
	}
	return out
}

func hardState(term, vote, commit uint64) *raftpb.HardState {
	return &raftpb.HardState{Term: new(term), Vote: new(vote), Commit: new(commit)}
}

func confState(voters ...uint64) *raftpb.ConfState {
	return &raftpb.ConfState{Voters: voters}
}

func snapshot(index, term uint64, cs *raftpb.ConfState, data string) *raftpb.Snapshot {
	return &raftpb.Snapshot{
		Data:     []byte(data),
		Metadata: &raftpb.SnapshotMetadata{Index: new(index), Term: new(term), ConfState: cs},
	}
}

func cloneEntries(es []*raftpb.Entry) []*raftpb.Entry {
	out := make([]*raftpb.Entry, len(es))
	for i, e := range es {
		out[i] = proto.CloneOf(e)
	}
	return out
}

func sameErr(a, b error) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	for _, sentinel := range []error{raft.ErrCompacted, raft.ErrSnapOutOfDate, raft.ErrUnavailable, raft.ErrSnapshotTemporarilyUnavailable} {
		if errors.Is(a, sentinel) {
			return errors.Is(b, sentinel)
		}
	}
	return false
}

// compareStorage checks that got answers every raft.Storage query exactly
// like want.
func compareStorage(t *testing.T, step string, want, got raft.Storage) {
	t.Helper()
	whs, wcs, werr := want.InitialState()
	ghs, gcs, gerr := got.InitialState()
	if !sameErr(werr, gerr) || !proto.Equal(whs, ghs) || !proto.Equal(wcs, gcs) {
		t.Fatalf("%s: InitialState = %v %v %v, want %v %v %v", step, ghs, gcs, gerr, whs, wcs, werr)
	}
	wf, _ := want.FirstIndex()
	gf, _ := got.FirstIndex()
	wl, _ := want.LastIndex()
	gl, _ := got.LastIndex()
	if wf != gf || wl != gl {
		t.Fatalf("%s: FirstIndex, LastIndex = %d, %d, want %d, %d", step, gf, gl, wf, wl)
	}
	for i := max(wf, 2) - 2; i <= wl+2; i++ {
		wt, wTermErr := want.Term(i)
		gt, gTermErr := got.Term(i)
		if wt != gt || !sameErr(wTermErr, gTermErr) {
			t.Fatalf("%s: Term(%d) = %d, %v, want %d, %v", step, i, gt, gTermErr, wt, wTermErr)
		}
	}
	for lo := max(wf, 1) - 1; lo <= wl; lo++ {
		for hi := lo + 1; hi <= wl+1; hi++ {
			for _, maxSize := range []uint64{0, 40, math.MaxUint64} {
				we, wEntErr := want.Entries(lo, hi, maxSize)
				ge, gEntErr := got.Entries(lo, hi, maxSize)
				if !sameErr(wEntErr, gEntErr) || len(we) != len(ge) {
					t.Fatalf("%s: Entries(%d, %d, %d) = %d entries, %v, want %d, %v",
						step, lo, hi, maxSize, len(ge), gEntErr, len(we), wEntErr)
				}
				for k := range we {
					if !proto.Equal(we[k], ge[k]) {
						t.Fatalf("%s: Entries(%d, %d, %d)[%d] = %v, want %v", step, lo, hi, maxSize, k, ge[k], we[k])
					}
				}
			}
		}
	}
	ws, werr := want.Snapshot()
	gs, gerr := got.Snapshot()
	if !sameErr(werr, gerr) || !proto.Equal(ws, gs) {
		t.Fatalf("%s: Snapshot = %v, %v, want %v, %v", step, gs, gerr, ws, werr)
	}
}

func mustOpen(t testing.TB, dir string, segBytes int64) *LogStore {
	t.Helper()
	s, err := openLogStore(dir, logOptions{segmentBytes: segBytes})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func mustClose(t testing.TB, c interface{ Close() error }) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func segmentsIn(t testing.TB, dir string) []segment {
	t.Helper()
	segs, err := listSegments(dir + "/wal")
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// recordOffsets returns the start offset of every record in a WAL file.
func recordOffsets(t testing.TB, path string) []int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int
	for off := 0; off < len(data); {
		_, _, next, err := decodeRecord(data, off)
		if err != nil {
			t.Fatalf("%s at %d: %v", path, off, err)
		}
		offs = append(offs, off)
		off = next
	}
	return offs
}
