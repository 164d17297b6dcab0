package executor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stragglerWarnAfter is how long the end of an attempt may wait for its
// SIGKILLed processes before it says so (they can be stuck in the kernel).
const stragglerWarnAfter = 10 * time.Second

// Handle is one started attempt.
type Handle struct {
	e    *Executor
	spec Spec
	dir  string
	log  *slog.Logger

	// Set before Start returns and never changed afterwards.
	pid       int
	proc      *os.Process
	cg        *slot // back in the pool (maybe another attempt's) once done is closed
	startedAt time.Time
	adir      *attemptDir
	stdout    *logStream
	stderr    *logStream

	cancelOnce sync.Once
	cancelCh   chan struct{}
	done       chan struct{}
	result     Result // written before done is closed

	// rotations counts log rotations; set before done is closed, read by
	// tests.
	rotations int
}

// Wait blocks until the attempt's leader has exited and every process of
// its group (and cgroup) is gone, and returns the result. It is safe to
// call from many goroutines; each gets its own copy of the tails.
func (h *Handle) Wait() Result {
	<-h.done
	r := h.result
	r.StdoutTail = bytes.Clone(r.StdoutTail)
	r.StderrTail = bytes.Clone(r.StderrTail)
	return r
}

// Done is closed when Wait would return.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Cancel asks the attempt to stop: SIGTERM to its group, SIGKILL after
// KillGrace. The result then has Cancelled set, unless the attempt had
// already ended or timed out. Cancel does not wait; it is idempotent.
func (h *Handle) Cancel() {
	h.cancelOnce.Do(func() { close(h.cancelCh) })
}

// PID is the leader's pid, which is also the process group id; 0 if the
// attempt did not start.
func (h *Handle) PID() int { return h.pid }

// supervise owns the attempt from start to end: it enforces the timeout,
// turns cancellation into signals, rotates logs, and finally collects the
// result and cleans up. It is the only goroutine that signals the attempt.
func (h *Handle) supervise(ctx context.Context) {
	defer h.e.wg.Done()

	exited := make(chan error, 1)
	go func() { exited <- waitExited(h.pid) }()

	var timeoutC, graceC <-chan time.Time
	if h.spec.Timeout > 0 {
		t := time.NewTimer(h.spec.Timeout)
		defer t.Stop()
		timeoutC = t.C
	}
	var grace *time.Timer
	var tickC <-chan time.Time
	if h.cg != nil && h.cg.needsSampling() {
		ticker := time.NewTicker(h.e.monitorInterval)
		defer ticker.Stop()
		tickC = ticker.C
	}

	var timedOut, cancelled bool
	terminate := func(why string) {
		h.log.Info("terminating attempt", "why", why, "grace", h.spec.KillGrace)
		h.signalGroup(unix.SIGTERM)
		grace = time.NewTimer(h.spec.KillGrace)
		graceC = grace.C
	}
	cancelC, ctxDone := h.cancelCh, ctx.Done()
loop:
	for {
		// An exit that is already pending wins over a timer or cancel
		// that fired at the same time, so a finished process is never
		// reported as timed out or cancelled.
		select {
		case err := <-exited:
			if err != nil {
				h.log.Error("waiting for attempt leader failed", "err", err)
			}
			break loop
		default:
		}
		select {
		case err := <-exited:
			if err != nil {
				h.log.Error("waiting for attempt leader failed", "err", err)
			}
			break loop
		case <-timeoutC:
			timeoutC = nil
			if !timedOut && !cancelled {
				timedOut = true
				terminate("timeout")
			}
		case <-cancelC:
			cancelC = nil
			if !timedOut && !cancelled {
				cancelled = true
				terminate("cancel")
			}
		case <-ctxDone:
			ctxDone = nil
			if !timedOut && !cancelled {
				cancelled = true
				terminate("context done")
			}
		case <-graceC:
			graceC = nil
			h.log.Info("attempt outlived its kill grace; sending SIGKILL")
			h.signalGroup(unix.SIGKILL)
			if h.cg != nil {
				h.cg.killListed()
			}
		case <-tickC:
			h.cg.sample()
		}
	}
	if grace != nil {
		grace.Stop()
	}
	h.finish(timedOut, cancelled)
}

// signalGroup signals the attempt's process group. It is only called
// before the leader is reaped, so the group id cannot have been reused.
func (h *Handle) signalGroup(sig unix.Signal) {
	if err := unix.Kill(-h.pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		h.log.Warn("signalling process group failed", "signal", unix.SignalName(sig), "err", err)
	}
}

