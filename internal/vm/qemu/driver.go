package qemu

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blixard/blixard/internal/vm"
	"github.com/blixard/blixard/internal/vm/guard"
)

const (
	defaultQEMU      = "qemu-system-x86_64"
	defaultStopGrace = 10 * time.Second
	// defaultConsoleMax is the size at which a VM's console.log is rotated
	// to console.log.1 (one previous part is kept).
	defaultConsoleMax   = 16 << 20
	defaultStartTimeout = 10 * time.Second
	// killWait bounds how long Kill waits for a SIGKILLed QEMU to be gone;
	// the kernel takes milliseconds, unless the process is stuck in
	// uninterruptible I/O.
	killWait = 10 * time.Second
	// repressEvery is how often Stop presses the power button again: a
	// press that lands before the guest listens (just booted) is lost.
	repressEvery = time.Second
	lockName     = ".driver.lock"
	qemuPath     = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// Config configures a Driver.
type Config struct {
	// StateRoot holds a directory per VM and the driver's lock. Required.
	StateRoot string
	// QEMU is the qemu-system-x86_64 binary; empty means found in PATH.
	QEMU string
	// Accel is "auto" (or empty), "kvm" or "tcg"; see the package doc.
	Accel string
	// TSCKHz is passed to TCG guests as tsc_early_khz; 0 means measured.
	TSCKHz int
	// StopGrace is how long Stop lets the guest power off before it kills
	// QEMU; 0 means 10 s.
	StopGrace time.Duration
	// StartTimeout bounds Start until QEMU answers on QMP (on top of the
	// context's deadline); 0 means 10 s.
	StartTimeout time.Duration
	// ConsoleMax is the size at which a watched VM's console.log is copied
	// to console.log.1 and truncated; 0 means 16 MiB.
	ConsoleMax int64
	// Guard, when set, is the command that fences QEMU with a lease
	// (`blixard vm-guard`, see package guard): the driver runs Guard
	// followed by guard.Args(Lease, LeaseTTL, console log) and the QEMU
	// command line, so QEMU stops by itself once Lease has not been
	// renewed for LeaseTTL. Renewing Lease is the caller's job. Empty runs
	// QEMU directly, with no fencing.
	Guard    []string
	Lease    string
	LeaseTTL time.Duration
	Logger   *slog.Logger // nil discards
}

// Driver runs VMs as QEMU microvm processes. It implements vm.Driver.
type Driver struct {
	cfg      Config
	root     string
	qemu     string
	accel    string
	accelWhy string
	tscKHz   int
	boot     string
	host     hostProbe
	log      *slog.Logger
	lock     *os.File

	mu       sync.Mutex
	closed   bool
	vms      map[vm.ID]*instance
	starting map[vm.ID]bool
	wg       sync.WaitGroup // monitor goroutines
}

var _ vm.Driver = (*Driver)(nil)

// New checks the host (QEMU binary, accelerator), locks the state root and
// returns a driver. Call Recover next to adopt VMs an earlier driver left
// running.
func New(cfg Config) (*Driver, error) {
	return newDriver(cfg, realHost())
}

func newDriver(cfg Config, host hostProbe) (*Driver, error) {
	if cfg.StateRoot == "" {
		return nil, errors.New("qemu driver: StateRoot is required")
	}
	root, err := filepath.Abs(cfg.StateRoot)
	if err != nil {
		return nil, fmt.Errorf("qemu driver: state root: %w", err)
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = defaultStopGrace
	}
	if cfg.ConsoleMax <= 0 {
		cfg.ConsoleMax = defaultConsoleMax
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	if len(cfg.Guard) > 0 && (cfg.Lease == "" || cfg.LeaseTTL <= 0) {
		return nil, errors.New("qemu driver: a Guard needs a Lease file and a positive LeaseTTL")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	bin := cfg.QEMU
	if bin == "" {
		bin = defaultQEMU
	}
	qemu, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("qemu driver: %s not found: install qemu-system-x86 (apt-get install qemu-system-x86): %w", bin, err)
	}
	accel, why, err := chooseAccel(cfg.Accel, host)
	if err != nil {
		return nil, fmt.Errorf("qemu driver: %w", err)
	}
	tsc := cfg.TSCKHz
	if accel == AccelTCG && tsc == 0 {
		tsc = measureTSCKHz()
	}
	if mkdirErr := os.MkdirAll(root, 0o700); mkdirErr != nil {
		return nil, fmt.Errorf("qemu driver: create state root: %w", mkdirErr)
	}
	lock, err := os.OpenFile(filepath.Join(root, lockName), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qemu driver: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("qemu driver: state root %s is in use by another driver (another blixard worker?)", root)
		}
		return nil, fmt.Errorf("qemu driver: lock state root: %w", err)
	}
	d := &Driver{
		cfg: cfg, root: root, qemu: qemu, accel: accel, accelWhy: why, tscKHz: tsc,
		boot: bootID(), host: host, log: log, lock: lock,
		vms: map[vm.ID]*instance{}, starting: map[vm.ID]bool{},
	}
	log.Info("qemu driver ready", "state_root", root, "qemu", qemu, "accel", accel, "why", why, "tsc_khz", tsc)
	return d, nil
}

// Accel returns the accelerator in use and why it was chosen.
func (d *Driver) Accel() (accel, why string) { return d.accel, d.accelWhy }

// Capabilities implements vm.Driver.
func (d *Driver) Capabilities() vm.Caps {
	modes := []vm.NetworkMode{vm.NetworkNone, vm.NetworkUser}
	if d.host.effectiveID() == 0 && d.host.tunPresent() {
		modes = append(modes, vm.NetworkTap)
	}
	return vm.Caps{
		Driver: "qemu-microvm", Accel: d.accel, NetworkModes: modes,
		Disk: true, GracefulStop: true, Recover: true, MaxVCPUs: vm.MaxVCPUs,
	}
}

// stateDir is where the VM's files go.
func (d *Driver) stateDir(spec *vm.Spec) (string, error) {
	if spec.StateDir == "" {
		return filepath.Join(d.root, string(spec.ID)), nil
	}
	dir, err := filepath.Abs(spec.StateDir)
	if err != nil {
		return "", fmt.Errorf("%w: state dir: %v", vm.ErrInvalidSpec, err)
	}
	return dir, nil
}

// checkHost checks what Validate cannot: files, sizes, privileges.
func (d *Driver) checkHost(spec *vm.Spec) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{vm.ErrInvalidSpec}, args...)...))
	}
	fileSize := func(what, p, hint string) int64 {
		st, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			bad("%s %s does not exist%s", what, p, hint)
		case err != nil:
			bad("%s: %v", what, err)
		case !st.Mode().IsRegular():
			bad("%s %s is not a regular file", what, p)
		default:
			return st.Size()
		}
		return -1
	}
	const buildHint = " (build a guest image with 'blixard image build --output DIR')"
	ksize := fileSize("kernel", spec.Kernel, buildHint)
	var isize int64
	if spec.Initrd != "" {
		isize = fileSize("initrd", spec.Initrd, buildHint)
	}
	if spec.Disk != nil {
		fileSize("disk", spec.Disk.Path, "")
	}
	if ksize > 0 && !kernelFormatOK(spec.Kernel) {
		bad("kernel %s is neither an ELF vmlinux nor a bzImage", spec.Kernel)
	}
	if ksize > 0 && isize >= 0 {
		if end, ok := elfFootprint(spec.Kernel); ok {
			// Besides its image the kernel needs a few MiB before init
			// runs; measured with Debian's cloud kernel: image ends at 62
			// MiB, 70 MiB panics ("System is deadlocked on memory"), 72
			// boots with 10 MiB free. 10 MiB of slack leaves some room.
			need := int((end + uint64(isize) + 10<<20 + 1<<20 - 1) >> 20)
			if spec.MemoryMiB < need {
				bad("memory %d MiB is too small for kernel %s, which alone occupies %d MiB; use at least %d", spec.MemoryMiB, spec.Kernel, end>>20, need)
			}
		}
	}
	n := spec.Network
	for _, f := range n.Forwards {
		if f.HostAddr != "" {
			if a, err := netip.ParseAddr(f.HostAddr); err == nil && !a.Is4() {
				bad("port forward %s: QEMU's user networking listens on IPv4 addresses only", f)
			}
		}
	}
	if n.Mode == vm.NetworkTap {
		if d.host.effectiveID() != 0 {
			bad("network mode tap needs root (CAP_NET_ADMIN) to attach %s; use mode user", n.TapDevice)
		} else if !d.host.tunPresent() {
			bad("network mode tap needs /dev/net/tun (load the tun module)")
		}
	}
	return errors.Join(errs...)
}

