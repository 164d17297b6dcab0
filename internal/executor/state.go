package executor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// orphanKillTimeout bounds how long KillOrphans waits for one attempt's
// SIGKILLed processes to disappear.
const orphanKillTimeout = 10 * time.Second

// pidState is the content of DataDir/tasks/<attemptID>/pid.
type pidState struct {
	PID int `json:"pid"`
	// StartTicks is field 22 of /proc/<pid>/stat: a process found later
	// under the same pid is ours only if it started at the same tick.
	StartTicks uint64   `json:"start_ticks"`
	Cgroups    []string `json:"cgroups,omitempty"`
}

func writePidFile(dir string, st pidState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode pid file: %w", err)
	}
	// Written in place, not via a temporary file and a rename: every
	// file created costs an inode allocation on the hot path of a task
	// start (about half a millisecond on ext4 here). A crash mid-write
	// leaves a file that does not parse; candidates then falls back to
	// the attempt's cgroup, and without cgroups the process is reported
	// as unparseable rather than guessed at.
	if err := os.WriteFile(filepath.Join(dir, pidFileName), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

func readPidFile(dir string) (pidState, error) {
	var st pidState
	b, err := os.ReadFile(filepath.Join(dir, pidFileName))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse %s: %w", filepath.Join(dir, pidFileName), err)
	}
	if st.PID <= 0 {
		return st, fmt.Errorf("parse %s: invalid pid %d", filepath.Join(dir, pidFileName), st.PID)
	}
	return st, nil
}

// candidate is an attempt not run by this Executor that may have left
// processes or cgroups behind.
type candidate struct {
	id     string
	dir    string    // the attempt's directory; "" for a slot
	pid    *pidState // nil when only a cgroup was found
	cgDirs []string
	slot   string // the pool slot's name, when the cgroup is one
}

