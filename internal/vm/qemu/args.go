package qemu

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/blixard/blixard/internal/vm"
)

// Files in a VM's state directory. Only consoleLogName outlives the VM.
const (
	consoleLogName = "console.log" // guest serial console (kept after exit)
	qmpSockName    = "qmp.sock"    // QMP control socket
	pidFileName    = "qemu.pid"    // written and locked by QEMU itself
	recordName     = "vm.json"     // the driver's record: spec, pid, start time
	qemuLogName    = "qemu.log"    // QEMU's own stdout/stderr
)

type vmPaths struct {
	dir, qmp, pid, record, console, qemuLog string
}

func pathsFor(dir string) vmPaths {
	return vmPaths{
		dir:     dir,
		qmp:     filepath.Join(dir, qmpSockName),
		pid:     filepath.Join(dir, pidFileName),
		record:  filepath.Join(dir, recordName),
		console: filepath.Join(dir, consoleLogName),
		qemuLog: filepath.Join(dir, qemuLogName),
	}
}

// maxSocketPath is the longest path a unix socket address holds
// (sun_path is 108 bytes including the NUL).
const maxSocketPath = 107

// maxCmdline is the x86 kernel's COMMAND_LINE_SIZE less the NUL.
const maxCmdline = 2047

// User-mode network addresses (QEMU's slirp defaults), passed to the guest.
const (
	userGuestCIDR = "10.0.2.15/24"
	userGateway   = "10.0.2.2"
	userDNS       = "10.0.2.3"
)

// kernelCmdline is the driver's part of the kernel command line followed
// by the spec's, so the spec's parameters win (the kernel and the image's
// init both take the last occurrence).
func kernelCmdline(spec *vm.Spec, accel string, tscKHz int) string {
	parts := []string{
		"console=ttyS0", // the ISA serial port, logged to console.log
		"panic=-1",      // reboot at once on panic; with -no-reboot QEMU then exits
		"quiet",         // the serial console is slow under TCG; errors still show
	}
	if accel == AccelTCG && tscKHz > 0 {
		// Under TCG the guest's TSC calibration against the PIT can hang
		// or go wrong on a loaded host; give it the frequency.
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(tscKHz))
	}
	if spec.Network.Mode == vm.NetworkUser {
		parts = append(parts, vm.ParamIP+"="+userGuestCIDR, vm.ParamGateway+"="+userGateway, vm.ParamDNS+"="+userDNS)
	}
	parts = append(parts, vm.ParamHostname+"="+string(spec.ID))
	if c := strings.TrimSpace(spec.Cmdline); c != "" {
		parts = append(parts, c)
	}
	return strings.Join(parts, " ")
}

// qemuArgs is QEMU's command line for spec (without the binary).
func qemuArgs(spec *vm.Spec, p vmPaths, accel, cmdline string) []string {
	a := []string{
		"-name", "guest=" + esc(string(spec.ID)),
		// microvm: no PCI, no firmware (ELF kernels boot via PVH), virtio
		// over MMIO. TCG needs the PIT for timer calibration; the RTC
		// gives the guest the time of day; ACPI carries the power button.
		"-machine", "microvm,pit=on,rtc=on,acpi=on",
		"-accel", accel,
		"-smp", strconv.Itoa(spec.VCPUs),
		"-m", strconv.Itoa(spec.MemoryMiB) + "M",
		"-nodefaults", "-no-user-config", "-nographic",
		// A guest reboot or panic ends the VM instead of looping.
		"-no-reboot",
		// Start paused: the driver attaches to QMP first, so it sees every
		// event, then sends cont.
		"-S",
		"-kernel", abs(spec.Kernel),
		"-append", cmdline,
		// append: the driver rotates the log by copy and truncate, which
		// needs QEMU to write at the end rather than at its own offset.
		"-chardev", "file,id=console,path=" + esc(p.console) + ",append=on",
		"-serial", "chardev:console",
		"-chardev", "socket,id=qmp,path=" + esc(p.qmp) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", p.pid,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=rng0",
		"-msg", "timestamp=on",
	}
	if accel == AccelKVM {
		a = append(a, "-cpu", "host")
	}
	if spec.Initrd != "" {
		a = append(a, "-initrd", abs(spec.Initrd))
	}
	if d := spec.Disk; d != nil {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		drive := "id=disk0,if=none,file=" + esc(abs(d.Path)) + ",format=" + format
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", "virtio-blk-device,drive=disk0")
	}
	n := spec.Network
	mac := n.MAC
	if mac == "" {
		mac = defaultMAC(spec.ID)
	}
	switch n.Mode {
	case vm.NetworkUser:
		nd := "user,id=net0"
		for _, f := range n.Forwards {
			proto := f.Protocol
			if proto == "" {
				proto = "tcp"
			}
			host := f.HostAddr
			if host == "" {
				host = "127.0.0.1"
			}
			nd += fmt.Sprintf(",hostfwd=%s:%s:%d-:%d", proto, host, f.HostPort, f.GuestPort)
		}
		a = append(a, "-netdev", nd, "-device", "virtio-net-device,netdev=net0,mac="+mac)
	case vm.NetworkTap:
		a = append(a, "-netdev", "tap,id=net0,ifname="+n.TapDevice+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=net0,mac="+mac)
	}
	return a
}

// esc escapes a value inside a QEMU option list, where ',' separates
// options and ",," is a literal comma.
func esc(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// abs makes a path absolute, as QEMU runs in the state directory. Paths
// given as whole arguments (-kernel, -initrd, -pidfile) are not parsed as
// option lists, so they need no escaping.
func abs(s string) string {
	if a, err := filepath.Abs(s); err == nil {
		return a
	}
	return s
}

// defaultMAC derives a stable, locally administered unicast MAC from the
// ID (QEMU's 52:54:00 prefix), so a restarted VM keeps its address.
func defaultMAC(id vm.ID) string {
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
}
