package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// keepSnapFiles is how many snapshot files survive a new snapshot: the
// newest and one to fall back to if the newest turns out to be unreadable.
const keepSnapFiles = 2

// LogStore is the durable raft log: a WAL of entries, hard states and
// snapshot markers plus snapshot files, with reads served from a
// raft.MemoryStorage rebuilt from them at open. It implements
// raftnode.LogStorage.
//
// Whatever a returned Save, CreateSnapshot or Compact covered survives a
// crash or power loss. After any failed write to the WAL the store refuses
// further writes (the file's tail is then unknown); reopen it to recover.
//
// Reopening restores exactly what the MemoryStorage held before, including
// the entries CreateSnapshot kept behind the snapshot (keep): replay drops
// entries at or below the compaction point, not the snapshot index, so a
// restart does not force a snapshot on followers that were only slightly
// behind. The compaction point is recorded in the WAL for that reason.
type LogStore struct {
	dir, walDir, snapDir string

	// ms serves raft's reads. It is private so that every change goes
	// through the WAL first.
	ms *raft.MemoryStorage

	segs         []segment // kept segments, oldest first; the last is appended to
	f            *os.File  // the last segment
	size         int64     // bytes in the last segment
	segmentBytes int64
	// rollNext makes the next write start a new segment. Set at open: the
	// last segment may be one a crash interrupted while its header records
	// were being written, and appending to it would leave a segment that
	// cannot stand on its own once the ones before it are purged.
	rollNext bool

	snapIndex, snapTerm uint64
	snapConf            *raftpb.ConfState // ConfState of the current snapshot
	hs                  *raftpb.HardState // last hard state written

	buf      []byte // reused record buffer
	warnings []error
	err      error // sticky write failure
	closed   bool

	walSyncs int // fdatasyncs of WAL segments (tests count them)
}

type logOptions struct {
	segmentBytes int64
}

// OpenLogStore opens (creating if needed) the log store in dir: it replays
// the WAL under dir/wal and the newest good snapshot under dir/snap into
// memory. A torn record at the end of the newest WAL segment, left by a
// crash during a write that never returned, is cut off and reported through
// Warnings, as is a skipped corrupt snapshot file. Any other damage is an
// error wrapping ErrCorrupt that names the file (and offset).
//
// If the newest snapshot file is unreadable, the previous one is used
// (with a warning) as long as the log still holds every entry after it, so
// raft can replay them; if compaction already removed those entries, open
// fails. Snapshot files newer than the WAL's last snapshot marker come from
// a call that never returned and are deleted.
func OpenLogStore(dir string) (*LogStore, error) {
	return openLogStore(dir, logOptions{segmentBytes: defaultSegmentBytes})
}

func openLogStore(dir string, opt logOptions) (*LogStore, error) {
	s := &LogStore{
		dir:          dir,
		walDir:       filepath.Join(dir, "wal"),
		snapDir:      filepath.Join(dir, "snap"),
		segmentBytes: opt.segmentBytes,
	}
	if err := s.open(); err != nil {
		if s.f != nil {
			_ = s.f.Close()
		}
		return nil, fmt.Errorf("open log store %s: %w", dir, err)
	}
	return s, nil
}

func (s *LogStore) warn(err error) { s.warnings = append(s.warnings, err) }

// Warnings returns what OpenLogStore repaired or skipped: cut torn WAL
// tails, corrupt snapshot files passed over, leftover files removed.
func (s *LogStore) Warnings() []error { return s.warnings }

