package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/vm"
)

func fakeHost(cpuFlags string, modules []string, kvmErr error) hostProbe {
	return hostProbe{
		cpuinfo: func() ([]byte, error) {
			return []byte("processor\t: 0\nflags\t\t: fpu " + cpuFlags + " sse\n\nprocessor\t: 1\nflags\t\t: fpu vmx\n"), nil
		},
		moduleLoad:  func(n string) bool { return slices.Contains(modules, n) },
		kvmUsable:   func() error { return kvmErr },
		tunPresent:  func() bool { return true },
		effectiveID: func() int { return 1000 },
	}
}

func TestChooseAccel(t *testing.T) {
	cases := []struct {
		name, want, accel, why string
		host                   hostProbe
	}{
		{"pvm-like: /dev/kvm opens, no vmx/svm", "", AccelTCG, "no vmx/svm", fakeHost("hypervisor", []string{"kvm"}, nil)},
		{"vmx but module not loaded", "", AccelTCG, "not loaded", fakeHost("vmx", []string{"kvm"}, nil)},
		{"svm with kvm_amd", "auto", AccelKVM, "hardware", fakeHost("svm", []string{"kvm_amd"}, nil)},
		{"vmx with kvm_intel", "", AccelKVM, "hardware", fakeHost("vmx", []string{"kvm_intel"}, nil)},
		{"vmx, module, but /dev/kvm denied", "", AccelTCG, "not usable", fakeHost("vmx", []string{"kvm_intel"}, os.ErrPermission)},
		{"forced tcg", "tcg", AccelTCG, "requested", fakeHost("vmx", []string{"kvm_intel"}, nil)},
		{"forced kvm", "kvm", AccelKVM, "requested", fakeHost("", nil, nil)},
	}
	for _, c := range cases {
		accel, why, err := chooseAccel(c.want, c.host)
		if err != nil || accel != c.accel || !strings.Contains(why, c.why) {
			t.Errorf("%s: %s (%s), %v; want %s (%s)", c.name, accel, why, err, c.accel, c.why)
		}
	}
	if _, _, err := chooseAccel("kvm", fakeHost("", nil, os.ErrNotExist)); err == nil {
		t.Error("forced kvm without /dev/kvm succeeded")
	}
	if _, _, err := chooseAccel("hvf", fakeHost("", nil, nil)); err == nil {
		t.Error("unknown accelerator accepted")
	}
}

func TestKernelCmdlineAndArgs(t *testing.T) {
	spec := vm.Spec{
		ID: "web", VCPUs: 2, MemoryMiB: 256, Kernel: "/img/vmlinux", Initrd: "/img/initrd.img",
		Cmdline: "loglevel=7",
		Disk:    &vm.Disk{Path: "/data/a,b.img", ReadOnly: true},
		Network: vm.Network{Mode: vm.NetworkUser, Forwards: []vm.PortForward{
			{HostPort: 8080, GuestPort: 80}, {Protocol: "udp", HostAddr: "0.0.0.0", HostPort: 5353, GuestPort: 53},
		}},
	}
	cl := kernelCmdline(&spec, AccelTCG, 2445406)
	want := "console=ttyS0 panic=-1 quiet tsc_early_khz=2445406 blixard.ip=10.0.2.15/24 blixard.gw=10.0.2.2 blixard.dns=10.0.2.3 blixard.hostname=web loglevel=7"
	if cl != want {
		t.Errorf("cmdline\n got %s\nwant %s", cl, want)
	}
	if kvmCl := kernelCmdline(&spec, AccelKVM, 2445406); strings.Contains(kvmCl, "tsc_early_khz") {
		t.Errorf("KVM cmdline has tsc_early_khz: %s", kvmCl)
	}
	p := pathsFor("/var/lib/blixard/vms/web")
	args := strings.Join(qemuArgs(&spec, p, AccelTCG, cl), " ")
	for _, w := range []string{
		"-machine microvm,pit=on,rtc=on,acpi=on", "-accel tcg", "-smp 2", "-m 256M",
		"-nodefaults -no-user-config -nographic", "-no-reboot", "-S",
		"-kernel /img/vmlinux", "-initrd /img/initrd.img",
		"-chardev file,id=console,path=/var/lib/blixard/vms/web/console.log,append=on",
		"-chardev socket,id=qmp,path=/var/lib/blixard/vms/web/qmp.sock,server=on,wait=off",
		"-pidfile /var/lib/blixard/vms/web/qemu.pid",
		"-drive id=disk0,if=none,file=/data/a,,b.img,format=raw,readonly=on -device virtio-blk-device,drive=disk0",
		"-netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53 -device virtio-net-device,netdev=net0,mac=" + defaultMAC("web"),
	} {
		if !strings.Contains(args, w) {
			t.Errorf("args lack %q:\n%s", w, args)
		}
	}
	if strings.Contains(args, "-cpu") {
		t.Errorf("TCG args pick a CPU model: %s", args)
	}
	spec.Network = vm.Network{Mode: vm.NetworkTap, TapDevice: "tap7", MAC: "52:54:00:aa:bb:cc"}
	spec.Disk = nil
	args = strings.Join(qemuArgs(&spec, p, AccelKVM, cl), " ")
	for _, w := range []string{"-accel kvm", "-cpu host", "-netdev tap,id=net0,ifname=tap7,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=52:54:00:aa:bb:cc"} {
		if !strings.Contains(args, w) {
			t.Errorf("tap/KVM args lack %q:\n%s", w, args)
		}
	}
	if m := defaultMAC("web"); m != defaultMAC("web") || !strings.HasPrefix(m, "52:54:00:") || m == defaultMAC("db") {
		t.Errorf("defaultMAC = %s", m)
	}
}

