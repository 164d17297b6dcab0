package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blixard/blixard/internal/vm"
	"github.com/blixard/blixard/internal/vm/guard"
)

const (
	// fastTick is how often the console is read until the guest is ready
	// (readiness latency); slowTick afterwards, when only the exit marker
	// and panics matter and a final read at exit catches them anyway.
	fastTick = 20 * time.Millisecond
	slowTick = 250 * time.Millisecond
	// maxLine caps a console line kept while waiting for its newline.
	maxLine = 8 << 10
	// drainWait bounds how long exit handling waits for the QMP reader to
	// read what QEMU sent before dying (its SHUTDOWN event).
	drainWait = 2 * time.Second
)

// Why the driver is ending a VM, for Exit.Reason.
const (
	intentStop     = "stop"      // Stop pressed the power button
	intentStopKill = "stop-kill" // Stop's grace ran out (or its ctx ended): killed
	intentKill     = "kill"      // Kill
)

// kernelPanic is how a panicking kernel starts its last words.
const kernelPanic = "Kernel panic - not syncing:"

// shutdownEvent is the data of QMP's SHUTDOWN event.
type shutdownEvent struct {
	Guest  bool   `json:"guest"`
	Reason string `json:"reason"`
}

// instance is one VM. Its monitor goroutine watches the QEMU process (a
// pidfd in Go's poller) and the console log; its QMP client's reader
// goroutine records events. Both end when QEMU exits or the driver
// detaches.
type instance struct {
	d         *Driver
	id        vm.ID
	spec      vm.Spec
	paths     vmPaths
	link      string // root/<id> symlink to remove at exit, if any
	pid       int
	startedAt time.Time
	adopted   bool
	pidfd     *os.File // nil for a VM found dead by Recover
	// child is QEMU's pidfd when pid is its guard (nil otherwise); the
	// guard's exit ends the VM, and finish makes sure QEMU is gone too.
	child   *os.File
	guarded bool
	qemuPID int // QEMU's pid when guarded (Status reports it)
	qmp     *qmpClient

	detach chan struct{} // closed by Close
	ready  chan struct{} // closed when the marker is seen
	done   chan struct{} // closed once exit is set

	mu       sync.Mutex
	readyAt  time.Time
	exit     *vm.Exit
	waiters  []chan vm.Exit
	intent   string
	shutdown *shutdownEvent

	// Console tailing state, used only by the monitor goroutine (and by
	// Recover before the monitor starts).
	console    *os.File
	consoleOff int64
	consoleMax int64 // rotate console.log at this size; 0: never
	partial    []byte
	guestExit  int
	panicMsg   string
	poweredOff bool   // the kernel printed "reboot: Power down"
	fenceMsg   string // the guard's reason for stopping QEMU, if it did
}

func newInstance(d *Driver, spec *vm.Spec, p vmPaths, link string, pid int, pidfd *os.File, started time.Time, adopted bool) *instance {
	var limit int64
	if d != nil {
		limit = d.cfg.ConsoleMax
	}
	return &instance{
		consoleMax: limit,
		d:          d, id: spec.ID, spec: *spec, paths: p, link: link, pid: pid, pidfd: pidfd,
		startedAt: started, adopted: adopted,
		detach: make(chan struct{}), ready: make(chan struct{}), done: make(chan struct{}),
		guestExit: -1,
	}
}

// attach connects to QEMU's QMP socket, retrying while QEMU creates it,
// and fails early if QEMU exits.
func (in *instance) attach(ctx context.Context) error {
	retry := time.NewTicker(10 * time.Millisecond)
	defer retry.Stop()
	for {
		if in.processGone() {
			return errors.New("QEMU exited during startup")
		}
		c, err := dialQMP(ctx, in.paths.qmp, in.onEvent)
		if err == nil {
			in.qmp = c
			return nil
		}
		// Not there yet (ENOENT) or not listening yet (ECONNREFUSED):
		// QEMU is still starting. Anything else is final.
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ECONNREFUSED) {
			return fmt.Errorf("attach to QMP: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("QEMU did not open its QMP socket in time: %w", ctx.Err())
		case <-retry.C:
		}
	}
}

