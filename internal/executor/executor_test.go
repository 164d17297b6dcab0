package executor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary act as a task (or a worker) instead of
// running tests, so tests can use a real program with exact behaviour.
const helperEnv = "BLIXARD_EXECUTOR_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(runHelper(os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

func runHelper(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "helper: no mode")
		return 2
	}
	switch args[0] {
	case "alloc": // alloc <MiB>: allocate and touch that much memory
		n, _ := strconv.Atoi(args[1])
		chunks := make([][]byte, 0, n)
		for i := 0; i < n; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			chunks = append(chunks, b)
		}
		fmt.Println("allocated", len(chunks))
		runtime.KeepAlive(chunks)
		return 0
	case "spin": // spin <duration>: run on the CPU for that long (wall time)
		d, _ := time.ParseDuration(args[1])
		end := time.Now().Add(d)
		x := 0
		for time.Now().Before(end) {
			x++
		}
		fmt.Println("spun", x > 0)
		return 0
	case "burn": // burn <duration>: use that much CPU time, however long it takes
		d, _ := time.ParseDuration(args[1])
		x := 0
		for {
			var ru syscall.Rusage
			if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			if time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) >= d {
				break
			}
			for i := 0; i < 100000; i++ {
				x++
			}
		}
		fmt.Println("burnt", x > 0)
		return 0
	case "write": // write <lines>: one write(2) per numbered line
		n, _ := strconv.Atoi(args[1])
		for i := 0; i < n; i++ {
			fmt.Fprintf(os.Stdout, "%07d\n", i)
		}
		return 0
	case "worker": // worker <datadir>: start an attempt, then block until killed
		e, err := New(Config{DataDir: args[1]})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		h, err := e.Start(context.Background(), Spec{
			// The child's pid goes to a file, not stdout: a pipe whose
			// reader (this worker) is killed cannot carry it.
			AttemptID: "orphan.1", Command: "/bin/sh", Args: []string{"-c", "sleep 1000 & echo $! > " + filepath.Join(args[1], "child.pid") + "; wait"},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(h.PID())
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	}
	fmt.Fprintln(os.Stderr, "helper: unknown mode", args[0])
	return 2
}

// helper returns a spec running the test binary in a helper mode.
func helper(t *testing.T, id string, args ...string) Spec {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Spec{AttemptID: id, Command: bin, Args: args, Env: map[string]string{helperEnv: "1"}}
}

func sh(id, script string) Spec {
	return Spec{AttemptID: id, Command: "/bin/sh", Args: []string{"-c", script}}
}

// syncBuffer collects log output for messages in skips and failures.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newExec(t *testing.T, mod func(*Config)) (*Executor, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	cfg := Config{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(e.Stop)
	return e, logs
}

// needCgroups returns an executor with cgroups, or skips saying why there
// are none (only on hosts without them; as root on this project's CI
// machines the tests run).
func needCgroups(t *testing.T) (*Executor, *syncBuffer) {
	t.Helper()
	e, logs := newExec(t, nil)
	if e.cg == nil {
		if os.Geteuid() == 0 {
			t.Fatalf("running as root but cgroups are unavailable:\n%s", logs)
		}
		t.Skipf("cgroups unavailable (not root):\n%s", logs)
	}
	return e, logs
}

func start(t *testing.T, e *Executor, spec Spec) *Handle {
	t.Helper()
	h, err := e.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start %s: %v", spec.AttemptID, err)
	}
	return h
}

func wait(t *testing.T, h *Handle) Result {
	t.Helper()
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	select {
	case <-h.Done():
		return h.Wait()
	case <-deadline.C:
		t.Fatalf("attempt %s did not finish", h.spec.AttemptID)
		return Result{}
	}
}

func run(t *testing.T, e *Executor, spec Spec) Result {
	t.Helper()
	return wait(t, start(t, e, spec))
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// logLine waits for the first line of the attempt's stdout.
func logLine(t *testing.T, e *Executor, id string) string {
	t.Helper()
	var line string
	waitFor(t, "output of "+id, func() bool {
		b, _ := os.ReadFile(e.LogPath(id, false))
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line = string(b[:i])
			return true
		}
		return false
	})
	return line
}

