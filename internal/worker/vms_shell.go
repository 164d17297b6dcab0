package worker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/clock"
	"github.com/blixard/blixard/internal/vm"
)

// VMCluster is the VM reconciler's view of the replicated state and the
// proposals it makes.
type VMCluster interface {
	// VMs returns the VMs placed on this worker.
	VMs() []*pb.VM
	// VMsVersion changes whenever VMs' answer may have.
	VMsVersion() uint64
	// Changed returns a channel closed after the next applied change.
	Changed() <-chan struct{}
	ReportVM(ctx context.Context, r *pb.ReportVM) error
	// Sync returns once the local state holds every write committed before
	// the call (a linearizable read barrier), so a restarted worker does
	// not mistake a stale view for VMs it no longer owns.
	Sync(ctx context.Context) error
}

// VMReconcilerConfig configures a VMReconciler.
type VMReconcilerConfig struct {
	Core   VMCoreConfig
	Clock  clock.Clock
	Logger *slog.Logger
	// Stale classifies report errors: a stale report is dropped, others
	// are retried. nil treats none as stale.
	Stale IsStale
	// Prepare runs before every start (e.g. to build the default image);
	// an error wrapping vm.ErrInvalidSpec fails the VM for good, others
	// count as a failed start. nil does nothing.
	Prepare func(ctx context.Context, op VMOp) error
	// Tick is how often the reconciler re-plans without a state change
	// (restart backoffs end on ticks); default 200 ms.
	Tick time.Duration
	// HealthEvery is how often running VMs are asked for their run state
	// (QMP query-status); default 5 s.
	HealthEvery time.Duration
	// StopTimeout bounds one graceful stop (the driver kills after its own
	// grace period); default 30 s.
	StopTimeout time.Duration
	// KillOnExit kills every VM when Run returns, for nodes whose data
	// goes away with them; normally VMs outlive the worker process and the
	// next one adopts them.
	KillOnExit bool
}

// GenFile is the file in a VM's state directory that records the
// generation its process was started for, so a restarted worker knows
// whether an adopted VM is the current placement.
const GenFile = "blixard.generation"

// VMReconciler runs a VMCore against a vm.Driver: the goroutine shell
// around the deterministic core. Every goroutine it starts ends before Run
// returns.
type VMReconciler struct {
	cfg     VMReconcilerConfig
	cluster VMCluster
	drv     vm.Driver

	mu   sync.Mutex // guards core
	core *VMCore

	wake chan struct{}

	repMu   sync.Mutex
	repQ    []*pb.ReportVM
	repWake chan struct{}

	wg sync.WaitGroup
	// healthBusy is set while a health check runs (at most one at a time).
	healthBusy atomic.Bool
	// started is closed once recovery and the first sync are done.
	started chan struct{}
}

// NewVMReconciler returns a reconciler; Run drives it.
func NewVMReconciler(cfg VMReconcilerConfig, c VMCluster, d vm.Driver) *VMReconciler {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Stale == nil {
		cfg.Stale = func(error) bool { return false }
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 200 * time.Millisecond
	}
	if cfg.HealthEvery <= 0 {
		cfg.HealthEvery = 5 * time.Second
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	return &VMReconciler{
		cfg: cfg, cluster: c, drv: d, core: NewVMCore(cfg.Core),
		wake: make(chan struct{}, 1), repWake: make(chan struct{}, 1), started: make(chan struct{}),
	}
}

// Started is closed once the reconciler has adopted what still runs and
// made its first pass.
func (r *VMReconciler) Started() <-chan struct{} { return r.started }

// ConsoleLog returns the path of VM name's serial console log on this
// worker, if it has one.
func (r *VMReconciler) ConsoleLog(name string) (string, bool) {
	if vm.ID(name).Validate() != nil {
		return "", false
	}
	p := filepath.Join(r.cfg.Core.StateRoot, name, "console.log")
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() {
		return "", false
	}
	return p, true
}

// Running is the number of VMs whose process runs (or is starting or
// stopping) on this worker.
func (r *VMReconciler) Running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.core.Live())
}

