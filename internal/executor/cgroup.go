package executor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	cgroupParent = "blixard"
	// cfsPeriodUS is the CFS period for CPU quotas: 100 ms is the kernel's
	// default and keeps throttling granularity fine enough for tasks.
	cfsPeriodUS = 100000
	// cgroupRemoveTimeout bounds retries of rmdir, which can briefly fail
	// with EBUSY right after the last task left.
	cgroupRemoveTimeout = 2 * time.Second
)

// v1Hierarchy is one mounted cgroup v1 hierarchy the executor uses.
type v1Hierarchy struct {
	controller string // as named in /proc/<pid>/cgroup: "memory", "cpu", "cpuacct"
	mount      string // e.g. /sys/fs/cgroup/memory
}

// cgroupDriver creates per-attempt cgroups in one cgroup version.
type cgroupDriver struct {
	version int
	suffix  string // "-" + hash of DataDir: keeps executors' cgroups apart

	// v2
	parent          string // <root>/blixard
	memoryOK, cpuOK bool   // controllers enabled for the attempts' cgroups

	// v1: memory and cpu always; cpuacct when mounted separately from cpu
	// (co-mounted, it is the cpu hierarchy).
	hier                  []v1Hierarchy
	memIdx, cpuIdx, acIdx int // indexes into hier; acIdx -1 without cpuacct
}

// errNoCgroupHierarchy means root holds neither cgroup v2 nor a v1 memory
// hierarchy: the host (or the mount namespace, e.g. inside `ip netns exec`
// or many containers) has no cgroups to use there.
var errNoCgroupHierarchy = errors.New("no cgroup hierarchy")

// detectCgroups picks v2 or v1 at root and checks that attempt cgroups can
// be created. notes lists limits that cannot be enforced. It never returns
// a nil driver without an error.
func detectCgroups(root, hash string) (*cgroupDriver, []string, error) {
	var (
		d     *cgroupDriver
		notes []string
		err   error
	)
	// Not `if _, err := os.Stat(...)`: that err would shadow the one the
	// branches assign, and a failed detection would go on with a nil
	// driver.
	if _, statErr := os.Stat(filepath.Join(root, "cgroup.controllers")); statErr == nil {
		d, notes, err = detectV2(root)
	} else {
		d, err = detectV1(root)
	}
	if err != nil {
		return nil, nil, err
	}
	d.suffix = "-" + hash
	// A probe proves we may create, enter-configure and remove cgroups
	// (not root, read-only mount, delegation missing) before any attempt
	// depends on it.
	probe, err := d.create(".probe", 0, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("create probe cgroup: %w", err)
	}
	if err := probe.remove(); err != nil {
		return nil, nil, fmt.Errorf("remove probe cgroup: %w", err)
	}
	return d, notes, nil
}

func detectV2(root string) (*cgroupDriver, []string, error) {
	d := &cgroupDriver{version: 2, parent: filepath.Join(root, cgroupParent), acIdx: -1}
	var notes []string
	avail, err := readFields(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return nil, nil, fmt.Errorf("read available controllers: %w", err)
	}
	if err := os.MkdirAll(d.parent, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create %s: %w", d.parent, err)
	}
	for _, c := range []string{"memory", "cpu"} {
		ok := slices.Contains(avail, c)
		if ok {
			// Controllers reach the attempts only if enabled at the root
			// and in our parent.
			for _, dir := range []string{root, d.parent} {
				if err := enableController(dir, c); err != nil {
					notes = append(notes, fmt.Sprintf("cgroup v2 %s controller cannot be enabled in %s: %v", c, dir, err))
					ok = false
					break
				}
			}
		} else {
			notes = append(notes, fmt.Sprintf("cgroup v2 %s controller is not available at %s", c, root))
		}
		switch c {
		case "memory":
			d.memoryOK = ok
		case "cpu":
			d.cpuOK = ok
		}
	}
	return d, notes, nil
}