func gone(pid int) bool {
	st, err := readProcStat(pid)
	return errors.Is(err, fs.ErrNotExist) || (err == nil && st.dead())
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	for _, tc := range []struct {
		spec Spec
		code int
	}{
		{Spec{AttemptID: "true.1", Command: "/bin/true"}, 0},
		{Spec{AttemptID: "false.1", Command: "false"}, 1},
		{sh("exit42.1", "exit 42"), 42},
	} {
		t.Run(tc.spec.AttemptID, func(t *testing.T) {
			t.Parallel()
			h := start(t, e, tc.spec)
			// Wait is safe from many goroutines.
			results := make(chan Result, 3)
			for i := 0; i < 3; i++ {
				go func() { results <- h.Wait() }()
			}
			for i := 0; i < 3; i++ {
				r := <-results
				if r.ExitCode != tc.code || r.Signal != "" || r.TimedOut || r.Cancelled || r.Err != "" {
					t.Fatalf("result = %+v, want exit code %d", r, tc.code)
				}
				if r.FinishedAt.Before(r.StartedAt) || r.StartedAt.IsZero() {
					t.Fatalf("times: started %v finished %v", r.StartedAt, r.FinishedAt)
				}
			}
		})
	}
}

func TestKilledBySignal(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	r := run(t, e, sh("sig.1", "kill -9 $$"))
	if r.Signal != "SIGKILL" || r.ExitCode != -1 || r.OOMKilled {
		t.Fatalf("result = %+v, want SIGKILL", r)
	}
}

func TestTimeoutHonouredSIGTERM(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	spec := Spec{AttemptID: "timeout.1", Command: "sleep", Args: []string{"1000"}, Timeout: 200 * time.Millisecond}
	r := run(t, e, spec)
	if !r.TimedOut || r.Cancelled || r.Signal != "SIGTERM" {
		t.Fatalf("result = %+v, want timed out by SIGTERM", r)
	}
	if d := r.FinishedAt.Sub(r.StartedAt); d < 200*time.Millisecond || d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestTimeoutIgnoredSIGTERMGetsSIGKILL(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	// The ignored disposition survives exec, so sleep ignores SIGTERM too.
	spec := sh("stubborn.1", `trap "" TERM; exec sleep 1000`)
	spec.Timeout = 500 * time.Millisecond
	spec.KillGrace = 200 * time.Millisecond
	r := run(t, e, spec)
	if !r.TimedOut || r.Signal != "SIGKILL" {
		t.Fatalf("result = %+v, want timed out by SIGKILL", r)
	}
	if d := r.FinishedAt.Sub(r.StartedAt); d < 700*time.Millisecond {
		t.Fatalf("killed after %v, before timeout+grace", d)
	}
}

func TestCancelAfterGrace(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	spec := sh("cancel.1", `trap "" TERM; echo ready; exec sleep 1000`)
	spec.KillGrace = 200 * time.Millisecond
	h := start(t, e, spec)
	if got := e.Running(); len(got) != 1 || got[0] != "cancel.1" {
		t.Fatalf("Running = %v", got)
	}
	logLine(t, e, "cancel.1") // the trap is in place
	cancelled := time.Now()
	h.Cancel()
	h.Cancel() // idempotent
	r := wait(t, h)
	if !r.Cancelled || r.TimedOut || r.Signal != "SIGKILL" {
		t.Fatalf("result = %+v, want cancelled by SIGKILL", r)
	}
	if d := time.Since(cancelled); d < spec.KillGrace {
		t.Fatalf("SIGKILL after %v, before the grace", d)
	}
	if got := e.Running(); len(got) != 0 {
		t.Fatalf("Running after end = %v", got)
	}
}

func TestContextCancels(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	h, err := e.Start(ctx, Spec{AttemptID: "ctx.1", Command: "sleep", Args: []string{"1000"}})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if r := wait(t, h); !r.Cancelled || r.Signal != "SIGTERM" {
		t.Fatalf("result = %+v, want cancelled", r)
	}
}

func TestChildrenDieWithAttempt(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		h := start(t, e, sh("children.1", "sleep 1000 & echo $!; wait"))
		child, _ := strconv.Atoi(logLine(t, e, "children.1"))
		h.Cancel()
		wait(t, h)
		if !gone(child) {
			t.Fatalf("child %d survived the attempt", child)
		}
	})
	t.Run("leader exits", func(t *testing.T) {
		t.Parallel()
		h := start(t, e, sh("children.2", "sleep 1000 & echo $!"))
		r := wait(t, h)
		child, _ := strconv.Atoi(strings.TrimSpace(string(r.StdoutTail)))
		if r.ExitCode != 0 || child == 0 {
			t.Fatalf("result = %+v", r)
		}
		if !gone(child) {
			t.Fatalf("child %d survived its leader", child)
		}
	})
}

