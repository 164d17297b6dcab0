package vm

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// FakeHost is a simulated machine for Fake drivers. It outlives them, as
// real VMs outlive the worker process that started them: after a
// simulated worker restart, a new driver from NewDriver adopts the VMs with
// Recover. Everything happens synchronously inside the calls (no
// goroutines, no timers), so a simulation that drives it from one
// goroutine is deterministic. Faults and guest behaviour are injected with
// MarkReady, GuestExit, Crash and FailNextStart.
type FakeHost struct {
	mu sync.Mutex
	// now stamps StartedAt, ReadyAt and Exit.At.
	now func() time.Time
	// manualReady keeps new VMs StateStarting until MarkReady.
	manualReady bool
	vms         map[ID]*fakeVM
	nextPID     int
	failNext    error
}

// FakeOptions configures a FakeHost.
type FakeOptions struct {
	// Now stamps times; nil means the zero time (fully reproducible).
	Now func() time.Time
	// ManualReady keeps new VMs starting until MarkReady; otherwise they
	// are ready as soon as Start returns.
	ManualReady bool
}

// NewFakeHost returns an empty simulated machine.
func NewFakeHost(o FakeOptions) *FakeHost {
	now := o.Now
	if now == nil {
		now = func() time.Time { return time.Time{} }
	}
	return &FakeHost{now: now, manualReady: o.ManualReady, vms: map[ID]*fakeVM{}, nextPID: 1000}
}

type fakeVM struct {
	spec    Spec
	status  Status
	exit    *Exit
	owner   *Fake // driver that watches it; nil after that driver closed
	ready   chan struct{}
	done    chan struct{}
	waiters []chan Exit
}

// Fake is a Driver over a FakeHost.
type Fake struct {
	host   *FakeHost
	closed bool // guarded by host.mu
}

var _ Driver = (*Fake)(nil)

// NewDriver returns a driver for the host, like a worker process starting.
func (h *FakeHost) NewDriver() *Fake { return &Fake{host: h} }

// FailNextStart makes the next Start fail with err (after validation).
func (h *FakeHost) FailNextStart(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failNext = err
}