func enableController(dir, c string) error {
	enabled, err := readFields(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	if slices.Contains(enabled, c) {
		return nil
	}
	return writeCgroupFile(filepath.Join(dir, "cgroup.subtree_control"), "+"+c)
}

func detectV1(root string) (*cgroupDriver, error) {
	memory := filepath.Join(root, "memory")
	if _, err := os.Stat(filepath.Join(memory, "memory.limit_in_bytes")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w at %s: neither cgroup v2 (cgroup.controllers) nor a v1 memory hierarchy; mount cgroup2 there for limits", errNoCgroupHierarchy, root)
		}
		return nil, fmt.Errorf("neither cgroup v2 nor a v1 memory hierarchy at %s: %w", root, err)
	}
	cpu := filepath.Join(root, "cpu")
	if _, err := os.Stat(filepath.Join(cpu, "cpu.cfs_quota_us")); err != nil {
		return nil, fmt.Errorf("no cgroup v1 cpu hierarchy at %s: %w", root, err)
	}
	d := &cgroupDriver{
		version: 1,
		hier:    []v1Hierarchy{{"memory", memory}, {"cpu", cpu}},
		memIdx:  0, cpuIdx: 1, acIdx: -1,
	}
	acct := filepath.Join(root, "cpuacct")
	if fa, err := os.Stat(acct); err == nil {
		if fc, err := os.Stat(cpu); err == nil && os.SameFile(fa, fc) {
			d.acIdx = d.cpuIdx // "cpu,cpuacct" co-mounted
		} else if _, err := os.Stat(filepath.Join(acct, "cpuacct.usage")); err == nil {
			d.hier = append(d.hier, v1Hierarchy{"cpuacct", acct})
			d.acIdx = len(d.hier) - 1
		}
	} else if _, err := os.Stat(filepath.Join(cpu, "cpuacct.usage")); err == nil {
		d.acIdx = d.cpuIdx
	}
	for _, h := range d.hier {
		p := filepath.Join(h.mount, cgroupParent)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", p, err)
		}
	}
	return d, nil
}

// attemptCgroup is the cgroup (v2) or cgroups (v1) of one attempt.
type attemptCgroup struct {
	d    *cgroupDriver
	dirs []string // v2: one; v1: one per hierarchy, indexed like d.hier
	// sampledPeak is the highest memory.current seen, for v2 kernels
	// without memory.peak; supervisor-owned.
	sampledPeak int64
}

func (d *cgroupDriver) name(attemptID string) string { return attemptID + d.suffix }

// dirsFor lists the directories an attempt's cgroup has (or would have).
func (d *cgroupDriver) dirsFor(name string) []string {
	if d.version == 2 {
		return []string{filepath.Join(d.parent, name)}
	}
	dirs := make([]string, len(d.hier))
	for i, h := range d.hier {
		dirs[i] = filepath.Join(h.mount, cgroupParent, name)
	}
	return dirs
}

// create makes the attempt's cgroup and applies the limits (0 = none).
func (d *cgroupDriver) create(attemptID string, memoryMiB, cpuMillis int64) (*attemptCgroup, error) {
	cg := &attemptCgroup{d: d, dirs: d.dirsFor(d.name(attemptID))}
	for i, dir := range cg.dirs {
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, os.ErrExist) {
			// Left over from a crashed worker: reusable only if empty,
			// which rmdir checks for us.
			if rmErr := unix.Rmdir(dir); rmErr != nil {
				_ = removeCgroupDirs(cg.dirs[:i])
				return nil, fmt.Errorf("cgroup %s already exists and cannot be removed: %w", dir, rmErr)
			}
			err = os.Mkdir(dir, 0o755)
		}
		if err != nil {
			_ = removeCgroupDirs(cg.dirs[:i])
			return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
		}
	}
	if err := cg.setLimits(memoryMiB, cpuMillis); err != nil {
		if rmErr := cg.remove(); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
		return nil, err
	}
	return cg, nil
}