func TestOutputTails(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, func(c *Config) { c.TailBytes = 8 })
	r := run(t, e, sh("out.1", "echo hello stdout; echo hello stderr >&2; exit 3"))
	if r.ExitCode != 3 || string(r.StdoutTail) != " stdout\n" || string(r.StderrTail) != " stderr\n" {
		t.Fatalf("result = %+v", r)
	}
	if b, _ := os.ReadFile(e.LogPath("out.1", false)); string(b) != "hello stdout\n" {
		t.Fatalf("stdout file = %q", b)
	}
	if b, _ := os.ReadFile(e.LogPath("out.1", true)); string(b) != "hello stderr\n" {
		t.Fatalf("stderr file = %q", b)
	}
	if e.LogPath("../etc", false) != "" {
		t.Fatal("LogPath accepted a path-traversing ID")
	}
}

func TestLogCapAndRotation(t *testing.T) {
	t.Parallel()
	const maxLog, lines = 64 << 10, 60000
	e, _ := newExec(t, func(c *Config) { c.MaxLogBytes = maxLog; c.TailBytes = 1000 })
	var want bytes.Buffer
	for i := 0; i < lines; i++ {
		fmt.Fprintf(&want, "%07d\n", i)
	}
	h := start(t, e, helper(t, "log.1", "write", strconv.Itoa(lines)))
	r := wait(t, h)
	if r.ExitCode != 0 {
		t.Fatalf("result = %+v", r)
	}
	// 480,000 bytes through a 64 KiB cap: at least 7 rotations.
	if h.rotations < want.Len()/maxLog-1 {
		t.Fatalf("rotations = %d, want at least %d", h.rotations, want.Len()/maxLog-1)
	}
	if !bytes.Equal(r.StdoutTail, want.Bytes()[want.Len()-1000:]) {
		t.Fatalf("tail = %q", r.StdoutTail)
	}
	cur, err := os.ReadFile(e.LogPath("log.1", false))
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(e.LogPath("log.1", false) + ".1")
	if err != nil {
		t.Fatal(err)
	}
	if len(cur) > maxLog || len(old) > maxLog || len(old) == 0 || len(cur) == 0 {
		t.Fatalf("sizes: stdout %d, stdout.1 %d, cap %d", len(cur), len(old), maxLog)
	}
	// Rotation is lossless: the two files are exactly the stream's end,
	// and the older one was full when it was rotated.
	if got := append(old, cur...); !bytes.HasSuffix(want.Bytes(), got) {
		t.Fatalf("stdout.1+stdout (%d bytes) is not the end of the output", len(got))
	}
	if len(old) < maxLog-32<<10 {
		t.Fatalf("stdout.1 has %d bytes; it was rotated long before the %d-byte cap", len(old), maxLog)
	}
}

// An attempt that prints nothing creates no files at all: each inode is
// about half a millisecond on ext4, the largest cost of a short task.
func TestSilentAttemptCreatesNoFiles(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	r := run(t, e, Spec{AttemptID: "silent.1", Command: "/bin/true"})
	if r.ExitCode != 0 || len(r.StdoutTail) != 0 || len(r.StderrTail) != 0 {
		t.Fatalf("result = %+v", r)
	}
	if _, err := os.Lstat(filepath.Join(e.tasksDir, "silent.1")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("attempt directory of a silent attempt: err = %v, want not exist", err)
	}
	// Output on stderr only creates only stderr.
	r = run(t, e, sh("erronly.1", "echo oops >&2"))
	if string(r.StderrTail) != "oops\n" {
		t.Fatalf("stderr tail = %q", r.StderrTail)
	}
	if _, err := os.Lstat(e.LogPath("erronly.1", false)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stdout of a stderr-only attempt: err = %v, want not exist", err)
	}
	if b, err := os.ReadFile(e.LogPath("erronly.1", true)); err != nil || string(b) != "oops\n" {
		t.Fatalf("stderr file = %q, %v", b, err)
	}
}

