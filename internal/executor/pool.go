package executor

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// slotPrefix starts the names of pool slots, which are
	// ".pool-<owner pid>-<owner start time>-<n>-<hash of DataDir>". The
	// leading '.' (which validAttemptID rejects and cgroupfs accepts) keeps
	// a slot from ever being mistaken for an attempt's own cgroup, as made
	// by workers before the pool. The owner is the worker process: its pid
	// and start time (in clock ticks, against pid reuse) tell whether a
	// slot's maker is still alive, whatever its DataDir.
	slotPrefix = ".pool-"
	// defaultMaxIdleSlots caps the idle slots kept for reuse: each costs a
	// few open files and, on v1, a sleeping OS thread. Busy slots are not
	// capped; a slot released above the cap is removed.
	defaultMaxIdleSlots = 64
	// slotRecordsDir (under DataDir/tasks) holds one file per slot naming
	// the attempt that last used it, so that a restarted worker can name
	// the orphans it finds in slots. Its leading '.' keeps it out of Prune
	// and the pid-file scan.
	slotRecordsDir = ".slots"
	// slotRecordLen is the fixed size of a record: an attempt ID padded
	// with spaces, so that every record is one pwrite over the last.
	slotRecordLen = maxAttemptIDLen + 1
	// slotReadBuf is the initial read buffer of a slot; cgroup files the
	// slot reads are far smaller, cgroup.procs only grows it when an
	// attempt has hundreds of processes.
	slotReadBuf = 4096
	// maxSlotNameTries bounds the search for a free slot name: names
	// carry the owner's pid and start time, so a taken one is unexpected.
	maxSlotNameTries = 100
)

// slotPool is a driver's set of attempt cgroups ("slots"). Making a cgroup
// (above all a v1 memcg) and removing it are expensive, so slots are made
// once and reused: an attempt takes an idle slot, or a new one, and gives
// it back when it ends if nothing of it is left in there.
type slotPool struct {
	mu        sync.Mutex
	idle      []*slot          // LIFO: the last slot used is the warmest
	live      map[string]*slot // every slot not yet retired, idle or busy, by name
	owner     string           // "<pid>-<start ticks>" of this process, in slot names
	seq       int              // numbers slot names; never reused by one Executor
	closed    bool             // Stop ran: released slots are retired
	maxIdle   int
	recordDir string
	log       *slog.Logger
}

// slot is one pooled attempt cgroup: a directory per hierarchy (v1) or one
// directory (v2), files kept open so that each per-attempt read or write
// is a single syscall, and on v1 the launcher thread that lives in it.
type slot struct {
	d    *cgroupDriver
	name string
	dirs []string // v2: one; v1: one per hierarchy, indexed like d.hier

	// Open files, -1 when absent. On v1 cgroup.procs cannot be kept
	// open: the kernel caches its pid list per open file, so a re-read
	// through the same fd returns what it listed before.
	dirFD   int // v2: the cgroup directory, for CLONE_INTO_CGROUP
	procsFD int // v2: cgroup.procs
	cpuFD   int // v1: cpuacct.usage; v2: cpu.stat
	quotaFD int // v1: cpu.cfs_quota_us; v2: cpu.max (with the cpu controller)
	peakFD  int // v1: memory.max_usage_in_bytes; v2: memory.peak
	oomFD   int // v1: memory.oom_control; v2: memory.events
	record  *os.File

	// peakReset: v2 memory.peak is reset through peakFD (Linux 6.12+).
	// Without it a v2 slot with the memory controller is used once, as a
	// peak that cannot be reset would include earlier attempts'.
	peakReset bool
	// oomCounter: v1 memory.oom_control has oom_kill (Linux 4.13+).
	oomCounter bool
	// oomBase is the OOM-kill count when the slot was made. A slot that
	// sees an OOM kill is retired, so it stays the baseline for life.
	oomBase int64

	// Limits set in the slot's cgroup files (0 = none).
	memoryMiB, cpuMillis int64
	periodSet            bool // v1: cpu.cfs_period_us written once
	swapOff              bool // v2: memory.swap.max is 0

	// v1 launcher thread (nil on v2).
	reqs    chan launchReq
	replies chan launchResult
	exited  chan struct{}

	// Per attempt, used only by the goroutine holding the slot: Start,
	// then the attempt's supervisor.
	cpuBase     time.Duration // CPU usage at acquire
	sampledPeak int64         // v2 without memory.peak: highest memory.current seen
	broken      bool          // a read failed: do not reuse
	buf         []byte
	rec         [slotRecordLen]byte
}