// kernelFormatOK reports whether p starts like an ELF or carries the x86
// boot protocol header; QEMU would hang booting anything else.
func kernelFormatOK(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	hdr := make([]byte, 0x206)
	n, _ := io.ReadFull(f, hdr)
	hdr = hdr[:n]
	return strings.HasPrefix(string(hdr), elf.ELFMAG) || (n >= 0x206 && string(hdr[0x202:0x206]) == "HdrS")
}

// elfFootprint returns the physical end of an ELF kernel's loadable
// segments: the guest needs that much memory before anything else runs.
func elfFootprint(p string) (uint64, bool) {
	f, err := elf.Open(p)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	var end uint64
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_LOAD && prog.Paddr+prog.Memsz > end {
			end = prog.Paddr + prog.Memsz
		}
	}
	return end, end > 0
}

// Start implements vm.Driver.
func (d *Driver) Start(ctx context.Context, spec vm.Spec) (vm.ID, error) {
	if err := spec.Validate(); err != nil {
		return "", fmt.Errorf("vm %s: %w", spec.ID, err)
	}
	id := spec.ID
	if err := d.checkHost(&spec); err != nil {
		return "", fmt.Errorf("vm %s: %w", id, err)
	}
	dir, err := d.stateDir(&spec)
	if err != nil {
		return "", fmt.Errorf("vm %s: %w", id, err)
	}
	p := pathsFor(dir)
	if len(p.qmp) > maxSocketPath {
		return "", fmt.Errorf("vm %s: %w: state dir %s is too long for a unix socket path (%d > %d bytes); use a shorter state root", id, vm.ErrInvalidSpec, dir, len(p.qmp), maxSocketPath)
	}
	cmdline := kernelCmdline(&spec, d.accel, d.tscKHz)
	if len(cmdline) > maxCmdline {
		return "", fmt.Errorf("vm %s: %w: kernel command line is %d bytes, the kernel takes at most %d", id, vm.ErrInvalidSpec, len(cmdline), maxCmdline)
	}

	d.mu.Lock()
	switch {
	case d.closed:
		d.mu.Unlock()
		return "", vm.ErrClosed
	case d.starting[id]:
		d.mu.Unlock()
		return "", fmt.Errorf("vm %s: %w (being started or recovered)", id, vm.ErrExists)
	case d.vms[id] != nil && !d.vms[id].exited():
		pid := d.vms[id].pid
		d.mu.Unlock()
		return "", fmt.Errorf("vm %s: %w (pid %d)", id, vm.ErrExists, pid)
	}
	d.starting[id] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.starting, id)
		d.mu.Unlock()
	}()

	ctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	in, err := d.launch(ctx, &spec, p, cmdline)
	if err != nil {
		return "", fmt.Errorf("vm %s: %w", id, err)
	}

	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		in.abort()
		return "", vm.ErrClosed
	}
	d.vms[id] = in
	d.wg.Add(1)
	go in.monitor()
	d.mu.Unlock()
	d.log.Info("vm started", "id", id, "pid", in.pid, "accel", d.accel, "state_dir", dir)
	return id, nil
}