func (s *LogStore) open() error {
	_, statErr := os.Stat(s.dir)
	created := errors.Is(statErr, os.ErrNotExist)
	for _, d := range []string{s.walDir, s.snapDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create directory: %w", err)
		}
	}
	segs, err := listSegments(s.walDir)
	if err != nil {
		return err
	}
	snaps, err := listSnapFiles(s.snapDir)
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		if len(snaps) > 0 {
			return fmt.Errorf("%w: %d snapshot files in %s but no wal segments in %s",
				ErrCorrupt, len(snaps), s.snapDir, s.walDir)
		}
		return s.initEmpty(created)
	}

	// Removals of old segments may reach the disk in any order, so a crash
	// during a purge can leave old segments behind a gap. Replay the
	// consecutive run ending at the newest; whether that run is complete is
	// checked by replay (missing entries are an error).
	start := 0
	for i := len(segs) - 1; i > 0; i-- {
		if segs[i-1].seq+1 != segs[i].seq {
			start = i
			break
		}
	}
	stale, segs := segs[:start], segs[start:]

	m, err := replaySegments(segs, s.warn)
	if err != nil {
		return err
	}
	snap, err := s.pickSnapshot(m, snaps)
	if err != nil {
		return err
	}
	if loadErr := s.load(m, snap); loadErr != nil {
		return loadErr
	}
	for _, seg := range stale {
		if removeErr := os.Remove(seg.path); removeErr != nil {
			return fmt.Errorf("remove stale wal segment: %w", removeErr)
		}
		s.warn(fmt.Errorf("removed wal segment %s left behind by an interrupted purge", seg.path))
	}

	s.segs = segs
	last := segs[len(segs)-1]
	f, err := os.OpenFile(last.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open wal segment for append: %w", err)
	}
	s.f = f
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat wal segment: %w", err)
	}
	s.size = st.Size()
	s.rollNext = last.seq > 0 // segment 0 needs no header: it starts the log
	return nil
}

// initEmpty starts a new log: an empty first segment, made durable along
// with the directories holding it.
func (s *LogStore) initEmpty(created bool) error {
	s.ms = raft.NewMemoryStorage()
	s.snapConf = raftpb.EnsureConfState(nil)
	seg := segment{seq: 0, first: 1, path: filepath.Join(s.walDir, segmentName(0, 1))}
	f, err := os.OpenFile(seg.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create wal segment: %w", err)
	}
	s.f = f
	s.segs = []segment{seg}
	dirs := []string{s.walDir, s.dir}
	if created {
		dirs = append(dirs, filepath.Dir(filepath.Clean(s.dir)))
	}
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// pickSnapshot returns the newest snapshot file that verifies and that the
// WAL vouches for, or nil if the log needs none. Files newer than the WAL's
// newest marker were written by a call that never returned: they are
// removed. If the newest marked snapshot is unreadable an older one is used,
// provided the log still holds every entry after it; otherwise that is an
// error.
func (s *LogStore) pickSnapshot(m *logModel, files []snapFile) (*raftpb.Snapshot, error) {
	var snap *raftpb.Snapshot
	for _, sf := range files {
		if sf.index > m.snapIndex {
			if err := os.Remove(sf.path); err != nil {
				return nil, fmt.Errorf("remove unacknowledged snapshot file: %w", err)
			}
			s.warn(fmt.Errorf("removed snapshot file %s: newer than the wal's last snapshot marker (index %d)",
				sf.path, m.snapIndex))
			continue
		}
		if t, ok := m.markers[sf.index]; ok && t != sf.term {
			s.warn(fmt.Errorf("skipped snapshot file %s: the wal records term %d for index %d", sf.path, t, sf.index))
			continue
		}
		got, err := readSnapFile(sf)
		if err != nil {
			s.warn(fmt.Errorf("skipped snapshot file: %w", err))
			continue
		}
		snap = got
		break
	}
	var index uint64
	if snap != nil {
		index = snap.GetMetadata().GetIndex()
	}
	if index < m.snapIndex || index < m.baseIndex {
		if index < m.baseIndex {
			return nil, fmt.Errorf("%w: no readable snapshot file at index %d (term %d) in %s, and the log is compacted to %d so an older one (best: %d) cannot stand in",
				ErrCorrupt, m.snapIndex, m.snapTerm, s.snapDir, m.baseIndex, index)
		}
		fallback := fmt.Sprintf("the one at index %d", index)
		if snap == nil {
			fallback = "none (the log holds every entry from index 1)"
		}
		s.warn(fmt.Errorf("snapshot at index %d unreadable: fell back to %s; raft replays the entries after it",
			m.snapIndex, fallback))
	}
	return snap, nil
}

// load rebuilds the MemoryStorage from the replayed log and snapshot so it
// is exactly what the same sequence of calls left before the restart,
// including the entries kept behind the snapshot for slow followers.
func (s *LogStore) load(m *logModel, snap *raftpb.Snapshot) error {
	ms := raft.NewMemoryStorage()
	var si, st uint64
	if snap != nil {
		si, st = snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm()
	}
	switch {
	case snap != nil && si == m.baseIndex:
		if st != m.baseTerm {
			return fmt.Errorf("%w: snapshot at index %d has term %d, wal says %d", ErrCorrupt, si, st, m.baseTerm)
		}
		if err := ms.ApplySnapshot(snap); err != nil {
			return fmt.Errorf("load snapshot %d: %w", si, err)
		}
	case m.baseIndex > 0:
		base := &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(m.baseIndex), Term: new(m.baseTerm)}}
		if err := ms.ApplySnapshot(base); err != nil {
			return fmt.Errorf("load compaction point %d: %w", m.baseIndex, err)
		}
	}
	if err := ms.Append(m.ents); err != nil {
		return fmt.Errorf("load entries: %w", err)
	}
	if snap != nil && si > m.baseIndex {
		if si > m.lastIndex() {
			return fmt.Errorf("%w: snapshot at index %d is past the log's last index %d", ErrCorrupt, si, m.lastIndex())
		}
		if t, err := ms.Term(si); err != nil || t != st {
			return fmt.Errorf("%w: snapshot at index %d has term %d, the log has %d (%v)", ErrCorrupt, si, st, t, err)
		}
		if _, err := ms.CreateSnapshot(si, snap.GetMetadata().GetConfState(), snap.GetData()); err != nil {
			return fmt.Errorf("load snapshot %d: %w", si, err)
		}
	}
	if m.hs != nil {
		if err := ms.SetHardState(m.hs); err != nil {
			return fmt.Errorf("load hard state: %w", err)
		}
	}
	s.ms, s.hs = ms, m.hs
	s.snapIndex, s.snapTerm = si, st
	if snap != nil {
		s.snapConf = proto.CloneOf(raftpb.EnsureConfState(snap.GetMetadata().GetConfState()))
	} else {
		s.snapConf = raftpb.EnsureConfState(nil)
	}
	return nil
}