type launchReq struct {
	path string
	argv []string
	attr *os.ProcAttr
}

type launchResult struct {
	p   *os.Process
	err error
}

// initPool readies the pool and removes the empty slots that dead workers
// left behind, over any DataDir: on a CI host whose workers are killed and
// whose DataDirs are temporary, nothing else would, and every memcg left
// costs kernel memory and one of the 65535 memcg IDs. Slots of live workers
// (other Executors in this process included) are left alone; populated
// slots of dead ones are orphans, for KillOrphans over their DataDir.
func (d *cgroupDriver) initPool(recordDir string, log *slog.Logger) error {
	self, err := readProcStat(os.Getpid())
	if err != nil {
		return fmt.Errorf("read the worker's start time: %w", err)
	}
	d.pool = slotPool{
		live: make(map[string]*slot), maxIdle: defaultMaxIdleSlots, recordDir: recordDir, log: log,
		owner: strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(self.startTicks, 10),
	}
	if mkErr := os.MkdirAll(recordDir, 0o755); mkErr != nil {
		return fmt.Errorf("create %s: %w", recordDir, mkErr)
	}
	names, err := d.listSlots()
	if err != nil {
		return err
	}
	for _, n := range names {
		sn, ok := parseSlotName(n)
		if !ok || sn.ownerAlive() {
			continue
		}
		dirs := d.dirsFor(n)
		if dirsPopulated(dirs) {
			continue
		}
		if rmErr := removeCgroupDirs(dirs); rmErr != nil {
			log.Warn("removing a dead worker's idle cgroup slot failed", "slot", n, "err", rmErr)
		}
	}
	// Records whose slot is gone (removed above, or by a KillOrphans that
	// died before removing the record).
	entries, err := os.ReadDir(recordDir)
	if err != nil {
		return fmt.Errorf("list %s: %w", recordDir, err)
	}
	for _, ent := range entries {
		if _, statErr := os.Stat(d.dirsFor(ent.Name())[0]); errors.Is(statErr, fs.ErrNotExist) {
			_ = os.Remove(filepath.Join(recordDir, ent.Name()))
		}
	}
	return nil
}

// listSlots lists the names of every pool slot in the hierarchy, of any
// DataDir.
func (d *cgroupDriver) listSlots() ([]string, error) {
	return d.listCgroups(func(n string) bool { return strings.HasPrefix(n, slotPrefix) })
}

// slotName is a parsed slot directory name.
type slotName struct {
	ownerPID   int
	ownerTicks uint64
	n          int
	hash       string
}

func parseSlotName(name string) (slotName, bool) {
	rest, ok := strings.CutPrefix(name, slotPrefix)
	if !ok {
		return slotName{}, false
	}
	f := strings.Split(rest, "-")
	if len(f) != 4 {
		return slotName{}, false
	}
	pid, err1 := strconv.Atoi(f[0])
	ticks, err2 := strconv.ParseUint(f[1], 10, 64)
	n, err3 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || err3 != nil || pid <= 0 || f[3] == "" {
		return slotName{}, false
	}
	return slotName{ownerPID: pid, ownerTicks: ticks, n: n, hash: f[3]}, true
}

// isSlotOf reports whether name is a slot of the DataDir with suffix.
func isSlotOf(name, suffix string) bool {
	sn, ok := parseSlotName(name)
	return ok && "-"+sn.hash == suffix
}