// candidates lists pid files and (with cgroups) cgroups of this DataDir
// that do not belong to attempts this Executor runs: pool slots of an
// earlier worker, and attempts' own cgroups made by workers before the
// pool.
func (e *Executor) candidates() ([]candidate, error) {
	var errs []error
	var out, slots []candidate
	withPid := make(map[string]bool)
	entries, err := os.ReadDir(e.tasksDir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", e.tasksDir, err)
	}
	for _, ent := range entries {
		id := ent.Name()
		if !ent.IsDir() || validAttemptID(id) != nil {
			continue
		}
		dir := filepath.Join(e.tasksDir, id)
		st, err := readPidFile(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		withPid[id] = true
		out = append(out, candidate{id: id, dir: dir, pid: &st, cgDirs: st.Cgroups})
	}
	if e.cg != nil {
		names, err := e.cg.listAttemptCgroups()
		if err != nil {
			errs = append(errs, err)
		}
		for _, n := range names {
			if sn, ok := parseSlotName(n); ok {
				if !isSlotOf(n, e.cg.suffix) || e.cg.ownsSlot(n) || sn.ownerAlive() {
					// Another DataDir's, ours, or a live worker's (such as
					// another Executor in this process): no orphan.
					continue
				}
				dirs := e.cg.dirsFor(n)
				// Named after the attempt its record names; the slot's own
				// name (never a valid attempt ID) if there is none.
				id := readSlotRecord(e.cg.recordPath(n))
				if id == "" {
					id = n
				}
				slots = append(slots, candidate{id: id, cgDirs: dirs, slot: n})
				continue
			}
			id := strings.TrimSuffix(n, e.cg.suffix)
			if validAttemptID(id) != nil || withPid[id] {
				continue // the probe, or handled through the pid file
			}
			out = append(out, candidate{id: id, dir: filepath.Join(e.tasksDir, id), cgDirs: e.cg.dirsFor(n)})
		}
	}
	// Checked after listing: an attempt is reserved before its pid file
	// or cgroup exists, so anything listed that is not reserved now is not
	// being started by us. (Slots are told apart by ownsSlot instead: a
	// slot is registered before its directories exist.)
	e.mu.Lock()
	kept := out[:0]
	for _, c := range out {
		if _, ours := e.attempts[c.id]; !ours {
			kept = append(kept, c)
		}
	}
	e.mu.Unlock()
	return append(kept, slots...), errors.Join(errs...)
}

// status reports whether anything of the candidate still runs, and
// whether its recorded process group id still refers to its group (so
// that signalling the group cannot hit another process).
func (c candidate) status() (alive, groupOurs bool) {
	if c.pid != nil {
		ps, err := readProcStat(c.pid.PID)
		switch {
		case err == nil && ps.startTicks == c.pid.StartTicks:
			// Our leader, possibly a zombie nobody reaped: it pins the
			// group id either way.
			groupOurs = true
			alive = !ps.dead()
		case errors.Is(err, os.ErrNotExist):
			// The pid is free, so no new group can have taken the id;
			// processes still in that group are the attempt's.
			groupOurs = true
		}
		if groupOurs && !alive {
			n, _ := liveGroupMembers(c.pid.PID)
			alive = n > 0
		}
	}
	if dirsPopulated(c.cgDirs) {
		alive = true
	}
	return alive, groupOurs
}

// Orphans lists attempts that an earlier Executor over this DataDir
// started and whose processes are still alive: the leader (verified by its
// start time, against pid reuse), other members of its process group, or
// processes in its cgroup.
func (e *Executor) Orphans() ([]Orphan, error) {
	cands, err := e.candidates()
	var out []Orphan
	for _, c := range cands {
		if alive, _ := c.status(); alive {
			o := Orphan{AttemptID: c.id}
			if c.pid != nil {
				o.PID = c.pid.PID
			}
			out = append(out, o)
		}
	}
	if err != nil {
		return out, fmt.Errorf("find orphans: %w", err)
	}
	return out, nil
}

// KillOrphans SIGKILLs what Orphans reports, waits for it to be gone, and
// removes the attempts' cgroups and pid files (their logs stay for Prune).
// Pid files and cgroups of attempts that are already dead are cleaned up
// too.
func (e *Executor) KillOrphans() error {
	cands, err := e.candidates()
	errs := []error{}
	if err != nil {
		errs = append(errs, err)
	}
	for _, c := range cands {
		if err := e.killOrphan(c); err != nil {
			errs = append(errs, fmt.Errorf("orphan %s: %w", c.id, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kill orphans: %w", err)
	}
	return nil
}

func (e *Executor) killOrphan(c candidate) error {
	deadline := time.Now().Add(orphanKillTimeout)
	backoff := time.Millisecond
	for {
		alive, groupOurs := c.status()
		if !alive {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still alive %v after SIGKILL", orphanKillTimeout)
		}
		if groupOurs {
			if err := unix.Kill(-c.pid.PID, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("kill process group %d: %w", c.pid.PID, err)
			}
		}
		killCgroupDirs(c.cgDirs, e.cg != nil && e.cg.version == 2)
		waitBackoff(&backoff)
	}
	switch {
	case c.pid != nil:
		e.log.Info("killed orphaned attempt", "attempt", c.id, "pid", c.pid.PID)
	case c.slot != "":
		e.log.Info("cleaned up an earlier worker's cgroup slot", "attempt", c.id, "slot", c.slot)
	default:
		e.log.Info("cleaned up orphaned attempt cgroup", "attempt", c.id)
	}
	if err := removeCgroupDirs(c.cgDirs); err != nil {
		return err
	}
	if c.slot != "" {
		if err := os.Remove(e.cg.recordPath(c.slot)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove slot record: %w", err)
		}
	}
	if c.dir != "" {
		if err := os.Remove(filepath.Join(c.dir, pidFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove pid file: %w", err)
		}
	}
	return nil
}

// Prune deletes the directories of finished attempts last modified more
// than Config.Retention before now. Running attempts, and attempts that
// still have a pid file (running elsewhere or orphaned; see KillOrphans),
// are kept.
func (e *Executor) Prune(now time.Time) error {
	entries, err := os.ReadDir(e.tasksDir)
	if err != nil {
		return fmt.Errorf("prune: list %s: %w", e.tasksDir, err)
	}
	var errs []error
	for _, ent := range entries {
		id := ent.Name()
		if !ent.IsDir() || validAttemptID(id) != nil {
			continue
		}
		dir := filepath.Join(e.tasksDir, id)
		last, err := lastModified(dir)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if now.Sub(last) < e.cfg.Retention {
			continue
		}
		// Under e.mu so a Start of the same ID cannot interleave.
		e.mu.Lock()
		_, running := e.attempts[id]
		_, pidErr := os.Stat(filepath.Join(dir, pidFileName))
		if !running && errors.Is(pidErr, os.ErrNotExist) {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
			}
		}
		e.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	return nil
}

// lastModified is the newest modification time of dir and its files.
func lastModified(dir string) (time.Time, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return time.Time{}, err
	}
	last := fi.ModTime()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return time.Time{}, fmt.Errorf("list %s: %w", dir, err)
	}
	for _, ent := range entries {
		if info, err := ent.Info(); err == nil && info.ModTime().After(last) {
			last = info.ModTime()
		}
	}
	return last, nil
}