// launch prepares the state directory, starts QEMU, attaches to QMP and
// resumes the guest. On failure nothing it created is left.
func (d *Driver) launch(ctx context.Context, spec *vm.Spec, p vmPaths, cmdline string) (*instance, error) {
	id := spec.ID
	// A QEMU from an earlier driver that nobody adopted must not get a
	// twin: two guests on one disk and one console.
	if rec, err := readRecord(p.record); err == nil {
		if pid, ok := d.verifyLive(rec, p); ok {
			var qpid int
			if b, err := os.ReadFile(p.pid); err == nil {
				if _, err := fmt.Sscan(string(b), &qpid); err == nil && qpid > 0 {
					pid = qpid // QEMU's own pid, under a guard
				}
			}
			return nil, fmt.Errorf("%w as pid %d, started by an earlier driver (Recover adopts it)", vm.ErrExists, pid)
		}
	}
	link := ""
	if def := filepath.Join(d.root, string(id)); def != p.dir {
		link = def
	}
	_, statErr := os.Stat(p.dir)
	createdDir := errors.Is(statErr, fs.ErrNotExist)
	cleanup := func() {
		for _, f := range []string{p.qmp, p.pid, p.record, p.qemuLog, p.console} {
			_ = os.Remove(f)
		}
		if createdDir {
			_ = os.RemoveAll(p.dir)
		}
		if link != "" {
			_ = os.Remove(link)
		}
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if link != "" {
		if err := ensureLink(link, p.dir); err != nil {
			if createdDir {
				_ = os.RemoveAll(p.dir)
			}
			return nil, err
		}
	}
	// Leftovers of a VM that died unwatched; verified dead above.
	for _, f := range []string{p.qmp, p.pid, p.qemuLog} {
		_ = os.Remove(f)
	}
	// The previous run's console (how it ended) becomes console.log.1;
	// this run's starts empty (QEMU appends, so it would not truncate).
	if err := os.Rename(p.console, p.console+PreviousConsoleSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("keep the previous console log: %w", err)
	}
	rec := &record{Version: recordVersion, Spec: *spec, BootID: d.boot, StartedAt: time.Now(), Accel: d.accel}
	if err := writeRecord(p.record, rec); err != nil {
		cleanup()
		return nil, err
	}
	logf, err := os.OpenFile(p.qemuLog, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("create qemu log: %w", err)
	}
	argv := append([]string{d.qemu}, qemuArgs(spec, p, d.accel, cmdline)...)
	if g := d.cfg.Guard; len(g) > 0 {
		argv = append(append(slices.Clone(g), guard.Args(d.cfg.Lease, d.cfg.LeaseTTL, p.console)...), argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.dir
	cmd.Env = []string{qemuPath}
	cmd.Stdout, cmd.Stderr = logf, logf // a file, so no copying goroutine and no SIGPIPE if we die
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	pid := cmd.Process.Pid
	// fail ends a launch that went wrong. When QEMU quit by itself (a
	// kernel it cannot load, a bad option), its own message is the error;
	// otherwise it is killed and its last words are added.
	fail := func(in *instance, err error) (*instance, error) {
		reaped := false
		if in != nil {
			if in.waitGone(time.Second) {
				var ws unix.WaitStatus
				if got, _ := unix.Wait4(pid, &ws, 0, nil); got == pid {
					reaped = true
					msg := lastLogLine(p.qemuLog)
					if msg == "" {
						msg = "no message"
					}
					err = fmt.Errorf("QEMU exited during startup (status %d): %s", ws.ExitStatus(), msg)
				}
			}
			if in.qmp != nil {
				_ = in.qmp.Close()
			}
			_ = in.pidfd.Close()
		}
		if !reaped { // not reaped yet, so the pid is still ours to signal
			_ = unix.Kill(pid, unix.SIGKILL)
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, 0, nil)
			if msg := lastLogLine(p.qemuLog); msg != "" {
				err = fmt.Errorf("%w (qemu: %s)", err, msg)
			}
		}
		cleanup()
		return nil, err
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	// From here the driver reaps QEMU itself (wait4), so Go's handle goes.
	_ = cmd.Process.Release()
	if err != nil {
		return fail(nil, fmt.Errorf("pidfd_open: %w", err))
	}
	in := newInstance(d, spec, p, link, pid, os.NewFile(uintptr(fd), "pidfd"), rec.StartedAt, false)
	rec.PID = pid
	if st, err := readProc(pid); err == nil {
		rec.StartTicks = st.startTicks
	}
	if err := writeRecord(p.record, rec); err != nil {
		return fail(in, err)
	}
	if err := in.attach(ctx); err != nil {
		return fail(in, err)
	}
	if err := in.qmp.execute(ctx, "cont", nil, nil); err != nil {
		return fail(in, fmt.Errorf("resume guest: %w", err))
	}
	in.openChild()
	return in, nil
}

// ensureLink makes link a symlink to dir, so Recover finds a VM whose
// state dir is outside the root.
func ensureLink(link, dir string) error {
	if t, err := os.Readlink(link); err == nil {
		if t == dir {
			return nil
		}
		return fmt.Errorf("%w: %s already points to %s (another VM's state dir)", vm.ErrExists, link, t)
	} else if _, err := os.Lstat(link); err == nil {
		return fmt.Errorf("%w: %s exists and is not a link to %s; remove it or use the default state dir", vm.ErrExists, link, dir)
	}
	if err := os.Symlink(dir, link); err != nil {
		return fmt.Errorf("link state dir: %w", err)
	}
	return nil
}

// lastLogLine returns the last non-empty line of QEMU's log (its error
// message when it failed), without QEMU's timestamp prefix.
func lastLogLine(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" {
			continue
		}
		// "-msg timestamp=on" prefixes "2026-01-02T03:04:05.678901Z ".
		if f, rest, ok := strings.Cut(l, " "); ok && strings.HasSuffix(f, "Z") && strings.Contains(f, "T") {
			l = rest
		}
		return strings.TrimPrefix(l, "qemu-system-x86_64: ")
	}
	return ""
}

// verifyLive reports whether the QEMU a record names is still running:
// same boot, the pid alive (not a zombie) with the recorded start time,
// and its command line naming this VM's QMP socket, so a reused pid never
// matches.
func (d *Driver) verifyLive(rec *record, p vmPaths) (int, bool) {
	if rec.BootID == "" || rec.BootID != d.boot {
		return 0, false
	}
	pid := rec.PID
	if pid == 0 {
		b, err := os.ReadFile(p.pid)
		if err != nil {
			return 0, false
		}
		if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 0 {
			return 0, false
		}
	}
	st, err := readProc(pid)
	if err != nil || st.dead() {
		return 0, false
	}
	if rec.PID == 0 && st.ppid > 1 {
		// QEMU's own pid file names QEMU; under a guard the driver's
		// process is its parent, whose command line names the socket too.
		if pargs, argsErr := procArgs(st.ppid); argsErr == nil && slices.ContainsFunc(pargs, func(a string) bool { return strings.Contains(a, "path="+esc(p.qmp)+",") }) {
			if pst, parentErr := readProc(st.ppid); parentErr == nil && !pst.dead() {
				pid, st = st.ppid, pst
			}
		}
	}
	if rec.StartTicks != 0 && st.startTicks != rec.StartTicks {
		return 0, false
	}
	args, err := procArgs(pid)
	if err != nil {
		return 0, false
	}
	want := "path=" + esc(p.qmp) + ","
	if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, want) }) {
		return 0, false
	}
	return pid, true
}