// Running lists the VMs that are up on the host, adopted or not, sorted.
func (h *FakeHost) Running() []ID {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ids []ID
	for id, v := range h.vms {
		if v.exit == nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// MarkReady makes the guest print its readiness marker.
func (h *FakeHost) MarkReady(id ID) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, err := h.live(id)
	if err != nil {
		return err
	}
	h.markReady(v)
	return nil
}

// GuestExit simulates the guest command exiting with code: the guest
// reports it and powers off cleanly.
func (h *FakeHost) GuestExit(id ID, code int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, err := h.live(id)
	if err != nil {
		return err
	}
	h.finish(v, Exit{State: StateStopped, Reason: "guest powered off", ExitCode: 0, GuestExitCode: code})
	return nil
}

// Crash simulates the hypervisor dying (e.g. kill -9 or an OOM kill).
func (h *FakeHost) Crash(id ID, reason string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, err := h.live(id)
	if err != nil {
		return err
	}
	if reason == "" {
		reason = "hypervisor killed by signal SIGKILL"
	}
	h.finish(v, Exit{State: StateFailed, Reason: reason, ExitCode: -1, Signal: "SIGKILL", GuestExitCode: -1})
	return nil
}

func (h *FakeHost) live(id ID) (*fakeVM, error) {
	v, ok := h.vms[id]
	if !ok || v.exit != nil {
		return nil, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	return v, nil
}

func (h *FakeHost) markReady(v *fakeVM) {
	if v.status.State == StateStarting {
		v.status.State = StateRunning
		v.status.ReadyAt = h.now()
		close(v.ready)
	}
}

// finish ends v and tells its owner's waiters. Callers hold h.mu.
func (h *FakeHost) finish(v *fakeVM, e Exit) {
	e.ID = v.spec.ID
	e.At = h.now()
	v.exit = &e
	v.status.State = e.State
	v.status.Reason = e.Reason
	v.status.PID = 0
	v.status.RunState = ""
	close(v.done)
	for _, w := range v.waiters {
		w <- e
	}
	v.waiters = nil
}

// Start implements Driver.
func (f *Fake) Start(ctx context.Context, spec Spec) (ID, error) {
	if err := spec.Validate(); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	h := f.host
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.closed {
		return "", ErrClosed
	}
	if v, ok := h.vms[spec.ID]; ok && v.exit == nil {
		return "", fmt.Errorf("vm %s: %w (pid %d)", spec.ID, ErrExists, v.status.PID)
	}
	if err := h.failNext; err != nil {
		h.failNext = nil
		return "", fmt.Errorf("vm %s: start: %w", spec.ID, err)
	}
	h.nextPID++
	v := &fakeVM{
		spec:  spec,
		owner: f,
		ready: make(chan struct{}),
		done:  make(chan struct{}),
		status: Status{
			ID: spec.ID, State: StateStarting, PID: h.nextPID,
			RunState: "running", StartedAt: h.now(),
		},
	}
	h.vms[spec.ID] = v
	if !h.manualReady {
		h.markReady(v)
	}
	return spec.ID, nil
}

// owned returns the VM if f watches it. Callers hold host.mu.
func (f *Fake) owned(id ID) (*fakeVM, error) {
	if f.closed {
		return nil, ErrClosed
	}
	v, ok := f.host.vms[id]
	if !ok || v.owner != f {
		return nil, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	return v, nil
}

// WaitReady implements Driver.
func (f *Fake) WaitReady(ctx context.Context, id ID) error {
	f.host.mu.Lock()
	v, err := f.owned(id)
	f.host.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-v.ready:
		return nil
	case <-v.done:
		select {
		case <-v.ready: // ready, then exited: it was ready
			return nil
		default:
		}
		return fmt.Errorf("vm %s: %w before it was ready: %s", id, ErrExited, v.exit.Reason)
	case <-ctx.Done():
		return fmt.Errorf("vm %s: waiting for readiness: %w", id, ctx.Err())
	}
}

// Stop implements Driver: the fake guest always powers off gracefully.
func (f *Fake) Stop(ctx context.Context, id ID) error {
	f.host.mu.Lock()
	defer f.host.mu.Unlock()
	v, err := f.owned(id)
	if err != nil {
		return err
	}
	if v.exit == nil {
		f.host.finish(v, Exit{State: StateStopped, Reason: "guest powered off after the power button", ExitCode: 0, GuestExitCode: -1})
	}
	return nil
}

// Kill implements Driver.
func (f *Fake) Kill(id ID) error {
	f.host.mu.Lock()
	defer f.host.mu.Unlock()
	v, err := f.owned(id)
	if err != nil {
		return err
	}
	if v.exit == nil {
		f.host.finish(v, Exit{State: StateFailed, Reason: "killed by the driver", ExitCode: -1, Signal: "SIGKILL", GuestExitCode: -1})
	}
	return nil
}

// Status implements Driver.
func (f *Fake) Status(ctx context.Context, id ID) (Status, error) {
	f.host.mu.Lock()
	defer f.host.mu.Unlock()
	v, err := f.owned(id)
	if err != nil {
		return Status{}, err
	}
	return v.status, nil
}

// Wait implements Driver.
func (f *Fake) Wait(id ID) <-chan Exit {
	ch := make(chan Exit, 1)
	f.host.mu.Lock()
	defer f.host.mu.Unlock()
	v, err := f.owned(id)
	switch {
	case err != nil:
		ch <- Exit{ID: id, State: StateFailed, Reason: err.Error(), ExitCode: -1, GuestExitCode: -1, Err: err}
	case v.exit != nil:
		ch <- *v.exit
	default:
		v.waiters = append(v.waiters, ch)
	}
	return ch
}

// Recover implements Driver: it adopts every VM whose driver was closed.
func (f *Fake) Recover(ctx context.Context) ([]ID, error) {
	h := f.host
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	var ids []ID
	for id, v := range h.vms {
		if v.owner != nil {
			continue
		}
		v.owner = f
		if v.exit == nil {
			v.status.Adopted = true
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Capabilities implements Driver.
func (f *Fake) Capabilities() Caps {
	return Caps{
		Driver: "fake", Accel: "fake",
		NetworkModes: []NetworkMode{NetworkNone, NetworkUser, NetworkTap},
		Disk:         true, GracefulStop: true, Recover: true, MaxVCPUs: MaxVCPUs,
	}
}

// Close implements Driver: the VMs keep running on the host.
func (f *Fake) Close() error {
	h := f.host
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	for _, v := range h.vms {
		if v.owner != f {
			continue
		}
		v.owner = nil
		for _, w := range v.waiters {
			w <- Exit{ID: v.spec.ID, State: v.status.State, Reason: "driver closed", ExitCode: -1, GuestExitCode: -1, Err: ErrClosed}
		}
		v.waiters = nil
	}
	return nil
}
