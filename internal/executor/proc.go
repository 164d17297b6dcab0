package executor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

type procStat struct {
	state      byte   // R, S, D, Z, ...
	pgid       int    // process group
	startTicks uint64 // start time in clock ticks after boot
}

func (s procStat) dead() bool { return s.state == 'Z' || s.state == 'X' || s.state == 'x' }

// readProcStat parses /proc/<pid>/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted from the last ')'.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	// After ")": state(3) ppid(4) pgrp(5) ... starttime(22).
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	pgid, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat pgrp: %w", pid, err)
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat starttime: %w", pid, err)
	}
	return procStat{state: f[0][0], pgid: pgid, startTicks: start}, nil
}

// liveGroupMembers counts the processes of group pgid that are not
// zombies. (kill(-pgid, 0) alone cannot tell, as zombies count for it.)
func liveGroupMembers(pgid int) (int, error) {
	if err := unix.Kill(-pgid, 0); errors.Is(err, unix.ESRCH) {
		return 0, nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("list /proc: %w", err)
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil {
			continue // exited while we looked
		}
		if st.pgid == pgid && !st.dead() {
			n++
		}
	}
	return n, nil
}