// openChild finds QEMU under the driver's process (a guard): the pid in
// QEMU's pid file whose parent is that process.
func (in *instance) openChild() {
	b, err := os.ReadFile(in.paths.pid)
	if err != nil {
		return
	}
	qpid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || qpid == in.pid {
		return
	}
	if st, procErr := readProc(qpid); procErr != nil || st.ppid != in.pid {
		return
	}
	fd, err := unix.PidfdOpen(qpid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "qemu-pidfd")
	if st, err := readProc(qpid); err != nil || st.ppid != in.pid {
		f.Close() // exited (and the pid reused) between the checks
		return
	}
	in.child, in.guarded, in.qemuPID = f, true, qpid
}

// endChild makes sure QEMU is gone once its guard is: the guard's death
// sends it SIGKILL (PR_SET_PDEATHSIG), which takes a moment to land.
func (in *instance) endChild() {
	if in.child == nil {
		return
	}
	defer func() { in.child.Close(); in.child = nil }()
	if fdReadableWithin(in.child, 0) {
		return
	}
	rc, err := in.child.SyscallConn()
	if err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) })
	}
	if !fdReadableWithin(in.child, killWait) {
		in.d.log.Error("QEMU still runs after its guard exited and it was sent SIGKILL", "id", in.id, "guard_pid", in.pid)
	}
}

// fdReadableWithin waits up to d for a pidfd to become readable (its
// process exited).
func fdReadableWithin(f *os.File, d time.Duration) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return true
	}
	if d <= 0 || f.SetReadDeadline(time.Now().Add(d)) != nil {
		gone := true
		_ = rc.Control(func(fd uintptr) { gone = pollIn(int(fd)) })
		return gone
	}
	gone := false
	_ = rc.Read(func(fd uintptr) bool {
		gone = pollIn(int(fd))
		return gone
	})
	return gone
}

// onEvent runs on the QMP reader goroutine.
func (in *instance) onEvent(e qmpEvent) {
	if e.Event != "SHUTDOWN" {
		return
	}
	var sd shutdownEvent
	if err := json.Unmarshal(e.Data, &sd); err != nil {
		sd.Reason = "unknown"
	}
	in.mu.Lock()
	if in.shutdown == nil {
		in.shutdown = &sd
	}
	in.mu.Unlock()
}

func (in *instance) exited() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.exit != nil
}

func (in *instance) setIntent(s string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	// A kill outranks a stop; the first reason of equal rank stays.
	if in.intent == "" || s == intentKill || (s == intentStopKill && in.intent == intentStop) {
		in.intent = s
	}
}

// pidfdDo runs f with the pidfd's descriptor without taking it out of
// the poller (os.File.Fd would make it blocking).
func (in *instance) pidfdDo(f func(fd int)) error {
	if in.pidfd == nil {
		return os.ErrClosed
	}
	rc, err := in.pidfd.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { f(int(fd)) })
}

// processGone reports whether QEMU has exited (its pidfd is readable).
func (in *instance) processGone() bool {
	gone := true
	if err := in.pidfdDo(func(fd int) { gone = pollIn(fd) }); err != nil {
		return true
	}
	return gone
}

// waitGone waits up to d for QEMU to exit and reports whether it did.
func (in *instance) waitGone(d time.Duration) bool {
	rc, err := in.pidfd.SyscallConn()
	if err != nil || in.pidfd.SetReadDeadline(time.Now().Add(d)) != nil {
		return in.processGone()
	}
	gone := false
	_ = rc.Read(func(fd uintptr) bool {
		gone = pollIn(int(fd))
		return gone
	})
	return gone
}

func pollIn(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
}

// monitor watches the process and the console until QEMU exits (then it
// finishes the VM) or the driver detaches.
func (in *instance) monitor() {
	defer in.d.wg.Done()
	rc, err := in.pidfd.SyscallConn()
	for {
		tick := slowTick
		if !isClosed(in.ready) {
			tick = fastTick
		}
		gone := false
		// Wait for the pidfd to become readable (QEMU exited) in Go's
		// poller, up to one tick. A pidfd that is not pollable (it always
		// is on Linux ≥ 5.3) falls back to checking once per tick.
		if err == nil && in.pidfd.SetReadDeadline(time.Now().Add(tick)) == nil {
			_ = rc.Read(func(fd uintptr) bool {
				gone = pollIn(int(fd))
				return gone
			})
		} else {
			select {
			case <-in.detach:
			case <-time.After(tick):
			}
			gone = in.processGone()
		}
		in.scanConsole()
		if gone {
			in.finish()
			return
		}
		if isClosed(in.detach) {
			return
		}
	}
}