func (r *VMReconciler) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run adopts the VMs an earlier worker process left running, waits until
// the local state is current, then converges until ctx ends.
func (r *VMReconciler) Run(ctx context.Context) {
	defer r.wg.Wait()
	r.recover(ctx)
	if !r.retry(ctx, "sync with the cluster", r.cluster.Sync) {
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.reporter(ctx)
	}()
	t := r.cfg.Clock.NewTicker(r.cfg.Tick)
	defer t.Stop()
	if r.cfg.KillOnExit {
		defer r.killAll()
	}
	var nextHealth time.Time
	first := true
	for {
		ch := r.cluster.Changed()
		now := r.cfg.Clock.Now()
		r.mu.Lock()
		plan := r.core.Plan(now, r.cluster.VMs())
		r.mu.Unlock()
		r.enqueue(plan.Reports)
		for _, op := range plan.Ops {
			r.dispatch(ctx, op)
		}
		if first {
			first = false
			close(r.started)
		}
		if !now.Before(nextHealth) && r.healthBusy.CompareAndSwap(false, true) {
			// Off the planning loop: a wedged QMP socket costs a
			// timeout per VM, which must not delay starting or stopping
			// the others.
			nextHealth = now.Add(r.cfg.HealthEvery)
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				defer r.healthBusy.Store(false)
				r.checkHealth(ctx)
			}()
		}
		seen := r.cluster.VMsVersion()
	wait:
		select {
		case <-ctx.Done():
			return
		case <-ch:
			// Most applied entries concern other things than this
			// worker's VMs; the ticker covers time-based work.
			if r.cluster.VMsVersion() == seen {
				ch = r.cluster.Changed()
				goto wait
			}
		case <-r.wake:
		case <-t.C():
		}
	}
}

// recover adopts the VMs that still run and tells the core which ones
// they are and which directories exist.
func (r *VMReconciler) recover(ctx context.Context) {
	ids, err := r.drv.Recover(ctx)
	if err != nil {
		r.cfg.Logger.Warn("recovering VMs left by the previous worker process", "err", err)
	}
	var live []RecoveredVM
	for _, id := range ids {
		rec := RecoveredVM{Name: string(id), Gen: readGen(filepath.Join(r.cfg.Core.StateRoot, string(id)))}
		if st, err := r.drv.Status(ctx, id); err == nil {
			rec.Ready = !st.ReadyAt.IsZero() || st.State == vm.StateRunning
			rec.StartedAt = st.StartedAt
		}
		live = append(live, rec)
		r.cfg.Logger.Info("adopted a VM that was still running", "vm", id, "generation", rec.Gen, "ready", rec.Ready)
	}
	var dirs []string
	if entries, err := os.ReadDir(r.cfg.Core.StateRoot); err == nil {
		for _, e := range entries {
			if vm.ID(e.Name()).Validate() == nil && (e.IsDir() || e.Type()&fs.ModeSymlink != 0) {
				dirs = append(dirs, e.Name())
			}
		}
	}
	r.mu.Lock()
	r.core.Recovered(live, dirs)
	watch := r.core.Live()
	r.mu.Unlock()
	for _, op := range watch {
		r.watch(ctx, op.Name, op.Run)
	}
}

func readGen(dir string) uint32 {
	b, err := os.ReadFile(filepath.Join(dir, GenFile))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// dispatch performs op in its own goroutine and feeds the outcome back.
func (r *VMReconciler) dispatch(ctx context.Context, op VMOp) {
	r.cfg.Logger.Debug("vm operation", "op", op.Kind, "vm", op.Name, "generation", op.Gen)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		err := r.exec(ctx, op)
		if ctx.Err() != nil && op.Kind == VMOpStart {
			return // shutting down; the next worker process reconciles
		}
		if err != nil {
			lvl := slog.LevelWarn
			if ctx.Err() != nil {
				lvl = slog.LevelDebug
			}
			r.cfg.Logger.Log(ctx, lvl, "vm operation failed", "op", op.Kind, "vm", op.Name, "generation", op.Gen, "err", err)
		} else if op.Kind != VMOpRemove {
			r.cfg.Logger.Info("vm operation done", "op", op.Kind, "vm", op.Name, "generation", op.Gen)
		}
		r.mu.Lock()
		r.core.Done(r.cfg.Clock.Now(), op, err)
		r.mu.Unlock()
		if op.Kind == VMOpStart && err == nil {
			r.watch(ctx, op.Name, op.Run)
		}
		r.poke()
	}()
}