// ownerAlive reports whether the worker process that made the slot still
// runs. When in doubt (/proc unreadable) it says yes, which only leaves a
// slot in place.
func (sn slotName) ownerAlive() bool {
	st, err := readProcStat(sn.ownerPID)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	return err != nil || (st.startTicks == sn.ownerTicks && !st.dead())
}

func (d *cgroupDriver) recordPath(slotName string) string {
	return filepath.Join(d.pool.recordDir, slotName)
}

// ownsSlot reports whether the slot is this driver's (idle, busy, or being
// made), so KillOrphans leaves it alone.
func (d *cgroupDriver) ownsSlot(name string) bool {
	d.pool.mu.Lock()
	defer d.pool.mu.Unlock()
	_, ok := d.pool.live[name]
	return ok
}

// acquire returns a slot ready for the attempt: limits set, peak memory
// reset, CPU usage baselined, the attempt's ID recorded.
func (d *cgroupDriver) acquire(attemptID string, memoryMiB, cpuMillis int64) (*slot, error) {
	for {
		d.pool.mu.Lock()
		var s *slot
		if n := len(d.pool.idle); n > 0 {
			s = d.pool.idle[n-1]
			d.pool.idle = d.pool.idle[:n-1]
		}
		d.pool.mu.Unlock()
		fresh := s == nil
		if fresh {
			var err error
			if s, err = d.newSlot(); err != nil {
				return nil, err
			}
		}
		err := s.prepare(attemptID, memoryMiB, cpuMillis)
		if err == nil {
			return s, nil
		}
		retireErr := d.retire(s)
		if fresh {
			return nil, errors.Join(err, retireErr)
		}
		// A used slot can fail where a new one would not (a memory limit
		// below the page cache earlier attempts left charged to it cannot
		// be set: EBUSY), so try the next one, and at worst a new one.
		d.pool.log.Debug("cgroup slot could not be reused; retired", "slot", s.name, "err", err, "retire_err", retireErr)
	}
}

// release gives the slot back after its attempt. reusable says that
// nothing of the attempt is left in it and that it saw no OOM kill; else,
// or above the idle cap, or after Stop, the slot is removed.
func (d *cgroupDriver) release(s *slot, reusable bool) error {
	d.pool.mu.Lock()
	if reusable && !s.broken && !d.pool.closed && len(d.pool.idle) < d.pool.maxIdle {
		d.pool.idle = append(d.pool.idle, s)
		d.pool.mu.Unlock()
		return nil
	}
	d.pool.mu.Unlock()
	return d.retire(s)
}

// closePool removes every idle slot and has later releases remove theirs.
// Stop calls it once no attempt runs, so it removes the whole pool.
func (d *cgroupDriver) closePool() error {
	d.pool.mu.Lock()
	d.pool.closed = true
	idle := d.pool.idle
	d.pool.idle = nil
	d.pool.mu.Unlock()
	var errs []error
	for _, s := range idle {
		if err := d.retire(s); err != nil {
			errs = append(errs, err)
		}
	}
	// Fails while records of orphaned slots remain: they are KillOrphans'.
	_ = os.Remove(d.pool.recordDir)
	return errors.Join(errs...)
}

// newSlot makes a slot under a name no cgroup has. The name is registered
// before its directories exist, so that KillOrphans, listing the
// directories meanwhile, never takes a half-made slot for an orphan.
func (d *cgroupDriver) newSlot() (*slot, error) {
	for tries := 0; ; tries++ {
		d.pool.mu.Lock()
		if d.pool.closed {
			d.pool.mu.Unlock()
			return nil, ErrStopped
		}
		d.pool.seq++
		s := d.slotNamed(slotPrefix + d.pool.owner + "-" + strconv.Itoa(d.pool.seq) + d.suffix)
		d.pool.live[s.name] = s
		d.pool.mu.Unlock()
		err := s.create()
		if err == nil {
			return s, nil
		}
		d.forget(s)
		if !errors.Is(err, fs.ErrExist) || tries >= maxSlotNameTries {
			return nil, err
		}
		// Taken (by a process that had our pid and start time?): another.
	}
}