// Close closes the WAL. Everything a returned call covered is already on
// disk, so Close does not sync.
func (s *LogStore) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("close wal segment: %w", err)
	}
	return nil
}

func (s *LogStore) usable() error {
	if s.closed {
		return ErrClosed
	}
	if s.err != nil {
		return fmt.Errorf("storage: log store unusable after earlier write failure: %w", s.err)
	}
	return nil
}

// fail makes a WAL write failure sticky: after a failed write or fsync the
// segment's tail is unknown, and appending after it could bury garbage in
// the middle of the log.
func (s *LogStore) fail(err error) error {
	s.err = err
	return err
}

// InitialState implements raft.Storage.
func (s *LogStore) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	return s.ms.InitialState()
}

// Entries implements raft.Storage. Where MemoryStorage would panic (hi past
// LastIndex+1, or lo > hi) it returns an error wrapping raft.ErrUnavailable.
func (s *LogStore) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	if last, _ := s.ms.LastIndex(); hi > last+1 || lo > hi {
		return nil, fmt.Errorf("entries [%d, %d) with last index %d: %w", lo, hi, last, raft.ErrUnavailable)
	}
	return s.ms.Entries(lo, hi, maxSize)
}

// Term implements raft.Storage.
func (s *LogStore) Term(i uint64) (uint64, error) { return s.ms.Term(i) }

// LastIndex implements raft.Storage.
func (s *LogStore) LastIndex() (uint64, error) { return s.ms.LastIndex() }

// FirstIndex implements raft.Storage.
func (s *LogStore) FirstIndex() (uint64, error) { return s.ms.FirstIndex() }

// Snapshot implements raft.Storage. After a restart it returns the snapshot
// read back from its file, data included.
func (s *LogStore) Snapshot() (*raftpb.Snapshot, error) { return s.ms.Snapshot() }