// A process that escapes the attempt (its own session, no cgroup to find
// it by) and keeps stdout open does not keep the attempt from finishing.
func TestEscapedProcessDoesNotHoldAttemptOpen(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, func(c *Config) { c.DisableCgroups = true })
	r := run(t, e, sh("escape.1", "setsid sleep 1000 & echo $! ; echo started"))
	if r.ExitCode != 0 || !strings.Contains(string(r.StdoutTail), "started") {
		t.Fatalf("result = %+v", r)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(r.StdoutTail), "\n", 2)[0])
	if err != nil {
		t.Fatalf("escaped pid from %q: %v", r.StdoutTail, err)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL) // it is out of the attempt's reach by design
}

func TestEnvAndDir(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	dir := t.TempDir()
	spec := sh("env.1", `echo "$FOO"; pwd`)
	spec.Env = map[string]string{"FOO": "bar baz"}
	spec.Dir = dir
	r := run(t, e, spec)
	if got := string(r.StdoutTail); got != "bar baz\n"+dir+"\n" {
		t.Fatalf("output = %q", got)
	}
	// The worker's environment is not inherited.
	r = run(t, e, Spec{AttemptID: "env.2", Command: "env", Env: map[string]string{"FOO": "1", "PATH": "/bin"}})
	var keys []string
	for _, line := range strings.Split(strings.TrimSpace(string(r.StdoutTail)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		keys = append(keys, k)
		if k == "PATH" && v != "/bin" {
			t.Errorf("PATH = %q, want the spec's", v)
		}
	}
	slices.Sort(keys)
	if want := []string{"FOO", "HOME", "LOGNAME", "PATH", "USER"}; !slices.Equal(keys, want) {
		t.Fatalf("environment keys = %v, want %v", keys, want)
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	for _, tc := range []struct {
		spec    Spec
		mention string
	}{
		{Spec{AttemptID: "badcmd.1", Command: "no-such-command-xyz"}, `"no-such-command-xyz" not found`},
		{Spec{AttemptID: "badpath.1", Command: "/no/such/binary"}, "/no/such/binary"},
		{Spec{AttemptID: "baddir.1", Command: "/bin/true", Dir: "/no/such/dir"}, `working directory "/no/such/dir"`},
		{Spec{AttemptID: "baduser.1", Command: "/bin/true", User: "no-such-user-xyz"}, `unknown user "no-such-user-xyz"`},
		{Spec{AttemptID: "baduid.1", Command: "/bin/true", User: "4000000000"}, `unknown user "4000000000"`},
	} {
		t.Run(tc.spec.AttemptID, func(t *testing.T) {
			h, err := e.Start(context.Background(), tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.mention) || !errors.Is(err, ErrSpec) {
				t.Fatalf("err = %v, want ErrSpec mentioning %s", err, tc.mention)
			}
			select {
			case <-h.Done():
			default:
				t.Fatal("handle of failed start is not done")
			}
			if r := h.Wait(); r.Err != err.Error() || r.ExitCode != -1 || h.PID() != 0 {
				t.Fatalf("result = %+v", r)
			}
			dir := filepath.Join(e.tasksDir, tc.spec.AttemptID)
			entries, _ := os.ReadDir(dir)
			for _, ent := range entries {
				if n := ent.Name(); n != "stdout" && n != "stderr" {
					t.Errorf("left behind %s", n)
				}
			}
			if e.cg != nil {
				for _, d := range e.cg.dirsFor(e.cg.name(tc.spec.AttemptID)) {
					if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("cgroup %s left behind (%v)", d, err)
					}
				}
			}
		})
	}
	if _, err := e.Start(context.Background(), Spec{AttemptID: "../x", Command: "/bin/true"}); !errors.Is(err, ErrSpec) {
		t.Fatalf("path-traversing ID: err = %v", err)
	}
}

func TestDuplicateAttemptID(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	run(t, e, sh("dup.1", "echo first"))
	_, err := e.Start(context.Background(), Spec{AttemptID: "dup.1", Command: "/bin/true"})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("err = %v, want fs.ErrExist", err)
	}
	if _, err := os.Stat(e.LogPath("dup.1", false)); err != nil {
		t.Fatalf("first attempt's log was touched: %v", err)
	}
}

func TestRunAsUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("switching users needs root")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	e, _ := newExec(t, nil)
	for _, name := range []string{"nobody", u.Uid} {
		spec := sh("user-"+name+".1", `id -u; echo "$USER"`)
		spec.User, spec.Dir = name, "/"
		r := run(t, e, spec)
		if got := string(r.StdoutTail); got != u.Uid+"\nnobody\n" {
			t.Fatalf("as %s: output %q (result %+v)", name, got, r)
		}
	}
}

// The child is born in its pool slot's cgroups; the slot outlives the
// attempt (for the next one) and Stop removes it.
func TestCgroupPlacementAndCleanup(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	h := start(t, e, Spec{AttemptID: "place.1", Command: "cat", Args: []string{"/proc/self/cgroup"}})
	r := wait(t, h)
	name := h.cg.name
	out := string(r.StdoutTail)
	want := []string{"0::/" + cgroupParent + "/" + name + "\n"}
	if e.cg.version == 1 {
		want = []string{"memory:/" + cgroupParent + "/" + name + "\n", "cpu:/" + cgroupParent + "/" + name + "\n"}
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("child's cgroups lack %q:\n%s", w, out)
		}
	}
	for _, d := range e.cg.dirsFor(e.cg.name("place.1")) {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a cgroup named after the attempt exists: %s (%v)", d, err)
		}
	}
	e.Stop()
	for _, d := range e.cg.dirsFor(name) {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("slot cgroup %s not removed by Stop (%v)", d, err)
		}
	}
}

// TestCgroupV2Placement exercises the v2 path (CLONE_INTO_CGROUP) on any
// cgroup2 mount, even one without controllers, as on hybrid hosts.
func TestCgroupV2Placement(t *testing.T) {
	t.Parallel()
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	root := ""
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "cgroup2" {
			root = f[1]
			break
		}
	}
	if root == "" || os.Geteuid() != 0 {
		t.Skip("no cgroup2 mount, or not root")
	}
	e, _ := newExec(t, func(c *Config) { c.CgroupRoot = root })
	if e.cg.version != 2 {
		t.Fatalf("version %d at %s", e.cg.version, root)
	}
	spec := sh("v2.1", "cat /proc/self/cgroup; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
	h := start(t, e, spec)
	r := wait(t, h)
	name := h.cg.name
	if !strings.Contains(string(r.StdoutTail), "0::/"+cgroupParent+"/"+name+"\n") || r.ExitCode != 0 {
		t.Fatalf("not placed in %s: %+v\n%s", name, r, r.StdoutTail)
	}
	if r.CPUTime <= 0 {
		t.Fatalf("CPUTime = %v", r.CPUTime)
	}
	// The slot is reused (unless memory.peak cannot be reset), and the
	// second attempt's CPU time is its own.
	h2 := start(t, e, Spec{AttemptID: "v2.2", Command: "/bin/true"})
	r2 := wait(t, h2)
	if r2.ExitCode != 0 {
		t.Fatalf("second attempt: %+v", r2)
	}
	if !e.cg.memoryOK || h.cg.peakReset {
		if h2.cg != h.cg {
			t.Fatalf("second attempt ran in slot %s, want %s reused", h2.cg.name, name)
		}
	} else if h2.cg == h.cg {
		t.Fatalf("slot %s reused although its memory.peak cannot be reset", name)
	}
	if r2.CPUTime >= r.CPUTime {
		t.Fatalf("CPU time of /bin/true %v not below the loop's %v: accumulated over the slot?", r2.CPUTime, r.CPUTime)
	}
	// A process that left the group is killed through the slot, whose
	// cgroup.procs is read through an fd kept open since the slot was
	// made: the reads must not be stale.
	r3 := run(t, e, sh("v2.3", "setsid sleep 1000 & echo $!"))
	escaped, _ := strconv.Atoi(strings.TrimSpace(string(r3.StdoutTail)))
	if escaped == 0 || !gone(escaped) {
		t.Fatalf("process %d in a new session survived the attempt (%+v)", escaped, r3)
	}
	e.Stop()
	if _, err := os.Stat(e.cg.dirsFor(name)[0]); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("slot not removed by Stop: %v", err)
	}
}