// requestDetach makes the monitor return without touching the VM.
func (in *instance) requestDetach() {
	close(in.detach)
	if in.pidfd != nil {
		_ = in.pidfd.SetReadDeadline(time.Now()) // wake the monitor now
	}
}

// release drops the driver's hold on a detached VM (after its monitor
// returned): QMP connection, pidfd, console, and pending waiters.
func (in *instance) release() {
	if in.qmp != nil {
		_ = in.qmp.Close()
	}
	if in.pidfd != nil {
		_ = in.pidfd.Close()
	}
	if in.child != nil {
		_ = in.child.Close()
		in.child = nil
	}
	in.closeConsole()
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.exit != nil {
		return // it exited before the detach took effect
	}
	for _, w := range in.waiters {
		w <- vm.Exit{ID: in.id, State: in.stateLocked(), Reason: "driver closed; the VM keeps running", ExitCode: -1, GuestExitCode: -1, Err: vm.ErrClosed}
	}
	in.waiters = nil
}

// abort kills a VM that Start launched but cannot hand out.
func (in *instance) abort() {
	in.setIntent(intentKill)
	_ = in.pidfdDo(func(fd int) { _ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) })
	var ws unix.WaitStatus
	_, _ = unix.Wait4(in.pid, &ws, 0, nil)
	in.release()
	in.cleanupFiles()
}

// kill sends SIGKILL through the pidfd (never to a reused pid) and waits
// for the monitor to finish the VM.
func (in *instance) kill() error {
	if in.exited() {
		return nil
	}
	var serr error
	if err := in.pidfdDo(func(fd int) { serr = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) }); err == nil && serr != nil && !errors.Is(serr, unix.ESRCH) {
		return fmt.Errorf("vm %s: kill QEMU pid %d: %w", in.id, in.pid, serr)
	}
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case <-in.done:
		return nil
	case <-in.detach:
		return vm.ErrClosed
	case <-t.C:
		return fmt.Errorf("vm %s: QEMU pid %d still there %s after SIGKILL", in.id, in.pid, killWait)
	}
}

// forceStop ends a Stop whose guest did not power off in time.
func (in *instance) forceStop() error {
	in.setIntent(intentStopKill)
	return in.kill()
}

// finish runs on the monitor goroutine once QEMU has exited: it collects
// the exit status, classifies the exit, removes the VM's files (but the
// console log) and tells the waiters.
func (in *instance) finish() {
	drain := time.NewTimer(drainWait)
	select {
	case <-in.qmp.Done():
	case <-drain.C:
	}
	drain.Stop()
	ws, reaped := reap(in.pid)
	in.endChild()
	in.scanConsole()
	in.closeConsole()
	e := in.classify(ws, reaped)
	_ = in.qmp.Close()
	_ = in.pidfd.Close()
	in.cleanupFiles()
	in.complete(e)
	lvl := slog.LevelInfo
	if e.State == vm.StateFailed {
		lvl = slog.LevelWarn
	}
	in.d.log.Log(context.Background(), lvl, "vm exited", "id", in.id, "state", e.State, "reason", e.Reason, "guest_exit_code", e.GuestExitCode)
}

