// Package qemu is the vm.Driver that runs each VM as one QEMU "microvm"
// process: no PCI and no firmware (an ELF vmlinux boots through its PVH
// entry point; a bzImage through QEMU's minimal qboot firmware), virtio
// devices over MMIO, the ISA serial port as the console, ACPI only for the
// power button. Debian packages it needs: qemu-system-x86.
//
// # Accelerator
//
// With Config.Accel "auto" (the default) the driver uses KVM only when the
// CPU shows vmx or svm in /proc/cpuinfo, kvm_intel or kvm_amd is loaded and
// /dev/kvm opens; an openable /dev/kvm alone is not trusted, as some hosts
// have a software-only KVM that cannot boot a normal guest. Otherwise it
// uses TCG (software emulation, several times slower; a Debian cloud
// kernel reaches userspace in 2-4 s). Under TCG the kernel gets
// tsc_early_khz (the host TSC frequency, which TCG guests see, measured
// by the driver) because a guest calibrating it itself can hang on a
// loaded host. "kvm" and "tcg" force a choice.
//
// # Kernel command line
//
// The driver passes "console=ttyS0 panic=-1 quiet" (plus tsc_early_khz
// under TCG, blixard.ip/gw/dns with user networking and blixard.hostname)
// and appends Spec.Cmdline, so e.g. "loglevel=7" there brings the boot
// messages back to console.log. With -no-reboot, panic=-1 turns a guest
// panic into a QEMU exit, reported as a failure with the panic line.
//
// # Processes
//
// QEMU runs in its own process group with stdin from /dev/null and its
// stdout/stderr in a file, so it neither dies with the worker (SIGPIPE,
// terminal signals) nor blocks on it; VMs outlive the worker by design. It
// starts paused (-S) and is resumed once the driver has its QMP
// connection, so no event is missed. Exit is watched through a pidfd in
// Go's poller (no thread blocked per VM). The driver reaps QEMU when it is
// its child; an adopted QEMU (Recover) belongs to whoever the kernel
// reparented it to, so its exit status is unknown and the reason comes
// from QMP events alone (a SHUTDOWN event before the socket closes means
// a guest poweroff or reset; none means it was killed).
//
// One driver per state root at a time: New takes an exclusive flock on
// StateRoot/.driver.lock. Close releases it and leaves the VMs running; it
// is meant for a worker about to exit (a VM that exits while its parent
// process lives on without a driver stays a zombie until the process
// ends or a new driver in it adopts and reaps it).
//
// # State directory and what stays
//
// Each VM has a directory (Spec.StateDir, default StateRoot/<ID>; one
// elsewhere is linked from StateRoot/<ID> so Recover finds it) with:
//
//	vm.json      the driver's record: spec, QEMU pid and start time, boot id
//	qemu.pid     QEMU's own pid file (covers a driver crash before vm.json has the pid)
//	qmp.sock     the QMP control socket
//	qemu.log     QEMU's stdout/stderr
//	console.log  the guest's serial console (QEMU appends)
//	console.log.1  its previous part: the last run's, or before the last rotation
//
// When the VM has exited (Stop, Kill, crash, guest poweroff) no process
// is left and everything but console.log is removed (QEMU's last error
// line goes into Exit.Reason first), as is the StateRoot/<ID> link; the
// directory itself stays for the log. The next Start of the same ID
// moves it to console.log.1 and starts an empty one. A Start that fails removes everything it created,
// including the directory if it made it.
//
// # Readiness and exit codes
//
// The driver tails console.log (every 20 ms until the guest is ready,
// then every 250 ms) for the readiness marker, the guest exit marker and
// kernel panic lines. Past Config.ConsoleMax (16 MiB) the monitor copies
// console.log to console.log.1 and truncates it (copytruncate; QEMU opens
// it with append=on so it writes at the new end), so a guest that writes
// to its console without end cannot fill the disk.
package qemu