func (d *Driver) get(id vm.ID) (*instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, vm.ErrClosed
	}
	in := d.vms[id]
	if in == nil {
		return nil, fmt.Errorf("vm %s: %w", id, vm.ErrNotFound)
	}
	return in, nil
}

// WaitReady implements vm.Driver.
func (d *Driver) WaitReady(ctx context.Context, id vm.ID) error {
	in, err := d.get(id)
	if err != nil {
		return err
	}
	select {
	case <-in.ready:
		return nil
	case <-in.done:
		if isClosed(in.ready) {
			return nil // ready, then exited
		}
		in.mu.Lock()
		defer in.mu.Unlock()
		return fmt.Errorf("vm %s: %w before it was ready: %s", id, vm.ErrExited, in.exit.Reason)
	case <-in.detach:
		return vm.ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("vm %s: waiting for the readiness marker: %w", id, ctx.Err())
	}
}

// Stop implements vm.Driver. A guest that is still booting cannot act on
// the power button, so Stop first waits for readiness (at most half the
// grace), then presses the button, again every second, until QEMU exits or
// the grace or ctx ends; then it kills QEMU.
func (d *Driver) Stop(ctx context.Context, id vm.ID) error {
	in, err := d.get(id)
	if err != nil {
		return err
	}
	if in.exited() {
		return nil
	}
	in.setIntent(intentStop)
	grace := time.NewTimer(d.cfg.StopGrace)
	defer grace.Stop()
	half := time.NewTimer(d.cfg.StopGrace / 2)
	defer half.Stop()
	select {
	case <-in.ready:
	case <-half.C:
	case <-in.done:
		return nil
	case <-in.detach:
		return vm.ErrClosed
	case <-ctx.Done():
		return in.forceStop()
	}
	press := func() {
		pctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := in.qmp.execute(pctx, "system_powerdown", nil, nil); err != nil && !in.exited() {
			d.log.Warn("power button press failed", "id", id, "err", err)
		}
	}
	press()
	again := time.NewTicker(repressEvery)
	defer again.Stop()
	for {
		select {
		case <-in.done:
			return nil
		case <-in.detach:
			return vm.ErrClosed
		case <-again.C:
			press()
		case <-grace.C:
			return in.forceStop()
		case <-ctx.Done():
			return in.forceStop()
		}
	}
}