// exec performs one operation against the driver and the file system.
func (r *VMReconciler) exec(ctx context.Context, op VMOp) error {
	id := vm.ID(op.Name)
	switch op.Kind {
	case VMOpStart:
		if r.cfg.Prepare != nil {
			if err := r.cfg.Prepare(ctx, op); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(op.Dir, 0o700); err != nil {
			return fmt.Errorf("create the VM's state dir: %w", err)
		}
		if err := os.WriteFile(filepath.Join(op.Dir, GenFile), []byte(strconv.FormatUint(uint64(op.Gen), 10)+"\n"), 0o600); err != nil {
			return fmt.Errorf("record the VM's generation: %w", err)
		}
		_, err := r.drv.Start(ctx, op.Spec)
		return err
	case VMOpStop:
		// A stop in flight completes even when the node shuts down (it
		// was asked for); the driver kills after its grace period.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.StopTimeout)
		defer cancel()
		err := r.drv.Stop(sctx, id)
		if errors.Is(err, vm.ErrNotFound) {
			return nil
		}
		return err
	case VMOpKill:
		err := r.drv.Kill(id)
		if errors.Is(err, vm.ErrNotFound) {
			return nil
		}
		return err
	case VMOpRemove:
		if filepath.Dir(op.Dir) != filepath.Clean(r.cfg.Core.StateRoot) {
			return fmt.Errorf("refusing to remove %s: not a VM directory under %s", op.Dir, r.cfg.Core.StateRoot)
		}
		return os.RemoveAll(op.Dir)
	}
	return fmt.Errorf("unknown vm operation %v", op.Kind)
}

// watch feeds the readiness and the exit of one incarnation to the core.
func (r *VMReconciler) watch(ctx context.Context, name string, run uint64) {
	id := vm.ID(name)
	exit := r.drv.Wait(id)
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		if err := r.drv.WaitReady(ctx, id); err != nil {
			return
		}
		r.mu.Lock()
		r.core.Ready(name, run)
		r.mu.Unlock()
		r.poke()
	}()
	go func() {
		defer r.wg.Done()
		select {
		case <-ctx.Done():
		case e := <-exit:
			if e.Err != nil {
				return // driver closed
			}
			r.cfg.Logger.Info("vm exited", "vm", name, "state", e.State, "reason", e.Reason)
			r.mu.Lock()
			r.core.Exited(r.cfg.Clock.Now(), name, run, e)
			r.mu.Unlock()
			r.poke()
		}
	}()
}

// checkHealth asks the driver about every running VM (for QEMU: process
// liveness and QMP query-status) and marks the ones whose guest is
// wedged; the core kills them and applies the restart policy.
func (r *VMReconciler) checkHealth(ctx context.Context) {
	r.mu.Lock()
	live := r.core.Live()
	r.mu.Unlock()
	for _, op := range live {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := r.drv.Status(cctx, vm.ID(op.Name))
		cancel()
		if err != nil {
			continue
		}
		switch st.RunState {
		case "guest-panicked", "internal-error", "shutdown":
			reason := "unhealthy: QEMU reports run state " + st.RunState
			r.cfg.Logger.Warn("vm is unhealthy; killing it", "vm", op.Name, "run_state", st.RunState)
			r.mu.Lock()
			r.core.Unhealthy(op.Name, op.Run, reason)
			r.mu.Unlock()
			r.poke()
		}
	}
}

// killAll ends every VM (KillOnExit).
func (r *VMReconciler) killAll() {
	r.mu.Lock()
	live := r.core.Live()
	r.mu.Unlock()
	for _, op := range live {
		if err := r.drv.Kill(vm.ID(op.Name)); err != nil && !errors.Is(err, vm.ErrNotFound) {
			r.cfg.Logger.Warn("killing a VM on exit", "vm", op.Name, "err", err)
		}
	}
}

func (r *VMReconciler) enqueue(reports []*pb.ReportVM) {
	if len(reports) == 0 {
		return
	}
	r.repMu.Lock()
	r.repQ = append(r.repQ, reports...)
	r.repMu.Unlock()
	select {
	case r.repWake <- struct{}{}:
	default:
	}
}

// reporter proposes the reports in order, each until it is recorded or
// refused as stale (the VM moved on: nothing to tell about it any more).
func (r *VMReconciler) reporter(ctx context.Context) {
	for {
		r.repMu.Lock()
		var next *pb.ReportVM
		if len(r.repQ) > 0 {
			next = r.repQ[0]
		}
		r.repMu.Unlock()
		if next == nil {
			select {
			case <-ctx.Done():
				return
			case <-r.repWake:
				continue
			}
		}
		ok := r.retry(ctx, "report vm state", func(c context.Context) error {
			err := r.cluster.ReportVM(c, next)
			if err != nil && r.cfg.Stale(err) {
				r.cfg.Logger.Debug("vm report refused as stale", "vm", next.Name, "generation", next.Generation, "err", err)
				return nil
			}
			return err
		})
		if !ok {
			return
		}
		r.repMu.Lock()
		r.repQ = r.repQ[1:]
		r.repMu.Unlock()
	}
}

// retry calls f until it succeeds (true) or ctx ends (false), backing off
// 50 ms → 2 s.
func (r *VMReconciler) retry(ctx context.Context, what string, f func(context.Context) error) bool {
	backoff := 50 * time.Millisecond
	for {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := f(c)
		cancel()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		r.cfg.Logger.Debug(what+" failed; retrying", "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