// slotNamed returns an unmade slot.
func (d *cgroupDriver) slotNamed(name string) *slot {
	return &slot{
		d: d, name: name, dirs: d.dirsFor(name),
		dirFD: -1, procsFD: -1, cpuFD: -1, quotaFD: -1, peakFD: -1, oomFD: -1,
		buf: make([]byte, 0, slotReadBuf),
	}
}

func (d *cgroupDriver) forget(s *slot) {
	d.pool.mu.Lock()
	delete(d.pool.live, s.name)
	d.pool.mu.Unlock()
}

// retire removes the slot: its launcher thread, open files, directories
// and record.
func (d *cgroupDriver) retire(s *slot) error {
	s.detach()
	err := removeCgroupDirs(s.dirs)
	if rmErr := os.Remove(d.recordPath(s.name)); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("remove slot record: %w", rmErr))
	}
	d.forget(s)
	return err
}

// create makes the slot's directories, opens its files and, on v1, starts
// its launcher thread. On error nothing of it is left.
func (s *slot) create() error {
	if err := makeCgroupDirs(s.dirs, false); err != nil {
		return err
	}
	err := s.open()
	if err == nil {
		err = s.openRecord()
	}
	if err == nil && s.d.version == 1 {
		err = s.startLauncher()
	}
	if err != nil {
		s.detach()
		_ = os.Remove(s.d.recordPath(s.name))
		if rmErr := removeCgroupDirs(s.dirs); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
		return err
	}
	return nil
}

// openRecord creates the slot's record file, and the records' directory
// if a Stop removed it (it does once it is empty).
func (s *slot) openRecord() error {
	path := s.d.recordPath(s.name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		if mkErr := os.MkdirAll(filepath.Dir(path), 0o755); mkErr != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(path), mkErr)
		}
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	}
	if err != nil {
		return fmt.Errorf("create slot record: %w", err)
	}
	s.record = f
	return nil
}

// open opens the files read or written per attempt and sets what never
// changes for the slot.
func (s *slot) open() error {
	d := s.d
	var err error
	if d.version == 2 {
		dir := s.dirs[0]
		if s.dirFD, err = openFD(dir, unix.O_RDONLY|unix.O_DIRECTORY); err != nil {
			return err
		}
		if s.procsFD, err = openFD(filepath.Join(dir, "cgroup.procs"), unix.O_RDONLY); err != nil {
			return err
		}
		if s.cpuFD, err = openFD(filepath.Join(dir, "cpu.stat"), unix.O_RDONLY); err != nil {
			return err
		}
		if d.cpuOK {
			if s.quotaFD, err = openFD(filepath.Join(dir, "cpu.max"), unix.O_WRONLY); err != nil {
				return err
			}
		}
		if !d.memoryOK {
			return nil
		}
		// One OOM kill takes the whole attempt: a task half-killed by the
		// OOM killer is rarely useful.
		writeOptional(filepath.Join(dir, "memory.oom.group"), "1")
		if s.oomFD, err = openFD(filepath.Join(dir, "memory.events"), unix.O_RDONLY); err != nil {
			return err
		}
		events, readErr := s.readFD(s.oomFD)
		if readErr != nil {
			return fmt.Errorf("read memory.events of %s: %w", dir, readErr)
		}
		s.oomBase = v2OOMKills(events)
		s.openV2Peak(filepath.Join(dir, "memory.peak"))
		return nil
	}
	mem := s.dirs[d.memIdx]
	if s.quotaFD, err = openFD(filepath.Join(s.dirs[d.cpuIdx], "cpu.cfs_quota_us"), unix.O_WRONLY); err != nil {
		return err
	}
	if s.peakFD, err = openFD(filepath.Join(mem, "memory.max_usage_in_bytes"), unix.O_RDWR); err != nil {
		return err
	}
	if s.oomFD, err = openFD(filepath.Join(mem, "memory.oom_control"), unix.O_RDONLY); err != nil {
		return err
	}
	oomControl, readErr := s.readFD(s.oomFD)
	if readErr != nil {
		return fmt.Errorf("read memory.oom_control of %s: %w", mem, readErr)
	}
	s.oomBase, s.oomCounter = lookupKV(oomControl, "oom_kill")
	if d.acIdx >= 0 {
		if s.cpuFD, err = openFD(filepath.Join(s.dirs[d.acIdx], "cpuacct.usage"), unix.O_RDONLY); err != nil {
			return err
		}
	}
	return nil
}

