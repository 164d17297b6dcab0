package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/vm"
	"github.com/blixard/blixard/internal/vm/guard"
)

// bootDeadline is generous: a TCG boot takes 2-4 s alone but can take
// many times that on a loaded 2-core CI machine.
const bootDeadline = 60 * time.Second

// testRoot returns a fresh state root. A cleanup SIGKILLs any QEMU still
// running with a path under it, so a failing test leaks no process (the
// tests check separately that nothing is left).
func testRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	t.Cleanup(func() {
		for _, pid := range qemusUnder(root) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return root
}

// qemusUnder lists live processes whose command line mentions root.
func qemusUnder(root string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readProc(pid)
		if err != nil || st.dead() {
			continue
		}
		args, err := procArgs(pid)
		if err != nil || len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "qemu-system") {
			continue
		}
		if slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, root+"/") }) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// testLeaseTTL is the guard's TTL in the tests: long enough that a
// loaded machine never misses a renewal.
const testLeaseTTL = 5 * time.Second

// guardedConfig runs QEMU under the test binary acting as the guard, with
// root/.lease as the lease.
func guardedConfig(root string) Config {
	return Config{
		StateRoot: root, Guard: []string{os.Args[0], "vm-guard"},
		Lease: filepath.Join(root, ".lease"), LeaseTTL: testLeaseTTL,
	}
}

// renewLease renews the lease of root until the test ends (or stop is
// called).
func renewLease(t *testing.T, root string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		guard.RenewEvery(ctx, filepath.Join(root, ".lease"), testLeaseTTL/10, nil)
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// newTestDriver returns a guarded driver over root and renews its lease.
func newTestDriver(t *testing.T, root string) *Driver {
	t.Helper()
	renewLease(t, root)
	d, err := New(guardedConfig(root))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func testSpec(id string) vm.Spec {
	return vm.Spec{
		ID: vm.ID(id), VCPUs: 1, MemoryMiB: 128,
		Kernel: testImage.Vmlinux, Initrd: testImage.Initrd,
	}
}

func bootCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	t.Cleanup(cancel)
	return ctx
}

// startReady starts spec and waits for the guest's readiness marker.
func startReady(t *testing.T, d *Driver, spec vm.Spec) vm.Status {
	t.Helper()
	ctx := bootCtx(t)
	id, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if readyErr := d.WaitReady(ctx, id); readyErr != nil {
		t.Fatalf("WaitReady: %v\nconsole:\n%s", readyErr, readConsole(d, spec))
	}
	st, err := d.Status(ctx, id)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return st
}

func readConsole(d *Driver, spec vm.Spec) string {
	dir, _ := d.stateDir(&spec)
	b, _ := os.ReadFile(filepath.Join(dir, consoleLogName))
	return string(b)
}

func waitExit(t *testing.T, ch <-chan vm.Exit) vm.Exit {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(bootDeadline):
		t.Fatal("no exit reported")
		return vm.Exit{}
	}
}

func pidAlive(pid int) bool {
	st, err := readProc(pid)
	return err == nil && !st.dead()
}

// checkOnlyConsoleLeft checks the VM left no process and no file but
// its console log.
func checkOnlyConsoleLeft(t *testing.T, root, dir string, pid int) {
	t.Helper()
	if pidAlive(pid) {
		t.Errorf("QEMU pid %d still runs", pid)
	}
	if left := qemusUnder(root); len(left) > 0 {
		t.Errorf("QEMU processes left under %s: %v", root, left)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{consoleLogName}) {
		t.Errorf("state dir holds %v, want only %s", names, consoleLogName)
	}
}

func TestBootReadyStatusAndGracefulStop(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	d := newTestDriver(t, root)
	spec := testSpec("boot")
	spec.Network = vm.Network{Mode: vm.NetworkUser}
	st := startReady(t, d, spec)
	if st.State != vm.StateRunning || st.RunState != "running" || st.PID <= 0 || st.ReadyAt.IsZero() || st.Reason != "" {
		t.Fatalf("status after ready = %+v", st)
	}
	pid := st.PID
	if _, err := os.Stat(filepath.Join(root, "boot", qmpSockName)); err != nil {
		t.Fatalf("QMP socket: %v", err)
	}
	// A second Start of a running ID is refused.
	if _, err := d.Start(bootCtx(t), spec); !errors.Is(err, vm.ErrExists) {
		t.Fatalf("second Start = %v, want ErrExists", err)
	}

	wait := d.Wait("boot")
	if err := d.Stop(bootCtx(t), "boot"); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	e := waitExit(t, wait)
	if !e.Clean() || !strings.Contains(e.Reason, "power button") || e.ExitCode != 0 || e.GuestExitCode != -1 {
		t.Fatalf("exit = %+v, want a clean power-button poweroff", e)
	}
	st, err := d.Status(bootCtx(t), "boot")
	if err != nil || st.State != vm.StateStopped || st.PID != 0 {
		t.Fatalf("status after stop = %+v, %v", st, err)
	}
	checkOnlyConsoleLeft(t, root, filepath.Join(root, "boot"), pid)
	if c := readConsole(d, spec); !strings.Contains(c, vm.DefaultReadyMarker) || !strings.Contains(c, "power button") {
		t.Errorf("console log lacks the marker or the power button:\n%s", c)
	}
}

