// Package vm defines how Blixard runs workloads inside micro-VMs: the
// Driver interface a worker uses to start, stop, watch and re-adopt VMs,
// the Spec that describes one VM, and a deterministic in-memory Fake for
// simulations and tests. The real backend (one QEMU microvm process per VM)
// lives in internal/vm/qemu; the guest image builder (an uncompressed
// kernel plus a busybox initramfs) in internal/vm/image.
//
// # Lifecycle
//
// Start launches the VM and returns as soon as the hypervisor runs it; the
// guest boots in the background. A VM is StateStarting until the guest
// prints its readiness marker (Spec.ReadyMarker, by default
// DefaultReadyMarker) on its console, then StateRunning; WaitReady blocks
// until then. It ends StateStopped (the guest powered itself off, or Stop
// shut it down gracefully) or StateFailed (the hypervisor was killed or
// crashed, the guest reset or panicked, or Stop had to kill it). Wait
// delivers the Exit exactly once per call, also when the VM has already
// exited.
//
// Images built by internal/vm/image print GuestExitMarker followed by the
// exit status of the guest command before powering off, so Exit can carry
// the workload's own exit code (Exit.GuestExitCode).
//
// # Restarts
//
// VMs outlive the worker process that started them. A new Driver over the
// same state directory calls Recover to adopt the VMs that are still
// running (the same hypervisor process, never a second one) and to learn
// which ones ended while nobody watched.
//
// # Network modes
//
//   - NetworkNone (the default): no network device at all. The guest has
//     only its loopback interface. Use it for batch work that needs no
//     network; it is also the most isolated mode.
//   - NetworkUser: user-mode networking (QEMU's slirp), unprivileged. The
//     guest gets a virtio NIC on a private NAT network (guest 10.0.2.15/24,
//     gateway 10.0.2.2, DNS 10.0.2.3) with outbound TCP/UDP to whatever the
//     host itself can reach, but no ICMP and no inbound connections except
//     the configured port forwards: each PortForward makes the host listen
//     on HostAddr:HostPort (127.0.0.1 unless set) and relays connections to
//     the guest's GuestPort. Throughput is modest (everything goes through
//     the hypervisor process), and the guest is not reachable from other
//     machines unless HostAddr is a public address.
//   - NetworkTap: the guest's NIC is attached to an existing or new tap
//     device on the host (Network.TapDevice), at full speed and visible to
//     the host's network stack like a real machine. It needs root (or
//     CAP_NET_ADMIN) and host-side configuration (a bridge, routes or NAT,
//     addresses) that this package does not do; the guest configures its
//     own address (images from internal/vm/image take blixard.ip= and
//     blixard.gw= on the kernel command line).
package vm