// openV2Peak opens memory.peak for reading and, where the kernel allows
// it (Linux 6.12+), resetting per open file. On 5.19-6.11 the peak covers
// the cgroup's whole life, so the slot serves one attempt; before 5.19
// there is no memory.peak and memory.current is sampled.
func (s *slot) openV2Peak(path string) {
	fd, err := openFD(path, unix.O_RDWR)
	if err == nil {
		if _, werr := unix.Write(fd, []byte("reset")); werr == nil {
			s.peakFD, s.peakReset = fd, true
			return
		}
		unix.Close(fd)
	}
	if fd, err = openFD(path, unix.O_RDONLY); err == nil {
		s.peakFD = fd
	}
}

func openFD(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", path, err)
		}
		return fd, nil
	}
}

// startLauncher starts the v1 slot's launcher: a goroutine locked to its
// OS thread, which moves into the slot's cgroups once and then forks every
// attempt of the slot from there, so each child is born in the slot
// (race-free) with no per-attempt write to the tasks files and no thread
// created per attempt.
func (s *slot) startLauncher() error {
	s.reqs = make(chan launchReq)
	s.replies = make(chan launchResult, 1)
	s.exited = make(chan struct{})
	ready := make(chan error, 1)
	go s.launcher(ready)
	if err := <-ready; err != nil {
		<-s.exited
		s.reqs = nil
		return err
	}
	return nil
}

func (s *slot) launcher(ready chan<- error) {
	defer close(s.exited)
	// Never unlocked: the thread is a member of the slot's cgroups, so it
	// must run nothing but this goroutine. When the goroutine returns, the
	// runtime destroys the locked thread, which leaves the cgroups as it
	// exits.
	runtime.LockOSThread()
	tid := strconv.Itoa(unix.Gettid())
	for _, dir := range s.dirs {
		if err := writeCgroupFile(filepath.Join(dir, "tasks"), tid); err != nil {
			s.d.moveHome(tid)
			ready <- fmt.Errorf("move launcher thread into cgroup: %w", err)
			return
		}
	}
	ready <- nil
	for req := range s.reqs {
		p, err := os.StartProcess(req.path, req.argv, req.attr)
		s.replies <- launchResult{p, err}
	}
	// Home before exiting, so that the slot is empty when retire removes
	// it rather than once the kernel is done destroying the thread (rmdir
	// retries on EBUSY should this fail).
	s.d.moveHome(tid)
}

// moveHome moves a thread back to the worker's own v1 cgroups.
func (d *cgroupDriver) moveHome(tid string) {
	for _, h := range d.hier {
		if rel, ok := d.home[h.controller]; ok {
			writeOptional(filepath.Join(h.mount, rel, "tasks"), tid)
		}
	}
}

// detach stops the launcher and closes the slot's files, leaving its
// cgroups and whatever runs in them.
func (s *slot) detach() {
	if s.reqs != nil {
		close(s.reqs)
		<-s.exited
		s.reqs = nil
	}
	for _, fd := range []*int{&s.dirFD, &s.procsFD, &s.cpuFD, &s.quotaFD, &s.peakFD, &s.oomFD} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	if s.record != nil {
		_ = s.record.Close()
		s.record = nil
	}
}