func (cg *attemptCgroup) setLimits(memoryMiB, cpuMillis int64) error {
	quota := cpuMillis * cfsPeriodUS / 1000
	if cpuMillis > 0 && quota < 1000 {
		quota = 1000 // the kernel's minimum quota is 1 ms
	}
	mem := memoryMiB << 20
	if cg.d.version == 2 {
		dir := cg.dirs[0]
		if cg.d.memoryOK {
			// One OOM kill takes the whole attempt: a task half-killed
			// by the OOM killer is rarely useful.
			writeOptional(filepath.Join(dir, "memory.oom.group"), "1")
			if memoryMiB > 0 {
				if err := writeCgroupFile(filepath.Join(dir, "memory.max"), strconv.FormatInt(mem, 10)); err != nil {
					return err
				}
				// No swapping past the limit, or it would not be one.
				writeOptional(filepath.Join(dir, "memory.swap.max"), "0")
			}
		}
		if cg.d.cpuOK && cpuMillis > 0 {
			if err := writeCgroupFile(filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", quota, cfsPeriodUS)); err != nil {
				return err
			}
		}
		return nil
	}
	if memoryMiB > 0 {
		dir := cg.dirs[cg.d.memIdx]
		if err := writeCgroupFile(filepath.Join(dir, "memory.limit_in_bytes"), strconv.FormatInt(mem, 10)); err != nil {
			return err
		}
		// memsw exists only with swap accounting; it must be >= the limit
		// and is what stops swapping past it.
		writeOptional(filepath.Join(dir, "memory.memsw.limit_in_bytes"), strconv.FormatInt(mem, 10))
	}
	if cpuMillis > 0 {
		dir := cg.dirs[cg.d.cpuIdx]
		if err := writeCgroupFile(filepath.Join(dir, "cpu.cfs_period_us"), strconv.Itoa(cfsPeriodUS)); err != nil {
			return err
		}
		if err := writeCgroupFile(filepath.Join(dir, "cpu.cfs_quota_us"), strconv.FormatInt(quota, 10)); err != nil {
			return err
		}
	}
	return nil
}

// start starts the process inside the cgroup; see the package doc for how
// each version avoids running the child outside it.
func (cg *attemptCgroup) start(path string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
	if cg.d.version == 2 {
		return cg.startV2(path, argv, attr)
	}
	type started struct {
		p   *os.Process
		err error
	}
	ch := make(chan started, 1)
	go func() {
		// Never unlocked: this thread may still be in the attempt's
		// cgroups if moving it back failed, so it must not run other
		// goroutines; the runtime destroys it when this goroutine ends.
		runtime.LockOSThread()
		p, err := cg.startFromThread(path, argv, attr)
		ch <- started{p, err}
	}()
	r := <-ch
	return r.p, r.err
}

func (cg *attemptCgroup) startFromThread(path string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
	tid := unix.Gettid()
	home, homeErr := threadCgroups(tid)
	tidStr := strconv.Itoa(tid)
	defer func() {
		// Back home, so the cgroup can be removed at once if the start
		// failed; best effort, the thread dies anyway.
		if homeErr != nil {
			return
		}
		for _, h := range cg.d.hier {
			if rel, ok := home[h.controller]; ok {
				writeOptional(filepath.Join(h.mount, rel, "tasks"), tidStr)
			}
		}
	}()
	for _, dir := range cg.dirs {
		if err := writeCgroupFile(filepath.Join(dir, "tasks"), tidStr); err != nil {
			return nil, fmt.Errorf("move launcher thread into cgroup: %w", err)
		}
	}
	return os.StartProcess(path, argv, attr)
}

func (cg *attemptCgroup) startV2(path string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
	dir := cg.dirs[0]
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	sys := *attr.Sys
	sys.UseCgroupFD, sys.CgroupFD = true, fd
	withFD := *attr
	withFD.Sys = &sys
	p, err := os.StartProcess(path, argv, &withFD)
	unix.Close(fd)
	if err == nil || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.E2BIG)) {
		return p, err
	}
	// Kernel older than 5.7 (no CLONE_INTO_CGROUP): move the child right
	// after the fork; the window is documented in the package doc.
	p, err = os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, err
	}
	if err := writeCgroupFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(p.Pid)); err != nil {
		_ = unix.Kill(-p.Pid, unix.SIGKILL)
		_, _ = p.Wait()
		return nil, fmt.Errorf("move process into cgroup: %w", err)
	}
	return p, nil
}

// threadCgroups maps each v1 controller to the thread's cgroup path.
func threadCgroups(tid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/cgroup", tid))
	if err != nil {
		return nil, err
	}
	out := make(map[string]string)
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out, nil
}

// sample records memory.current on v2 kernels without memory.peak.
func (cg *attemptCgroup) sample() {
	if cg.d.version != 2 || !cg.d.memoryOK {
		return
	}
	dir := cg.dirs[0]
	if _, err := os.Stat(filepath.Join(dir, "memory.peak")); err == nil {
		return
	}
	if v, err := readInt(filepath.Join(dir, "memory.current")); err == nil && v > cg.sampledPeak {
		cg.sampledPeak = v
	}
}

type cgroupStats struct {
	peakMemory int64
	cpuTime    time.Duration
	oomKilled  bool
}

