package state

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/storage"
)

// VM errors returned to proposers.
var (
	ErrUnknownVM = errors.New("unknown vm")
	ErrVMExists  = errors.New("vm already exists")
	// ErrStaleVM fences worker reports: a report from a worker that no
	// longer holds the VM, or for an older placement (generation), is
	// refused. A worker that gets it stops acting on that VM.
	ErrStaleVM = errors.New("stale vm report")
	// ErrVMDeleting refuses to change a VM whose deletion is under way.
	ErrVMDeleting = errors.New("vm is being deleted")
)

// VM defaults and limits. Stored specs carry the defaults filled in, so
// changing a default never changes an existing VM.
const (
	DefaultVMVCPUs     = 1
	DefaultVMMemoryMiB = 128
	MaxVMVCPUs         = 64
	MinVMMemoryMiB     = 16
	MaxVMMemoryMiB     = 1 << 22 // 4 TiB; keeps reservations far from overflow
	MaxVMNameLen       = 63
	maxVMCmdlineBytes  = 4096
	// vcpuMillis is what one vCPU reserves in the capacity model shared
	// with tasks.
	vcpuMillis = 1000
)

// VM network modes.
const (
	NetworkUser = "user"
	NetworkNone = "none"
	NetworkTap  = "tap"
)

// FieldError is an invalid field of a request. It wraps
// ErrInvalidCommand, and its message starts with the field's name.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap makes errors.Is(err, ErrInvalidCommand) hold.
func (e *FieldError) Unwrap() error { return ErrInvalidCommand }

func fieldErr(field, format string, a ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// NormalizeVMSpec returns a copy of s with the defaults filled in: 1 vCPU,
// 128 MiB, network user, restart always, port protocol tcp. The stored
// spec is always normalized.
func NormalizeVMSpec(s *pb.VMSpec) *pb.VMSpec {
	if s == nil {
		return nil
	}
	n := proto.Clone(s).(*pb.VMSpec)
	if n.Vcpus == 0 {
		n.Vcpus = DefaultVMVCPUs
	}
	if n.MemoryMib == 0 {
		n.MemoryMib = DefaultVMMemoryMiB
	}
	if n.Network == "" {
		n.Network = NetworkUser
	}
	if n.Restart == pb.RestartPolicy_RESTART_POLICY_UNSPECIFIED {
		n.Restart = pb.RestartPolicy_RESTART_POLICY_ALWAYS
	}
	for _, p := range n.Ports {
		if p.Protocol == "" {
			p.Protocol = "tcp"
		}
	}
	return n
}

// ValidVMName says whether name is a valid VM name: 1..63 characters of
// [a-z0-9-], starting and ending with a letter or digit.
func ValidVMName(name string) bool {
	if len(name) == 0 || len(name) > MaxVMNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(name)-1:
		default:
			return false
		}
	}
	return true
}