// prepare readies the slot for one attempt.
func (s *slot) prepare(attemptID string, memoryMiB, cpuMillis int64) error {
	if err := s.setLimits(memoryMiB, cpuMillis); err != nil {
		return err
	}
	// This attempt's peak, not the slot's: v1 sets max_usage to the
	// current usage on a write of 0; v2 resets the peak seen through
	// peakFD.
	switch {
	case s.d.version == 1:
		if err := writeFD(s.peakFD, "0"); err != nil {
			return fmt.Errorf("reset memory.max_usage_in_bytes of %s: %w", s.name, err)
		}
	case s.peakReset:
		if err := writeFD(s.peakFD, "reset"); err != nil {
			return fmt.Errorf("reset memory.peak of %s: %w", s.name, err)
		}
	}
	base, err := s.cpuUsage()
	if err != nil {
		return err
	}
	s.cpuBase, s.sampledPeak, s.broken = base, 0, false
	n := copy(s.rec[:], attemptID)
	for i := n; i < len(s.rec); i++ {
		s.rec[i] = ' '
	}
	s.rec[n] = '\n'
	if _, err := s.record.WriteAt(s.rec[:], 0); err != nil {
		return fmt.Errorf("record attempt in slot: %w", err)
	}
	return nil
}

// setLimits writes the limits that differ from the slot's current ones
// (0 = none), and a CPU quota even when it is the same: writing it refills
// the group's CFS runtime for the period and unthrottles it, so an attempt
// starts with its whole quota as in a new cgroup, not with what the
// previous attempts in the slot left of the period (back-to-back short
// attempts in a slot with a quota were throttled for milliseconds).
func (s *slot) setLimits(memoryMiB, cpuMillis int64) error {
	if memoryMiB == s.memoryMiB && cpuMillis == s.cpuMillis && cpuMillis == 0 {
		return nil
	}
	quota := cpuMillis * cfsPeriodUS / 1000
	if cpuMillis > 0 && quota < 1000 {
		quota = 1000 // the kernel's minimum quota is 1 ms
	}
	d := s.d
	if d.version == 2 {
		dir := s.dirs[0]
		if d.memoryOK && memoryMiB != s.memoryMiB {
			limit, swap := "max", "max"
			if memoryMiB > 0 {
				// No swapping past the limit, or it would not be one.
				limit, swap = strconv.FormatInt(memoryMiB<<20, 10), "0"
			}
			if err := writeCgroupFile(filepath.Join(dir, "memory.max"), limit); err != nil {
				return err
			}
			if swapOff := memoryMiB > 0; swapOff != s.swapOff {
				writeOptional(filepath.Join(dir, "memory.swap.max"), swap)
				s.swapOff = swapOff
			}
		}
		s.memoryMiB = memoryMiB
		if d.cpuOK && (cpuMillis != s.cpuMillis || cpuMillis > 0) {
			v := "max " + strconv.Itoa(cfsPeriodUS)
			if cpuMillis > 0 {
				v = strconv.FormatInt(quota, 10) + " " + strconv.Itoa(cfsPeriodUS)
			}
			if err := writeFD(s.quotaFD, v); err != nil {
				return fmt.Errorf("write %q to cpu.max of %s: %w", v, s.name, err)
			}
		}
		s.cpuMillis = cpuMillis
		return nil
	}
	if memoryMiB != s.memoryMiB {
		dir := s.dirs[d.memIdx]
		v := "-1"
		if memoryMiB > 0 {
			v = strconv.FormatInt(memoryMiB<<20, 10)
		}
		limit := filepath.Join(dir, "memory.limit_in_bytes")
		// memsw (only with swap accounting) stops swapping past the
		// limit and must never be below it: raised first, lowered last.
		memsw := filepath.Join(dir, "memory.memsw.limit_in_bytes")
		raise := memoryMiB == 0 || (s.memoryMiB != 0 && memoryMiB > s.memoryMiB)
		if raise {
			writeOptional(memsw, v)
		}
		if err := writeCgroupFile(limit, v); err != nil {
			return err
		}
		if !raise {
			writeOptional(memsw, v)
		}
		s.memoryMiB = memoryMiB
	}
	if cpuMillis != s.cpuMillis || cpuMillis > 0 {
		if cpuMillis > 0 && !s.periodSet {
			if err := writeCgroupFile(filepath.Join(s.dirs[d.cpuIdx], "cpu.cfs_period_us"), strconv.Itoa(cfsPeriodUS)); err != nil {
				return err
			}
			s.periodSet = true
		}
		v := "-1"
		if cpuMillis > 0 {
			v = strconv.FormatInt(quota, 10)
		}
		if err := writeFD(s.quotaFD, v); err != nil {
			return fmt.Errorf("write %q to cpu.cfs_quota_us of %s: %w", v, s.name, err)
		}
		s.cpuMillis = cpuMillis
	}
	return nil
}

