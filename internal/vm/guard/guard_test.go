package guard

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary acts as the guard when run as "<test> vm-guard ARGS",
// the way the real binary does as "blixard vm-guard ARGS".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "vm-guard" {
		os.Exit(Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

type guarded struct {
	cmd      *exec.Cmd
	lease    string
	log      string
	childPID int
	exited   chan struct{}
}

// startGuard runs the test binary as a guard over a shell that records
// its pid and then becomes `sleep 600`.
func startGuard(t *testing.T, ttl time.Duration) *guarded {
	t.Helper()
	dir := t.TempDir()
	g := &guarded{lease: filepath.Join(dir, "lease"), log: filepath.Join(dir, "console.log"), exited: make(chan struct{})}
	if err := Renew(g.lease); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "child.pid")
	args := append([]string{"vm-guard"}, Args(g.lease, ttl, g.log)...)
	args = append(args, "/bin/sh", "-c", `echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 600`, pidFile)
	g.cmd = exec.Command(os.Args[0], args...)
	g.cmd.Stderr = os.Stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() {
		_ = g.cmd.Process.Kill()
		<-g.exited
		if g.childPID > 0 {
			_ = unix.Kill(g.childPID, unix.SIGKILL)
		}
	})
	waitFor(t, 10*time.Second, "the guarded child to write its pid", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		g.childPID, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return g
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		<-tick.C
	}
}

// waitExit waits for the guard to exit and returns its wait status.
func (g *guarded) waitExit(t *testing.T, d time.Duration, what string) syscall.WaitStatus {
	t.Helper()
	select {
	case <-g.exited:
	case <-time.After(d):
		t.Fatalf("the guard did not exit within %s: %s", d, what)
	}
	return g.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// waitChildGone waits on a pidfd until the child has exited.
func waitChildGone(t *testing.T, pid int, d time.Duration) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, int(d.Milliseconds()))
	if err != nil || n == 0 {
		t.Fatalf("child pid %d still runs %s later (poll: %v)", pid, d, err)
	}
}

func TestLeaseNotRenewedStopsTheChild(t *testing.T) {
	t.Parallel()
	const ttl = 500 * time.Millisecond
	start := time.Now()
	g := startGuard(t, ttl)
	ws := g.waitExit(t, MaxLifetime(ttl)+5*time.Second, "the lease was never renewed")
	if ws.Signaled() || ws.ExitStatus() != ExitFenced {
		t.Fatalf("guard exit: %v (status %d), want status %d", ws, ws.ExitStatus(), ExitFenced)
	}
	if took := time.Since(start); took < ttl {
		t.Errorf("fenced after %s, before the %s TTL ran out", took, ttl)
	}
	waitChildGone(t, g.childPID, 0)
	b, err := os.ReadFile(g.log)
	if err != nil || !strings.Contains(string(b), LogPrefix+" lease "+g.lease+" not renewed") {
		t.Fatalf("log %s does not say why: %q (%v)", g.log, b, err)
	}
}

func TestRenewedLeaseKeepsTheChildUntilRenewalStops(t *testing.T) {
	t.Parallel()
	const ttl = 300 * time.Millisecond
	g := startGuard(t, ttl)
	ctx, cancel := context.WithCancel(context.Background())
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		RenewEvery(ctx, g.lease, ttl/5, nil)
	}()
	select {
	case <-g.exited:
		cancel()
		<-renewed
		t.Fatalf("the guard exited while its lease was renewed: %v", g.cmd.ProcessState)
	case <-time.After(10 * ttl):
	}
	if err := unix.Kill(g.childPID, 0); err != nil {
		t.Fatalf("child gone while its lease was renewed: %v", err)
	}
	cancel()
	<-renewed
	stopped := time.Now()
	ws := g.waitExit(t, MaxLifetime(ttl)+5*time.Second, "renewal stopped")
	if ws.ExitStatus() != ExitFenced {
		t.Fatalf("guard exit: %v, want status %d", ws, ExitFenced)
	}
	t.Logf("fenced %s after the last renewal (ttl %s, bound %s)", time.Since(stopped).Round(time.Millisecond), ttl, MaxLifetime(ttl))
	waitChildGone(t, g.childPID, 0)
}

func TestGuardKilledTakesTheChildWithIt(t *testing.T) {
	t.Parallel()
	g := startGuard(t, time.Minute)
	if err := g.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	g.waitExit(t, 5*time.Second, "SIGKILL")
	waitChildGone(t, g.childPID, 5*time.Second)
}

func TestGuardExitsAsTheChildDid(t *testing.T) {
	t.Parallel()
	t.Run("child killed", func(t *testing.T) {
		t.Parallel()
		g := startGuard(t, time.Minute)
		if err := unix.Kill(g.childPID, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		ws := g.waitExit(t, 5*time.Second, "its child was killed")
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("guard exit: %v, want killed by SIGKILL like its child", ws)
		}
	})
	t.Run("SIGTERM relayed", func(t *testing.T) {
		t.Parallel()
		g := startGuard(t, time.Minute)
		if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		ws := g.waitExit(t, 5*time.Second, "SIGTERM, relayed to the child")
		if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Fatalf("guard exit: %v, want killed by SIGTERM like its child", ws)
		}
		waitChildGone(t, g.childPID, 5*time.Second)
	})
	t.Run("exit status", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		lease := filepath.Join(dir, "lease")
		args := append([]string{"vm-guard"}, Args(lease, time.Minute, "")...)
		cmd := exec.Command(os.Args[0], append(args, "/bin/sh", "-c", "exit 3")...)
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("guard over 'exit 3': %v, want status 3", err)
		}
	})
}

func TestParseRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"--ttl", "1s", "--", "true"},
		{"--lease", "x", "--", "true"},
		{"--lease", "x", "--ttl", "1s"},
		{"--lease", "x", "--ttl", "soon", "--", "true"},
	} {
		if _, err := Parse(args); err == nil {
			t.Errorf("Parse(%q) accepted", args)
		}
	}
	c, err := Parse(append(Args("/l", 2*time.Second, "/c"), "qemu", "-M", "microvm"))
	if err != nil || c.Lease != "/l" || c.TTL != 2*time.Second || c.Log != "/c" || strings.Join(c.Argv, " ") != "qemu -M microvm" {
		t.Fatalf("Parse(Args(...)) = %+v, %v", c, err)
	}
}

func TestLeaseAlreadyStaleAtStartGetsNoFreshTTL(t *testing.T) {
	t.Parallel()
	const ttl = 10 * time.Second
	dir := t.TempDir()
	lease := filepath.Join(dir, "lease")
	if err := Renew(lease); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(lease, old, old); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"vm-guard"}, Args(lease, ttl, filepath.Join(dir, "console.log"))...)
	cmd := exec.Command(os.Args[0], append(args, "sleep", "600")...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	// A fresh TTL would keep it for 10 s; the lease's age counts, and an
	// expired lease starts nothing: the guard exits fenced at once.
	select {
	case <-exited:
	case <-time.After(ttl / 2):
		t.Fatalf("the guard over a lease last renewed a minute ago still runs after %s (ttl %s)", ttl/2, ttl)
	}
	if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() || ws.ExitStatus() != ExitFenced {
		t.Fatalf("guard exit: %v (status %d), want status %d", ws, ws.ExitStatus(), ExitFenced)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "console.log")); err != nil || !strings.Contains(string(b), "not starting sleep") {
		t.Fatalf("the log does not say why nothing started: %q (%v)", b, err)
	}
}
