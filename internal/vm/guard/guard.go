// Package guard fences a VM's QEMU process with a lease: `blixard
// vm-guard` runs QEMU as its child and stops it when the worker stops
// renewing the lease file, so a VM never outlives its worker by more than
// the lease's TTL (see docs/VMS.md, "Self-fencing").
//
// The guard starts QEMU with PR_SET_PDEATHSIG=SIGKILL, so QEMU never
// outlives the guard; it relays SIGTERM, SIGINT and SIGHUP to QEMU and
// exits as QEMU did (the same status, or killed by the same signal). Every
// Check it looks at the lease's modification time; when the time has not
// changed for longer than the TTL (measured on the guard's monotonic
// clock, so wall-clock jumps neither expire nor extend a lease), it
// appends why to its log file, sends QEMU SIGTERM, SIGKILL after Grace,
// and exits with ExitFenced. A lease that is already old when the guard
// starts counts with its age; one already expired starts no QEMU at all
// (ExitFenced at once).
package guard

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
	"time"
)

// Exit statuses of the guard itself (QEMU's own statuses are 0 and 1).
const (
	// ExitFenced: the lease expired and the guard stopped QEMU.
	ExitFenced = 86
	// ExitUsage: bad arguments.
	ExitUsage = 125
	// ExitStart: QEMU could not be started.
	ExitStart = 127
)

// LogPrefix starts every line the guard appends to its log file.
const LogPrefix = "blixard vm-guard:"

// Config configures Run.
type Config struct {
	Lease string        // the lease file the worker renews; required
	TTL   time.Duration // how long the lease may go unrenewed; required
	Check time.Duration // how often the lease is checked; 0 means CheckFor(TTL)
	Grace time.Duration // SIGTERM to SIGKILL; 0 means GraceFor(TTL)
	Log   string        // file the guard appends its reasons to (the VM's console log); optional
	Argv  []string      // the command to run (QEMU and its arguments); required
}

// CheckFor is the default check period for a TTL: a tenth of it, at most
// 250 ms.
func CheckFor(ttl time.Duration) time.Duration { return min(ttl/10, 250*time.Millisecond) }

// GraceFor is the default SIGTERM-to-SIGKILL grace for a TTL: a fifth of
// it, at most 1 s. QEMU exits on SIGTERM at once; the grace is for a
// process stuck in I/O.
func GraceFor(ttl time.Duration) time.Duration { return min(ttl/5, time.Second) }

// MaxLifetime bounds how long after the last renewal a guarded QEMU can
// still run: the TTL, up to two check periods (the renewal seen one check
// late, the expiry one check late) and the grace.
func MaxLifetime(ttl time.Duration) time.Duration { return ttl + 2*CheckFor(ttl) + GraceFor(ttl) }

// Args returns the guard's arguments for a lease (after the subcommand,
// before "--" and the command).
func Args(lease string, ttl time.Duration, logFile string) []string {
	a := []string{"--lease", lease, "--ttl", ttl.String()}
	if logFile != "" {
		a = append(a, "--log", logFile)
	}
	return append(a, "--")
}

