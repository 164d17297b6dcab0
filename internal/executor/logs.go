package executor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// probeCollapse reports whether dir's filesystem can cut the head off a
// file in place (FALLOC_FL_COLLAPSE_RANGE), which makes rotating a file
// that a process is appending to lossless.
func probeCollapse(dir string) bool {
	f, err := os.CreateTemp(dir, ".collapse-probe-")
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	defer f.Close()
	bs := blockSize(f)
	if _, err := f.Write(make([]byte, 2*bs)); err != nil {
		return false
	}
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, bs) == nil
}

func blockSize(f *os.File) int64 {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Bsize <= 0 {
		return 4096
	}
	return st.Bsize
}

// rotateLive rotates path if it is over limit while a process may still be
// appending to it. With collapse, the head is moved to path.1 and cut off
// in place at a block boundary, so nothing written concurrently is lost;
// otherwise the file is copied and truncated, losing what is written in
// between.
func rotateLive(path string, limit int64, collapse bool) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // deleted by someone: nothing to cap
	}
	if err != nil {
		return false, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat log: %w", err)
	}
	size := fi.Size()
	if size <= limit {
		return false, nil
	}
	if collapse {
		bs := blockSize(f)
		// The collapsed range must end before EOF and be block-aligned.
		if k := (size - 1) / bs * bs; k > 0 {
			if err := appendToRotated(path, f, k, limit); err != nil {
				return false, err
			}
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, k); err != nil {
				// The head is now in both files; duplicated output beats
				// lost output.
				return true, fmt.Errorf("cut rotated part off log: %w", err)
			}
			return true, nil
		}
	}
	if err := appendToRotated(path, f, size, limit); err != nil {
		return false, err
	}
	if err := f.Truncate(0); err != nil {
		return true, fmt.Errorf("truncate rotated log: %w", err)
	}
	return true, nil
}

// rotateFinal brings path down to at most limit bytes once nothing writes to
// it any more, moving the excess head to path.1.
func rotateFinal(path string, limit int64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat log: %w", err)
	}
	size := fi.Size()
	if size <= limit {
		return false, nil
	}
	k := size - limit
	if err := appendToRotated(path, f, k, limit); err != nil {
		return false, err
	}
	if err := writeFileAtomic(path, io.NewSectionReader(f, k, limit)); err != nil {
		return true, fmt.Errorf("shorten rotated log: %w", err)
	}
	return true, nil
}

// appendToRotated makes path.1 the last limit bytes of (old path.1 followed
// by the first k bytes of src): one older generation, oldest dropped.
func appendToRotated(path string, src *os.File, k, limit int64) error {
	rotated := path + ".1"
	fromSrc := min(k, limit)
	readers := []io.Reader{}
	if keep := limit - fromSrc; keep > 0 {
		old, err := os.Open(rotated)
		switch {
		case err == nil:
			defer old.Close()
			fi, err := old.Stat()
			if err != nil {
				return fmt.Errorf("stat rotated log: %w", err)
			}
			n := min(keep, fi.Size())
			readers = append(readers, io.NewSectionReader(old, fi.Size()-n, n))
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("open rotated log: %w", err)
		}
	}
	readers = append(readers, io.NewSectionReader(src, k-fromSrc, fromSrc))
	if err := writeFileAtomic(rotated, io.MultiReader(readers...)); err != nil {
		return fmt.Errorf("write rotated log: %w", err)
	}
	return nil
}

func writeFileAtomic(path string, r io.Reader) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	_, err = io.Copy(tmp, r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// readTail returns the last n bytes of the stream, reaching into path.1
// when path alone is shorter.
func readTail(path string, n int) ([]byte, error) {
	cur, err := readLast(path, int64(n))
	if err != nil {
		return nil, err
	}
	if len(cur) >= n {
		return cur, nil
	}
	prev, err := readLast(path+".1", int64(n-len(cur)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return cur, err
	}
	return append(prev, cur...), nil
}

func readLast(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	n = min(n, fi.Size())
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, fi.Size()-n); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf, nil
}