// Kill implements vm.Driver.
func (d *Driver) Kill(id vm.ID) error {
	in, err := d.get(id)
	if err != nil {
		return err
	}
	in.setIntent(intentKill)
	return in.kill()
}

// Status implements vm.Driver.
func (d *Driver) Status(ctx context.Context, id vm.ID) (vm.Status, error) {
	in, err := d.get(id)
	if err != nil {
		return vm.Status{}, err
	}
	if in.exited() {
		return in.status(), nil
	}
	if in.processGone() {
		// The monitor finishes within milliseconds of the exit.
		select {
		case <-in.done:
			return in.status(), nil
		case <-ctx.Done():
			return vm.Status{}, fmt.Errorf("vm %s: status: %w", id, ctx.Err())
		}
	}
	st := in.status()
	rs, err := in.qmp.queryStatus(ctx)
	switch {
	case err != nil && in.processGone():
		select {
		case <-in.done:
			return in.status(), nil
		case <-ctx.Done():
			return vm.Status{}, fmt.Errorf("vm %s: status: %w", id, ctx.Err())
		}
	case err != nil:
		st.Reason = fmt.Sprintf("QEMU (pid %d) runs but does not answer on QMP: %v", in.pid, err)
	default:
		st.RunState = rs
		if rs != "running" {
			st.Reason = "QEMU reports run state " + rs
		}
	}
	return st, nil
}