func TestCgroupOOMKill(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	spec := helper(t, "oom.1", "alloc", "512")
	spec.MemoryMiB = 48
	r := run(t, e, spec)
	if !r.OOMKilled || r.Signal != "SIGKILL" || bytes.Contains(r.StdoutTail, []byte("allocated")) {
		t.Fatalf("result = %+v, want OOM kill", r)
	}
	if r.PeakMemoryBytes < 40<<20 || r.PeakMemoryBytes > 49<<20 {
		t.Fatalf("peak memory %d outside the 48 MiB limit's range", r.PeakMemoryBytes)
	}
}

func TestPeakMemoryAndCPUTime(t *testing.T) {
	t.Parallel()
	for _, disable := range []bool{false, true} {
		t.Run(fmt.Sprintf("cgroups_disabled=%v", disable), func(t *testing.T) {
			t.Parallel()
			e, _ := newExec(t, func(c *Config) { c.DisableCgroups = disable })
			mem := run(t, e, helper(t, "mem.1", "alloc", "64"))
			if mem.ExitCode != 0 || mem.OOMKilled || mem.PeakMemoryBytes < 64<<20 {
				t.Fatalf("alloc: %+v", mem)
			}
			cpu := run(t, e, helper(t, "cpu.1", "burn", "200ms"))
			if cpu.ExitCode != 0 || cpu.CPUTime < 200*time.Millisecond {
				t.Fatalf("spin: %+v", cpu)
			}
		})
	}
}

func TestCgroupCPULimit(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	spec := helper(t, "cpulimit.1", "spin", "600ms")
	spec.CPUMillis = 100 // a tenth of a core
	r := run(t, e, spec)
	if r.ExitCode != 0 || r.CPUTime <= 0 || r.CPUTime > 300*time.Millisecond {
		t.Fatalf("result = %+v, want CPU time near 60ms for 600ms at 0.1 core", r)
	}
}

func TestCgroupKillsProcessesThatLeftTheGroup(t *testing.T) {
	t.Parallel()
	e, _ := needCgroups(t)
	r := run(t, e, sh("setsid.1", "setsid sleep 1000 & echo $!"))
	escaped, _ := strconv.Atoi(strings.TrimSpace(string(r.StdoutTail)))
	if escaped == 0 {
		t.Fatalf("result = %+v", r)
	}
	if !gone(escaped) {
		t.Fatalf("process %d in a new session survived the attempt", escaped)
	}
}

