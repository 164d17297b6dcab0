package qemu

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// hostProbe is what accelerator detection reads, replaceable in tests.
type hostProbe struct {
	cpuinfo     func() ([]byte, error)
	moduleLoad  func(name string) bool
	kvmUsable   func() error
	tunPresent  func() bool
	effectiveID func() int
}

func realHost() hostProbe {
	return hostProbe{
		cpuinfo: func() ([]byte, error) { return os.ReadFile("/proc/cpuinfo") },
		moduleLoad: func(name string) bool {
			_, err := os.Stat("/sys/module/" + name)
			return err == nil
		},
		kvmUsable: func() error {
			f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
			if err != nil {
				return err
			}
			return f.Close()
		},
		tunPresent: func() bool {
			_, err := os.Stat("/dev/net/tun")
			return err == nil
		},
		effectiveID: os.Geteuid,
	}
}

// chooseAccel picks the accelerator. An openable /dev/kvm is not enough:
// some hosts expose a software-only KVM (e.g. PVM inside a VM) that cannot
// boot a normal guest, so auto needs the CPU's virtualization flag (vmx or
// svm) and a loaded kvm_intel or kvm_amd module too. It returns the choice
// and why.
func chooseAccel(want string, h hostProbe) (accel, why string, err error) {
	switch want {
	case AccelTCG:
		return AccelTCG, "tcg requested", nil
	case AccelKVM:
		if kvmErr := h.kvmUsable(); kvmErr != nil {
			return "", "", fmt.Errorf("kvm requested but /dev/kvm is not usable: %w", kvmErr)
		}
		return AccelKVM, "kvm requested", nil
	case "", AccelAuto:
	default:
		return "", "", fmt.Errorf("accelerator must be auto, kvm or tcg (got %q)", want)
	}
	info, err := h.cpuinfo()
	if err != nil {
		return AccelTCG, fmt.Sprintf("cannot read CPU flags (%v)", err), nil
	}
	vmx, svm := cpuFlag(info, "vmx"), cpuFlag(info, "svm")
	switch {
	case !vmx && !svm:
		return AccelTCG, "the CPU has no vmx/svm flag (no hardware virtualization exposed)", nil
	case vmx && !h.moduleLoad("kvm_intel"), svm && !vmx && !h.moduleLoad("kvm_amd"):
		return AccelTCG, "the kvm_intel/kvm_amd module is not loaded", nil
	}
	if err := h.kvmUsable(); err != nil {
		return AccelTCG, fmt.Sprintf("/dev/kvm is not usable (%v)", err), nil
	}
	return AccelKVM, "hardware virtualization and a loaded KVM module", nil
}

// cpuFlag reports whether the first "flags" line of /proc/cpuinfo lists
// flag.
func cpuFlag(cpuinfo []byte, flag string) bool {
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(bytes.TrimSpace(k)) != "flags" {
			continue
		}
		for _, f := range bytes.Fields(v) {
			if string(f) == flag {
				return true
			}
		}
		return false
	}
	return false
}

// procInfo is what /proc says about a process.
type procInfo struct {
	state      byte // R, S, D, Z, ...
	ppid       int
	startTicks uint64 // start time in clock ticks after boot
}

func (p procInfo) dead() bool { return p.state == 'Z' || p.state == 'X' || p.state == 'x' }

// readProc parses /proc/<pid>/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted from the last ')'.
func readProc(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	// After ")": state(3) ppid(4) ... starttime(22).
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat starttime: %w", pid, err)
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat ppid: %w", pid, err)
	}
	return procInfo{state: f[0][0], ppid: ppid, startTicks: start}, nil
}

// procArgs returns the process's command-line arguments.
func procArgs(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// bootID identifies the running kernel boot, so records from before a
// host reboot are never matched against reused pids.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// signalName names a signal like the executor does ("SIGKILL").
func signalName(s unix.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}
