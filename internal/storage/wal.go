package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// WAL record types. They are written to disk: never renumber or reuse one.
const (
	recordEntry     byte = 1 // payload: marshalled raftpb.Entry
	recordHardState byte = 2 // payload: marshalled raftpb.HardState
	recordSnapshot  byte = 3 // payload: index(8) term(8) kind(1), see snapshotKind*
	recordCompact   byte = 4 // payload: index(8) term(8); log compacted up to index
)

// Kinds of snapshot marker. Written to disk: never renumber.
const (
	// snapshotKindCreated: CreateSnapshot took it locally; the log is kept.
	snapshotKindCreated byte = 1
	// snapshotKindInstalled: received from the leader through Save; like
	// MemoryStorage.ApplySnapshot it replaces the whole log.
	snapshotKindInstalled byte = 2
)

const (
	recordHeaderSize      = 9        // length(4) crc(4) type(1)
	defaultSegmentBytes   = 64 << 20 // roll once the current segment passes this
	snapshotMarkerPayload = 17
	compactPayload        = 16
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segment is one WAL file.
type segment struct {
	seq   uint64 // position in the WAL, consecutive from the oldest kept
	first uint64 // last raft index + 1 when the segment was started
	path  string
}

func segmentName(seq, first uint64) string {
	return fmt.Sprintf("%016x-%016x.wal", seq, first)
}

// parseHexPair parses "%016x-%016x<suffix>".
func parseHexPair(name, suffix string) (a, b uint64, ok bool) {
	base, found := strings.CutSuffix(name, suffix)
	if !found || len(base) != 33 || base[16] != '-' {
		return 0, 0, false
	}
	a, err1 := strconv.ParseUint(base[:16], 16, 64)
	b, err2 := strconv.ParseUint(base[17:], 16, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return a, b, true
}

// listSegments returns the WAL segments in dir ordered by sequence.
func listSegments(dir string) ([]segment, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list wal dir: %w", err)
	}
	var segs []segment
	for _, de := range des {
		seq, first, ok := parseHexPair(de.Name(), ".wal")
		if !ok || !de.Type().IsRegular() {
			continue
		}
		segs = append(segs, segment{seq: seq, first: first, path: filepath.Join(dir, de.Name())})
	}
	slices.SortFunc(segs, func(a, b segment) int { return cmpUint(a.seq, b.seq) })
	for i := 1; i < len(segs); i++ {
		if segs[i].seq == segs[i-1].seq {
			return nil, fmt.Errorf("%w: wal segments %s and %s share sequence %d",
				ErrCorrupt, segs[i-1].path, segs[i].path, segs[i].seq)
		}
	}
	return segs, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// appendRecord appends one framed record whose payload is produced by fill
// (which appends to the slice it is given).
func appendRecord(buf []byte, typ byte, fill func([]byte) ([]byte, error)) ([]byte, error) {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0, 0, 0, 0, 0, typ)
	buf, err := fill(buf)
	if err != nil {
		return buf[:start], err
	}
	n := len(buf) - start - recordHeaderSize
	if uint64(n) > math.MaxUint32 {
		return buf[:start], fmt.Errorf("wal record of %d bytes exceeds the 4 GiB limit", n)
	}
	binary.LittleEndian.PutUint32(buf[start:], uint32(n))
	binary.LittleEndian.PutUint32(buf[start+4:], crc32.Checksum(buf[start+8:], castagnoli))
	return buf, nil
}

func appendProtoRecord(buf []byte, typ byte, m proto.Message) ([]byte, error) {
	return appendRecord(buf, typ, func(b []byte) ([]byte, error) {
		return proto.MarshalOptions{}.MarshalAppend(b, m)
	})
}

func appendSnapshotMarker(buf []byte, index, term uint64, kind byte) []byte {
	buf, _ = appendRecord(buf, recordSnapshot, func(b []byte) ([]byte, error) {
		b = binary.LittleEndian.AppendUint64(b, index)
		b = binary.LittleEndian.AppendUint64(b, term)
		return append(b, kind), nil
	})
	return buf
}

func appendCompact(buf []byte, index, term uint64) []byte {
	buf, _ = appendRecord(buf, recordCompact, func(b []byte) ([]byte, error) {
		b = binary.LittleEndian.AppendUint64(b, index)
		return binary.LittleEndian.AppendUint64(b, term), nil
	})
	return buf
}

func knownRecordType(t byte) bool {
	return t == recordEntry || t == recordHardState || t == recordSnapshot || t == recordCompact
}

// errTorn reports a record that is cut short or fails its checksum: at the
// tail of the newest segment it is the remains of a write a crash
// interrupted.
var errTorn = errors.New("torn or checksum-failing record")

// decodeRecord decodes the record at off. next is the offset after it.
func decodeRecord(data []byte, off int) (typ byte, payload []byte, next int, err error) {
	rest := len(data) - off
	if rest < recordHeaderSize {
		return 0, nil, 0, fmt.Errorf("%w: %d-byte header cut to %d", errTorn, recordHeaderSize, rest)
	}
	n := int(binary.LittleEndian.Uint32(data[off:]))
	if n > rest-recordHeaderSize {
		return 0, nil, 0, fmt.Errorf("%w: length %d runs past end of file", errTorn, n)
	}
	end := off + recordHeaderSize + n
	if crc32.Checksum(data[off+8:end], castagnoli) != binary.LittleEndian.Uint32(data[off+4:]) {
		return 0, nil, 0, fmt.Errorf("%w: crc mismatch", errTorn)
	}
	typ = data[off+8]
	if !knownRecordType(typ) {
		// The checksum holds, so this was written on purpose by a newer
		// version: never treat it as a crash artefact.
		return 0, nil, 0, fmt.Errorf("%w: unknown record type %d", ErrCorrupt, typ)
	}
	return typ, data[off+recordHeaderSize : end], end, nil
}

// validRecordAfter reports whether any intact record starts after off. It is
// how a failing record at the end of the newest segment is told apart from
// one in the middle: a crash can only tear the last write, so an intact
// record after the bad one means the bad one was once acknowledged.
func validRecordAfter(data []byte, off int) bool {
	for p := off + 1; p+recordHeaderSize <= len(data); p++ {
		if !knownRecordType(data[p+8]) {
			continue
		}
		n := int(binary.LittleEndian.Uint32(data[p:]))
		if n > len(data)-p-recordHeaderSize {
			continue
		}
		end := p + recordHeaderSize + n
		if crc32.Checksum(data[p+8:end], castagnoli) == binary.LittleEndian.Uint32(data[p+4:]) {
			return true
		}
	}
	return false
}

// logModel is the raft log as the WAL describes it, built during replay and
// then loaded into a MemoryStorage.
type logModel struct {
	baseIndex, baseTerm uint64 // compaction point: MemoryStorage's dummy entry
	// holeEnd >= baseIndex. Entries (baseIndex, holeEnd] are unknown: they
	// lived in segments already deleted. A later compaction record must
	// cover them by the end of replay.
	holeEnd uint64
	ents    []*raftpb.Entry // contiguous from holeEnd+1
	hs      *raftpb.HardState

	snapIndex, snapTerm uint64            // newest snapshot marker
	markers             map[uint64]uint64 // snapshot index -> term, every marker seen
}

func (m *logModel) lastIndex() uint64 { return m.holeEnd + uint64(len(m.ents)) }

// apply replays one record. where names the file and offset for errors.
func (m *logModel) apply(typ byte, payload []byte, where string) error {
	switch typ {
	case recordEntry:
		e := &raftpb.Entry{}
		if err := proto.Unmarshal(payload, e); err != nil {
			return fmt.Errorf("%w: %s: entry record: %w", ErrCorrupt, where, err)
		}
		return m.appendEntry(e, where)
	case recordHardState:
		hs := &raftpb.HardState{}
		if err := proto.Unmarshal(payload, hs); err != nil {
			return fmt.Errorf("%w: %s: hard state record: %w", ErrCorrupt, where, err)
		}
		m.hs = hs
	case recordSnapshot:
		if len(payload) != snapshotMarkerPayload {
			return fmt.Errorf("%w: %s: snapshot marker of %d bytes", ErrCorrupt, where, len(payload))
		}
		index := binary.LittleEndian.Uint64(payload)
		term := binary.LittleEndian.Uint64(payload[8:])
		m.snapIndex, m.snapTerm = index, term
		m.markers[index] = term
		switch payload[16] {
		case snapshotKindCreated:
		case snapshotKindInstalled:
			m.baseIndex, m.baseTerm, m.holeEnd, m.ents = index, term, index, nil
		default:
			return fmt.Errorf("%w: %s: snapshot marker kind %d", ErrCorrupt, where, payload[16])
		}
	case recordCompact:
		if len(payload) != compactPayload {
			return fmt.Errorf("%w: %s: compaction record of %d bytes", ErrCorrupt, where, len(payload))
		}
		m.compact(binary.LittleEndian.Uint64(payload), binary.LittleEndian.Uint64(payload[8:]))
	}
	return nil
}

func (m *logModel) appendEntry(e *raftpb.Entry, where string) error {
	idx := e.GetIndex()
	switch {
	case idx <= m.baseIndex:
		// Compacted away after it was written.
	case idx <= m.holeEnd+1:
		// Raft overwrote the log from idx on (or this is the first entry
		// after the compaction point).
		m.holeEnd = idx - 1
		m.ents = append(m.ents[:0:0], e)
	case idx <= m.lastIndex()+1:
		// idx <= last overwrites a conflicting suffix.
		m.ents = append(m.ents[:idx-m.holeEnd-1], e)
	default:
		return fmt.Errorf("%w: %s: entry %d leaves a gap after last index %d",
			ErrCorrupt, where, idx, m.lastIndex())
	}
	return nil
}

func (m *logModel) compact(index, term uint64) {
	if index <= m.baseIndex {
		return
	}
	if index >= m.holeEnd {
		drop := index - m.holeEnd
		if drop >= uint64(len(m.ents)) {
			m.ents = nil
		} else {
			m.ents = m.ents[drop:]
		}
		m.holeEnd = index
	}
	m.baseIndex, m.baseTerm = index, term
}

// replaySegments reads segs in order into a fresh model. A failing record at
// the tail of the last segment is cut off (the file is truncated and synced)
// and reported through warn; anywhere else it is an error naming the file
// and offset.
func replaySegments(segs []segment, warn func(error)) (*logModel, error) {
	m := &logModel{markers: map[uint64]uint64{}}
	if len(segs) > 0 && segs[0].first > 0 {
		// Entries before the oldest kept segment are gone; they must have
		// been compacted, which the records below will show.
		m.holeEnd = segs[0].first - 1
	}
	for i, seg := range segs {
		data, err := os.ReadFile(seg.path)
		if err != nil {
			return nil, fmt.Errorf("read wal segment: %w", err)
		}
		last := i == len(segs)-1
		off := 0
		for off < len(data) {
			typ, payload, next, err := decodeRecord(data, off)
			if err != nil {
				if !errors.Is(err, errTorn) || !last || validRecordAfter(data, off) {
					return nil, fmt.Errorf("%w: %s at offset %d: %w", ErrCorrupt, seg.path, off, err)
				}
				if truncErr := truncateFile(seg.path, int64(off)); truncErr != nil {
					return nil, truncErr
				}
				warn(fmt.Errorf("wal %s: cut %d bytes of torn tail at offset %d (%w)",
					seg.path, len(data)-off, off, err))
				break
			}
			if err := m.apply(typ, payload, fmt.Sprintf("%s at offset %d", seg.path, off)); err != nil {
				return nil, err
			}
			off = next
		}
	}
	if m.holeEnd > m.baseIndex {
		return nil, fmt.Errorf("%w: wal is missing entries %d..%d (compacted only to %d)",
			ErrCorrupt, m.baseIndex+1, m.holeEnd, m.baseIndex)
	}
	return m, nil
}

func truncateFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s to cut torn tail: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close()
		return fmt.Errorf("cut torn tail of %s at %d: %w", path, size, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("fsync %s after cutting torn tail: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