// ValidateVMSpec names the first invalid field of a normalized spec (see
// NormalizeVMSpec). Errors are *FieldError.
func ValidateVMSpec(s *pb.VMSpec) error {
	if s == nil {
		return fieldErr("spec", "is missing")
	}
	if !ValidVMName(s.Name) {
		return fieldErr("name", "%q is not a valid VM name: use 1 to %d characters of a-z, 0-9 and '-', starting and ending with a letter or digit", s.Name, MaxVMNameLen)
	}
	if s.Vcpus < 1 || s.Vcpus > MaxVMVCPUs {
		return fieldErr("vcpus", "must be between 1 and %d (got %d)", MaxVMVCPUs, s.Vcpus)
	}
	if s.MemoryMib < MinVMMemoryMiB || s.MemoryMib > MaxVMMemoryMiB {
		return fieldErr("memory_mib", "must be between %d and %d MiB (got %d)", MinVMMemoryMiB, MaxVMMemoryMiB, s.MemoryMib)
	}
	for _, f := range []struct{ name, path string }{{"kernel", s.Kernel}, {"initrd", s.Initrd}, {"disk", s.Disk}} {
		if f.path == "" {
			continue
		}
		if !filepath.IsAbs(f.path) || strings.ContainsRune(f.path, 0) {
			return fieldErr(f.name, "must be an absolute path on the worker (got %q)", f.path)
		}
	}
	if s.DiskReadonly && s.Disk == "" {
		return fieldErr("disk_readonly", "needs a disk")
	}
	if len(s.Cmdline) > maxVMCmdlineBytes || strings.ContainsAny(s.Cmdline, "\x00\n") {
		return fieldErr("cmdline", "must be one line of at most %d bytes", maxVMCmdlineBytes)
	}
	switch s.Network {
	case NetworkUser, NetworkNone, NetworkTap:
	default:
		return fieldErr("network", "must be user, none or tap (got %q)", s.Network)
	}
	switch s.Restart {
	case pb.RestartPolicy_RESTART_POLICY_ALWAYS, pb.RestartPolicy_RESTART_POLICY_ON_FAILURE, pb.RestartPolicy_RESTART_POLICY_NEVER:
	default:
		return fieldErr("restart", "must be always, on-failure or never (got %d)", int32(s.Restart))
	}
	if len(s.Ports) > 0 && s.Network != NetworkUser {
		return fieldErr("ports", "port forwards need network user (network is %s)", s.Network)
	}
	seen := map[string]bool{}
	for _, p := range s.Ports {
		if p == nil {
			return fieldErr("ports", "empty port forward")
		}
		if p.HostPort < 1 || p.HostPort > 65535 {
			return fieldErr("ports", "host port must be between 1 and 65535 (got %d)", p.HostPort)
		}
		if p.GuestPort < 1 || p.GuestPort > 65535 {
			return fieldErr("ports", "guest port must be between 1 and 65535 (got %d)", p.GuestPort)
		}
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			return fieldErr("ports", "protocol must be tcp or udp (got %q)", p.Protocol)
		}
		k := fmt.Sprintf("%d/%s", p.HostPort, p.Protocol)
		if seen[k] {
			return fieldErr("ports", "host port %s is forwarded twice", k)
		}
		seen[k] = true
	}
	for k := range s.Constraints {
		if k == "" {
			return fieldErr("constraints", "empty label name")
		}
	}
	return nil
}

// CapabilityVMs is the worker capability of nodes whose hypervisor driver
// works; the scheduler places VMs only on workers that registered it.
const CapabilityVMs = "vm"

// VMOverheadMiB is the host memory a VM costs beyond its guest's
// memory_mib: the hypervisor process itself. Measured for QEMU microvm
// under TCG: an idle 74 MiB guest lowers the host's available memory by
// about 148 MiB (docs/BENCHMARKS.md). A VM reserves it too, so that tasks
// and VMs placed together do not over-commit a worker's real memory.
const VMOverheadMiB = 64

// VMReservation is what a VM reserves on its worker: a whole core per
// vCPU, and its guest memory plus VMOverheadMiB.
func VMReservation(s *pb.VMSpec) *pb.Resources {
	return &pb.Resources{CpuMillis: int64(s.GetVcpus()) * vcpuMillis, MemoryMib: int64(s.GetMemoryMib()) + VMOverheadMiB}
}

// touchVM marks a VM changed (or removed) for the next checkpoint and for
// readers that wait for VM changes.
func (m *Machine) touchVM(name string) {
	m.touch(storage.TableVMs, name)
	m.vmVer++
}

// setVMWorker moves vm to worker w (0: none), keeping the reservation in
// step: a VM reserves on its worker exactly while worker_id is set.
func (m *Machine) setVMWorker(vm *pb.VM, w uint64) {
	if vm.WorkerId != 0 {
		m.reserve(vm.WorkerId, VMReservation(vm.Spec), -1)
	}
	vm.WorkerId = w
	if w != 0 {
		m.reserve(w, VMReservation(vm.Spec), 1)
	}
}