// Wait implements vm.Driver.
func (d *Driver) Wait(id vm.ID) <-chan vm.Exit {
	ch := make(chan vm.Exit, 1)
	in, err := d.get(id)
	if err != nil {
		ch <- vm.Exit{ID: id, State: vm.StateFailed, Reason: err.Error(), ExitCode: -1, GuestExitCode: -1, Err: err}
		return ch
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.exit != nil {
		ch <- *in.exit
	} else {
		in.waiters = append(in.waiters, ch)
	}
	return ch
}

// Close implements vm.Driver: VMs keep running for a later driver.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	var live []*instance
	for _, in := range d.vms {
		if !in.exited() {
			live = append(live, in)
		}
	}
	d.mu.Unlock()
	for _, in := range live {
		in.requestDetach()
	}
	d.wg.Wait()
	for _, in := range live {
		in.release()
	}
	err := unix.Flock(int(d.lock.Fd()), unix.LOCK_UN)
	if cerr := d.lock.Close(); err == nil {
		err = cerr
	}
	d.log.Info("qemu driver closed; VMs left running", "count", len(live))
	if err != nil {
		return fmt.Errorf("qemu driver: unlock state root: %w", err)
	}
	return nil
}

// Recover implements vm.Driver.
func (d *Driver) Recover(ctx context.Context) ([]vm.ID, error) {
	entries, err := os.ReadDir(d.root)
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	var ids []vm.ID
	var errs []error
	for _, e := range entries {
		id := vm.ID(e.Name())
		if id.Validate() != nil {
			continue // the lock file, temporary files
		}
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return ids, vm.ErrClosed
		}
		// Skip VMs this driver runs or is starting; reserve the rest, so a
		// concurrent Start of the same ID waits its turn (ErrExists).
		if d.starting[id] || (d.vms[id] != nil && !d.vms[id].exited()) {
			d.mu.Unlock()
			continue
		}
		d.starting[id] = true
		d.mu.Unlock()
		adopted, err := d.recoverOne(ctx, id)
		d.mu.Lock()
		delete(d.starting, id)
		d.mu.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("vm %s: %w", id, err))
			continue
		}
		if adopted {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	if err := errors.Join(errs...); err != nil {
		return ids, fmt.Errorf("recover: %w", err)
	}
	return ids, nil
}