func TestKill9OfQEMUIsReported(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	d := newTestDriver(t, root)
	st := startReady(t, d, testSpec("victim"))
	wait := d.Wait("victim")
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e := waitExit(t, wait)
	if e.State != vm.StateFailed || e.Signal != "SIGKILL" || e.ExitCode != -1 || !strings.Contains(e.Reason, "SIGKILL") {
		t.Fatalf("exit = %+v, want failed with SIGKILL", e)
	}
	st2, err := d.Status(bootCtx(t), "victim")
	if err != nil || st2.State != vm.StateFailed || st2.Reason != e.Reason {
		t.Fatalf("status = %+v, %v; want failed with %q", st2, err, e.Reason)
	}
	// Wait after the exit still reports it.
	if e2 := waitExit(t, d.Wait("victim")); e2.Reason != e.Reason {
		t.Fatalf("second Wait = %+v", e2)
	}
	checkOnlyConsoleLeft(t, root, filepath.Join(root, "victim"), st.PID)
}

func TestGuestCommandExitPowersOffWithItsStatus(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	d := newTestDriver(t, root)
	disk := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	spec := testSpec("job")
	spec.Disk = &vm.Disk{Path: disk}
	spec.Network = vm.Network{Mode: vm.NetworkUser, Forwards: []vm.PortForward{{HostPort: port, GuestPort: 8080}}}
	// Write to the disk, answer one connection through the port forward,
	// then exit 7.
	spec.Cmdline = vm.CommandParam("printf disk-ok | dd of=/dev/vda conv=notrunc 2>/dev/null && echo pong | nc -l -p 8080; exit 7")
	ctx := bootCtx(t)
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	wait := d.Wait("job")
	if err := d.WaitReady(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(t, fmt.Sprintf("127.0.0.1:%d", port), "pong"); !strings.Contains(got, "pong") {
		t.Fatalf("read %q through the port forward", got)
	}
	e := waitExit(t, wait)
	if !e.Clean() || e.GuestExitCode != 7 || e.ExitCode != 0 || e.Reason != "guest powered off" {
		t.Fatalf("exit = %+v, want clean with guest exit code 7\nconsole:\n%s", e, readConsole(d, spec))
	}
	b, err := os.ReadFile(disk)
	if err != nil || !strings.HasPrefix(string(b), "disk-ok") {
		t.Fatalf("disk starts with %q (%v), want disk-ok", b[:16], err)
	}
	st, _ := d.Status(ctx, "job")
	checkOnlyConsoleLeft(t, root, filepath.Join(root, "job"), st.PID)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// readUntil connects to addr and reads until the peer closes, again and
// again until the answer contains want: until the guest listens, QEMU
// accepts and at once closes the host side.
func readUntil(t *testing.T, addr, want string) string {
	t.Helper()
	deadline := time.Now().Add(bootDeadline)
	retry := time.NewTicker(100 * time.Millisecond)
	defer retry.Stop()
	var last string
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(bufio.NewReader(c))
			c.Close()
			last = string(b)
			if strings.Contains(last, want) {
				return last
			}
		}
		<-retry.C
	}
	return last
}