// hostPorts lists the host ports a VM forwards, as "PORT/PROTOCOL"
// (8080/tcp and 8080/udp are different ports).
func hostPorts(s *pb.VMSpec) []string {
	var out []string
	for _, p := range s.GetPorts() {
		out = append(out, HostPortKey(p))
	}
	return out
}

// HostPortKey names the host port p forwards, as "PORT/PROTOCOL" (tcp
// when unset): the key of SchedulingView.HostPorts.
func HostPortKey(p *pb.PortForward) string {
	proto := p.GetProtocol()
	if proto == "" {
		proto = "tcp"
	}
	return fmt.Sprintf("%d/%s", p.GetHostPort(), proto)
}

// vmHostPorts maps each worker to the host ports its placed VMs forward,
// each to the VM's name. Every placed VM counts, stopped ones too: they
// hold their worker's capacity and will bind their ports when started.
// The caller holds m.mu.
func (m *Machine) vmHostPorts() map[uint64]map[string]string {
	var names []string
	for name, vm := range m.vms {
		if vm.WorkerId != 0 && len(vm.Spec.GetPorts()) > 0 {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	// In name order, so that a clash (two VMs forwarding one port on one
	// worker, placed before ports were checked) names the same VM on
	// every node.
	slices.Sort(names)
	out := map[uint64]map[string]string{}
	for _, name := range names {
		vm := m.vms[name]
		ports := out[vm.WorkerId]
		if ports == nil {
			ports = map[string]string{}
			out[vm.WorkerId] = ports
		}
		for _, p := range vm.Spec.Ports {
			if _, ok := ports[HostPortKey(p)]; !ok {
				ports[HostPortKey(p)] = name
			}
		}
	}
	return out
}

func (m *Machine) removeVM(vm *pb.VM) {
	m.setVMWorker(vm, 0)
	delete(m.vms, vm.Spec.GetName())
	m.touchVM(vm.Spec.GetName())
}

// loadVM adds a VM read from the state database.
func (m *Machine) loadVM(x *pb.VM) {
	m.vms[x.Spec.GetName()] = x
	if x.WorkerId != 0 {
		m.reserve(x.WorkerId, VMReservation(x.Spec), 1)
	}
	m.vmVer++
}

// rebuildVMDerived adds the VMs' reservations after a restore (the task
// reservations are rebuilt first).
func (m *Machine) rebuildVMDerived() {
	for _, vm := range m.vms {
		if vm.WorkerId != 0 {
			m.reserve(vm.WorkerId, VMReservation(vm.Spec), 1)
		}
	}
	m.vmVer++
}

func (m *Machine) createVM(index uint64, c *pb.CreateVM) (proto.Message, error) {
	spec := NormalizeVMSpec(c.GetSpec())
	if err := ValidateVMSpec(spec); err != nil {
		return nil, err
	}
	if old, ok := m.vms[spec.Name]; ok {
		if old.Desired == pb.VMDesired_VM_DESIRED_DELETED {
			return nil, fmt.Errorf("name: %w: %q is still being deleted", ErrVMExists, spec.Name)
		}
		return nil, fmt.Errorf("name: %w: %q", ErrVMExists, spec.Name)
	}
	vm := &pb.VM{
		Spec:              spec,
		Desired:           pb.VMDesired_VM_DESIRED_RUNNING,
		State:             pb.VMState_VM_STATE_PENDING,
		CreatedAtUnixNano: c.NowUnixNano,
		UpdatedAtUnixNano: c.NowUnixNano,
		Seq:               index,
		// Generations start at the creation's raft index, not at 0: a VM
		// deleted and created again under the same name must never reuse
		// a generation of its predecessor, or a worker could adopt the
		// old process (old spec) as the new VM and its reports would pass
		// the fence. Every generation bump is its own entry between the
		// two creations, so the old VM's generations all stay below this
		// index. (uint32: unique until the log passes 2^32 entries.)
		Generation: uint32(index),
		Owner:      c.Owner,
	}
	m.vms[spec.Name] = vm
	m.touchVM(spec.Name)
	return &pb.VMResponse{Vm: proto.Clone(vm).(*pb.VM)}, nil
}

// workerUsable says whether worker id is registered and ready.
func (m *Machine) workerReady(id uint64) bool {
	w, ok := m.workers[id]
	return ok && w.State == pb.WorkerState_WORKER_STATE_READY
}

func (m *Machine) setVMDesired(c *pb.SetVMDesired) (proto.Message, error) {
	vm, ok := m.vms[c.GetName()]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownVM, c.GetName())
	}
	want := c.Desired
	if want == pb.VMDesired_VM_DESIRED_UNSPECIFIED && c.Restart {
		want = pb.VMDesired_VM_DESIRED_RUNNING
	}
	switch want {
	case pb.VMDesired_VM_DESIRED_RUNNING, pb.VMDesired_VM_DESIRED_STOPPED, pb.VMDesired_VM_DESIRED_DELETED:
	default:
		return nil, fieldErr("desired", "must be running, stopped or deleted (got %d)", int32(want))
	}
	if c.Restart && want != pb.VMDesired_VM_DESIRED_RUNNING {
		return nil, fieldErr("restart", "only with desired running")
	}
	if vm.Desired == pb.VMDesired_VM_DESIRED_DELETED && want != pb.VMDesired_VM_DESIRED_DELETED {
		return nil, fmt.Errorf("%w: %q", ErrVMDeleting, vm.Spec.Name)
	}
	prev := vm.Desired
	vm.Desired = want
	vm.UpdatedAtUnixNano = c.NowUnixNano
	switch want {
	case pb.VMDesired_VM_DESIRED_DELETED:
		if vm.WorkerId == 0 || !m.workerReady(vm.WorkerId) {
			// Nothing runs it (or its worker is down and will kill what it
			// no longer owns when it returns): remove it now.
			m.removeVM(vm)
			return &pb.VMResponse{Vm: proto.Clone(vm).(*pb.VM), Removed: true}, nil
		}
	case pb.VMDesired_VM_DESIRED_STOPPED:
		if vm.WorkerId == 0 {
			vm.State = pb.VMState_VM_STATE_STOPPED
			vm.Reason = "stopped before it was placed"
		}
	case pb.VMDesired_VM_DESIRED_RUNNING:
		switch {
		case vm.WorkerId == 0:
			vm.State = pb.VMState_VM_STATE_PENDING
			vm.Reason = ""
		case c.Restart:
			vm.RestartSeq++
		case prev == pb.VMDesired_VM_DESIRED_RUNNING && (vm.State == pb.VMState_VM_STATE_STOPPED || vm.State == pb.VMState_VM_STATE_FAILED):
			// Desired did not change, so tell the worker to start it
			// again the way restart does.
			vm.RestartSeq++
		}
	}
	m.touchVM(vm.Spec.Name)
	return &pb.VMResponse{Vm: proto.Clone(vm).(*pb.VM)}, nil
}

