package executor

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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

// cgroupDriver makes and tracks the attempts' cgroups in one cgroup
// version: a pool of reusable slots (pool.go).
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
	// home maps each v1 controller to the worker's own cgroup, read once
	// at New: launcher threads go back there before they exit.
	home map[string]string

	pool slotPool
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
	probe := d.dirsFor(".probe" + d.suffix)
	if err := makeCgroupDirs(probe, true); err != nil {
		return nil, nil, fmt.Errorf("create probe cgroup: %w", err)
	}
	if err := removeCgroupDirs(probe); err != nil {
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
	home, err := readCgroupPaths("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read the worker's cgroups: %w", err)
	}
	d.home = home
	return d, nil
}

func (d *cgroupDriver) name(attemptID string) string { return attemptID + d.suffix }

// dirsFor lists the directories a cgroup named name has (or would have):
// v2 one, v1 one per hierarchy, indexed like d.hier.
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

// makeCgroupDirs creates the directories of one cgroup. A directory that
// exists already is removed and made again if replace is set (left by a
// crashed worker: rmdir succeeds only if it is empty), else it is an error
// wrapping fs.ErrExist. On error nothing made here is left.
func makeCgroupDirs(dirs []string, replace bool) error {
	for i, dir := range dirs {
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, fs.ErrExist) {
			if !replace {
				_ = removeCgroupDirs(dirs[:i])
				return fmt.Errorf("cgroup %s: %w", dir, fs.ErrExist)
			}
			if rmErr := unix.Rmdir(dir); rmErr != nil {
				_ = removeCgroupDirs(dirs[:i])
				return fmt.Errorf("cgroup %s already exists and cannot be removed: %w", dir, rmErr)
			}
			err = os.Mkdir(dir, 0o755)
		}
		if err != nil {
			_ = removeCgroupDirs(dirs[:i])
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// killCgroupDirs SIGKILLs every process in the cgroups, never the worker
// itself, whose launcher threads are members of v1 slots. It reads every
// hierarchy: it serves cgroups of earlier workers, whose processes may have
// moved in one of them (slot.killListed is the per-attempt path). v2 says
// the dirs are v2 cgroups, which may have cgroup.kill (v1 has none).
func killCgroupDirs(dirs []string, v2 bool) {
	self := os.Getpid()
	for _, dir := range dirs {
		pids, _ := cgroupPids(dir)
		if v2 && len(pids) > 0 {
			if err := writeCgroupFile(filepath.Join(dir, "cgroup.kill"), "1"); err == nil {
				continue // Linux 5.14+
			}
		}
		for _, pid := range pids {
			if pid != self {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
}

// dirsPopulated reports whether a process other than the worker is in any
// of the cgroups.
func dirsPopulated(dirs []string) bool {
	self := os.Getpid()
	for _, dir := range dirs {
		pids, _ := cgroupPids(dir)
		for _, pid := range pids {
			if pid != self {
				return true
			}
		}
	}
	return false
}

func cgroupPids(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	return appendPids(nil, b), nil
}

// appendPids parses cgroup.procs content (one pid a line).
func appendPids(pids []int, b []byte) []int {
	for line := range bytes.Lines(b) {
		if n, err := strconv.Atoi(string(bytes.TrimSpace(line))); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
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

// readCgroupPaths maps each v1 controller to its cgroup path in a
// /proc/<pid>/cgroup file.
func readCgroupPaths(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
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

// listAttemptCgroups returns the names of this DataDir's cgroups: pool
// slots (of this or an earlier worker), attempts' own cgroups (made by
// workers before the pool) and the probe.
func (d *cgroupDriver) listAttemptCgroups() ([]string, error) {
	return d.listCgroups(func(n string) bool { return strings.HasSuffix(n, d.suffix) })
}

// listCgroups returns the names of the cgroup directories under blixard's
// parent (in any hierarchy, once each) that keep accepts.
func (d *cgroupDriver) listCgroups(keep func(name string) bool) ([]string, error) {
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
			if n := e.Name(); e.IsDir() && keep(n) && !seen[n] {
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

func readFields(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}