func TestDriverRefusesWhatTheHostCannotDo(t *testing.T) {
	root := t.TempDir()
	d, err := newDriver(Config{StateRoot: root, Accel: AccelTCG}, fakeHost("", nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := newDriver(Config{StateRoot: root}, fakeHost("", nil, nil)); err == nil || !strings.Contains(err.Error(), "in use by another driver") {
		t.Fatalf("second driver on the same root: %v", err)
	}
	if caps := d.Capabilities(); slices.Contains(caps.NetworkModes, vm.NetworkTap) || caps.Accel != AccelTCG {
		t.Fatalf("caps as non-root = %+v", caps)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(kernel, append([]byte("\x7fELF"), make([]byte, 64)...), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := map[string]vm.Spec{
		"needs root":          {ID: "t", VCPUs: 1, MemoryMiB: 64, Kernel: kernel, Network: vm.Network{Mode: vm.NetworkTap, TapDevice: "tap0"}},
		"IPv4 addresses only": {ID: "t", VCPUs: 1, MemoryMiB: 64, Kernel: kernel, Network: vm.Network{Mode: vm.NetworkUser, Forwards: []vm.PortForward{{HostAddr: "::1", HostPort: 1, GuestPort: 1}}}},
		"too long":            {ID: "t", VCPUs: 1, MemoryMiB: 64, Kernel: kernel, StateDir: filepath.Join(root, strings.Repeat("d", 120))},
		"at most 2047":        {ID: "t", VCPUs: 1, MemoryMiB: 64, Kernel: kernel, Cmdline: strings.Repeat("x", 2100)},
	}
	for want, spec := range cases {
		_, err := d.Start(t.Context(), spec)
		if !errors.Is(err, vm.ErrInvalidSpec) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", want, err)
		}
	}
}

func TestLastLogLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "qemu.log")
	os.WriteFile(p, []byte("2026-01-02T03:04:05.678901Z qemu-system-x86_64: warning: x\n2026-01-02T03:04:05.678902Z qemu-system-x86_64: could not load kernel '/x'\n\n"), 0o600)
	if got := lastLogLine(p); got != "could not load kernel '/x'" {
		t.Fatalf("lastLogLine = %q", got)
	}
	if got := lastLogLine(filepath.Join(t.TempDir(), "none")); got != "" {
		t.Fatalf("missing log = %q", got)
	}
}

func TestConsoleScanning(t *testing.T) {
	spec := vm.Spec{ID: "c"}
	in := newInstance(nil, &spec, pathsFor(t.TempDir()), "", 0, nil, testNow(), false)
	// Lines arrive in pieces, with CRs, between kernel messages.
	for _, chunk := range []string{
		"[    0.1] booting\r\nBLIXARD-RE", "ADY\r\n[ 1.0] x\n", "BLIXARD-EXIT 42\n",
		"[    2.0] Kernel panic - not syncing: System is deadlocked on memory\n", "[ 2.1] reboot: Power down\n",
	} {
		in.consume([]byte(chunk))
	}
	if !isClosed(in.ready) || in.guestExit != 42 || in.panicMsg != "Kernel panic - not syncing: System is deadlocked on memory" || !in.poweredOff {
		t.Fatalf("ready %v, exit %d, panic %q, off %v", isClosed(in.ready), in.guestExit, in.panicMsg, in.poweredOff)
	}
	// An endless line is cut rather than kept whole.
	in.consume([]byte(strings.Repeat("x", 3*maxLine)))
	if len(in.partial) > maxLine {
		t.Fatalf("partial line grew to %d", len(in.partial))
	}
}

func testNow() (t0 time.Time) { return t0 }

// TestConsoleRotation: past consoleMax, console.log is copied to
// console.log.1 and truncated, and scanning goes on in the new file (a
// marker written after the rotation is still seen); a writer appending
// (as QEMU does with append=on) keeps writing at the new end.
func TestConsoleRotation(t *testing.T) {
	spec := vm.Spec{ID: "c"}
	p := pathsFor(t.TempDir())
	in := newInstance(nil, &spec, p, "", 0, nil, testNow(), false)
	in.consoleMax = 1000
	w, err := os.OpenFile(p.console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	first := strings.Repeat("boot line\n", 120) // 1200 bytes: over the cap
	if _, err := w.WriteString(first); err != nil {
		t.Fatal(err)
	}
	in.scanConsole()
	if b, _ := os.ReadFile(p.console + ".1"); string(b) != first {
		t.Fatalf("console.log.1 holds %d bytes, want the %d before the rotation", len(b), len(first))
	}
	if st, _ := os.Stat(p.console); st.Size() != 0 || in.consoleOff != 0 {
		t.Fatalf("after rotation console.log is %d bytes, offset %d", st.Size(), in.consoleOff)
	}
	if _, err := w.WriteString("BLIXARD-READY\n"); err != nil {
		t.Fatal(err)
	}
	in.scanConsole()
	if !isClosed(in.ready) {
		t.Fatal("the readiness marker written after the rotation was not seen")
	}
	if b, _ := os.ReadFile(p.console); string(b) != "BLIXARD-READY\n" {
		t.Fatalf("console.log after the rotation = %q (an appending writer goes on at the new end)", b)
	}
	in.closeConsole()
}