// placeVMs records a scheduler pass for VMs. Like placeTasks it re-checks
// every placement against the current state and skips stale ones.
func (m *Machine) placeVMs(c *pb.PlaceVMs) (proto.Message, error) {
	placed := 0
	var taken map[uint64]map[string]string // host ports per worker, on first need
	for _, p := range c.Placements {
		vm, ok := m.vms[p.GetName()]
		if !ok || vm.WorkerId != 0 || vm.Desired != pb.VMDesired_VM_DESIRED_RUNNING || p.Generation != vm.Generation+1 {
			continue
		}
		if vm.Spec.Node != 0 && vm.Spec.Node != p.WorkerId {
			continue
		}
		w, ok := m.workers[p.WorkerId]
		if !ok || !Schedulable(w) {
			continue
		}
		req := VMReservation(vm.Spec)
		u := m.used[w.Id]
		if u.CPUMillis+req.CpuMillis > w.GetCapacity().GetCpuMillis() || u.MemoryMiB+req.MemoryMib > w.GetCapacity().GetMemoryMib() {
			continue
		}
		if ports := hostPorts(vm.Spec); len(ports) > 0 {
			if taken == nil {
				if taken = m.vmHostPorts(); taken == nil {
					taken = map[uint64]map[string]string{}
				}
			}
			if slices.ContainsFunc(ports, func(p string) bool { _, ok := taken[w.Id][p]; return ok }) {
				continue
			}
			if taken[w.Id] == nil {
				taken[w.Id] = map[string]string{}
			}
			for _, p := range ports {
				taken[w.Id][p] = vm.Spec.Name
			}
		}
		m.setVMWorker(vm, w.Id)
		vm.Generation = p.Generation
		vm.GenerationRestarts = 0
		vm.State = pb.VMState_VM_STATE_SCHEDULED
		vm.Reason = ""
		vm.UpdatedAtUnixNano = c.NowUnixNano
		m.touchVM(vm.Spec.Name)
		placed++
	}
	return &pb.PutResponse{Index: uint64(placed)}, nil
}