// finish runs once the leader has exited (and is still a zombie).
func (h *Handle) finish(timedOut, cancelled bool) {
	h.killStragglers()

	res := Result{ExitCode: -1, TimedOut: timedOut, Cancelled: cancelled, StartedAt: h.startedAt}
	state, err := h.proc.Wait()
	if err != nil {
		h.log.Error("reaping attempt leader failed", "err", err)
		res.Err = fmt.Sprintf("reap attempt leader: %v", err)
	}
	if state != nil {
		if ws, ok := state.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Exited():
				res.ExitCode = ws.ExitStatus()
			case ws.Signaled():
				res.Signal = unix.SignalName(ws.Signal())
			}
		}
		if ru, ok := state.SysUsage().(*syscall.Rusage); ok && ru != nil {
			res.PeakMemoryBytes = ru.Maxrss * 1024 // Linux reports KiB
			res.CPUTime = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	if h.cg != nil {
		// Processes that left the group are still in the slot: kill them
		// and wait until they are gone, so the slot is empty for the next
		// attempt (or can be removed).
		h.waitCgroupEmpty()
		st := h.cg.stats(res.Signal == "SIGKILL")
		if st.peakMemory > 0 {
			res.PeakMemoryBytes = st.peakMemory
		}
		if st.cpuTime > 0 {
			res.CPUTime = st.cpuTime
		}
		res.OOMKilled = st.oomKilled
		if err := h.e.cg.release(h.cg, st.reusable); err != nil {
			h.log.Warn("removing cgroup slot failed", "err", err)
		}
	}

	// Every process of the attempt is gone, so the pipes reach
	// end-of-file unless something escaped the group and the cgroup.
	drainStreams(drainGrace, h.stdout, h.stderr)
	res.StdoutTail = h.stdout.tailBytes()
	res.StderrTail = h.stderr.tailBytes()
	h.rotations = h.stdout.rotations + h.stderr.rotations
	if h.cg == nil {
		if err := os.Remove(filepath.Join(h.dir, pidFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			h.log.Warn("removing pid file failed", "err", err)
		}
	}
	res.FinishedAt = time.Now()
	h.result = res
	h.log.Debug("attempt finished", "exit_code", res.ExitCode, "signal", res.Signal,
		"timed_out", res.TimedOut, "cancelled", res.Cancelled, "oom_killed", res.OOMKilled)

	h.e.mu.Lock()
	delete(h.e.attempts, h.spec.AttemptID)
	h.e.mu.Unlock()
	close(h.done)
}

// killStragglers SIGKILLs what is left of the group (and cgroup) after the
// leader exited, until nothing of it is alive. The leader is a zombie
// throughout, which pins the group id.
func (h *Handle) killStragglers() {
	if h.cg != nil {
		// Every member of the group is also in the attempt's cgroup, and
		// waitCgroupEmpty (after the reap) kills and waits for what is
		// there; scanning all of /proc for group members would cost
		// milliseconds per attempt.
		h.signalGroup(unix.SIGKILL)
		return
	}
	start := time.Now()
	warned := false
	backoff := time.Millisecond
	for {
		h.signalGroup(unix.SIGKILL)
		n, err := liveGroupMembers(h.pid)
		if err != nil {
			h.log.Warn("listing process group failed", "err", err)
		}
		if n == 0 {
			return
		}
		if !warned && time.Since(start) > stragglerWarnAfter {
			warned = true
			h.log.Warn("processes of a finished attempt survive SIGKILL; still waiting", "count", n)
		}
		waitBackoff(&backoff)
	}
}

// waitCgroupEmpty SIGKILLs what is in the attempt's slot until nothing is:
// one read of cgroup.procs when the attempt left nothing behind.
func (h *Handle) waitCgroupEmpty() {
	start := time.Now()
	warned := false
	backoff := time.Millisecond
	for h.cg.killListed() {
		if !warned && time.Since(start) > stragglerWarnAfter {
			warned = true
			h.log.Warn("processes in a finished attempt's cgroup survive SIGKILL; still waiting")
		}
		waitBackoff(&backoff)
	}
}

// waitBackoff waits *d and doubles it up to 50 ms: processes usually die
// within a millisecond of SIGKILL, stuck ones should not cost a busy loop.
func waitBackoff(d *time.Duration) {
	t := time.NewTimer(*d)
	<-t.C
	if *d < 50*time.Millisecond {
		*d *= 2
	}
}

// waitExited blocks until the process has exited, without reaping it
// (WNOWAIT), so its pid stays reserved until finish reaps it.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("waitid %d: %w", pid, err)
		}
		return nil
	}
}
