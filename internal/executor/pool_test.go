package executor

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// abandonedCgroup leaves a cgroup named name with a `sleep 1000` in it, as
// a worker killed while an attempt ran: its launcher thread gone, no
// Executor knowing the cgroup. attemptID, if set, is recorded as the
// slot's attempt.
func abandonedCgroup(t *testing.T, e *Executor, name, attemptID string) (*slot, *os.Process) {
	t.Helper()
	s := e.cg.slotNamed(name)
	e.cg.pool.mu.Lock()
	e.cg.pool.live[name] = s
	e.cg.pool.mu.Unlock()
	defer e.cg.forget(s)
	if err := s.create(); err != nil {
		t.Fatal(err)
	}
	defer s.detach()
	if attemptID != "" {
		if err := s.prepare(attemptID, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	path, err := resolveCommand("sleep", "", e.basePath)
	if err != nil {
		t.Fatal(err)
	}
	proc, err := s.start(path, []string{"sleep", "1000"}, &os.ProcAttr{Sys: &syscall.SysProcAttr{Setpgid: true}})
	if err != nil {
		t.Fatal(err)
	}
	return s, proc
}

// slotNames lists the pool slot directories of e's DataDir.
func slotNames(t *testing.T, e *Executor) []string {
	t.Helper()
	names, err := e.cg.listAttemptCgroups()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if isSlotOf(n, e.cg.suffix) {
			out = append(out, n)
		}
	}
	return out
}

func idleSlots(e *Executor) int {
	e.cg.pool.mu.Lock()
	defer e.cg.pool.mu.Unlock()
	return len(e.cg.pool.idle)
}

// deadOwner is a slot owner that cannot be alive: a pid above the
// kernel's maximum.
const deadOwner = "2147483647-1"

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// A slot serves one attempt after another, and each attempt's peak memory
// and CPU time are its own, not the slot's accumulated figures.
func TestSlotReuseFiguresAreTheAttempts(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	if e.cg.version == 2 && e.cg.memoryOK {
		h := start(t, e, Spec{AttemptID: "probe.1", Command: "/bin/true"})
		wait(t, h)
		if !h.cg.peakReset {
			t.Skip("memory.peak cannot be reset on this kernel (before 6.12): slots are used once")
		}
	}
	mem := start(t, e, helper(t, "mem.1", "alloc", "64"))
	rm := wait(t, mem)
	if rm.ExitCode != 0 || rm.PeakMemoryBytes < 64<<20 {
		t.Fatalf("alloc: %+v", rm)
	}
	small := start(t, e, Spec{AttemptID: "small.1", Command: "/bin/true"})
	rs := wait(t, small)
	if small.cg != mem.cg {
		t.Fatalf("second attempt ran in slot %s, not the idle %s", small.cg.name, mem.cg.name)
	}
	if rs.ExitCode != 0 || rs.PeakMemoryBytes <= 0 || rs.PeakMemoryBytes > 16<<20 {
		t.Fatalf("/bin/true after a 64 MiB attempt in the same slot: peak %d bytes (%+v)", rs.PeakMemoryBytes, rs)
	}
	burn := start(t, e, helper(t, "burn.1", "burn", "300ms"))
	rb := wait(t, burn)
	if rb.ExitCode != 0 || rb.CPUTime < 300*time.Millisecond {
		t.Fatalf("burn: %+v", rb)
	}
	after := start(t, e, Spec{AttemptID: "after.1", Command: "/bin/true"})
	ra := wait(t, after)
	if after.cg != burn.cg {
		t.Fatalf("attempt ran in slot %s, not the idle %s", after.cg.name, burn.cg.name)
	}
	if ra.ExitCode != 0 || ra.CPUTime <= 0 || ra.CPUTime > 100*time.Millisecond {
		t.Fatalf("/bin/true after a 300 ms burn in the same slot: CPU time %v (%+v)", ra.CPUTime, ra)
	}
	if n := len(slotNames(t, e)); n != 1 {
		t.Fatalf("%d slots for attempts one after another, want 1", n)
	}
}

// A slot that saw an OOM kill is removed, not reused.
func TestSlotWithOOMKillIsRetired(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	if e.cg.version == 2 && !e.cg.memoryOK {
		t.Skip("no memory controller")
	}
	spec := helper(t, "oom.1", "alloc", "512")
	spec.MemoryMiB = 48
	oom := start(t, e, spec)
	if r := wait(t, oom); !r.OOMKilled {
		t.Fatalf("result = %+v, want OOM kill", r)
	}
	for _, d := range oom.cg.dirs {
		if exists(d) {
			t.Errorf("slot %s of an OOM-killed attempt kept", d)
		}
	}
	if e.cg.ownsSlot(oom.cg.name) || idleSlots(e) != 0 {
		t.Fatalf("slot %s still in the pool (%d idle)", oom.cg.name, idleSlots(e))
	}
	next := start(t, e, Spec{AttemptID: "next.1", Command: "/bin/true"})
	if r := wait(t, next); r.ExitCode != 0 || r.OOMKilled || next.cg == oom.cg {
		t.Fatalf("next attempt: %+v in slot %s", r, next.cg.name)
	}
}

// readLimits returns a slot's memory limit in bytes (-1 = none) and CPU
// quota in microseconds per 100 ms (-1 = none), from its cgroup files.
func readLimits(t *testing.T, s *slot) (mem, quota int64) {
	t.Helper()
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	num := func(v string) int64 {
		if v == "max" {
			return -1
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("parse %q: %v", v, err)
		}
		return n
	}
	if s.d.version == 2 {
		mem, quota = -1, -1
		if s.d.memoryOK {
			mem = num(read(filepath.Join(s.dirs[0], "memory.max")))
		}
		if s.d.cpuOK {
			quota = num(strings.Fields(read(filepath.Join(s.dirs[0], "cpu.max")))[0])
		}
		return mem, quota
	}
	mem = num(read(filepath.Join(s.dirs[s.d.memIdx], "memory.limit_in_bytes")))
	if mem >= 1<<62 { // v1 "unlimited" is the largest page-aligned value
		mem = -1
	}
	return mem, num(read(filepath.Join(s.dirs[s.d.cpuIdx], "cpu.cfs_quota_us")))
}

// A reused slot gets the next attempt's limits, including none.
func TestSlotLimitsFollowTheAttempt(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	var first *slot
	for i, tc := range []struct {
		memMiB, cpuMillis int64
	}{{64, 200}, {0, 0}, {128, 0}, {0, 1500}, {32, 100}} {
		spec := Spec{AttemptID: "limits." + strconv.Itoa(i), Command: "sleep", Args: []string{"1000"}, KillGrace: time.Second}
		spec.MemoryMiB, spec.CPUMillis = tc.memMiB, tc.cpuMillis
		h := start(t, e, spec)
		if first == nil {
			first = h.cg
		} else if h.cg != first {
			t.Fatalf("attempt %d ran in slot %s, not the idle %s", i, h.cg.name, first.name)
		}
		mem, quota := readLimits(t, h.cg)
		wantMem, wantQuota := tc.memMiB<<20, tc.cpuMillis*100
		if tc.memMiB == 0 || (e.cg.version == 2 && !e.cg.memoryOK) {
			wantMem = -1
		}
		if tc.cpuMillis == 0 || (e.cg.version == 2 && !e.cg.cpuOK) {
			wantQuota = -1
		}
		if mem != wantMem || quota != wantQuota {
			t.Errorf("attempt %d (%d MiB, %d millicores): memory limit %d, quota %d; want %d, %d", i, tc.memMiB, tc.cpuMillis, mem, quota, wantMem, wantQuota)
		}
		h.Cancel()
		if r := wait(t, h); !r.Cancelled || r.OOMKilled {
			t.Fatalf("attempt %d: %+v", i, r)
		}
	}
}

// More concurrent attempts than the idle cap: the extra slots are made on
// demand and removed when they come back.
func TestSlotPoolCap(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	e.cg.pool.mu.Lock()
	e.cg.pool.maxIdle = 1
	e.cg.pool.mu.Unlock()
	var hs []*Handle
	for i := 0; i < 3; i++ {
		hs = append(hs, start(t, e, Spec{AttemptID: "cap." + strconv.Itoa(i), Command: "sleep", Args: []string{"1000"}}))
	}
	if n := len(slotNames(t, e)); n != 3 {
		t.Fatalf("%d slots for 3 running attempts", n)
	}
	for _, h := range hs {
		h.Cancel()
		wait(t, h)
	}
	if n, idle := len(slotNames(t, e)), idleSlots(e); n != 1 || idle != 1 {
		t.Fatalf("after the attempts: %d slots, %d idle; want 1 and 1", n, idle)
	}
}

// A slot an earlier worker left with a process in it is found (under the
// attempt its record names), killed and removed. Not parallel: another
// test's New could remove the dead owner's slot while it is being made.
func TestOrphanInPoolSlot(t *testing.T) {
	first, _ := needCgroups(t)
	name := slotPrefix + deadOwner + "-77" + first.cg.suffix
	s, proc := abandonedCgroup(t, first, name, "lost.1")
	defer func() { _, _ = proc.Wait() }() // it is this test's child

	e, _ := newExec(t, func(c *Config) { c.DataDir = first.cfg.DataDir })
	orphans, err := e.Orphans()
	if err != nil || len(orphans) != 1 || orphans[0] != (Orphan{AttemptID: "lost.1"}) {
		t.Fatalf("Orphans = %+v, %v; want lost.1", orphans, err)
	}
	if err := e.KillOrphans(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the orphan to die", func() bool { return gone(proc.Pid) })
	for _, d := range s.dirs {
		if exists(d) {
			t.Errorf("orphaned slot %s left", d)
		}
	}
	if exists(e.cg.recordPath(name)) {
		t.Errorf("record of orphaned slot %s left", name)
	}
	// The new executor's slots are named after this process.
	h := start(t, e, Spec{AttemptID: "after.1", Command: "/bin/true"})
	if r := wait(t, h); r.ExitCode != 0 {
		t.Fatalf("attempt after KillOrphans: %+v", r)
	}
	if sn, ok := parseSlotName(h.cg.name); !ok || sn.ownerPID != os.Getpid() || !sn.ownerAlive() {
		t.Fatalf("new slot %s is not named after this process (%d)", h.cg.name, os.Getpid())
	}
	if orphans, err := e.Orphans(); err != nil || len(orphans) != 0 {
		t.Fatalf("Orphans after kill = %+v, %v (our own slots are no orphans)", orphans, err)
	}
	// KillOrphans leaves our own idle slot alone.
	if err := e.KillOrphans(); err != nil {
		t.Fatal(err)
	}
	again := start(t, e, Spec{AttemptID: "after.2", Command: "/bin/true"})
	if r := wait(t, again); r.ExitCode != 0 || again.cg != h.cg || !exists(h.cg.dirs[0]) {
		t.Fatalf("attempt after a second KillOrphans: %+v in slot %s, want %s", r, again.cg.name, h.cg.name)
	}
}

// New removes the empty slots of dead workers, over any DataDir, and
// leaves those of live ones (here: this process) and populated ones. Not
// parallel: the New of any other test would remove the dead owner's slots
// too, even while abandonedCgroup is making one.
func TestNewRemovesDeadWorkersIdleSlots(t *testing.T) {
	first, _ := needCgroups(t)
	// Only directories and a record, nothing in it: a New elsewhere (any
	// process) may remove a dead owner's slot even before ours runs.
	leftover := func(name string) *slot {
		t.Helper()
		s := first.cg.slotNamed(name)
		if err := makeCgroupDirs(s.dirs, false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = removeCgroupDirs(s.dirs) })
		if err := os.WriteFile(first.cg.recordPath(name), []byte("x.1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return s
	}
	dead := leftover(slotPrefix + deadOwner + "-5" + first.cg.suffix)
	deadOther := leftover(slotPrefix + deadOwner + "-6-0ther0dd")
	live := leftover(slotPrefix + first.cg.pool.owner + "-7-0ther0dd")
	_, proc := abandonedCgroup(t, first, slotPrefix+deadOwner+"-8-0ther0dd", "")
	t.Cleanup(func() {
		_ = proc.Kill()
		_, _ = proc.Wait()
		waitFor(t, "the sleep to leave its slot", func() bool { return !dirsPopulated(first.cg.dirsFor(slotPrefix + deadOwner + "-8-0ther0dd")) })
		_ = removeCgroupDirs(first.cg.dirsFor(slotPrefix + deadOwner + "-8-0ther0dd"))
	})

	e, _ := newExec(t, func(c *Config) { c.DataDir = first.cfg.DataDir })
	for _, s := range []*slot{dead, deadOther} {
		for _, d := range s.dirs {
			if exists(d) {
				t.Errorf("dead worker's idle slot %s not removed", d)
			}
		}
	}
	if exists(e.cg.recordPath(dead.name)) {
		t.Errorf("record of removed slot %s kept", dead.name)
	}
	for _, d := range append(live.dirs, first.cg.dirsFor(slotPrefix+deadOwner+"-8-0ther0dd")...) {
		if !exists(d) {
			t.Errorf("slot %s removed: its owner lives, or it has a process", d)
		}
	}
	// Neither is an orphan of this DataDir.
	if o, err := e.Orphans(); err != nil || len(o) != 0 {
		t.Fatalf("Orphans = %+v, %v", o, err)
	}
}

// Stop removes every slot, stops every launcher goroutine (and thread),
// and leaves no slot records. Not parallel: it checks all goroutines.
func TestStopRemovesThePool(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	e, _ := needCgroups(t)
	var hs []*Handle
	for i := 0; i < 3; i++ {
		hs = append(hs, start(t, e, Spec{AttemptID: "pool." + strconv.Itoa(i), Command: "sleep", Args: []string{"1000"}}))
	}
	for _, h := range hs {
		h.Cancel()
		wait(t, h)
	}
	if idle := idleSlots(e); idle != 3 {
		t.Fatalf("%d idle slots after 3 concurrent attempts, want 3", idle)
	}
	e.Stop()
	if names := slotNames(t, e); len(names) != 0 {
		t.Fatalf("slots left after Stop: %v", names)
	}
	if _, err := os.Stat(e.cg.pool.recordDir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("slot records left after Stop: %v", err)
	}
	goleak.VerifyNone(t, ignore)
}

// A resolved user is reused for a few seconds; an unknown one fails the
// same way every time.
func TestUserCache(t *testing.T) {
	t.Parallel()
	var c userCache
	now := time.Now()
	for i := 0; i < 2; i++ {
		_, err := c.resolve("no-such-user-xyz", now)
		if err == nil || !errors.Is(err, ErrSpec) || !strings.Contains(err.Error(), `unknown user "no-such-user-xyz"`) {
			t.Fatalf("lookup %d of an unknown user: %v", i, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("credentials are only set for another user as root")
	}
	a, err := c.resolve("nobody", now)
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	b, err := c.resolve("nobody", now.Add(userCacheTTL/2))
	if err != nil || b.cred != a.cred {
		t.Fatalf("second lookup within the TTL not cached: %v", err)
	}
	later, err := c.resolve("nobody", now.Add(userCacheTTL))
	if err != nil || later.cred == a.cred || later.cred.Uid != a.cred.Uid || later.name != "nobody" {
		t.Fatalf("lookup after the TTL: %+v, %v", later, err)
	}
}

// A start that fails after the slot was taken (here exec itself fails)
// gives the slot back for the next attempt.
func TestFailedExecReturnsTheSlot(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	bad := filepath.Join(t.TempDir(), "not-a-program")
	if err := os.WriteFile(bad, []byte{0x7f, 'E', 'L', 'F', 0, 0}, 0o755); err != nil {
		t.Fatal(err)
	}
	h, err := e.Start(t.Context(), Spec{AttemptID: "badexec.1", Command: bad})
	if !errors.Is(err, ErrSpec) || h.PID() != 0 {
		t.Fatalf("err = %v, want ErrSpec from exec", err)
	}
	if idle := idleSlots(e); idle != 1 {
		t.Fatalf("%d idle slots after a failed exec, want 1", idle)
	}
	ok := start(t, e, Spec{AttemptID: "ok.1", Command: "/bin/true"})
	if r := wait(t, ok); r.ExitCode != 0 || len(slotNames(t, e)) != 1 {
		t.Fatalf("next attempt: %+v; slots %v", r, slotNames(t, e))
	}
}