// Save implements raftnode.LogStorage: it makes a Ready's hard state,
// entries and snapshot durable with one WAL fdatasync, then makes them visible through raft.Storage in the
// order ApplySnapshot, Append, SetHardState. A nil or empty hs or snap is
// skipped; a call with nothing to write does no I/O at all. A snapshot is
// first written to its own file (which costs its own fsyncs) so the WAL
// record naming it never points at nothing.
//
// Entries at or below the compaction point are dropped and an entry at or
// below the last index replaces the log from there on, as in
// MemoryStorage.Append. Entries that are not consecutive or would leave a
// gap are an error and nothing is written. A snapshot not newer than the
// current one returns raft.ErrSnapOutOfDate (wrapped). The store keeps the
// entry pointers, as MemoryStorage does: like raft's, they must not be
// modified afterwards. hs is copied.
func (s *LogStore) Save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) error {
	if err := s.usable(); err != nil {
		return err
	}
	install := snap != nil && !raft.IsEmptySnap(snap)
	first, _ := s.ms.FirstIndex()
	last, _ := s.ms.LastIndex()
	var si, st uint64
	if install {
		si, st = snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm()
		if s.snapIndex != 0 && s.snapIndex >= si {
			return fmt.Errorf("save snapshot at %d, have %d: %w", si, s.snapIndex, raft.ErrSnapOutOfDate)
		}
		first, last = si+1, si
	}
	for i := 1; i < len(ents); i++ {
		if ents[i].GetIndex() != ents[i-1].GetIndex()+1 {
			return fmt.Errorf("save: entry %d follows entry %d", ents[i].GetIndex(), ents[i-1].GetIndex())
		}
	}
	if len(ents) > 0 {
		lo := ents[0].GetIndex()
		switch {
		case lo+uint64(len(ents))-1 < first:
			ents = nil
		case lo < first:
			ents = ents[first-lo:]
		}
	}
	if len(ents) > 0 && ents[0].GetIndex() > last+1 {
		return fmt.Errorf("save: entry %d leaves a gap after last index %d: %w",
			ents[0].GetIndex(), last, raft.ErrUnavailable)
	}
	writeHS := hs != nil && !raft.IsEmptyHardState(hs)
	if !install && len(ents) == 0 && !writeHS {
		return nil
	}

	if install {
		if _, err := writeSnapFile(s.snapDir, snap); err != nil {
			return fmt.Errorf("save snapshot at %d: %w", si, err)
		}
	}
	// As etcd's raft.MustSync: only entries, a snapshot, or a new term or
	// vote must be durable before raft acts on them. A hard state that
	// only moves the commit index is written without a sync: losing it on
	// power failure only makes the node relearn the commit index from the
	// leader, and it saves a follower one fdatasync per commit.
	mustSync := install || len(ents) > 0 || (writeHS && (s.hs == nil || hs.GetTerm() != s.hs.GetTerm() || hs.GetVote() != s.hs.GetVote()))
	if err := s.writeWAL(mustSync, func(buf []byte) ([]byte, error) {
		if install {
			buf = appendSnapshotMarker(buf, si, st, snapshotKindInstalled)
		}
		var err error
		for _, e := range ents {
			if buf, err = appendProtoRecord(buf, recordEntry, e); err != nil {
				return buf, fmt.Errorf("encode entry %d: %w", e.GetIndex(), err)
			}
		}
		if writeHS {
			if buf, err = appendProtoRecord(buf, recordHardState, hs); err != nil {
				return buf, fmt.Errorf("encode hard state: %w", err)
			}
		}
		return buf, nil
	}); err != nil {
		return fmt.Errorf("save: %w", err)
	}

	// Durable: now visible. These cannot fail after the checks above; if
	// one does, memory and disk disagree, so stop writing.
	if install {
		if err := s.ms.ApplySnapshot(snap); err != nil {
			return s.fail(fmt.Errorf("save: apply snapshot %d in memory: %w", si, err))
		}
		s.snapIndex, s.snapTerm = si, st
		s.snapConf = proto.CloneOf(raftpb.EnsureConfState(snap.GetMetadata().GetConfState()))
	}
	if err := s.ms.Append(ents); err != nil {
		return s.fail(fmt.Errorf("save: append in memory: %w", err))
	}
	if writeHS {
		h := proto.CloneOf(hs)
		if err := s.ms.SetHardState(h); err != nil {
			return s.fail(fmt.Errorf("save: set hard state in memory: %w", err))
		}
		s.hs = h
	}
	if install {
		return s.purge()
	}
	return nil
}

