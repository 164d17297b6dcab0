package storage

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Fuzz targets for what the disk can hand back after a crash or bit rot.
// scripts/fuzz.sh runs them; without -fuzz their seeds run as tests.

// fuzzLogDir writes a small but complete log store: entries over two terms,
// a hard state, a snapshot (marker, file and compaction record) and entries
// after it. It returns the bytes of every file, keyed by path relative to
// the store's directory.
func fuzzLogDir(tb testing.TB) map[string][]byte {
	tb.Helper()
	dir := tb.TempDir()
	s := mustOpen(tb, dir, defaultSegmentBytes)
	steps := []func() error{
		func() error { return s.Save(hardState(1, 1, 2), entRange(1, 3, 1), nil) },
		func() error { return s.Save(hardState(2, 1, 5), append(entRange(3, 3, 2), entRange(4, 6, 2)...), nil) },
		func() error { return s.CreateSnapshot(5, confState(1, 2, 3), []byte("state at 5"), 2) },
		func() error { return s.Save(hardState(2, 1, 7), entRange(7, 8, 2), nil) },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			tb.Fatalf("step %d: %v", i, err)
		}
	}
	mustClose(tb, s)
	files := map[string][]byte{}
	for _, sub := range []string{"wal", "snap"} {
		des, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			tb.Fatal(err)
		}
		for _, de := range des {
			b, err := os.ReadFile(filepath.Join(dir, sub, de.Name()))
			if err != nil {
				tb.Fatal(err)
			}
			files[filepath.Join(sub, de.Name())] = b
		}
	}
	return files
}

func onlyFile(tb testing.TB, files map[string][]byte, sub string) (string, []byte) {
	tb.Helper()
	var name string
	for n := range files {
		if filepath.Dir(n) == sub {
			if name != "" {
				tb.Fatalf("more than one file in %s: %s, %s", sub, name, n)
			}
			name = n
		}
	}
	if name == "" {
		tb.Fatalf("no file in %s", sub)
	}
	return name, files[name]
}

// intactEntries lists every entry record anywhere in data whose checksum
// holds: what was written intact, whoever wrote it.
func intactEntries(data []byte) map[string]bool {
	out := map[string]bool{}
	for p := 0; p+recordHeaderSize <= len(data); p++ {
		typ, payload, _, err := decodeRecord(data, p)
		if err != nil || typ != recordEntry {
			continue
		}
		e := &raftpb.Entry{}
		if proto.Unmarshal(payload, e) == nil {
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(e)
			out[string(b)] = true
		}
	}
	return out
}

// FuzzWALCorruption damages the WAL segment of a real log store (one byte
// changed, the file cut, bytes appended) and reopens it. Opening must not
// panic; it may refuse (ErrCorrupt) or cut a torn tail, but every entry the
// store then serves must be one that was written intact.
func FuzzWALCorruption(f *testing.F) {
	files := fuzzLogDir(f)
	_, seg := onlyFile(f, files, "wal")
	size := uint32(len(seg))
	f.Add(uint32(0), byte(0), uint32(0), []byte{})                    // untouched
	f.Add(uint32(0), byte(0), uint32(0), []byte{1, 2, 3})             // garbage tail
	f.Add(uint32(0), byte(0), size-3, []byte{})                       // torn last record
	f.Add(size-20, byte(0x40), uint32(0), []byte{})                   // bit flip in the last record
	f.Add(uint32(12), byte(0x01), uint32(0), []byte{})                // bit flip in the first record
	f.Add(uint32(0), byte(0), uint32(0), seg[:recordHeaderSize+4])    // a record's start appended
	f.Add(uint32(0), byte(0), uint32(0), append([]byte(nil), seg...)) // the whole log again
	f.Fuzz(func(t *testing.T, pos uint32, xor byte, cut uint32, tail []byte) {
		dir := t.TempDir()
		for name, b := range files {
			data := append([]byte(nil), b...)
			if filepath.Dir(name) == "wal" {
				if xor != 0 && len(data) > 0 {
					data[int(pos)%len(data)] ^= xor
				}
				if cut != 0 && len(data) > 0 {
					data = data[:len(data)-int(cut)%len(data)]
				}
				data = append(data, tail...)
			}
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		segPath, _ := onlyFile(t, files, "wal")
		damaged, err := os.ReadFile(filepath.Join(dir, segPath))
		if err != nil {
			t.Fatal(err)
		}
		allowed := intactEntries(damaged)
		s, err := OpenLogStore(dir)
		if err != nil {
			return
		}
		defer s.Close()
		first, err := s.FirstIndex()
		if err != nil {
			t.Fatal(err)
		}
		last, err := s.LastIndex()
		if err != nil {
			t.Fatal(err)
		}
		if last < first {
			return
		}
		ents, err := s.Entries(first, last+1, 1<<62)
		if err != nil {
			t.Fatalf("entries %d..%d of an opened store: %v", first, last, err)
		}
		for _, e := range ents {
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(e)
			if !allowed[string(b)] {
				t.Fatalf("store serves entry %d (term %d, %q), which no intact record holds", e.GetIndex(), e.GetTerm(), e.GetData())
			}
		}
	})
}

// FuzzReadSnapFile decodes arbitrary bytes as a snapshot file's contents
// (readSnapFile's decoding, without the disk): an error or a
// snapshot whose metadata matches the file's name, never a panic.
func FuzzReadSnapFile(f *testing.F) {
	_, valid := onlyFile(f, fuzzLogDir(f), "snap")
	f.Add(valid)
	f.Add(valid[:snapHeaderSize])
	f.Add(valid[:len(valid)-1])
	f.Add([]byte("BLXSNAP1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := decodeSnapFile(snapFile{term: 2, index: 5, path: snapName(2, 5)}, data)
		if err != nil {
			return
		}
		if md := snap.GetMetadata(); md.GetIndex() != 5 || md.GetTerm() != 2 {
			t.Fatalf("accepted a snapshot of term %d index %d from a file named for 2/5", md.GetTerm(), md.GetIndex())
		}
	})
}

// FuzzSnapFileCorruption damages a valid snapshot file (one byte changed,
// cut, or bytes appended): decoding must refuse every such file.
func FuzzSnapFileCorruption(f *testing.F) {
	_, valid := onlyFile(f, fuzzLogDir(f), "snap")
	f.Add(uint32(3), byte(1), uint32(0), []byte{})
	f.Add(uint32(9), byte(0x80), uint32(0), []byte{})  // length
	f.Add(uint32(17), byte(0x10), uint32(0), []byte{}) // crc
	f.Add(uint32(0), byte(0), uint32(1), []byte{})
	f.Add(uint32(0), byte(0), uint32(0), []byte{0})
	f.Fuzz(func(t *testing.T, pos uint32, xor byte, cut uint32, tail []byte) {
		data := append([]byte(nil), valid...)
		if xor != 0 {
			data[int(pos)%len(data)] ^= xor
		}
		if cut != 0 {
			data = data[:len(data)-int(cut)%len(data)]
		}
		data = append(data, tail...)
		if bytes.Equal(data, valid) {
			return
		}
		if _, err := decodeSnapFile(snapFile{term: 2, index: 5, path: snapName(2, 5)}, data); err == nil {
			t.Fatalf("accepted a damaged snapshot file (byte %d ^ %#x, cut %d, %d bytes appended)", pos, xor, cut, len(tail))
		}
	})
}