func TestCloseLeavesVMRunningAndNewDriverRecoversIt(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	d1 := newTestDriver(t, root)
	st := startReady(t, d1, testSpec("keep"))
	// A second VM, with its state outside the root, dies while no driver
	// watches.
	elsewhere := filepath.Join(t.TempDir(), "dies")
	dies := testSpec("dies")
	dies.StateDir = elsewhere
	stDies := startReady(t, d1, dies)
	if target, err := os.Readlink(filepath.Join(root, "dies")); err != nil || target != elsewhere {
		t.Fatalf("root/dies links to %q (%v), want %s", target, err, elsewhere)
	}
	w1 := d1.Wait("keep")
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if e := waitExit(t, w1); !errors.Is(e.Err, vm.ErrClosed) {
		t.Fatalf("Wait across Close = %+v, want ErrClosed", e)
	}
	if !pidAlive(st.PID) || !pidAlive(stDies.PID) {
		t.Fatal("Close stopped a VM")
	}
	rec, err := readRecord(filepath.Join(elsewhere, recordName))
	if err != nil {
		t.Fatal(err)
	}
	if killErr := syscall.Kill(stDies.PID, syscall.SIGKILL); killErr != nil {
		t.Fatal(killErr)
	}
	// Its guard exits as QEMU did; reap it (this test process is its
	// parent) so it is gone for good.
	var ws syscall.WaitStatus
	if _, waitErr := syscall.Wait4(rec.PID, &ws, 0, nil); waitErr != nil || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("guard pid %d of the killed QEMU: %v, %v; want killed by SIGKILL", rec.PID, ws, waitErr)
	}

	d2 := newTestDriver(t, root)
	ctx := bootCtx(t)
	ids, err := d2.Recover(ctx)
	if err != nil || !slices.Equal(ids, []vm.ID{"keep"}) {
		t.Fatalf("Recover = %v, %v; want [keep]", ids, err)
	}
	if e := waitExit(t, d2.Wait("dies")); e.State != vm.StateFailed || !strings.Contains(e.Reason, "no driver was watching") {
		t.Fatalf("VM that died unwatched: %+v", e)
	}
	if _, lstatErr := os.Lstat(filepath.Join(root, "dies")); !os.IsNotExist(lstatErr) {
		t.Errorf("the link to the dead VM's state dir is still there (%v)", lstatErr)
	}
	st2, err := d2.Status(ctx, "keep")
	if err != nil || st2.PID != st.PID || !st2.Adopted || st2.State != vm.StateRunning || st2.RunState != "running" {
		t.Fatalf("adopted status = %+v, %v; want pid %d running", st2, err, st.PID)
	}
	// Neither a second Recover nor a Start makes a second QEMU.
	if ids, err := d2.Recover(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("second Recover = %v, %v; want nothing new", ids, err)
	}
	if _, err := d2.Start(ctx, testSpec("keep")); !errors.Is(err, vm.ErrExists) {
		t.Fatalf("Start of the adopted VM = %v, want ErrExists", err)
	}
	if pids := qemusUnder(root); !slices.Equal(pids, []int{st.PID}) {
		t.Fatalf("QEMU processes = %v, want only %d", pids, st.PID)
	}
	wait := d2.Wait("keep")
	if err := d2.Stop(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	if e := waitExit(t, wait); !e.Clean() {
		t.Fatalf("exit = %+v, want clean", e)
	}
	checkOnlyConsoleLeft(t, root, filepath.Join(root, "keep"), st.PID)
	checkOnlyConsoleLeft(t, root, elsewhere, stDies.PID)
}

