package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Snapshot file: magic(8) payload length(8, little-endian) crc32c of
// payload(4) payload (marshalled raftpb.Snapshot, metadata and data).
var snapMagic = []byte("BLXSNAP1")

const snapHeaderSize = 20

// snapFile is one snapshot file found on disk.
type snapFile struct {
	term, index uint64
	path        string
}

func snapName(term, index uint64) string {
	return fmt.Sprintf("%016x-%016x.snap", term, index)
}

// listSnapFiles returns the snapshot files in dir, newest (highest index)
// first. Leftover temporary files from an interrupted write are removed.
func listSnapFiles(dir string) ([]snapFile, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list snap dir: %w", err)
	}
	var out []snapFile
	for _, de := range des {
		name := de.Name()
		if strings.HasSuffix(name, ".tmp") {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("remove leftover snapshot temp file: %w", err)
			}
			continue
		}
		term, index, ok := parseHexPair(name, ".snap")
		if !ok || !de.Type().IsRegular() {
			continue
		}
		out = append(out, snapFile{term: term, index: index, path: filepath.Join(dir, name)})
	}
	slices.SortFunc(out, func(a, b snapFile) int {
		if c := cmpUint(b.index, a.index); c != 0 {
			return c
		}
		return cmpUint(b.term, a.term)
	})
	return out, nil
}

// writeSnapFile durably writes snap as dir/<term>-<index>.snap: temp file,
// fsync, rename, fsync of the directory.
func writeSnapFile(dir string, snap *raftpb.Snapshot) (string, error) {
	md := snap.GetMetadata()
	name := filepath.Join(dir, snapName(md.GetTerm(), md.GetIndex()))
	payload, err := proto.Marshal(snap)
	if err != nil {
		return "", fmt.Errorf("marshal snapshot %d: %w", md.GetIndex(), err)
	}
	hdr := make([]byte, snapHeaderSize)
	copy(hdr, snapMagic)
	binary.LittleEndian.PutUint64(hdr[8:], uint64(len(payload)))
	binary.LittleEndian.PutUint32(hdr[16:], crc32.Checksum(payload, castagnoli))

	tmp := name + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("create snapshot file: %w", err)
	}
	_, err = f.Write(hdr)
	if err == nil {
		_, err = f.Write(payload)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("write snapshot file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, name); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("rename snapshot file into place: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return "", err
	}
	return name, nil
}

// readSnapFile loads and verifies a snapshot file.
func readSnapFile(sf snapFile) (*raftpb.Snapshot, error) {
	data, err := os.ReadFile(sf.path)
	if err != nil {
		return nil, fmt.Errorf("read snapshot file: %w", err)
	}
	return decodeSnapFile(sf, data)
}

// decodeSnapFile verifies and decodes the contents of snapshot file sf.
func decodeSnapFile(sf snapFile, data []byte) (*raftpb.Snapshot, error) {
	if len(data) < snapHeaderSize || !bytes.Equal(data[:8], snapMagic) {
		return nil, fmt.Errorf("%w: snapshot file %s: bad header", ErrCorrupt, sf.path)
	}
	n := binary.LittleEndian.Uint64(data[8:])
	if n != uint64(len(data)-snapHeaderSize) {
		return nil, fmt.Errorf("%w: snapshot file %s: header says %d payload bytes, file has %d",
			ErrCorrupt, sf.path, n, len(data)-snapHeaderSize)
	}
	payload := data[snapHeaderSize:]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(data[16:]) {
		return nil, fmt.Errorf("%w: snapshot file %s: crc mismatch", ErrCorrupt, sf.path)
	}
	snap := &raftpb.Snapshot{}
	if err := proto.Unmarshal(payload, snap); err != nil {
		return nil, fmt.Errorf("%w: snapshot file %s: %w", ErrCorrupt, sf.path, err)
	}
	if md := snap.GetMetadata(); md.GetIndex() != sf.index || md.GetTerm() != sf.term {
		return nil, fmt.Errorf("%w: snapshot file %s holds term %d index %d",
			ErrCorrupt, sf.path, md.GetTerm(), md.GetIndex())
	}
	return snap, nil
}

// pruneSnapFiles keeps the newest keep snapshot files in dir.
func pruneSnapFiles(dir string, keep int) error {
	files, err := listSnapFiles(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, sf := range files[min(keep, len(files)):] {
		if err := os.Remove(sf.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove old snapshot file: %w", err))
		}
	}
	return errors.Join(errs...)
}