// Parse reads the arguments Args produced, followed by the command.
func Parse(args []string) (Config, error) {
	fs := flag.NewFlagSet("vm-guard", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var c Config
	fs.StringVar(&c.Lease, "lease", "", "lease file")
	fs.DurationVar(&c.TTL, "ttl", 0, "lease TTL")
	fs.StringVar(&c.Log, "log", "", "log file")
	if err := fs.Parse(args); err != nil {
		return c, fmt.Errorf("vm-guard: %w (usage: vm-guard --lease FILE --ttl DURATION [--log FILE] -- COMMAND ARGS...)", err)
	}
	c.Argv = fs.Args()
	switch {
	case c.Lease == "":
		return c, errors.New("vm-guard: --lease FILE is required")
	case c.TTL <= 0:
		return c, errors.New("vm-guard: --ttl must be a positive duration such as 2.5s")
	case len(c.Argv) == 0:
		return c, errors.New("vm-guard: no command given after --")
	}
	return c, nil
}

// Main parses args and runs the guard, returning its exit status; it is
// the whole of `blixard vm-guard`.
func Main(args []string) int {
	c, err := Parse(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return ExitUsage
	}
	return Run(c)
}

// Run starts the command and guards it until it exits. It returns the
// status to exit with; when the command was killed by SIGKILL, SIGTERM,
// SIGINT or SIGHUP, Run kills the guard with the same signal instead of
// returning.
func Run(c Config) int {
	if c.Check <= 0 {
		c.Check = CheckFor(c.TTL)
	}
	if c.Grace <= 0 {
		c.Grace = GraceFor(c.TTL)
	}
	// The parent-death signal fires when the *thread* that started the
	// child exits; this thread stays until the process ends.
	runtime.LockOSThread()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	last, ok := mtime(c.Lease)
	lastChange := time.Now()
	if ok {
		// A lease already old when the guard starts counts with its age
		// (wall clock: the modification time is one), so a worker that
		// stopped renewing gets no fresh TTL for a QEMU it starts; one
		// already expired starts none. A wall clock set back makes the age
		// zero, as before.
		if age := lastChange.Sub(last.Round(0)); age > 0 {
			lastChange = lastChange.Add(-age)
		}
	}
	if idle := time.Since(lastChange); idle > c.TTL {
		why := fmt.Sprintf("lease %s not renewed for %s (ttl %s): the worker is gone or cut off from its cluster; not starting %s",
			c.Lease, idle.Round(time.Millisecond), c.TTL, c.Argv[0])
		fmt.Fprintln(os.Stderr, LogPrefix, why)
		appendLog(c.Log, why)
		return ExitFenced
	}

	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr // the VM's qemu.log: plain files, no copying
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "%s cannot start %s: %v\n", LogPrefix, c.Argv[0], err)
		return ExitStart
	}
	// Owned by Run: it ends when the child exits, and every path out of
	// Run waits for that.
	waited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(waited)
	}()

	check := time.NewTicker(c.Check)
	defer check.Stop()
	for {
		select {
		case <-waited:
			return exitLike(cmd.ProcessState)
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case <-check.C:
			m, ok := mtime(c.Lease)
			if ok && !m.Equal(last) {
				last, lastChange = m, time.Now()
				continue
			}
			if idle := time.Since(lastChange); idle > c.TTL {
				why := fmt.Sprintf("lease %s not renewed for %s (ttl %s): the worker is gone or cut off from its cluster; stopping pid %d so the VM can run elsewhere",
					c.Lease, idle.Round(time.Millisecond), c.TTL, cmd.Process.Pid)
				fmt.Fprintln(os.Stderr, LogPrefix, why)
				_ = cmd.Process.Signal(syscall.SIGTERM)
				grace := time.NewTimer(c.Grace)
				select {
				case <-waited:
				case <-grace.C:
					_ = cmd.Process.Kill()
					<-waited
				}
				grace.Stop()
				appendLog(c.Log, why)
				return ExitFenced
			}
		}
	}
}

// exitLike turns the child's end into the guard's.
func exitLike(ps *os.ProcessState) int {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return ps.ExitCode()
	}
	sig := ws.Signal()
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP:
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig)
		// Delivery is asynchronous; give it a moment before the fallback.
		deadline := time.After(time.Second)
		<-deadline
	}
	return 128 + int(sig)
}

func mtime(p string) (time.Time, bool) {
	st, err := os.Stat(p)
	if err != nil {
		return time.Time{}, false
	}
	return st.ModTime(), true
}

func appendLog(p, msg string) {
	if p == "" {
		return
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s cannot write %s: %v\n", LogPrefix, p, err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "\n%s %s\n", LogPrefix, msg)
}

// Renew touches the lease file, creating it if needed.
func Renew(p string) error {
	now := time.Now()
	err := os.Chtimes(p, now, now)
	if errors.Is(err, fs.ErrNotExist) {
		var f *os.File
		f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o600)
		if err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("renew VM lease %s (its VMs stop within the lease TTL unless it is renewed; check the disk and permissions): %w", p, err)
	}
	return nil
}

// RenewEvery renews the lease now and then every period until ctx ends.
// A failure is logged and retried at the next period.
func RenewEvery(ctx context.Context, p string, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		if err := Renew(p); err != nil {
			if !failing && log != nil {
				log.Error("cannot renew the VM lease", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