// reap collects QEMU's exit status if it is the driver's child. An
// exited process's pidfd is readable before it can be waited for only
// in the tiniest window, hence the short retry.
func reap(pid int) (unix.WaitStatus, bool) {
	var ws unix.WaitStatus
	for i := 0; i < 100; i++ {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil {
			return ws, false // ECHILD: adopted, not ours to wait for
		}
		if got == pid {
			return ws, true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return ws, false
}

// complete records the exit and wakes everyone.
func (in *instance) complete(e vm.Exit) {
	in.mu.Lock()
	in.exit = &e
	for _, w := range in.waiters {
		w <- e
	}
	in.waiters = nil
	in.mu.Unlock()
	close(in.done)
}

// classify turns what is known about the exit into an Exit.
func (in *instance) classify(ws unix.WaitStatus, reaped bool) vm.Exit {
	in.mu.Lock()
	intent, sd := in.intent, in.shutdown
	in.mu.Unlock()
	e := vm.Exit{ID: in.id, State: vm.StateFailed, ExitCode: -1, GuestExitCode: in.guestExit, At: time.Now()}
	if reaped {
		if ws.Signaled() {
			e.Signal = signalName(ws.Signal())
		} else {
			e.ExitCode = ws.ExitStatus()
		}
	}
	switch {
	case intent == intentKill:
		e.Reason = "killed (Kill)"
	case intent == intentStopKill:
		e.Reason = fmt.Sprintf("did not power off within %s of Stop; killed", in.d.cfg.StopGrace)
	case in.guarded && reaped && e.ExitCode == guard.ExitFenced:
		e.Reason = "stopped by its guard (self-fencing): the worker's lease was not renewed in time"
		if in.fenceMsg != "" {
			e.Reason = "stopped by its guard (self-fencing): " + in.fenceMsg
		}
	case sd != nil && sd.Reason == "guest-shutdown":
		e.State, e.Reason = vm.StateStopped, "guest powered off"
		if intent == intentStop {
			e.Reason = "guest powered off after the power button (Stop)"
		}
	case sd != nil && sd.Reason == "guest-reset":
		e.Reason = "guest reset (a reboot or a kernel panic; QEMU runs with -no-reboot)"
	case sd != nil && sd.Reason == "guest-panic":
		e.Reason = "guest kernel panicked"
	case sd != nil && sd.Reason == "host-qmp-quit":
		e.State, e.Reason = vm.StateStopped, "QEMU quit on a QMP request"
	case sd != nil:
		e.Reason = "QEMU shut down (" + sd.Reason + ")"
	case e.Signal != "":
		e.Reason = "QEMU killed by signal " + e.Signal
	case reaped && e.ExitCode != 0:
		e.Reason = fmt.Sprintf("QEMU exited with status %d", e.ExitCode)
		if msg := lastLogLine(in.paths.qemuLog); msg != "" {
			e.Reason += ": " + msg
		}
	case reaped:
		e.State, e.Reason = vm.StateStopped, "QEMU exited"
	default:
		e.Reason = "QEMU exited without a shutdown event (killed?); its exit status is unknown as an earlier driver started it"
	}
	if e.State == vm.StateFailed && in.panicMsg != "" {
		e.Reason += "; guest: " + in.panicMsg
	}
	return e
}

// classifyUnwatched describes a VM that Recover found gone: only its
// console log is left to tell how it ended.
func (in *instance) classifyUnwatched() vm.Exit {
	e := vm.Exit{ID: in.id, State: vm.StateFailed, ExitCode: -1, GuestExitCode: in.guestExit, At: time.Now()}
	switch {
	case in.fenceMsg != "":
		e.Reason = "stopped by its guard (self-fencing) while no driver was watching: " + in.fenceMsg
	case in.poweredOff:
		e.State, e.Reason = vm.StateStopped, "guest powered off while no driver was watching"
	case in.panicMsg != "":
		e.Reason = "QEMU ended while no driver was watching; guest: " + in.panicMsg
	default:
		e.Reason = "QEMU ended while no driver was watching (killed, or the host rebooted)"
	}
	return e
}

// cleanupFiles removes everything of the VM but its console log.
func (in *instance) cleanupFiles() {
	for _, f := range []string{in.paths.qmp, in.paths.pid, in.paths.record, in.paths.qemuLog} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			in.d.log.Warn("cannot remove VM file", "id", in.id, "file", f, "err", err)
		}
	}
	if in.link != "" {
		_ = os.Remove(in.link)
	}
}

func (in *instance) stateLocked() vm.State {
	switch {
	case in.exit != nil:
		return in.exit.State
	case !in.readyAt.IsZero():
		return vm.StateRunning
	default:
		return vm.StateStarting
	}
}