// writeFD writes a value to a kept-open cgroup file. cgroupfs ignores the
// file offset on writes, so the fd serves write after write.
func writeFD(fd int, v string) error {
	for {
		_, err := unix.Write(fd, []byte(v))
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// start starts the process inside the slot; see the package doc for how
// each version avoids running the child outside it.
func (s *slot) start(path string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
	if s.d.version == 2 {
		return s.startV2(path, argv, attr)
	}
	s.reqs <- launchReq{path, argv, attr}
	r := <-s.replies
	return r.p, r.err
}

func (s *slot) startV2(path string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
	sys := *attr.Sys
	sys.UseCgroupFD, sys.CgroupFD = true, s.dirFD
	withFD := *attr
	withFD.Sys = &sys
	p, err := os.StartProcess(path, argv, &withFD)
	if err == nil || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.E2BIG)) {
		return p, err
	}
	// Kernel older than 5.7 (no CLONE_INTO_CGROUP): move the child right
	// after the fork; the window is documented in the package doc.
	p, err = os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, err
	}
	if err := writeCgroupFile(filepath.Join(s.dirs[0], "cgroup.procs"), strconv.Itoa(p.Pid)); err != nil {
		_ = unix.Kill(-p.Pid, unix.SIGKILL)
		_, _ = p.Wait()
		return nil, fmt.Errorf("move process into cgroup: %w", err)
	}
	return p, nil
}

// readFD reads a whole cgroup file through an open fd into s.buf. A pread
// from offset 0 makes the kernel render the file afresh, and cgroup files
// are seq_files, which fill the buffer unless the content ends: a short
// read is the whole file, so a small file costs one syscall.
func (s *slot) readFD(fd int) ([]byte, error) {
	b := s.buf[:0]
	for {
		n, err := unix.Pread(fd, b[len(b):cap(b)], int64(len(b)))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		b = b[:len(b)+n]
		if len(b) < cap(b) {
			s.buf = b[:0]
			return b, nil
		}
		b = append(b, 0)[:len(b)] // full: grow and read on
	}
}