func TestOrphansAfterWorkerKill(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	worker := exec.Command(bin, "worker", dataDir)
	worker.Env = append(os.Environ(), helperEnv+"=1")
	worker.Stderr = os.Stderr
	stdin, err := worker.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := worker.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if startErr := worker.Start(); startErr != nil {
		t.Fatal(startErr)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = worker.Process.Kill()
		_ = worker.Wait()
		t.Fatalf("worker: %v", err)
	}
	leader, _ := strconv.Atoi(strings.TrimSpace(line))
	// The worker dies the hard way; its attempt runs on.
	_ = worker.Process.Kill()
	_ = worker.Wait()
	if gone(leader) {
		t.Fatalf("attempt leader %d died with the worker", leader)
	}

	e, _ := newExec(t, func(c *Config) { c.DataDir = dataDir })
	var child int
	waitFor(t, "the orphan's child pid file", func() bool {
		b, _ := os.ReadFile(filepath.Join(dataDir, "child.pid"))
		child, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	// With cgroups the attempt is found through its cgroup (no pid file
	// is written); without, through its pid file.
	want := Orphan{AttemptID: "orphan.1"}
	if e.cg == nil {
		want.PID = leader
	}
	orphans, err := e.Orphans()
	if err != nil || len(orphans) != 1 || orphans[0] != want {
		t.Fatalf("Orphans = %+v, %v, want %+v", orphans, err, want)
	}
	if err := e.KillOrphans(); err != nil {
		t.Fatal(err)
	}
	if !gone(leader) || !gone(child) {
		t.Fatalf("leader %d gone: %v, child %d gone: %v", leader, gone(leader), child, gone(child))
	}
	if orphans, err := e.Orphans(); err != nil || len(orphans) != 0 {
		t.Fatalf("Orphans after kill = %+v, %v", orphans, err)
	}
	if _, err := os.Stat(filepath.Join(e.tasksDir, "orphan.1", pidFileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("pid file left: %v", err)
	}
	if e.cg != nil {
		names, err := e.cg.listAttemptCgroups()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if strings.HasPrefix(n, "orphan.1") {
				t.Fatalf("cgroup %s left", n)
			}
		}
		// The dead worker ran the attempt in a pool slot: it is gone, with
		// its record.
		if slots := slotNames(t, e); len(slots) != 0 {
			t.Fatalf("slots left after KillOrphans: %v", slots)
		}
		if records, err := os.ReadDir(e.cg.pool.recordDir); err != nil || len(records) != 0 {
			t.Fatalf("slot records left after KillOrphans: %v %v", records, err)
		}
	}
}

func TestOrphanPidReuseIsNotKilled(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, func(c *Config) { c.DisableCgroups = true })
	// A pid file naming a live process that started at another time (as
	// after pid reuse): the test process itself.
	dir := filepath.Join(e.tasksDir, "reused.1")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := writePidFile(dir, pidState{PID: os.Getpid(), StartTicks: self.startTicks + 1}); err != nil {
		t.Fatal(err)
	}
	if o, err := e.Orphans(); err != nil || len(o) != 0 {
		t.Fatalf("Orphans = %+v, %v", o, err)
	}
	if err := e.KillOrphans(); err != nil { // must not kill us
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, pidFileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stale pid file kept: %v", err)
	}
}

func TestPrune(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, func(c *Config) { c.Retention = time.Hour })
	now := time.Now()
	age := func(id string) {
		t.Helper()
		dir := filepath.Join(e.tasksDir, id)
		old := now.Add(-2 * time.Hour)
		entries, _ := os.ReadDir(dir)
		for _, ent := range entries {
			if err := os.Chtimes(filepath.Join(dir, ent.Name()), old, old); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chtimes(dir, old, old); err != nil {
			t.Fatal(err)
		}
	}
	run(t, e, sh("old.1", "echo old"))
	run(t, e, sh("new.1", "echo new"))
	running := start(t, e, sh("running.1", "echo running; exec sleep 1000"))
	logLine(t, e, "running.1")
	age("old.1")
	age("running.1")
	if err := os.Mkdir(filepath.Join(e.tasksDir, "orphan.1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writePidFile(filepath.Join(e.tasksDir, "orphan.1"), pidState{PID: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	age("orphan.1")

	if err := e.Prune(now); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"old.1": false, "new.1": true, "running.1": true, "orphan.1": true} {
		_, err := os.Stat(filepath.Join(e.tasksDir, id))
		if exists := err == nil; exists != want {
			t.Errorf("%s exists = %v, want %v", id, exists, want)
		}
	}
	running.Cancel()
	wait(t, running)
	if err := e.Prune(now.Add(2 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"new.1", "running.1"} {
		if _, err := os.Stat(filepath.Join(e.tasksDir, id)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s not pruned: %v", id, err)
		}
	}
}

func TestStopKillsEverything(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	stubborn := sh("stop.3", `trap "" TERM; echo ready; exec sleep 1000`)
	stubborn.KillGrace = 100 * time.Millisecond
	hs := []*Handle{
		start(t, e, Spec{AttemptID: "stop.1", Command: "sleep", Args: []string{"1000"}}),
		start(t, e, sh("stop.2", "sleep 1000 & wait")),
		start(t, e, stubborn),
	}
	logLine(t, e, "stop.3")
	e.Stop()
	for _, h := range hs {
		select {
		case <-h.Done():
		default:
			t.Fatalf("%s still running after Stop", h.spec.AttemptID)
		}
		if r := h.Wait(); !r.Cancelled {
			t.Fatalf("%s: %+v", h.spec.AttemptID, r)
		}
		if !gone(h.PID()) {
			t.Fatalf("%s: leader alive", h.spec.AttemptID)
		}
	}
	if got := e.Running(); len(got) != 0 {
		t.Fatalf("Running after Stop = %v", got)
	}
	if _, err := e.Start(context.Background(), Spec{AttemptID: "late.1", Command: "/bin/true"}); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Stop: %v", err)
	}
}

func TestRunningDuringConcurrentStarts(t *testing.T) {
	t.Parallel()
	e, _ := newExec(t, nil)
	stop := make(chan struct{})
	var poller sync.WaitGroup
	poller.Add(1)
	go func() {
		defer poller.Done()
		for {
			select {
			case <-stop:
				return
			default:
				_ = e.Running()
			}
		}
	}()
	var starters sync.WaitGroup
	for i := 0; i < 5; i++ {
		starters.Add(1)
		go func() {
			defer starters.Done()
			h, err := e.Start(context.Background(), Spec{AttemptID: fmt.Sprintf("conc.%d", i), Command: "/bin/true"})
			if err != nil {
				t.Error(err)
				return
			}
			if r := h.Wait(); r.ExitCode != 0 {
				t.Errorf("conc.%d: %+v", i, r)
			}
		}()
	}
	starters.Wait()
	close(stop)
	poller.Wait()
}

// TestOrphanCgroupWithoutPidFile covers a worker that died between starting
// a process and recording its pid: only the cgroup knows the attempt.
func TestOrphanCgroupWithoutPidFile(t *testing.T) {
	t.Parallel()
	first, _ := needCgroups(t)
	if err := os.Mkdir(filepath.Join(first.tasksDir, "ghost.1"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A cgroup named after the attempt, as workers made before the pool.
	cg, proc := abandonedCgroup(t, first, first.cg.name("ghost.1"), "")
	defer func() { _, _ = proc.Wait() }() // it is this test's child

	e, _ := newExec(t, func(c *Config) { c.DataDir = first.cfg.DataDir })
	orphans, err := e.Orphans()
	if err != nil || len(orphans) != 1 || orphans[0] != (Orphan{AttemptID: "ghost.1"}) {
		t.Fatalf("Orphans = %+v, %v", orphans, err)
	}
	if err := e.KillOrphans(); err != nil {
		t.Fatal(err)
	}
	if !gone(proc.Pid) {
		t.Fatalf("process %d survived", proc.Pid)
	}
	for _, d := range cg.dirs {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("cgroup %s left: %v", d, err)
		}
	}
}

// TestNoCgroupHierarchyRunsWithoutLimits is a node started where the cgroup
// root holds no hierarchy at all (inside `ip netns exec`, many containers):
// the executor starts, says so in one warning, and runs tasks without
// limits. Before, detectCgroups lost the detection error to a shadowed
// variable and New panicked on a nil driver.
func TestNoCgroupHierarchyRunsWithoutLimits(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	e, logs := newExec(t, func(c *Config) { c.CgroupRoot = root })
	if e.cg != nil {
		t.Fatalf("cgroup driver %+v at an empty root", e.cg)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d warnings after New, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "without CPU or memory limits") {
		t.Fatalf("the warning does not say tasks run without limits:\n%s", logs)
	}
	spec := sh("nocg.1", "echo ok")
	spec.MemoryMiB, spec.CPUMillis = 64, 500 // asked for, not enforceable
	r := run(t, e, spec)
	if r.ExitCode != 0 || r.Err != "" || string(r.StdoutTail) != "ok\n" {
		t.Fatalf("result = %+v, stdout %q; want exit 0 and \"ok\\n\"", r, r.StdoutTail)
	}
	if entries, err := os.ReadDir(root); err != nil || len(entries) != 0 {
		t.Fatalf("cgroup root changed: %v %v", entries, err)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d warnings after a task, want still 1:\n%s", n, logs)
	}
}

// TestExplicitBrokenCgroupRootIsAnError keeps a configured hierarchy that
// cannot be used (here a v1 memory hierarchy without a cpu one) an error,
// unlike a root with no hierarchy at all.
func TestExplicitBrokenCgroupRootIsAnError(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "memory"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "memory", "memory.limit_in_bytes"), []byte("max\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{DataDir: t.TempDir(), CgroupRoot: root})
	if err == nil {
		e.Stop()
		t.Fatal("New succeeded with a v1 hierarchy lacking cpu")
	}
	if errors.Is(err, errNoCgroupHierarchy) || !strings.Contains(err.Error(), "cpu") {
		t.Fatalf("err = %v, want one naming the missing cpu hierarchy", err)
	}
}