// CreateSnapshot implements raftnode.LogStorage. It writes a snapshot of
// the applied state at index (with cs, or the current snapshot's ConfState
// if cs is nil) to its own file, records a marker in the WAL, and then
// compacts the log to index-keep, so FirstIndex becomes index-keep+1 unless
// the log already starts later. WAL segments wholly below the compaction
// point are deleted, and all but the newest two snapshot files.
//
// index not newer than the current snapshot returns raft.ErrSnapOutOfDate
// (wrapped); index past the last entry is an error.
func (s *LogStore) CreateSnapshot(index uint64, cs *raftpb.ConfState, data []byte, keep uint64) error {
	if err := s.usable(); err != nil {
		return err
	}
	if index <= s.snapIndex {
		return fmt.Errorf("create snapshot at %d, have %d: %w", index, s.snapIndex, raft.ErrSnapOutOfDate)
	}
	last, _ := s.ms.LastIndex()
	if index > last {
		return fmt.Errorf("create snapshot at %d past last index %d: %w", index, last, raft.ErrUnavailable)
	}
	term, err := s.ms.Term(index)
	if err != nil {
		return fmt.Errorf("create snapshot at %d: %w", index, err)
	}
	conf := cs
	if conf == nil {
		conf = s.snapConf
	}
	snap := &raftpb.Snapshot{
		Data: data,
		Metadata: &raftpb.SnapshotMetadata{
			ConfState: proto.CloneOf(conf),
			Index:     new(index),
			Term:      new(term),
		},
	}
	if _, writeErr := writeSnapFile(s.snapDir, snap); writeErr != nil {
		return fmt.Errorf("create snapshot at %d: %w", index, writeErr)
	}

	first, _ := s.ms.FirstIndex()
	var compactTo, compactTerm uint64
	if keep < index && index-keep >= first {
		compactTo = index - keep
		if compactTerm, err = s.ms.Term(compactTo); err != nil {
			return fmt.Errorf("create snapshot at %d: compaction point %d: %w", index, compactTo, err)
		}
	}
	if err := s.writeWAL(true, func(buf []byte) ([]byte, error) {
		buf = appendSnapshotMarker(buf, index, term, snapshotKindCreated)
		if compactTo > 0 {
			buf = appendCompact(buf, compactTo, compactTerm)
		}
		return buf, nil
	}); err != nil {
		return fmt.Errorf("create snapshot at %d: %w", index, err)
	}

	if _, err := s.ms.CreateSnapshot(index, cs, data); err != nil {
		return s.fail(fmt.Errorf("create snapshot at %d in memory: %w", index, err))
	}
	s.snapIndex, s.snapTerm = index, term
	if cs != nil {
		s.snapConf = proto.CloneOf(cs)
	}
	if compactTo > 0 {
		if err := s.ms.Compact(compactTo); err != nil {
			return s.fail(fmt.Errorf("compact to %d in memory: %w", compactTo, err))
		}
	}
	return s.purge()
}

// Compact durably discards the entries before compactIndex, like
// MemoryStorage.Compact. Unlike MemoryStorage it refuses to compact past
// the current snapshot, since those entries would then exist nowhere.
// CreateSnapshot compacts on its own; this is for callers that want to
// shrink the log further later.
func (s *LogStore) Compact(compactIndex uint64) error {
	if err := s.usable(); err != nil {
		return err
	}
	first, _ := s.ms.FirstIndex()
	if compactIndex < first {
		return fmt.Errorf("compact to %d, first index %d: %w", compactIndex, first, raft.ErrCompacted)
	}
	last, _ := s.ms.LastIndex()
	if compactIndex > last {
		return fmt.Errorf("compact to %d past last index %d: %w", compactIndex, last, raft.ErrUnavailable)
	}
	if compactIndex > s.snapIndex {
		return fmt.Errorf("compact to %d past the snapshot at %d would lose entries", compactIndex, s.snapIndex)
	}
	term, err := s.ms.Term(compactIndex)
	if err != nil {
		return fmt.Errorf("compact to %d: %w", compactIndex, err)
	}
	if err := s.writeWAL(true, func(buf []byte) ([]byte, error) {
		return appendCompact(buf, compactIndex, term), nil
	}); err != nil {
		return fmt.Errorf("compact to %d: %w", compactIndex, err)
	}
	if err := s.ms.Compact(compactIndex); err != nil {
		return s.fail(fmt.Errorf("compact to %d in memory: %w", compactIndex, err))
	}
	return s.purge()
}