// pids lists the processes in the slot. On v1 one hierarchy suffices:
// every process of an attempt is born in all of the slot's cgroups, and
// only root could move one out of some of them.
func (s *slot) pids() ([]int, error) {
	if s.d.version == 2 {
		b, err := s.readFD(s.procsFD)
		if err != nil {
			return nil, err
		}
		return appendPids(nil, b), nil
	}
	fd, err := openFD(filepath.Join(s.dirs[s.d.memIdx], "cgroup.procs"), unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	b, err := s.readFD(fd)
	if err != nil {
		return nil, err
	}
	return appendPids(nil, b), nil
}

// killListed SIGKILLs the slot's processes (never the worker, whose v1
// launcher thread is a member) and reports whether there were any. A slot
// whose processes cannot be listed is reported empty but not reused.
func (s *slot) killListed() bool {
	pids, err := s.pids()
	if err != nil {
		s.broken = true
		return false
	}
	self := os.Getpid()
	found := false
	for _, pid := range pids {
		if pid != self {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	if s.d.version == 2 {
		if err := writeCgroupFile(filepath.Join(s.dirs[0], "cgroup.kill"), "1"); err == nil {
			return true // Linux 5.14+
		}
	}
	for _, pid := range pids {
		if pid != self {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
	return true
}

// needsSampling: v2 kernels before 5.19 have no memory.peak, so the
// supervisor samples memory.current.
func (s *slot) needsSampling() bool {
	return s.d.version == 2 && s.d.memoryOK && s.peakFD < 0
}

// sample records memory.current on v2 kernels without memory.peak.
func (s *slot) sample() {
	if !s.needsSampling() {
		return
	}
	if v, err := readInt(filepath.Join(s.dirs[0], "memory.current")); err == nil && v > s.sampledPeak {
		s.sampledPeak = v
	}
}

// cpuUsage is the slot's CPU usage since it was made; 0 when unknown.
func (s *slot) cpuUsage() (time.Duration, error) {
	if s.cpuFD < 0 {
		return 0, nil
	}
	b, err := s.readFD(s.cpuFD)
	if err != nil {
		return 0, fmt.Errorf("read CPU usage of %s: %w", s.name, err)
	}
	if s.d.version == 2 {
		us, _ := lookupKV(b, "usage_usec")
		return time.Duration(us) * time.Microsecond, nil
	}
	ns, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse cpuacct.usage of %s: %w", s.name, err)
	}
	return time.Duration(ns), nil
}

type cgroupStats struct {
	peakMemory int64
	cpuTime    time.Duration
	oomKilled  bool
	// reusable is false when the slot must not serve another attempt:
	// an OOM kill (or, on old v1 kernels, the limit was hit), or a v2
	// peak that cannot be reset.
	reusable bool
}

// stats reads what the slot accounted for this attempt; zero values mean
// unknown. sigkilled helps old v1 kernels without an oom_kill counter.
func (s *slot) stats(sigkilled bool) cgroupStats {
	st := cgroupStats{reusable: true}
	if cpu, err := s.cpuUsage(); err == nil && cpu > s.cpuBase {
		st.cpuTime = cpu - s.cpuBase
	}
	if s.d.version == 2 {
		if s.peakFD >= 0 {
			if b, err := s.readFD(s.peakFD); err == nil {
				st.peakMemory, _ = strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
			}
			st.reusable = s.peakReset
		} else {
			s.sample()
			st.peakMemory = s.sampledPeak
		}
		if s.oomFD >= 0 {
			if b, err := s.readFD(s.oomFD); err == nil {
				st.oomKilled = v2OOMKills(b) > s.oomBase
			}
		}
		st.reusable = st.reusable && !st.oomKilled
		return st
	}
	if b, err := s.readFD(s.peakFD); err == nil {
		st.peakMemory, _ = strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	}
	b, err := s.readFD(s.oomFD)
	if err != nil {
		st.reusable = false
		return st
	}
	if s.oomCounter {
		n, _ := lookupKV(b, "oom_kill")
		st.oomKilled = n > s.oomBase
		st.reusable = !st.oomKilled
		return st
	}
	// Before Linux 4.13: a SIGKILL while the limit was being hit is the
	// best evidence there is. failcnt only grows, so a slot whose limit
	// was ever hit is not reused.
	fail, _ := readInt(filepath.Join(s.dirs[s.d.memIdx], "memory.failcnt"))
	underOOM, _ := lookupKV(b, "under_oom")
	st.oomKilled = underOOM > 0 || (sigkilled && fail > 0)
	st.reusable = fail == 0 && !st.oomKilled
	return st
}

// v2OOMKills sums the OOM-kill counters of memory.events.
func v2OOMKills(b []byte) int64 {
	n, _ := lookupKV(b, "oom_kill")
	g, _ := lookupKV(b, "oom_group_kill")
	return n + g
}

// lookupKV finds "key value" in a flat-keyed cgroup file.
func lookupKV(b []byte, key string) (int64, bool) {
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(line, []byte{' '})
		if ok && string(k) == key {
			n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// readSlotRecord returns the attempt ID recorded for a slot, or "".
func readSlotRecord(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	id := string(bytes.TrimSpace(b))
	if validAttemptID(id) != nil {
		return ""
	}
	return id
}