// status is the VM's status from what the driver knows (no QMP call).
func (in *instance) status() vm.Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	st := vm.Status{
		ID: in.id, State: in.stateLocked(), PID: in.pid,
		StartedAt: in.startedAt, ReadyAt: in.readyAt, Adopted: in.adopted,
	}
	if in.qemuPID > 0 {
		st.PID = in.qemuPID
	}
	if in.exit != nil {
		st.Reason, st.PID = in.exit.Reason, 0
	}
	return st
}

func (in *instance) closeConsole() {
	if in.console != nil {
		_ = in.console.Close()
		in.console = nil
	}
}

// scanConsole reads what the guest wrote since the last call and looks
// for the readiness marker, the exit marker and kernel panics.
func (in *instance) scanConsole() {
	if in.console == nil {
		f, err := os.Open(in.paths.console)
		if err != nil {
			return // QEMU has not created it yet
		}
		in.console = f
	}
	in.readConsole()
	if in.consoleMax > 0 && in.consoleOff >= in.consoleMax {
		in.rotateConsole()
	}
}

func (in *instance) readConsole() {
	if st, err := in.console.Stat(); err == nil && st.Size() < in.consoleOff {
		// Truncated under us: start again from its beginning.
		in.consoleOff, in.partial = 0, in.partial[:0]
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := in.console.ReadAt(buf, in.consoleOff)
		in.consoleOff += int64(n)
		in.consume(buf[:n])
		if err != nil || n < len(buf) {
			if err != nil && !errors.Is(err, io.EOF) && in.d != nil {
				in.d.log.Warn("cannot read console log", "id", in.id, "err", err)
			}
			return
		}
	}
}

// PreviousConsoleSuffix names the kept previous part of a console log
// (console.log.1): the last run's, or the part before the last rotation.
const PreviousConsoleSuffix = ".1"

// rotateConsole copies what the monitor has read of console.log to
// console.log.1 (replacing it) and truncates console.log, as logrotate's
// copytruncate does: QEMU appends, so it goes on at the new end. Bytes the
// guest writes between the last read and the truncate are lost.
func (in *instance) rotateConsole() {
	src := in.paths.console
	warn := func(what string, err error) {
		if in.d != nil {
			in.d.log.Warn("cannot rotate console log", "id", in.id, "step", what, "err", err)
		}
	}
	tmp := src + PreviousConsoleSuffix + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		warn("create", err)
		return
	}
	_, err = io.Copy(out, io.NewSectionReader(in.console, 0, in.consoleOff))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, src+PreviousConsoleSuffix)
	}
	if err != nil {
		_ = os.Remove(tmp)
		warn("copy", err)
		return
	}
	if err := os.Truncate(src, 0); err != nil {
		warn("truncate", err)
		return
	}
	in.consoleOff, in.partial = 0, in.partial[:0]
}

func (in *instance) consume(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			in.partial = append(in.partial, b...)
			if len(in.partial) > maxLine {
				in.line(in.partial)
				in.partial = in.partial[:0]
			}
			return
		}
		if len(in.partial) > 0 {
			in.partial = append(in.partial, b[:i]...)
			in.line(in.partial)
			in.partial = in.partial[:0]
		} else {
			in.line(b[:i])
		}
		b = b[i+1:]
	}
}

func (in *instance) line(l []byte) {
	s := strings.TrimRight(string(l), "\r")
	if !isClosed(in.ready) && strings.Contains(s, in.spec.Marker()) {
		in.mu.Lock()
		in.readyAt = time.Now()
		in.mu.Unlock()
		close(in.ready)
	}
	if rest, ok := strings.CutPrefix(strings.TrimSpace(s), vm.GuestExitMarker+" "); ok {
		if code, err := strconv.Atoi(strings.TrimSpace(rest)); err == nil {
			in.guestExit = code
		}
	}
	if i := strings.Index(s, kernelPanic); i >= 0 && in.panicMsg == "" {
		in.panicMsg = strings.TrimSpace(s[i:])
	}
	if strings.Contains(s, "reboot: Power down") {
		in.poweredOff = true
	}
	if rest, ok := strings.CutPrefix(s, guard.LogPrefix+" "); ok {
		in.fenceMsg = rest
	}
}