// stats reads what the cgroup accounted; zero values mean unknown.
// sigkilled helps old v1 kernels without an oom_kill counter.
func (cg *attemptCgroup) stats(sigkilled bool) cgroupStats {
	var st cgroupStats
	if cg.d.version == 2 {
		dir := cg.dirs[0]
		if v, err := readInt(filepath.Join(dir, "memory.peak")); err == nil {
			st.peakMemory = v
		} else {
			cg.sample()
			st.peakMemory = cg.sampledPeak
		}
		if kv, err := readKeyValues(filepath.Join(dir, "cpu.stat")); err == nil {
			st.cpuTime = time.Duration(kv["usage_usec"]) * time.Microsecond
		}
		if kv, err := readKeyValues(filepath.Join(dir, "memory.events")); err == nil {
			st.oomKilled = kv["oom_kill"] > 0 || kv["oom_group_kill"] > 0
		}
		return st
	}
	mem := cg.dirs[cg.d.memIdx]
	if v, err := readInt(filepath.Join(mem, "memory.max_usage_in_bytes")); err == nil {
		st.peakMemory = v
	}
	if cg.d.acIdx >= 0 {
		if v, err := readInt(filepath.Join(cg.dirs[cg.d.acIdx], "cpuacct.usage")); err == nil {
			st.cpuTime = time.Duration(v)
		}
	}
	if kv, err := readKeyValues(filepath.Join(mem, "memory.oom_control")); err == nil {
		if n, ok := kv["oom_kill"]; ok {
			st.oomKilled = n > 0
		} else {
			// Before Linux 4.13: a SIGKILL while the limit was being hit
			// is the best evidence there is.
			fail, _ := readInt(filepath.Join(mem, "memory.failcnt"))
			st.oomKilled = kv["under_oom"] > 0 || (sigkilled && fail > 0)
		}
	}
	return st
}

func (cg *attemptCgroup) kill()           { killCgroupDirs(cg.dirs) }
func (cg *attemptCgroup) populated() bool { return cgroupDirsPopulated(cg.dirs) }
func (cg *attemptCgroup) remove() error   { return removeCgroupDirs(cg.dirs) }

// killCgroupDirs SIGKILLs every process in the cgroups, never the worker
// itself (a v1 launcher thread that failed to move back would list it).
func killCgroupDirs(dirs []string) {
	for _, dir := range dirs {
		if err := writeCgroupFile(filepath.Join(dir, "cgroup.kill"), "1"); err == nil {
			continue // v2, Linux 5.14+
		}
		pids, _ := cgroupPids(dir)
		for _, pid := range pids {
			if pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
}

func cgroupDirsPopulated(dirs []string) bool {
	for _, dir := range dirs {
		if pids, _ := cgroupPids(dir); len(pids) > 0 {
			return true
		}
	}
	return false
}

func cgroupPids(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// removeCgroupDirs removes cgroup directories, retrying briefly on EBUSY.
// Missing directories are not an error.
func removeCgroupDirs(dirs []string) error {
	var errs []error
	for _, dir := range dirs {
		deadline := time.Now().Add(cgroupRemoveTimeout)
		backoff := time.Millisecond
		for {
			err := unix.Rmdir(dir)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
				break
			}
			waitBackoff(&backoff)
		}
	}
	return errors.Join(errs...)
}

// listAttemptCgroups returns the cgroup names of this DataDir's attempts.
func (d *cgroupDriver) listAttemptCgroups() ([]string, error) {
	parents := []string{d.parent}
	if d.version == 1 {
		parents = parents[:0]
		for _, h := range d.hier {
			parents = append(parents, filepath.Join(h.mount, cgroupParent))
		}
	}
	seen := make(map[string]bool)
	var names []string
	for _, p := range parents {
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", p, err)
		}
		for _, e := range entries {
			n := e.Name()
			if e.IsDir() && strings.HasSuffix(n, d.suffix) && !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	return names, nil
}

// writeCgroupFile writes one value the way cgroupfs expects (no O_TRUNC,
// no O_CREATE: the files exist, and a missing one is an error).
func writeCgroupFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// writeOptional writes a setting that only some kernels have.
func writeOptional(path, value string) { _ = writeCgroupFile(path, value) }

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// readKeyValues parses "key value" lines (cpu.stat, memory.events,
// memory.oom_control).
func readKeyValues(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make(map[string]int64)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		if v, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
			out[fields[0]] = v
		}
	}
	return out, sc.Err()
}

func readFields(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}