// recoverOne adopts the VM in root/id if its QEMU still runs, or records
// how it ended and cleans up after it if not.
func (d *Driver) recoverOne(ctx context.Context, id vm.ID) (bool, error) {
	entry := filepath.Join(d.root, string(id))
	dir := entry
	link := ""
	if t, err := os.Readlink(entry); err == nil {
		dir, link = t, entry
	}
	p := pathsFor(dir)
	rec, err := readRecord(p.record)
	if errors.Is(err, fs.ErrNotExist) {
		if link != "" {
			// A link with no VM behind it is a leftover.
			if _, serr := os.Stat(dir); serr != nil {
				_ = os.Remove(link)
			}
		}
		return false, nil // a stopped VM's directory: only its console log
	}
	if err != nil {
		return false, err
	}
	rec.Spec.ID = id
	pid, alive := d.verifyLive(rec, p)
	if !alive {
		in := newInstance(d, &rec.Spec, p, link, 0, nil, rec.StartedAt, true)
		in.scanConsole()
		in.closeConsole()
		e := in.classifyUnwatched()
		in.cleanupFiles()
		in.complete(e)
		d.mu.Lock()
		d.vms[id] = in
		d.mu.Unlock()
		d.log.Info("vm ended while no driver watched", "id", id, "state", e.State, "reason", e.Reason)
		return false, nil
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return false, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	// The pid might have been reused between the check and the open;
	// the pidfd pins the process, so checking again settles it.
	if p2, ok := d.verifyLive(rec, p); !ok || p2 != pid {
		pidfd.Close()
		return false, fmt.Errorf("QEMU pid %d exited during recovery; run Recover again", pid)
	}
	in := newInstance(d, &rec.Spec, p, link, pid, pidfd, rec.StartedAt, true)
	actx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	if attachErr := in.attach(actx); attachErr != nil {
		pidfd.Close()
		return false, fmt.Errorf("QEMU pid %d runs but its QMP socket does not answer (is another process attached to it?): %w", pid, attachErr)
	}
	rs, err := in.qmp.queryStatus(actx)
	if err == nil && rs == "prelaunch" {
		// The earlier driver died between starting QEMU and resuming it.
		err = in.qmp.execute(actx, "cont", nil, nil)
	}
	if err != nil {
		in.qmp.Close()
		pidfd.Close()
		return false, fmt.Errorf("QEMU pid %d: %w", pid, err)
	}
	in.scanConsole()
	in.openChild()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		in.release()
		return false, vm.ErrClosed
	}

	d.vms[id] = in
	d.wg.Add(1)
	go in.monitor()
	d.mu.Unlock()
	d.log.Info("vm adopted", "id", id, "pid", pid, "run_state", rs, "ready", isClosed(in.ready))
	return true, nil
}