// runHelper is the test binary acting as a worker process that starts a
// VM and dies (exits without Stop or Close), printing QEMU's pid.
func runHelper(root string) int {
	d, err := New(guardedConfig(root)) // the test renews the lease
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	spec := vm.Spec{
		ID: "orphan", VCPUs: 1, MemoryMiB: 128,
		Kernel: os.Getenv(helperEnv + "_KERNEL"), Initrd: os.Getenv(helperEnv + "_INITRD"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
	defer cancel()
	if _, startErr := d.Start(ctx, spec); startErr != nil {
		fmt.Fprintln(os.Stderr, startErr)
		return 1
	}
	if readyErr := d.WaitReady(ctx, "orphan"); readyErr != nil {
		fmt.Fprintln(os.Stderr, readyErr)
		return 1
	}
	st, err := d.Status(ctx, "orphan")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(st.PID)
	return 0 // no Close: the process just ends, as a crashed worker would
}

func TestRecoverAfterWorkerProcessDied(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	ctx := bootCtx(t)
	renewLease(t, root)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+root,
		helperEnv+"_KERNEL="+testImage.Vmlinux, helperEnv+"_INITRD="+testImage.Initrd)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper worker: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || !pidAlive(pid) {
		t.Fatalf("helper printed %q; want the pid of a running QEMU", out)
	}

	d := newTestDriver(t, root)
	// Before Recover, starting the same VM again must not make a twin.
	spec := testSpec("orphan")
	if _, startErr := d.Start(ctx, spec); !errors.Is(startErr, vm.ErrExists) || !strings.Contains(startErr.Error(), strconv.Itoa(pid)) {
		t.Fatalf("Start before Recover = %v, want ErrExists naming pid %d", startErr, pid)
	}
	ids, err := d.Recover(ctx)
	if err != nil || !slices.Equal(ids, []vm.ID{"orphan"}) {
		t.Fatalf("Recover = %v, %v", ids, err)
	}
	st, err := d.Status(ctx, "orphan")
	if err != nil || st.PID != pid || st.RunState != "running" || st.State != vm.StateRunning {
		t.Fatalf("status = %+v, %v; want pid %d running", st, err, pid)
	}
	if pids := qemusUnder(root); !slices.Equal(pids, []int{pid}) {
		t.Fatalf("QEMU processes = %v, want only %d", pids, pid)
	}
	wait := d.Wait("orphan")
	if err := d.Kill("orphan"); err != nil {
		t.Fatal(err)
	}
	e := waitExit(t, wait)
	// Not the driver's child: no exit status, but the reason is known.
	if e.State != vm.StateFailed || e.Reason != "killed (Kill)" || e.ExitCode != -1 {
		t.Fatalf("exit = %+v", e)
	}
	checkOnlyConsoleLeft(t, root, filepath.Join(root, "orphan"), pid)
}

func TestBadInputFailsClearlyAndLeavesNothing(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	d := newTestDriver(t, root)
	tmp := t.TempDir()
	missing := filepath.Join(tmp, "no-such-vmlinux")
	garbage := filepath.Join(tmp, "garbage")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a kernel ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	// An ELF QEMU cannot boot: it fails after starting, at kernel load.
	badELF := filepath.Join(tmp, "bad.elf")
	if err := os.WriteFile(badELF, append([]byte("\x7fELF"), make([]byte, 1000)...), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		change func(*vm.Spec)
		spec   bool // error wraps ErrInvalidSpec
		want   []string
	}{
		{"missing kernel", func(s *vm.Spec) { s.Kernel = missing }, true, []string{missing, "does not exist", "blixard image build"}},
		{"zero memory", func(s *vm.Spec) { s.MemoryMiB = 0 }, true, []string{"memory must be at least"}},
		{"memory below the kernel", func(s *vm.Spec) { s.MemoryMiB = 64 }, true, []string{"too small", "use at least"}},
		{"zero vcpus", func(s *vm.Spec) { s.VCPUs = 0 }, true, []string{"vcpus"}},
		{"missing initrd", func(s *vm.Spec) { s.Initrd = missing }, true, []string{"initrd", missing}},
		{"missing disk", func(s *vm.Spec) { s.Disk = &vm.Disk{Path: missing} }, true, []string{"disk", missing}},
		{"not a kernel", func(s *vm.Spec) { s.Kernel = garbage }, true, []string{"neither an ELF vmlinux nor a bzImage"}},
		{"kernel QEMU rejects", func(s *vm.Spec) { s.Kernel, s.Initrd = badELF, "" }, false, []string{"QEMU", "elf"}},
	}
	for _, c := range cases {
		spec := testSpec("bad")
		c.change(&spec)
		_, err := d.Start(bootCtx(t), spec)
		switch {
		case err == nil:
			t.Fatalf("%s: Start succeeded", c.name)
		case errors.Is(err, vm.ErrInvalidSpec) != c.spec:
			t.Errorf("%s: %v; ErrInvalidSpec = %v, want %v", c.name, err, !c.spec, c.spec)
		}
		for _, w := range c.want {
			if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(w)) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
		entries, _ := os.ReadDir(root)
		entries = slices.DeleteFunc(entries, func(e os.DirEntry) bool { return e.Name() == ".lease" })
		if len(entries) != 1 || entries[0].Name() != lockName {
			t.Errorf("%s: state root holds %v after the failed start", c.name, entries)
		}
		if pids := qemusUnder(root); len(pids) > 0 {
			t.Errorf("%s: QEMU left running: %v", c.name, pids)
		}
		if _, err := d.Status(bootCtx(t), "bad"); !errors.Is(err, vm.ErrNotFound) {
			t.Errorf("%s: Status = %v, want ErrNotFound", c.name, err)
		}
	}
	if e := <-d.Wait("bad"); !errors.Is(e.Err, vm.ErrNotFound) {
		t.Errorf("Wait for an unknown VM = %+v", e)
	}
}

func TestStopWhileBootingWaitsForTheGuestThenPowersOff(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	d := newTestDriver(t, root)
	ctx := bootCtx(t)
	if _, err := d.Start(ctx, testSpec("early")); err != nil {
		t.Fatal(err)
	}
	wait := d.Wait("early")
	// At once: the guest cannot see the power button yet.
	if err := d.Stop(ctx, "early"); err != nil {
		t.Fatal(err)
	}
	if e := waitExit(t, wait); !e.Clean() {
		t.Fatalf("exit = %+v, want a clean poweroff", e)
	}
	if err := d.WaitReady(ctx, "early"); err != nil {
		t.Fatalf("WaitReady after a stop that followed readiness = %v", err)
	}
}

func TestStopKillsAGuestThatIgnoresThePowerButton(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	renewLease(t, root)
	cfg := guardedConfig(root)
	cfg.StopGrace = 2 * time.Second
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	spec := testSpec("stubborn")
	// The init gives the command 5 s after the power button; the driver's
	// grace is shorter.
	// Ready only once the trap is set (a custom marker), or the power
	// button could still kill the command.
	spec.Cmdline = vm.CommandParam(`trap "" TERM; echo STUBBORN-READY; while :; do sleep 1; done`)
	spec.ReadyMarker = "STUBBORN-READY"
	st := startReady(t, d, spec)
	wait := d.Wait("stubborn")
	if err := d.Stop(bootCtx(t), "stubborn"); err != nil {
		t.Fatal(err)
	}
	e := waitExit(t, wait)
	if e.State != vm.StateFailed || !strings.Contains(e.Reason, "did not power off within 2s") || e.Signal != "SIGKILL" {
		t.Fatalf("exit = %+v, want killed after the grace", e)
	}
	checkOnlyConsoleLeft(t, root, filepath.Join(root, "stubborn"), st.PID)
}

// A VM whose worker stops renewing the lease stops by itself: its guard
// ends QEMU once the lease is older than the TTL, and the driver says why.
func TestVMWhoseLeaseIsNotRenewedStopsByItself(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	stop := renewLease(t, root)
	d, err := New(guardedConfig(root))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	spec := testSpec("fenced")
	st := startReady(t, d, spec)
	if st.PID <= 0 || !slices.Equal(qemusUnder(root), []int{st.PID}) {
		t.Fatalf("status pid %d, QEMU processes %v: the status should name QEMU", st.PID, qemusUnder(root))
	}
	wait := d.Wait("fenced")
	stop()
	stopped := time.Now()
	e := waitExit(t, wait)
	took := time.Since(stopped)
	if e.State != vm.StateFailed || e.ExitCode != guard.ExitFenced || !strings.Contains(e.Reason, "stopped by its guard (self-fencing): lease") {
		t.Fatalf("exit = %+v, want failed by the guard with status %d", e, guard.ExitFenced)
	}
	if bound := guard.MaxLifetime(testLeaseTTL); took > bound+2*time.Second {
		t.Errorf("stopped %s after the last renewal; the bound is %s", took, bound)
	}
	t.Logf("stopped %s after the last renewal (ttl %s, bound %s)", took.Round(time.Millisecond), testLeaseTTL, guard.MaxLifetime(testLeaseTTL))
	checkOnlyConsoleLeft(t, root, filepath.Join(root, "fenced"), st.PID)
	if c := readConsole(d, spec); !strings.Contains(c, guard.LogPrefix+" lease") {
		t.Errorf("console log does not say why the VM stopped:\n%s", c)
	}
}

// A worker that stopped renewing its lease (cut off from its cluster)
// cannot start a VM: the guard refuses to start QEMU over an expired lease.
func TestVMStartOverAnExpiredLeaseIsFenced(t *testing.T) {
	t.Parallel()
	root := testRoot(t)
	lease := filepath.Join(root, ".lease")
	if err := guard.Renew(lease); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(lease, old, old); err != nil {
		t.Fatal(err)
	}
	d, err := New(guardedConfig(root))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.Start(ctx, testSpec("late")); err == nil || !strings.Contains(err.Error(), "status 86") || !strings.Contains(err.Error(), "not starting") {
		t.Fatalf("start over an expired lease: %v; want the guard's refusal (status 86, not starting)", err)
	}
	if q := qemusUnder(root); len(q) != 0 {
		t.Fatalf("QEMU processes %v started over an expired lease", q)
	}
}