func (m *Machine) reportVM(c *pb.ReportVM) (proto.Message, error) {
	vm, ok := m.vms[c.GetName()]
	if !ok {
		return nil, fmt.Errorf("%w: %w %q", ErrStaleVM, ErrUnknownVM, c.GetName())
	}
	if vm.WorkerId == 0 || vm.WorkerId != c.WorkerId || vm.Generation != c.Generation {
		return nil, fmt.Errorf("%w: vm %s generation %d on worker %d is not current (generation %d on worker %d)",
			ErrStaleVM, c.Name, c.Generation, c.WorkerId, vm.Generation, vm.WorkerId)
	}
	switch c.State {
	case pb.VMState_VM_STATE_STARTING, pb.VMState_VM_STATE_RUNNING, pb.VMState_VM_STATE_STOPPING,
		pb.VMState_VM_STATE_STOPPED, pb.VMState_VM_STATE_FAILED:
	default:
		return nil, fieldErr("state", "a worker reports starting, running, stopping, stopped or failed (got %v)", c.State)
	}
	vm.State = c.State
	vm.Reason = c.Reason
	if c.StartedAtUnixNano != 0 {
		vm.StartedAtUnixNano = c.StartedAtUnixNano
	}
	vm.Restarts += c.RestartsDelta // old log entries only
	if c.GenerationRestarts > vm.GenerationRestarts {
		vm.Restarts += c.GenerationRestarts - vm.GenerationRestarts
		vm.GenerationRestarts = c.GenerationRestarts
	}
	vm.UpdatedAtUnixNano = c.NowUnixNano
	if vm.Desired == pb.VMDesired_VM_DESIRED_DELETED && (c.State == pb.VMState_VM_STATE_STOPPED || c.State == pb.VMState_VM_STATE_FAILED) {
		m.removeVM(vm)
		return &pb.VMResponse{Vm: proto.Clone(vm).(*pb.VM), Removed: true}, nil
	}
	m.touchVM(vm.Spec.Name)
	return &pb.VMResponse{Vm: proto.Clone(vm).(*pb.VM)}, nil
}

// releaseVMs releases the VMs of a worker that is still down (see
// vmsWorkerDown). It answers with the number of VMs changed; a worker that
// is ready again (or unknown) keeps its VMs and nothing changes.
func (m *Machine) releaseVMs(c *pb.ReleaseVMs) (proto.Message, error) {
	w, ok := m.workers[c.GetWorkerId()]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownWorker, c.GetWorkerId())
	}
	if w.State != pb.WorkerState_WORKER_STATE_DOWN {
		return &pb.PutResponse{Index: 0}, nil
	}
	return &pb.PutResponse{Index: uint64(m.vmsWorkerDown(w.Id, c.NowUnixNano))}, nil
}

