package storage

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// fillLog saves entries 1..n, one per Save, and returns the store.
func fillLog(t *testing.T, dir string, segBytes int64, n uint64) *LogStore {
	t.Helper()
	s := mustOpen(t, dir, segBytes)
	for i := uint64(1); i <= n; i++ {
		if err := s.Save(nil, []*raftpb.Entry{ent(i, 1, fmt.Sprintf("entry-%d", i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func lastIndex(t *testing.T, s *LogStore) uint64 {
	t.Helper()
	l, err := s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func firstIndex(t *testing.T, s *LogStore) uint64 {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func checkEntries(t *testing.T, s *LogStore, lo, hi uint64) {
	t.Helper()
	es, err := s.Entries(lo, hi+1, math64)
	if err != nil {
		t.Fatalf("Entries(%d, %d): %v", lo, hi+1, err)
	}
	for i, e := range es {
		want := ent(lo+uint64(i), 1, fmt.Sprintf("entry-%d", lo+uint64(i)))
		if !proto.Equal(e, want) {
			t.Fatalf("entry %d = %v, want %v", lo+uint64(i), e, want)
		}
	}
	if uint64(len(es)) != hi-lo+1 {
		t.Fatalf("Entries(%d, %d) returned %d entries", lo, hi+1, len(es))
	}
}

const math64 = ^uint64(0)

// TestSaveSyncsOnce checks the write path's one promise about cost: one
// fdatasync per Save whatever it carries, none when there is nothing to
// write.
func TestSaveSyncsOnce(t *testing.T) {
	s := mustOpen(t, t.TempDir(), defaultSegmentBytes)
	defer mustClose(t, s)
	next := uint64(1)
	batch := func(n uint64) []*raftpb.Entry {
		es := entRange(next, next+n-1, 1)
		next += n
		return es
	}
	tests := []struct {
		name      string
		hs        *raftpb.HardState
		ents      []*raftpb.Entry
		snap      *raftpb.Snapshot
		wantSyncs int
	}{
		{"one entry", hardState(1, 1, 0), batch(1), nil, 1},
		{"16 entries", hardState(1, 1, 1), batch(16), nil, 1},
		{"128 entries", hardState(1, 1, 17), batch(128), nil, 1},
		{"commit-only hard state: written, not synced", hardState(1, 1, 140), nil, nil, 0},
		{"new term: synced", hardState(2, 1, 140), nil, nil, 1},
		{"new vote: synced", hardState(2, 3, 140), nil, nil, 1},
		{"nothing", nil, nil, nil, 0},
		{"empty hard state and snapshot", hardState(0, 0, 0), nil, &raftpb.Snapshot{}, 0},
		{"only already-compacted entries", nil, nil, nil, 0},
		{"snapshot with entries", hardState(2, 3, 200), entRange(200, 210, 2), snapshot(200, 2, confState(1), "s"), 1},
		{"entries below the snapshot only", nil, entRange(150, 190, 1), nil, 0},
	}
	for _, tt := range tests {
		before := s.walSyncs
		if err := s.Save(tt.hs, tt.ents, tt.snap); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := s.walSyncs - before; got != tt.wantSyncs {
			t.Errorf("%s: %d wal syncs, want %d", tt.name, got, tt.wantSyncs)
		}
	}
}

func TestSaveRejectsBadEntries(t *testing.T) {
	dir := t.TempDir()
	s := fillLog(t, dir, defaultSegmentBytes, 5)
	tests := []struct {
		name string
		ents []*raftpb.Entry
	}{
		{"gap", entRange(7, 8, 1)},
		{"not consecutive", []*raftpb.Entry{ent(6, 1, "a"), ent(8, 1, "b")}},
	}
	for _, tt := range tests {
		before := s.walSyncs
		if err := s.Save(hardState(9, 9, 9), tt.ents, nil); err == nil {
			t.Fatalf("%s: Save succeeded", tt.name)
		}
		if s.walSyncs != before {
			t.Errorf("%s: wrote to the wal", tt.name)
		}
	}
	mustClose(t, s)
	s = mustOpen(t, dir, defaultSegmentBytes)
	defer mustClose(t, s)
	if l := lastIndex(t, s); l != 5 {
		t.Fatalf("last index %d after rejected saves, want 5", l)
	}
	if hs, _, _ := s.InitialState(); hs != nil {
		t.Fatalf("hard state %v written by a rejected save", hs)
	}
}

func TestReopenAfterSave(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, defaultSegmentBytes)
	if err := s.Save(hardState(3, 2, 4), entRange(1, 4, 3), &raftpb.Snapshot{}); err != nil {
		t.Fatal(err)
	}
	// No Close: a kill -9 closes nothing. The data must already be there.
	s2 := mustOpen(t, dir, defaultSegmentBytes)
	defer mustClose(t, s2)
	defer mustClose(t, s)
	compareStorage(t, "reopen", s, s2)
	if hs, _, _ := s2.InitialState(); hs.GetCommit() != 4 || hs.GetTerm() != 3 {
		t.Fatalf("hard state %v", hs)
	}
}

func TestTornTail(t *testing.T) {
	const n = 10
	tests := []struct {
		name string
		// damage changes the last segment; it returns how many entries
		// must survive.
		damage func(t *testing.T, path string, offs []int, size int) uint64
	}{
		{"cut inside last header", func(t *testing.T, path string, offs []int, size int) uint64 {
			truncate(t, path, offs[n-1]+4)
			return n - 1
		}},
		{"cut inside last payload", func(t *testing.T, path string, offs []int, size int) uint64 {
			truncate(t, path, size-1)
			return n - 1
		}},
		{"cut inside a middle record", func(t *testing.T, path string, offs []int, size int) uint64 {
			truncate(t, path, offs[6]+11)
			return 6
		}},
		{"last record checksum fails", func(t *testing.T, path string, offs []int, size int) uint64 {
			flipByte(t, path, size-2)
			return n - 1
		}},
		{"garbage appended", func(t *testing.T, path string, offs []int, size int) uint64 {
			junk := make([]byte, 1000)
			r := rand.New(rand.NewPCG(1, 2))
			for i := range junk {
				junk[i] = byte(r.UintN(256))
			}
			appendBytes(t, path, junk)
			return n
		}},
		{"zeros appended", func(t *testing.T, path string, offs []int, size int) uint64 {
			appendBytes(t, path, make([]byte, 4096))
			return n
		}},
		{"half a header appended", func(t *testing.T, path string, offs []int, size int) uint64 {
			appendBytes(t, path, []byte{5, 0, 0})
			return n
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			mustClose(t, fillLog(t, dir, defaultSegmentBytes, n))
			segs := segmentsIn(t, dir)
			path := segs[len(segs)-1].path
			offs := recordOffsets(t, path)
			if len(offs) != n {
				t.Fatalf("%d records, want %d", len(offs), n)
			}
			want := tt.damage(t, path, offs, fileSize(t, path))

			s := mustOpen(t, dir, defaultSegmentBytes)
			if l := lastIndex(t, s); l != want {
				t.Fatalf("last index %d, want %d", l, want)
			}
			checkEntries(t, s, 1, want)
			if len(s.Warnings()) != 1 || !strings.Contains(s.Warnings()[0].Error(), "torn tail") {
				t.Fatalf("warnings %v, want one about the torn tail", s.Warnings())
			}
			// The store carries on: new writes land after the cut and
			// a further reopen is clean.
			if err := s.Save(nil, entRange(want+1, want+1, 1), nil); err != nil {
				t.Fatal(err)
			}
			mustClose(t, s)
			s = mustOpen(t, dir, defaultSegmentBytes)
			defer mustClose(t, s)
			if len(s.Warnings()) != 0 {
				t.Fatalf("second reopen warnings: %v", s.Warnings())
			}
			if l := lastIndex(t, s); l != want+1 {
				t.Fatalf("last index after repair %d, want %d", l, want+1)
			}
		})
	}
}

func TestCorruptionIsAnError(t *testing.T) {
	tests := []struct {
		name     string
		segBytes int64
		damage   func(t *testing.T, segs []segment) (path string, off int)
	}{
		{"middle record of the last segment", defaultSegmentBytes, func(t *testing.T, segs []segment) (string, int) {
			path := segs[len(segs)-1].path
			offs := recordOffsets(t, path)
			flipByte(t, path, offs[3]+recordHeaderSize+2)
			return path, offs[3]
		}},
		{"length field of a middle record", defaultSegmentBytes, func(t *testing.T, segs []segment) (string, int) {
			path := segs[len(segs)-1].path
			offs := recordOffsets(t, path)
			flipByte(t, path, offs[2]+1)
			return path, offs[2]
		}},
		{"last record of an older segment", 100, func(t *testing.T, segs []segment) (string, int) {
			path := segs[len(segs)-3].path
			offs := recordOffsets(t, path)
			flipByte(t, path, fileSize(t, path)-1)
			return path, offs[len(offs)-1]
		}},
		{"older segment cut short", 100, func(t *testing.T, segs []segment) (string, int) {
			path := segs[len(segs)-3].path
			offs := recordOffsets(t, path)
			truncate(t, path, fileSize(t, path)-2)
			return path, offs[len(offs)-1]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			mustClose(t, fillLog(t, dir, tt.segBytes, 20))
			path, off := tt.damage(t, segmentsIn(t, dir))
			s, err := openLogStore(dir, logOptions{segmentBytes: tt.segBytes})
			if err == nil {
				mustClose(t, s)
				t.Fatal("open succeeded on a corrupt wal")
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if want := fmt.Sprintf("%s at offset %d", path, off); !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not name %q", err, want)
			}
		})
	}
}

func TestUnknownRecordTypeIsAnError(t *testing.T) {
	dir := t.TempDir()
	mustClose(t, fillLog(t, dir, defaultSegmentBytes, 3))
	segs := segmentsIn(t, dir)
	// A well-formed record of a type this version does not know, at the
	// tail: it was written on purpose, so it must not be cut off.
	rec, _ := appendRecord(nil, 99, func(b []byte) ([]byte, error) { return append(b, 1, 2, 3), nil })
	appendBytes(t, segs[0].path, rec)
	if _, err := OpenLogStore(dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "unknown record type 99") {
		t.Fatalf("open error %v, want unknown record type", err)
	}
}

// TestSnapshotFallback covers a newest snapshot file that is unreadable.
// The store falls back to the previous file when the log still holds every
// entry after it, and refuses to open when compaction has removed them.
func TestSnapshotFallback(t *testing.T) {
	tests := []struct {
		name    string
		keep    uint64
		damage  func(t *testing.T, path string)
		wantErr bool
	}{
		{"corrupt newest, log covers", 100, func(t *testing.T, p string) { flipByte(t, p, fileSize(t, p)-3) }, false},
		{"truncated newest, log covers", 100, func(t *testing.T, p string) { truncate(t, p, 10) }, false},
		{"missing newest, log covers", 100, func(t *testing.T, p string) { remove(t, p) }, false},
		{"corrupt newest, log compacted past the older one", 0, func(t *testing.T, p string) { flipByte(t, p, 30) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := fillLog(t, dir, defaultSegmentBytes, 20)
			for _, idx := range []uint64{10, 15} {
				if err := s.CreateSnapshot(idx, confState(1, 2, 3), []byte(fmt.Sprintf("state@%d", idx)), tt.keep); err != nil {
					t.Fatal(err)
				}
			}
			mustClose(t, s)
			tt.damage(t, filepath.Join(dir, "snap", snapName(1, 15)))

			s, err := OpenLogStore(dir)
			if tt.wantErr {
				if err == nil {
					mustClose(t, s)
					t.Fatal("open succeeded")
				}
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "index 15") {
					t.Fatalf("error %v should wrap ErrCorrupt and name index 15", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer mustClose(t, s)
			snap, _ := s.Snapshot()
			if snap.GetMetadata().GetIndex() != 10 || string(snap.GetData()) != "state@10" {
				t.Fatalf("snapshot %v, want the one at 10", snap)
			}
			if len(s.Warnings()) == 0 {
				t.Fatal("no warning about the fallback")
			}
			checkEntries(t, s, 1, 20)
		})
	}
}

// TestUnacknowledgedSnapshotFile: a snapshot file whose WAL marker never
// reached the disk (crash inside CreateSnapshot) is not used.
func TestUnacknowledgedSnapshotFile(t *testing.T) {
	dir := t.TempDir()
	s := fillLog(t, dir, defaultSegmentBytes, 20)
	if err := s.CreateSnapshot(10, confState(1), []byte("state@10"), 100); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	if _, err := writeSnapFile(filepath.Join(dir, "snap"), snapshot(18, 1, confState(1), "state@18")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "snap", snapName(1, 19)+".tmp"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir, defaultSegmentBytes)
	defer mustClose(t, s)
	if snap, _ := s.Snapshot(); snap.GetMetadata().GetIndex() != 10 {
		t.Fatalf("snapshot index %d, want 10", snap.GetMetadata().GetIndex())
	}
	files, _ := listSnapFiles(filepath.Join(dir, "snap"))
	if len(files) != 1 || files[0].index != 10 {
		t.Fatalf("snapshot files %v, want only index 10", files)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte("snapshot-data "), 10000)
	tests := []struct {
		name string
		take func(t *testing.T, s *LogStore)
	}{
		{"created", func(t *testing.T, s *LogStore) {
			if err := s.Save(hardState(1, 1, 5), entRange(1, 5, 1), nil); err != nil {
				t.Fatal(err)
			}
			if err := s.CreateSnapshot(5, confState(1, 2), data, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"installed", func(t *testing.T, s *LogStore) {
			if err := s.Save(hardState(2, 0, 5), nil, snapshot(5, 2, confState(1, 2), string(data))); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := mustOpen(t, dir, defaultSegmentBytes)
			tt.take(t, s)
			before, _ := s.Snapshot()
			mustClose(t, s)
			s = mustOpen(t, dir, defaultSegmentBytes)
			defer mustClose(t, s)
			after, _ := s.Snapshot()
			if !proto.Equal(before, after) || !bytes.Equal(after.GetData(), data) {
				t.Fatalf("snapshot after reopen differs: index %d, %d data bytes",
					after.GetMetadata().GetIndex(), len(after.GetData()))
			}
			if _, cs, _ := s.InitialState(); !proto.Equal(cs, raftpb.EnsureConfState(confState(1, 2))) {
				t.Fatalf("conf state %v", cs)
			}
			if f := firstIndex(t, s); f != 6 {
				t.Fatalf("first index %d, want 6", f)
			}
		})
	}
}

// TestCompactionBounds: after CreateSnapshot(i, keep k) FirstIndex is
// i-k+1 (or where the log already started), every WAL segment wholly below
// the compaction point is gone, and what is left replays to the same log.
func TestCompactionBounds(t *testing.T) {
	const n, idx = 50, 40
	tests := []struct {
		keep      uint64
		wantFirst uint64
	}{
		{0, 41},
		{1, 40},
		{5, 36},
		{39, 2},
		{40, 1},
		{100, 1},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("keep=%d", tt.keep), func(t *testing.T) {
			dir := t.TempDir()
			s := fillLog(t, dir, 1, n) // every Save starts a new segment
			if err := s.CreateSnapshot(idx, confState(1), []byte("state"), tt.keep); err != nil {
				t.Fatal(err)
			}
			if f := firstIndex(t, s); f != tt.wantFirst {
				t.Fatalf("first index %d, want %d", f, tt.wantFirst)
			}
			compactedTo := tt.wantFirst - 1
			segs := segmentsIn(t, dir)
			if len(segs) > 1 && segs[1].first <= compactedTo+1 {
				t.Fatalf("segment %s is wholly below compaction point %d but was kept", segs[0].path, compactedTo)
			}
			if segs[0].first > compactedTo+1 {
				t.Fatalf("oldest kept segment %s starts after %d: deleted too much", segs[0].path, compactedTo+1)
			}
			mustClose(t, s)
			s2 := mustOpen(t, dir, 1)
			defer mustClose(t, s2)
			if f := firstIndex(t, s2); f != tt.wantFirst {
				t.Fatalf("first index after reopen %d, want %d", f, tt.wantFirst)
			}
			checkEntries(t, s2, tt.wantFirst, n)
		})
	}
}

// TestCompactRefusesPastSnapshot: LogStore.Compact differs from
// MemoryStorage.Compact here on purpose.
func TestCompactRefusesPastSnapshot(t *testing.T) {
	s := fillLog(t, t.TempDir(), defaultSegmentBytes, 10)
	defer mustClose(t, s)
	if err := s.CreateSnapshot(5, nil, nil, 5); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(7); err == nil {
		t.Fatal("Compact past the snapshot succeeded")
	}
	if err := s.Compact(11); !errors.Is(err, raft.ErrUnavailable) {
		t.Fatalf("Compact past the last index: %v", err)
	}
	if err := s.CreateSnapshot(11, nil, nil, 0); !errors.Is(err, raft.ErrUnavailable) {
		t.Fatalf("CreateSnapshot past the last index: %v", err)
	}
	// Where MemoryStorage panics, LogStore returns an error.
	if _, err := s.Entries(6, 12, math64); !errors.Is(err, raft.ErrUnavailable) {
		t.Fatalf("Entries past the last index: %v", err)
	}
	if _, err := s.Entries(8, 7, math64); !errors.Is(err, raft.ErrUnavailable) {
		t.Fatalf("Entries with lo > hi: %v", err)
	}
}

// TestStaleSegmentsAfterInterruptedPurge: removals can reach the disk out
// of order, leaving old segments behind a gap in the sequence.
func TestStaleSegmentsAfterInterruptedPurge(t *testing.T) {
	dir := t.TempDir()
	s := fillLog(t, dir, 1, 20)
	segs := segmentsIn(t, dir)
	// Keep copies of the two oldest segments, then compact them away.
	old0, _ := os.ReadFile(segs[0].path)
	if err := s.CreateSnapshot(15, confState(1), []byte("s"), 0); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	if err := os.WriteFile(segs[0].path, old0, 0o600); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir, 1)
	defer mustClose(t, s)
	if len(s.Warnings()) != 1 {
		t.Fatalf("warnings %v, want one about the stale segment", s.Warnings())
	}
	if _, err := os.Stat(segs[0].path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale segment not removed: %v", err)
	}
	checkEntries(t, s, 16, 20)
}

func TestMissingSegmentIsAnError(t *testing.T) {
	dir := t.TempDir()
	mustClose(t, fillLog(t, dir, 1, 10))
	segs := segmentsIn(t, dir)
	remove(t, segs[0].path) // nothing compacted: entry 1 is now lost
	if _, err := OpenLogStore(dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing entries") {
		t.Fatalf("open error %v, want missing entries", err)
	}
}

func TestSnapshotFilesWithoutWALIsAnError(t *testing.T) {
	dir := t.TempDir()
	s := fillLog(t, dir, defaultSegmentBytes, 5)
	if err := s.CreateSnapshot(5, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	if err := os.RemoveAll(filepath.Join(dir, "wal")); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLogStore(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open error %v, want ErrCorrupt", err)
	}
}

func TestClosed(t *testing.T) {
	s := mustOpen(t, t.TempDir(), defaultSegmentBytes)
	mustClose(t, s)
	mustClose(t, s) // idempotent
	if err := s.Save(hardState(1, 1, 1), nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Save after Close: %v", err)
	}
	if err := s.CreateSnapshot(1, nil, nil, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("CreateSnapshot after Close: %v", err)
	}
}

func truncate(t *testing.T, path string, size int) {
	t.Helper()
	if err := os.Truncate(path, int64(size)); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[off] ^= 0x5a
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	mustClose(t, f)
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t *testing.T, path string) int {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(st.Size())
}

// TestCrashDuringRoll: a crash just after a new segment file was created
// leaves it empty (or with part of its header records). Appending to it
// after restart would leave a segment that cannot stand on its own once
// the segments before it are purged; the store must start a fresh
// segment instead.
func TestCrashDuringRoll(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, 1)
	for i := uint64(1); i <= 10; i++ {
		if err := s.Save(hardState(1, 1, i), entRange(i, i, 1), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateSnapshot(8, confState(1, 2), []byte("state@8"), 100); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	segs := segmentsIn(t, dir)
	last := segs[len(segs)-1]
	empty := filepath.Join(dir, "wal", segmentName(last.seq+1, 11))
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// After the restart only entries are saved (no new hard state), and a
	// snapshot compacts the log far enough to purge every segment before
	// the empty one.
	s = mustOpen(t, dir, defaultSegmentBytes)
	if err := s.Save(nil, entRange(11, 14, 1), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSnapshot(12, nil, []byte("state@12"), 0); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)

	s = mustOpen(t, dir, defaultSegmentBytes)
	defer mustClose(t, s)
	hs, cs, _ := s.InitialState()
	if !proto.Equal(hs, hardState(1, 1, 10)) || len(cs.GetVoters()) != 2 {
		t.Fatalf("hard state %v conf state %v after restart", hs, cs)
	}
	if snap, _ := s.Snapshot(); string(snap.GetData()) != "state@12" {
		t.Fatalf("snapshot %v", snap)
	}
	if f, l := firstIndex(t, s), lastIndex(t, s); f != 13 || l != 14 {
		t.Fatalf("first, last = %d, %d, want 13, 14", f, l)
	}
}
