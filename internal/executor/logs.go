package executor

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// drainGrace is how long the end of an attempt waits for its output pipes
// to reach end-of-file after every process of the attempt is gone. Only a
// process that escaped both the process group and the cgroup can still hold
// a pipe open; after the grace it loses its stdout (EPIPE/SIGPIPE) rather
// than keeping the attempt from finishing.
const drainGrace = time.Second

// logStream copies one output stream of an attempt from a pipe into its log
// file. The file (and the attempt's directory) is created when the first
// byte arrives, so an attempt that prints nothing costs no inode: on ext4
// an inode allocation is about half a millisecond here, which bounded task
// throughput when every attempt created a directory and two files up front.
// At MaxLogBytes the file is renamed to <name>.1 (replacing the older one)
// and a new file started, so nothing between the two is lost. The last
// TailBytes stay in memory for the result.
type logStream struct {
	path    string
	mkdir   func() error // creates the attempt's directory (once)
	limit   int64
	tailMax int
	log     *slog.Logger

	r    *os.File
	done chan struct{}

	// Owned by the copying goroutine until done is closed.
	f         *os.File
	size      int64
	tail      []byte
	rotations int
	failed    bool // a write failed: the rest is discarded (but tailed)
}

func newLogStream(path string, mkdir func() error, limit int64, tailMax int, log *slog.Logger, r *os.File) *logStream {
	return &logStream{path: path, mkdir: mkdir, limit: limit, tailMax: tailMax, log: log, r: r, done: make(chan struct{})}
}

// run copies until end-of-file or until the read end is closed.
func (s *logStream) run() {
	defer close(s.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := s.r.Read(buf)
		if n > 0 {
			s.keepTail(buf[:n])
			s.write(buf[:n])
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				s.log.Warn("reading attempt output failed", "path", s.path, "err", err)
			}
			break
		}
	}
	if s.f != nil {
		if err := s.f.Close(); err != nil && !s.failed {
			s.log.Warn("closing log failed", "path", s.path, "err", err)
		}
		s.f = nil
	}
}

// drainStreams waits for the streams to reach end-of-file, for at most
// grace in all, then closes their read ends (which ends a copy still
// waiting) and waits for the copies to stop.
func drainStreams(grace time.Duration, streams ...*logStream) {
	t := time.NewTimer(grace)
	defer t.Stop()
	expired := false
	for _, s := range streams {
		if !expired {
			select {
			case <-s.done:
			case <-t.C:
				expired = true
			}
		}
		if expired {
			select {
			case <-s.done:
			default:
				s.log.Warn("a process outside the attempt still holds its output open; closing it", "path", s.path)
			}
		}
		_ = s.r.Close()
		<-s.done
	}
}

func (s *logStream) keepTail(p []byte) {
	if s.tailMax <= 0 {
		return
	}
	if len(p) >= s.tailMax {
		s.tail = append(s.tail[:0], p[len(p)-s.tailMax:]...)
		return
	}
	s.tail = append(s.tail, p...)
	if len(s.tail) > 2*s.tailMax {
		// Trim rarely: copying down on every write would cost O(tail).
		s.tail = append(s.tail[:0], s.tail[len(s.tail)-s.tailMax:]...)
	}
}

// tailBytes is the last TailBytes of the stream; valid after done.
func (s *logStream) tailBytes() []byte {
	if len(s.tail) > s.tailMax {
		return s.tail[len(s.tail)-s.tailMax:]
	}
	return s.tail
}

func (s *logStream) write(p []byte) {
	if s.failed {
		return
	}
	if err := s.writeErr(p); err != nil {
		// Keep draining the pipe so the task does not block on a full
		// disk; the result still gets the tail.
		s.failed = true
		s.log.Warn("writing attempt log failed; the rest of this stream is not saved", "path", s.path, "err", err)
	}
}

func (s *logStream) writeErr(p []byte) error {
	if s.f != nil && s.size > 0 && s.size+int64(len(p)) > s.limit {
		if err := s.rotate(); err != nil {
			return err
		}
	}
	if s.f == nil {
		if err := s.mkdir(); err != nil {
			return fmt.Errorf("create attempt directory: %w", err)
		}
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return fmt.Errorf("create log: %w", err)
		}
		s.f, s.size = f, 0
	}
	n, err := s.f.Write(p)
	s.size += int64(n)
	return err
}

// rotate makes the current file <path>.1 (dropping the older one) and
// starts a new one on the next write.
func (s *logStream) rotate() error {
	err := s.f.Close()
	s.f = nil
	if err != nil {
		return fmt.Errorf("close log before rotating: %w", err)
	}
	if err := os.Rename(s.path, s.path+".1"); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	s.rotations++
	return nil
}

// attemptDir creates an attempt's directory once, for whichever stream (or
// the pid file) needs it first.
type attemptDir struct {
	path string
	once sync.Once
	err  error
}

func (d *attemptDir) create() error {
	d.once.Do(func() {
		d.err = os.MkdirAll(d.path, 0o755)
		if d.err == nil {
			return
		}
		d.err = fmt.Errorf("create %s: %w", filepath.Base(d.path), d.err)
	})
	return d.err
}