// VMsHeldByDownWorkers returns the down workers that still hold VMs (the
// leader releases them after its VM grace), sorted.
func (m *Machine) VMsHeldByDownWorkers() []uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	held := map[uint64]bool{}
	for _, vm := range m.vms {
		if id := vm.WorkerId; id != 0 && !held[id] {
			if w, ok := m.workers[id]; ok && w.State == pb.WorkerState_WORKER_STATE_DOWN {
				held[id] = true
			}
		}
	}
	out := make([]uint64, 0, len(held))
	for id := range held {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// vmsWorkerDown handles the VMs of a down worker the leader released
// (ReleaseVMs): those meant to run are re-queued for placement elsewhere
// (a new generation fences the old worker), stopped ones release the
// worker, deleted ones are removed. It returns how many VMs it changed.
func (m *Machine) vmsWorkerDown(worker uint64, now int64) int {
	changed := 0
	for _, name := range sortedStrings(m.vms) {
		vm := m.vms[name]
		if vm.WorkerId != worker {
			continue
		}
		changed++
		switch vm.Desired {
		case pb.VMDesired_VM_DESIRED_DELETED:
			m.removeVM(vm)
			continue
		case pb.VMDesired_VM_DESIRED_STOPPED:
			vm.State = pb.VMState_VM_STATE_STOPPED
		default:
			vm.State = pb.VMState_VM_STATE_PENDING
			vm.Restarts++
		}
		m.setVMWorker(vm, 0)
		vm.Generation++
		vm.GenerationRestarts = 0
		vm.Reason = fmt.Sprintf("worker %d down", worker)
		vm.UpdatedAtUnixNano = now
		m.touchVM(name)
	}
	return changed
}

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

// VM returns a copy of one VM.
func (m *Machine) VM(name string) (*pb.VM, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	vm, ok := m.vms[name]
	if !ok {
		return nil, false
	}
	return proto.Clone(vm).(*pb.VM), true
}

// VMs returns copies of every VM, sorted by name.
func (m *Machine) VMs() []*pb.VM {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*pb.VM, 0, len(m.vms))
	for _, name := range sortedStrings(m.vms) {
		out = append(out, proto.Clone(m.vms[name]).(*pb.VM))
	}
	return out
}

// VMsOnWorker returns copies of the VMs placed on worker id (whatever their
// desired or observed state), sorted by name.
func (m *Machine) VMsOnWorker(id uint64) []*pb.VM {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*pb.VM
	for _, name := range sortedStrings(m.vms) {
		if vm := m.vms[name]; vm.WorkerId == id && id != 0 {
			out = append(out, proto.Clone(vm).(*pb.VM))
		}
	}
	return out
}

// VMsVersion changes whenever any VM changes; it never goes back, so a
// reader can skip a round when it is unchanged.
func (m *Machine) VMsVersion() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.vmVer
}

// PendingVM is a VM waiting for placement, as the scheduler sees it.
// Constraints is shared with the stored spec, which never changes.
type PendingVM struct {
	Name        string
	Seq         uint64
	CPUMillis   int64
	MemoryMiB   int64
	Constraints map[string]string
	Node        uint64
	Generation  uint32   // the generation the placement gets
	HostPorts   []string // forwarded host ports ("8080/tcp"), which must be free on its worker
}

// PendingVMs returns the VMs that want to run and have no worker, in
// creation order.
func (m *Machine) PendingVMs() []PendingVM {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []PendingVM
	for _, vm := range m.vms {
		if vm.WorkerId != 0 || vm.Desired != pb.VMDesired_VM_DESIRED_RUNNING {
			continue
		}
		r := VMReservation(vm.Spec)
		out = append(out, PendingVM{
			Name: vm.Spec.Name, Seq: vm.Seq, CPUMillis: r.CpuMillis, MemoryMiB: r.MemoryMib,
			Constraints: vm.Spec.Constraints, Node: vm.Spec.Node, Generation: vm.Generation + 1,
			HostPorts: hostPorts(vm.Spec),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Seq != out[j].Seq {
			return out[i].Seq < out[j].Seq
		}
		return out[i].Name < out[j].Name
	})
	return out
}