// writeWAL appends the records build produces to the WAL and fdatasyncs
// once. If the current segment has passed the size limit, or this is the
// first write since open, the records go to a new segment, which starts
// with header records describing the state so far (and costs one extra
// fsync, of the directory).
func (s *LogStore) writeWAL(mustSync bool, build func([]byte) ([]byte, error)) error {
	buf, err := build(s.buf[:0])
	if err != nil {
		return err
	}
	if cap(buf) <= 4<<20 {
		s.buf = buf[:0]
	}
	if s.size < s.segmentBytes && !s.rollNext {
		if _, writeErr := s.f.Write(buf); writeErr != nil {
			return s.fail(fmt.Errorf("write wal: %w", writeErr))
		}
		if mustSync {
			if syncErr := s.sync(s.f); syncErr != nil {
				return s.fail(syncErr)
			}
		}
		s.size += int64(len(buf))
		return nil
	}

	cur := s.segs[len(s.segs)-1]
	last, _ := s.ms.LastIndex()
	seg := segment{seq: cur.seq + 1, first: last + 1}
	seg.path = filepath.Join(s.walDir, segmentName(seg.seq, seg.first))
	out := append(s.header(), buf...)
	f, err := os.OpenFile(seg.path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return s.fail(fmt.Errorf("create wal segment: %w", err))
	}
	if _, err := f.Write(out); err != nil {
		_ = f.Close()
		return s.fail(fmt.Errorf("write wal: %w", err))
	}
	if err := s.sync(f); err != nil {
		_ = f.Close()
		return s.fail(err)
	}
	if err := syncDir(s.walDir); err != nil {
		_ = f.Close()
		return s.fail(err)
	}
	if err := s.f.Close(); err != nil {
		_ = f.Close()
		return s.fail(fmt.Errorf("close full wal segment: %w", err))
	}
	s.f, s.size, s.rollNext = f, int64(len(out)), false
	s.segs = append(s.segs, seg)
	return nil
}

// header returns the records that open a new segment: the current
// snapshot marker, compaction point and hard state, so replay can start at
// this segment once the older ones are deleted.
func (s *LogStore) header() []byte {
	var h []byte
	if s.snapIndex > 0 {
		h = appendSnapshotMarker(h, s.snapIndex, s.snapTerm, snapshotKindCreated)
	}
	first, _ := s.ms.FirstIndex()
	if base := first - 1; base > 0 {
		term, _ := s.ms.Term(base) // the dummy entry: always present
		h = appendCompact(h, base, term)
	}
	if s.hs != nil {
		// Marshalling three varints cannot fail.
		h, _ = appendProtoRecord(h, recordHardState, s.hs)
	}
	return h
}

func (s *LogStore) sync(f *os.File) error {
	s.walSyncs++
	return fdatasync(f)
}

// purge deletes WAL segments that hold nothing after the compaction point
// and snapshot files beyond the newest keepSnapFiles. Segment i can go once
// segment i+1 was started with nothing after the compaction point (its
// first index is at most compactIndex+1): every later record, including the
// header of i+1 and the compaction record itself, is still there. The
// segment being written is never deleted.
func (s *LogStore) purge() error {
	first, _ := s.ms.FirstIndex()
	compactIndex := first - 1
	n := 0
	for n+1 < len(s.segs) && s.segs[n+1].first <= compactIndex+1 {
		n++
	}
	var errs []error
	for _, seg := range s.segs[:n] {
		if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove compacted wal segment: %w", err))
			break // keep the kept segments consecutive
		}
		s.segs = s.segs[1:]
	}
	if err := pruneSnapFiles(s.snapDir, keepSnapFiles); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("purge (the new state is durable; only old files remain): %w", err)
	}
	return nil
}
