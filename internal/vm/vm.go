package vm

import (
	"context"
	"encoding/base64"
	"errors"
	"time"
)

// Markers the guest prints on its console (a line each). They are a
// protocol between the drivers and images built by internal/vm/image.
const (
	// DefaultReadyMarker is the line a guest prints once it is up.
	DefaultReadyMarker = "BLIXARD-READY"
	// GuestExitMarker, a space and a decimal status is the line a guest
	// prints when its command has exited, just before powering off.
	GuestExitMarker = "BLIXARD-EXIT"
)

// Errors returned by drivers; test with errors.Is.
var (
	// ErrInvalidSpec marks a Start failure caused by the Spec (bad values,
	// missing files): the VM cannot run, but the driver is healthy.
	ErrInvalidSpec = errors.New("invalid VM spec")
	// ErrNotFound means the driver knows no VM with that ID.
	ErrNotFound = errors.New("no such VM")
	// ErrExists means a VM with that ID is already running (possibly
	// started by an earlier driver and not yet adopted with Recover).
	ErrExists = errors.New("VM already running")
	// ErrExited is returned by WaitReady when the VM exited before it
	// became ready.
	ErrExited = errors.New("VM exited")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("VM driver closed")
)

// ID names a VM. It doubles as a directory name, so it is restricted to
// [A-Za-z0-9._-], must start with a letter or digit and be at most
// MaxIDLen bytes.
type ID string

// MaxIDLen is the longest valid ID.
const MaxIDLen = 64

// State is where a VM is in its lifecycle.
type State string

const (
	// StateStarting: the hypervisor runs, the guest has not printed its
	// readiness marker yet.
	StateStarting State = "starting"
	// StateRunning: the guest printed its readiness marker.
	StateRunning State = "running"
	// StateStopped: the VM ended cleanly (guest poweroff, graceful Stop).
	StateStopped State = "stopped"
	// StateFailed: the VM ended otherwise (hypervisor killed or crashed,
	// guest reset or panic, Kill, or a Stop that had to kill).
	StateFailed State = "failed"
)

// Exited reports whether s is a final state.
func (s State) Exited() bool { return s == StateStopped || s == StateFailed }

// Status is a VM's state as the driver sees it now.
type Status struct {
	ID    ID
	State State
	// Reason says why the VM stopped or failed, or what is unusual about
	// a live one (e.g. the hypervisor reports it paused, or its control
	// socket does not answer). Empty for a normal live VM.
	Reason string
	// PID is the hypervisor process, 0 when there is none (fake, exited).
	PID int
	// RunState is the hypervisor's own run state (QMP query-status, e.g.
	// "running", "paused", "shutdown"); empty when unknown or exited.
	RunState  string
	StartedAt time.Time
	ReadyAt   time.Time // zero until the readiness marker was seen
	// Adopted is true for a VM this driver took over with Recover.
	Adopted bool
}

// Exit is how a VM ended.
type Exit struct {
	ID    ID
	State State // StateStopped or StateFailed
	// Reason is one human-readable line, e.g. "guest powered off",
	// "hypervisor killed by signal SIGKILL".
	Reason string
	// ExitCode is the hypervisor process's exit status; -1 when it was
	// killed by a signal or is unknown (an adopted process is not the
	// driver's child, so its status cannot be collected).
	ExitCode int
	// Signal names the signal that killed the hypervisor, e.g. "SIGKILL".
	Signal string
	// GuestExitCode is the status the guest reported with GuestExitMarker
	// before powering off; -1 when it reported none.
	GuestExitCode int
	At            time.Time
	// Err is set only when Wait was called for an unknown ID
	// (ErrNotFound) or after Close (ErrClosed).
	Err error
}

// Clean reports whether the VM ended cleanly.
func (e Exit) Clean() bool { return e.Err == nil && e.State == StateStopped }

// Caps describes what a driver supports on this host.
type Caps struct {
	Driver string // "qemu-microvm" or "fake"
	// Accel is the accelerator in use: "kvm", "tcg" (software emulation,
	// several times slower) or "fake".
	Accel        string
	NetworkModes []NetworkMode // modes Start accepts here (tap only as root)
	Disk         bool          // Spec.Disk supported
	GracefulStop bool          // Stop asks the guest to power off first
	Recover      bool          // VMs survive a driver restart
	MaxVCPUs     int
}

// Driver runs VMs on one host. Implementations are safe for concurrent
// use. IDs are unique per driver (per state directory for drivers that
// persist state).
type Driver interface {
	// Start launches the VM and returns once the hypervisor runs it (the
	// guest is still booting; see WaitReady). Errors caused by the spec
	// wrap ErrInvalidSpec; a running VM with the same ID gives ErrExists.
	// ctx bounds the launch only, not the VM's life.
	Start(ctx context.Context, spec Spec) (ID, error)
	// WaitReady returns nil once the guest printed its readiness marker,
	// an error wrapping ErrExited if the VM ended first, or ctx's error.
	WaitReady(ctx context.Context, id ID) error
	// Stop shuts the VM down gracefully (ACPI power button) and kills it
	// if it has not powered off within the driver's grace period or when
	// ctx ends, whichever is first. It returns once the VM is gone; nil
	// also if it had already exited.
	Stop(ctx context.Context, id ID) error
	// Kill ends the VM at once (SIGKILL) and returns once it is gone.
	Kill(id ID) error
	// Status reports the VM's state, checking the hypervisor now.
	Status(ctx context.Context, id ID) (Status, error)
	// Wait returns a channel that receives the VM's Exit once, when it
	// ends (at once if it has ended). For an unknown ID the Exit carries
	// ErrNotFound.
	Wait(id ID) <-chan Exit
	// Recover adopts the VMs that an earlier driver over the same state
	// left running and returns their IDs. VMs that ended meanwhile are
	// not returned, but Status and Wait report how they ended.
	Recover(ctx context.Context) ([]ID, error)
	// Capabilities says what this driver supports on this host.
	Capabilities() Caps
	// Close releases the driver (control connections, watchers, locks)
	// and leaves every VM running, for a later driver to Recover. Pending
	// Wait channels receive an Exit with ErrClosed.
	Close() error
}

// Kernel command-line parameters read by the init of images built by
// internal/vm/image (drivers pass them in Spec.Cmdline or add them).
const (
	// ParamCommand carries the guest command, base64-encoded (standard
	// encoding) because the kernel command line splits at spaces. Use
	// CommandParam to build it.
	ParamCommand = "blixard.cmd"
	// ParamIP is eth0's address in CIDR form, e.g. 10.0.2.15/24.
	ParamIP = "blixard.ip"
	// ParamGateway is the default route's gateway.
	ParamGateway = "blixard.gw"
	// ParamDNS is the name server written to /etc/resolv.conf.
	ParamDNS = "blixard.dns"
	// ParamHostname is the guest's host name.
	ParamHostname = "blixard.hostname"
)

// CommandParam returns the kernel command-line parameter that makes an
// image from internal/vm/image run the shell command cmd (with /bin/sh -c)
// once it is ready, report its exit status and power off.
func CommandParam(cmd string) string {
	return ParamCommand + "=" + base64.StdEncoding.EncodeToString([]byte(cmd))
}
