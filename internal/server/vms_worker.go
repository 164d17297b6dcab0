package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/vm"
	"github.com/blixard/blixard/internal/vm/guard"
	"github.com/blixard/blixard/internal/vm/image"
	"github.com/blixard/blixard/internal/vm/qemu"
	"github.com/blixard/blixard/internal/worker"
)

// vmCluster is the VM reconciler's view of this node.
type vmCluster struct{ s *Server }

func (c vmCluster) VMs() []*pb.VM                  { return c.s.sm.VMsOnWorker(c.s.cfg.ID) }
func (c vmCluster) VMsVersion() uint64             { return c.s.sm.VMsVersion() }
func (c vmCluster) Changed() <-chan struct{}       { return c.s.applied.Wait() }
func (c vmCluster) Sync(ctx context.Context) error { return c.s.node.ReadIndex(ctx) }

func (c vmCluster) ReportVM(ctx context.Context, r *pb.ReportVM) error {
	_, err := c.s.propose(ctx, &pb.Command{Op: &pb.Command_ReportVm{ReportVm: r}})
	return err
}

// vmWorker is the node's VM side: the hypervisor driver and the
// reconciler that runs what the cluster places here.
type vmWorker struct {
	drv vm.Driver
	rec *worker.VMReconciler
}

// vmStateRoot is where the VMs' state directories live.
func (c *Config) vmStateRoot() string {
	root := filepath.Join(c.DataDir, "vms")
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	return root
}

// vmImageDir is the default guest image directory and whether the node
// builds it on first use (no --vm-image).
// The path is absolute: QEMU runs in the VM's state directory.
func (c *Config) vmImageDir() (string, bool) {
	dir, auto := c.VMImageDir, false
	if dir == "" {
		dir, auto = filepath.Join(c.DataDir, "vm-image"), true
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return dir, auto
}

// startVMWorker opens the QEMU driver (adopting the VMs an earlier run of
// this node left running) and starts the reconciler. It reports whether
// VMs can run here: without QEMU the node still runs, does not register
// the VM capability (so the scheduler places no VM here), and a VM pinned
// here anyway fails with the reason.
func (s *Server) startVMWorker() (bool, error) {
	root := s.cfg.vmStateRoot()
	qcfg, err := s.vmLease(root)
	if err != nil {
		return false, err
	}
	qcfg.StateRoot, qcfg.Accel, qcfg.Logger = root, s.cfg.VMAccel, s.log.With("component", "qemu")
	var drv vm.Driver
	d, err := qemu.New(qcfg)
	switch {
	case err == nil:
		accel, why := d.Accel()
		s.log.Info("VM driver ready", "accel", accel, "why", why, "state_root", root)
		drv = d
	case s.cfg.VMAccel != "" && s.cfg.VMAccel != "auto":
		// An explicit choice that cannot be honoured is a configuration error.
		return false, fmt.Errorf("vm-accel %s: %w", s.cfg.VMAccel, err)
	default:
		s.log.Warn("VMs cannot run on this worker; VMs placed here will fail", "err", err)
		drv = unavailableDriver{err: err}
	}
	imageDir, auto := s.cfg.vmImageDir()
	b := &imageBuilder{dir: imageDir, auto: auto, s: s}
	rec := worker.NewVMReconciler(worker.VMReconcilerConfig{
		Core: worker.VMCoreConfig{
			WorkerID:  s.cfg.ID,
			ImageDir:  imageDir,
			StateRoot: root,
		},
		Clock:      s.clock,
		Logger:     s.log.With("component", "vms"),
		Stale:      isStaleVM,
		Prepare:    b.prepare,
		KillOnExit: s.cfg.VMStopOnExit,
	}, vmCluster{s}, drv)
	s.vms = &vmWorker{drv: drv, rec: rec}
	s.setVMConsole(rec.ConsoleLog)
	s.goRun(func() { rec.Run(s.ctx) })
	_, unavailable := drv.(unavailableDriver)
	return !unavailable, nil
}

// vmLeaseName is the lease file in the VM state root that this worker
// renews and every VM's guard watches.
const vmLeaseName = ".lease"

// vmContactName is the file in the VM state root that records this
// worker's last contact with the cluster on the host's boot-time clock
// (with the boot's id), so that a restarted process does not get a fresh
// gate (see vmLease).
const vmContactName = ".contact"

// vmLease starts renewing this worker's VM lease and returns the driver
// settings that run each QEMU under `blixard vm-guard` watching it. The
// lease TTL is half the worker TTL: a worker that stops renewing (its
// process died) has its VMs stopped by their guards before the leader can
// mark it down and re-place them. It is renewed only while the worker is
// in contact with the cluster (worker.RenewLease: a successful heartbeat
// sent within the gate), so a worker cut off from the leader stops its
// VMs before the leader releases them (the timing is in docs/VMS.md).
// The lease is renewed at once, before the driver adopts the VMs an
// earlier run of this node left, so a restart within the TTL keeps them;
// the gate then counts from the earlier run's last contact, read from
// the contact file, so restarts never extend a cut-off worker's VMs.
func (s *Server) vmLease(root string) (qemu.Config, error) {
	exe, err := os.Executable()
	if err != nil {
		return qemu.Config{}, fmt.Errorf("vm lease: cannot find the blixard executable to run vm-guard (is /proc mounted?): %w", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return qemu.Config{}, fmt.Errorf("vm lease: create the VM state root: %w", err)
	}
	f := VMFencingFor(s.cfg.WorkerTTL)
	ttl := f.LeaseTTL
	if margin := s.cfg.WorkerTTL - guard.MaxLifetime(ttl); margin <= s.cfg.HeartbeatInterval {
		s.log.Warn("worker-ttl leaves little room for VM self-fencing: a VM of a dead worker may still run when the leader re-places it; raise --worker-ttl to several heartbeat intervals",
			"worker_ttl", s.cfg.WorkerTTL, "heartbeat_interval", s.cfg.HeartbeatInterval, "lease_ttl", ttl)
	}
	lease := filepath.Join(root, vmLeaseName)
	contactFile := filepath.Join(root, vmContactName)
	now := s.clock.Now()
	if age, ok := contactAge(contactFile); ok {
		// The earlier run's last contact, moved onto this run's monotonic
		// clock.
		s.contact = worker.NewContact(now.Add(-age))
	}
	if !s.contact.Within(now, f.Gate) {
		s.log.Warn("the last contact with the cluster is older than the VM gate: not renewing the VM lease until a heartbeat succeeds", "last_contact", s.contact.Last(), "gate", f.Gate)
	} else if err := guard.Renew(lease); err != nil {
		return qemu.Config{}, err
	}
	var written time.Time
	renew := func() error {
		if err := guard.Renew(lease); err != nil {
			return err
		}
		if last := s.contact.Last(); !last.Equal(written) {
			if err := writeContact(contactFile, s.clock.Now().Sub(last)); err != nil {
				return err
			}
			written = last
		}
		return nil
	}
	log := s.log.With("component", "vm-lease")
	s.goRun(func() { worker.RenewLease(s.ctx, s.clock, ttl/5, s.contact, f.Gate, renew, log) })
	return qemu.Config{Guard: []string{exe, "vm-guard"}, Lease: lease, LeaseTTL: ttl}, nil
}

// bootClock reads the host's boot id and its boot-time clock: monotonic,
// never stepped, counting across process restarts (and suspends) until the
// host reboots.
func bootClock() (string, time.Duration, error) {
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", 0, fmt.Errorf("read the boot id: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return "", 0, fmt.Errorf("read the boot-time clock: %w", err)
	}
	return strings.TrimSpace(string(id)), time.Duration(ts.Nano()), nil
}

// contactAge is how long ago the contact file says the last contact was,
// on the boot-time clock; false when there is no usable record (none yet,
// or written before the host rebooted, which no VM outlives).
func contactAge(p string) (time.Duration, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	at, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || at <= 0 {
		return 0, false
	}
	boot, now, err := bootClock()
	if err != nil || boot != f[0] {
		return 0, false
	}
	return max(now-time.Duration(at), 0), true
}

// writeContact records a contact that was ago before now.
func writeContact(p string, ago time.Duration) error {
	boot, now, err := bootClock()
	if err != nil {
		return fmt.Errorf("record the last contact in %s: %w", p, err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%s %d\n", boot, int64(now-ago))), 0o600); err != nil {
		return fmt.Errorf("record the last contact in %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("record the last contact in %s: %w", p, err)
	}
	return nil
}

// ConsoleLog returns the console log of VM name on this worker.
func (w *vmWorker) ConsoleLog(name string) (string, bool) {
	if w == nil {
		return "", false
	}
	return w.rec.ConsoleLog(name)
}

// close releases the driver once the reconciler has stopped; the VMs keep
// running for the next run of this node to adopt.
func (w *vmWorker) close() error {
	if w == nil {
		return nil
	}
	return w.drv.Close()
}

// imageBuilder makes sure the default guest image exists before a VM that
// uses it starts, building it on first use when no --vm-image was given.
type imageBuilder struct {
	dir  string
	auto bool
	s    *Server
	mu   sync.Mutex
}

func (b *imageBuilder) prepare(ctx context.Context, op worker.VMOp) error {
	if !op.DefaultImage {
		// The API node checked the paths against its directories; this
		// worker checks them against its own before QEMU opens them.
		paths := map[string]string{"kernel": op.Spec.Kernel, "initrd": op.Spec.Initrd}
		if op.Spec.Disk != nil {
			paths["disk"] = op.Spec.Disk.Path
		}
		for _, field := range []string{"kernel", "initrd", "disk"} {
			if p := paths[field]; p != "" {
				if err := allowedVMFile(p, b.s.cfg.vmImageDirs()); err != nil {
					return fmt.Errorf("%w: %s: %w", vm.ErrInvalidSpec, field, err)
				}
			}
		}
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	kernel := filepath.Join(b.dir, image.VmlinuxName)
	initrd := filepath.Join(b.dir, image.InitrdName)
	if fileExists(kernel) && fileExists(initrd) {
		return nil
	}
	if !b.auto {
		return fmt.Errorf("%w: kernel: the guest image in --vm-image %s is missing (%s): run 'blixard image build --output %s' on this worker", vm.ErrInvalidSpec, b.dir, kernel, b.dir)
	}
	b.s.log.Info("building the default guest image on first use", "dir", b.dir)
	if _, err := image.Build(ctx, b.dir, image.Options{}); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("%w: kernel: this worker has no guest image and cannot build one (%v): run 'blixard image build --output %s' on it, or start the node with --vm-image DIR", vm.ErrInvalidSpec, err, b.dir)
	}
	b.s.log.Info("built the default guest image", "dir", b.dir)
	return nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// unavailableDriver stands in when this worker cannot run VMs (no QEMU):
// every start fails with the reason, so the VM is marked failed instead of
// waiting forever.
type unavailableDriver struct{ err error }

var _ vm.Driver = unavailableDriver{}

func (d unavailableDriver) Start(context.Context, vm.Spec) (vm.ID, error) {
	return "", fmt.Errorf("%w: this worker cannot run VMs: %v", vm.ErrInvalidSpec, d.err)
}
func (d unavailableDriver) WaitReady(context.Context, vm.ID) error { return vm.ErrNotFound }
func (d unavailableDriver) Stop(context.Context, vm.ID) error      { return vm.ErrNotFound }
func (d unavailableDriver) Kill(vm.ID) error                       { return vm.ErrNotFound }
func (d unavailableDriver) Status(context.Context, vm.ID) (vm.Status, error) {
	return vm.Status{}, vm.ErrNotFound
}
func (d unavailableDriver) Wait(id vm.ID) <-chan vm.Exit {
	ch := make(chan vm.Exit, 1)
	ch <- vm.Exit{ID: id, State: vm.StateFailed, Reason: "no such VM", ExitCode: -1, GuestExitCode: -1, Err: vm.ErrNotFound}
	return ch
}
func (d unavailableDriver) Recover(context.Context) ([]vm.ID, error) { return nil, nil }
func (d unavailableDriver) Capabilities() vm.Caps                    { return vm.Caps{Driver: "unavailable"} }
func (d unavailableDriver) Close() error                             { return nil }
