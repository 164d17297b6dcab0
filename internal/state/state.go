// Package state is Blixard's replicated state machine: the tables every
// node holds in memory, changed only by applying committed raft entries.
//
// It is pure: no I/O, no clocks (timestamps arrive inside commands), no
// randomness. Applying the same entries in the same order gives the same
// state on every node, in production and in the simulation.
package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/storage"
)

// Errors returned to the proposer as the result of applying a command.
// They are deterministic: every node computes the same one.
var (
	ErrUnknownWorker  = errors.New("unknown worker")
	ErrInvalidCommand = errors.New("invalid command")
)

// Machine holds the replicated tables. Apply* methods are called by the
// single raft goroutine; readers on other goroutines use the accessor
// methods, which return copies.
type Machine struct {
	mu       sync.RWMutex
	members  map[uint64]*pb.Member
	removed  map[uint64]bool
	workers  map[uint64]*pb.Worker
	statuses map[uint64]*pb.WorkerStatus
	kv       map[string]*pb.KV
	tasks    map[string]*pb.Task
	vms      map[string]*pb.VM
	tokens   map[string]*pb.Token // by accessor

	// Derived, not stored: rebuilt after a load or restore.
	idem map[string]string // idempotency key → task ID
	used map[uint64]Usage  // worker → resources reserved by active attempts
	// pending indexes the tasks waiting for placement, so a scheduling
	// pass costs the queue, not the whole history.
	pending map[string]struct{}
	// active indexes tasks by the worker running their current attempt.
	active   map[uint64]map[string]struct{}
	activeOn map[string]uint64
	// activeVer is never reset (not even by Restore), so versions only grow.
	activeVer map[uint64]uint64

	// vmVer counts VM changes (never reset), so readers can skip
	// unchanged rounds.
	vmVer uint64

	// dirty records changed since the last TakeChanges, by table and key.
	dirty map[dirtyKey]struct{}
}

type dirtyKey struct {
	table string
	key   string
}

// New returns an empty machine.
func New() *Machine {
	m := &Machine{activeVer: map[uint64]uint64{}}
	m.reset()
	return m
}

func (m *Machine) reset() {
	m.members = map[uint64]*pb.Member{}
	m.removed = map[uint64]bool{}
	m.workers = map[uint64]*pb.Worker{}
	m.statuses = map[uint64]*pb.WorkerStatus{}
	m.kv = map[string]*pb.KV{}
	m.tasks = map[string]*pb.Task{}
	m.vms = map[string]*pb.VM{}
	m.tokens = map[string]*pb.Token{}
	m.idem = map[string]string{}
	m.used = map[uint64]Usage{}
	m.pending = map[string]struct{}{}
	m.active = map[uint64]map[string]struct{}{}
	m.activeOn = map[string]uint64{}
	m.dirty = map[dirtyKey]struct{}{}
}

func idKey(id uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return string(b[:])
}

func keyID(k []byte) (uint64, error) {
	if len(k) != 8 {
		return 0, fmt.Errorf("state: id key has %d bytes, want 8", len(k))
	}
	return binary.BigEndian.Uint64(k), nil
}

func (m *Machine) touch(table, key string) { m.dirty[dirtyKey{table, key}] = struct{}{} }

// ApplyCommand applies one normal entry's payload (a marshalled
// pb.Command) at index. The returned error is the command's deterministic
// result for the caller; it never means the machine is broken.
func (m *Machine) ApplyCommand(index uint64, data []byte) (proto.Message, error) {
	var cmd pb.Command
	if err := proto.Unmarshal(data, &cmd); err != nil {
		return nil, fmt.Errorf("%w: cannot decode: %v", ErrInvalidCommand, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch op := cmd.Op.(type) {
	case *pb.Command_RegisterWorker:
		return m.registerWorker(op.RegisterWorker)
	case *pb.Command_SetWorkerState:
		return m.setWorkerState(op.SetWorkerState)
	case *pb.Command_ReportWorkerUsage:
		return m.reportUsage(op.ReportWorkerUsage)
	case *pb.Command_Put:
		if op.Put.GetKey() == "" {
			return nil, fmt.Errorf("%w: put: key is empty", ErrInvalidCommand)
		}
		kv := &pb.KV{Key: op.Put.Key, Value: op.Put.Value, ModIndex: index}
		m.kv[kv.Key] = kv
		m.touch(storage.TableKV, kv.Key)
		return proto.Clone(kv), nil
	case *pb.Command_Delete:
		delete(m.kv, op.Delete.GetKey())
		m.touch(storage.TableKV, op.Delete.GetKey())
		return nil, nil
	case *pb.Command_SubmitTask:
		return m.submitTask(index, op.SubmitTask)
	case *pb.Command_PlaceTasks:
		return m.placeTasks(op.PlaceTasks)
	case *pb.Command_TaskStarted:
		return m.taskStarted(op.TaskStarted)
	case *pb.Command_TaskFinished:
		return m.taskFinished(op.TaskFinished)
	case *pb.Command_CancelTask:
		return m.cancelTask(op.CancelTask)
	case *pb.Command_SetWorkerSchedulable:
		return m.setSchedulable(op.SetWorkerSchedulable)
	case *pb.Command_CordonWorker:
		return m.cordonWorker(op.CordonWorker)
	case *pb.Command_ReconcileWorker:
		return m.reconcileWorker(op.ReconcileWorker)
	case *pb.Command_PurgeTasks:
		return m.purgeTasks(op.PurgeTasks)
	case *pb.Command_CreateVm:
		return m.createVM(index, op.CreateVm)
	case *pb.Command_SetVmDesired:
		return m.setVMDesired(op.SetVmDesired)
	case *pb.Command_PlaceVms:
		return m.placeVMs(op.PlaceVms)
	case *pb.Command_ReportVm:
		return m.reportVM(op.ReportVm)
	case *pb.Command_ReleaseVms:
		return m.releaseVMs(op.ReleaseVms)
	case *pb.Command_CreateToken:
		return m.createToken(op.CreateToken)
	case *pb.Command_RevokeToken:
		return m.revokeToken(op.RevokeToken)
	default:
		return nil, fmt.Errorf("%w: unknown operation %T", ErrInvalidCommand, cmd.Op)
	}
}

func (m *Machine) registerWorker(c *pb.RegisterWorker) (proto.Message, error) {
	w := c.GetWorker()
	if w.GetId() == 0 {
		return nil, fmt.Errorf("%w: register worker: id is 0", ErrInvalidCommand)
	}
	nw := proto.Clone(w).(*pb.Worker)
	nw.State = pb.WorkerState_WORKER_STATE_READY
	// A cordon is the operator's, not the worker's: a registration neither
	// sets nor clears it.
	nw.Cordoned, nw.CordonReason = false, ""
	if old, ok := m.workers[w.Id]; ok {
		nw.Cordoned, nw.CordonReason = old.Cordoned, old.CordonReason
		// Re-registration after a restart keeps the original registration
		// time: the worker is the same one, perhaps with new capacity.
		nw.RegisteredAtUnixNano = old.RegisteredAtUnixNano
		nw.StateChangedAtUnixNano = old.StateChangedAtUnixNano
		if old.State != pb.WorkerState_WORKER_STATE_READY {
			nw.StateChangedAtUnixNano = c.NowUnixNano
		}
	} else {
		nw.RegisteredAtUnixNano = c.NowUnixNano
		nw.StateChangedAtUnixNano = c.NowUnixNano
	}
	m.workers[w.Id] = nw
	m.touch(storage.TableWorkers, idKey(w.Id))
	return proto.Clone(nw), nil
}

func (m *Machine) setWorkerState(c *pb.SetWorkerState) (proto.Message, error) {
	w, ok := m.workers[c.GetWorkerId()]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownWorker, c.GetWorkerId())
	}
	switch c.State {
	case pb.WorkerState_WORKER_STATE_READY, pb.WorkerState_WORKER_STATE_DOWN:
	default:
		return nil, fmt.Errorf("%w: set worker state: state %v is not ready or down", ErrInvalidCommand, c.State)
	}
	if w.State != c.State {
		w.State = c.State
		w.StateChangedAtUnixNano = c.NowUnixNano
		m.touch(storage.TableWorkers, idKey(w.Id))
	}
	if c.State == pb.WorkerState_WORKER_STATE_DOWN {
		// Its attempts are lost: re-queue their tasks (at-least-once).
		m.loseAttempts(w.Id, nil, c.NowUnixNano)
		// Its VMs stay where they are until the leader releases them
		// (ReleaseVMs) after the VM grace: the worker may be alive and
		// cut off, and its VMs must be fenced before they run elsewhere.
	}
	return proto.Clone(w), nil
}

func (m *Machine) reportUsage(c *pb.ReportWorkerUsage) (proto.Message, error) {
	st := c.GetStatus()
	if _, ok := m.workers[st.GetWorkerId()]; !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownWorker, st.GetWorkerId())
	}
	m.statuses[st.WorkerId] = proto.Clone(st).(*pb.WorkerStatus)
	m.touch(storage.TableWorkerStatus, idKey(st.WorkerId))
	return nil, nil
}

// ValidateConfChange says whether cc may be proposed against the current
// state. The leader calls it on its raft goroutine just before proposing,
// while no other membership change is in flight, so the check cannot race.
func (m *Machine) ValidateConfChange(cc *raftpb.ConfChange) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if cc.GetNodeId() == 0 {
		return errors.New("node ID 0 is not allowed; pick a positive --id")
	}
	if m.removed[cc.GetNodeId()] {
		return &MembershipError{Code: CodeRemoved, Msg: fmt.Sprintf("node ID %d was removed from this cluster and can never rejoin; start the node with a new --id and an empty --data-dir", cc.GetNodeId())}
	}
	existing, isMember := m.members[cc.GetNodeId()]
	switch cc.GetType() {
	case raftpb.ConfChangeAddLearnerNode:
		if isMember {
			return &MembershipError{Code: CodeExists, Msg: fmt.Sprintf("node ID %d is already a member (addr %s); pick another --id, or remove it first with 'blixard cluster remove %d'", cc.GetNodeId(), existing.Addr, cc.GetNodeId())}
		}
		mc, err := decodeMemberContext(cc.GetContext())
		if err != nil {
			return err
		}
		for _, o := range m.members {
			if o.Addr == mc.Member.GetAddr() {
				return &MembershipError{Code: CodeExists, Msg: fmt.Sprintf("address %s is already used by member %d; give the new node its own --listen/--advertise address", o.Addr, o.Id)}
			}
		}
	case raftpb.ConfChangeAddNode:
		if !isMember {
			// Only the bootstrap entries add voters directly; those are
			// never validated. Later voters come from learner promotion.
			return &MembershipError{Code: CodeNotFound, Msg: fmt.Sprintf("node %d is not a member; join it with --join first", cc.GetNodeId())}
		}
	case raftpb.ConfChangeRemoveNode:
		if !isMember {
			return &MembershipError{Code: CodeNotFound, Msg: fmt.Sprintf("node %d is not a member; see 'blixard cluster status' for the members", cc.GetNodeId())}
		}
		if existing.Role == pb.MemberRole_MEMBER_ROLE_VOTER {
			voters := 0
			for _, o := range m.members {
				if o.Role == pb.MemberRole_MEMBER_ROLE_VOTER {
					voters++
				}
			}
			if voters <= 1 {
				return &MembershipError{Code: CodeInvalid, Msg: fmt.Sprintf("node %d is the last voter; a cluster cannot remove its last voter", cc.GetNodeId())}
			}
		}
	default:
		return &MembershipError{Code: CodeInvalid, Msg: fmt.Sprintf("unsupported membership change %v", cc.GetType())}
	}
	return nil
}

// ApplyConfChange records a committed membership change. It is
// deterministic and tolerant: a change that no longer makes sense (it was
// validated against an older state) leaves the tables as they are.
func (m *Machine) ApplyConfChange(cc *raftpb.ConfChange) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		if m.removed[cc.GetNodeId()] {
			return
		}
		role := pb.MemberRole_MEMBER_ROLE_VOTER
		if cc.GetType() == raftpb.ConfChangeAddLearnerNode {
			role = pb.MemberRole_MEMBER_ROLE_LEARNER
		}
		mem, ok := m.members[cc.GetNodeId()]
		if !ok {
			mem = &pb.Member{Id: cc.GetNodeId()}
			m.members[cc.GetNodeId()] = mem
		}
		if mc, err := decodeMemberContext(cc.GetContext()); err == nil && mc.Member.GetAddr() != "" {
			mem.Addr = mc.Member.Addr
		}
		mem.Role = role
		m.touch(storage.TableMembers, idKey(cc.GetNodeId()))
	case raftpb.ConfChangeRemoveNode:
		delete(m.members, cc.GetNodeId())
		m.removed[cc.GetNodeId()] = true
		m.touch(storage.TableMembers, idKey(cc.GetNodeId()))
		m.touch(storage.TableRemovedMembers, idKey(cc.GetNodeId()))
	}
}

func decodeMemberContext(b []byte) (*pb.MemberContext, error) {
	var mc pb.MemberContext
	if err := proto.Unmarshal(b, &mc); err != nil {
		return nil, fmt.Errorf("membership change context: %w", err)
	}
	if mc.Member == nil {
		return nil, errors.New("membership change context has no member")
	}
	return &mc, nil
}

// EncodeMemberContext builds the context carried by a ConfChange.
func EncodeMemberContext(id uint64, addr string, role pb.MemberRole) []byte {
	b, _ := proto.Marshal(&pb.MemberContext{Member: &pb.Member{Id: id, Addr: addr, Role: role}})
	return b
}

// MembershipError is a refused membership change, with a code the API
// layer maps to a gRPC status.
type MembershipError struct {
	Code MembershipCode
	Msg  string
}

// MembershipCode classifies a refused membership change.
type MembershipCode int

// Codes of MembershipError. Not persisted.
const (
	CodeInvalid  MembershipCode = 1
	CodeExists   MembershipCode = 2
	CodeRemoved  MembershipCode = 3
	CodeNotFound MembershipCode = 4
)

func (e *MembershipError) Error() string { return e.Msg }

// ---------------------------------------------------------------------------
// Snapshots and persistence
// ---------------------------------------------------------------------------

// Snapshot serialises the whole state (deterministically ordered).
func (m *Machine) Snapshot() ([]byte, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return proto.MarshalOptions{Deterministic: true}.Marshal(m.snapshotLocked())
}

func (m *Machine) snapshotLocked() *pb.StateSnapshot {
	s := &pb.StateSnapshot{}
	for _, id := range sortedIDs(m.members) {
		s.Members = append(s.Members, m.members[id])
	}
	s.RemovedMembers = append(s.RemovedMembers, sortedIDs(m.removed)...)
	for _, id := range sortedIDs(m.workers) {
		s.Workers = append(s.Workers, m.workers[id])
	}
	for _, id := range sortedIDs(m.statuses) {
		s.WorkerStatuses = append(s.WorkerStatuses, m.statuses[id])
	}
	for _, id := range sortedStrings(m.tasks) {
		s.Tasks = append(s.Tasks, m.tasks[id])
	}
	for _, name := range sortedStrings(m.vms) {
		s.Vms = append(s.Vms, m.vms[name])
	}
	for _, a := range sortedStrings(m.tokens) {
		s.Tokens = append(s.Tokens, m.tokens[a])
	}
	keys := make([]string, 0, len(m.kv))
	for k := range m.kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.Kvs = append(s.Kvs, m.kv[k])
	}
	return s
}

func sortedStrings[V any](mp map[string]V) []string {
	ks := make([]string, 0, len(mp))
	for k := range mp {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func sortedIDs[V any](mp map[uint64]V) []uint64 {
	ids := make([]uint64, 0, len(mp))
	for id := range mp {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// Restore replaces the whole state with a snapshot's.
func (m *Machine) Restore(data []byte) error {
	var s pb.StateSnapshot
	if err := proto.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("state: decode snapshot: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reset()
	for _, x := range s.Members {
		m.members[x.Id] = x
	}
	for _, id := range s.RemovedMembers {
		m.removed[id] = true
	}
	for _, x := range s.Workers {
		m.workers[x.Id] = x
	}
	for _, x := range s.WorkerStatuses {
		m.statuses[x.WorkerId] = x
	}
	for _, x := range s.Kvs {
		m.kv[x.Key] = x
	}
	for _, x := range s.Tasks {
		m.tasks[x.Id] = x
	}
	for _, x := range s.Vms {
		m.vms[x.Spec.GetName()] = x
	}
	for _, x := range s.Tokens {
		m.tokens[x.Accessor] = x
	}
	m.rebuildDerived()
	m.rebuildVMDerived()
	return nil
}

// LoadRecord restores one record read from the state database at start-up.
func (m *Machine) LoadRecord(table string, key, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch table {
	case storage.TableMembers:
		x := &pb.Member{}
		if err := proto.Unmarshal(value, x); err != nil {
			return fmt.Errorf("state: table %s: %w", table, err)
		}
		m.members[x.Id] = x
	case storage.TableRemovedMembers:
		id, err := keyID(key)
		if err != nil {
			return err
		}
		m.removed[id] = true
	case storage.TableWorkers:
		x := &pb.Worker{}
		if err := proto.Unmarshal(value, x); err != nil {
			return fmt.Errorf("state: table %s: %w", table, err)
		}
		m.workers[x.Id] = x
	case storage.TableWorkerStatus:
		x := &pb.WorkerStatus{}
		if err := proto.Unmarshal(value, x); err != nil {
			return fmt.Errorf("state: table %s: %w", table, err)
		}
		m.statuses[x.WorkerId] = x
	case storage.TableKV:
		x := &pb.KV{}
		if err := proto.Unmarshal(value, x); err != nil {
			return fmt.Errorf("state: table %s: %w", table, err)
		}
		m.kv[x.Key] = x
	case storage.TableTasks:
		x := &pb.Task{}
		if err := proto.Unmarshal(value, x); err != nil {
			return fmt.Errorf("state: table %s: %w", table, err)
		}
		m.tasks[x.Id] = x
		if x.IdempotencyKey != "" {
			m.idem[idemKey(x.Owner, x.IdempotencyKey)] = x.Id
		}
		if a := currentAttempt(x); activeAttempt(a) {
			m.reserve(a.WorkerId, x.Spec.GetResources(), 1)
		}
		m.indexPending(x)
	case storage.TableVMs:
		x := &pb.VM{}
		if err := proto.Unmarshal(value, x); err != nil {
			return fmt.Errorf("state: table %s: %w", table, err)
		}
		m.loadVM(x)
	case storage.TableTokens:
		x := &pb.Token{}
		if err := proto.Unmarshal(value, x); err != nil {
			return fmt.Errorf("state: table %s: %w", table, err)
		}
		m.tokens[x.Accessor] = x
	default:
		return fmt.Errorf("state: unknown table %q", table)
	}
	return nil
}

// TakeChanges returns the records changed since the last call, in a
// deterministic order, and forgets them.
func (m *Machine) TakeChanges() []storage.Change {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]dirtyKey, 0, len(m.dirty))
	for k := range m.dirty {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].table != keys[j].table {
			return keys[i].table < keys[j].table
		}
		return keys[i].key < keys[j].key
	})
	out := make([]storage.Change, 0, len(keys))
	for _, k := range keys {
		out = append(out, storage.Change{Table: k.table, Key: []byte(k.key), Value: m.valueLocked(k)})
	}
	m.dirty = map[dirtyKey]struct{}{}
	return out
}

// AllRecords returns every record, for rewriting the database after a
// snapshot is installed. It also forgets pending changes.
func (m *Machine) AllRecords() []storage.Change {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dirty = map[dirtyKey]struct{}{}
	var out []storage.Change
	add := func(table, key string) {
		out = append(out, storage.Change{Table: table, Key: []byte(key), Value: m.valueLocked(dirtyKey{table, key})})
	}
	for _, id := range sortedIDs(m.members) {
		add(storage.TableMembers, idKey(id))
	}
	for _, id := range sortedIDs(m.removed) {
		add(storage.TableRemovedMembers, idKey(id))
	}
	for _, id := range sortedIDs(m.workers) {
		add(storage.TableWorkers, idKey(id))
	}
	for _, id := range sortedIDs(m.statuses) {
		add(storage.TableWorkerStatus, idKey(id))
	}
	keys := make([]string, 0, len(m.kv))
	for k := range m.kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add(storage.TableKV, k)
	}
	for _, id := range sortedStrings(m.tasks) {
		add(storage.TableTasks, id)
	}
	for _, name := range sortedStrings(m.vms) {
		add(storage.TableVMs, name)
	}
	for _, a := range sortedStrings(m.tokens) {
		add(storage.TableTokens, a)
	}
	return out
}

// valueLocked marshals the current record for k, or nil if it is gone.
func (m *Machine) valueLocked(k dirtyKey) []byte {
	var msg proto.Message
	switch k.table {
	case storage.TableMembers:
		if x, ok := m.members[binary.BigEndian.Uint64([]byte(k.key))]; ok {
			msg = x
		}
	case storage.TableRemovedMembers:
		if m.removed[binary.BigEndian.Uint64([]byte(k.key))] {
			return []byte{1}
		}
	case storage.TableWorkers:
		if x, ok := m.workers[binary.BigEndian.Uint64([]byte(k.key))]; ok {
			msg = x
		}
	case storage.TableWorkerStatus:
		if x, ok := m.statuses[binary.BigEndian.Uint64([]byte(k.key))]; ok {
			msg = x
		}
	case storage.TableKV:
		if x, ok := m.kv[k.key]; ok {
			msg = x
		}
	case storage.TableTasks:
		if x, ok := m.tasks[k.key]; ok {
			msg = x
		}
	case storage.TableVMs:
		if x, ok := m.vms[k.key]; ok {
			msg = x
		}
	case storage.TableTokens:
		if x, ok := m.tokens[k.key]; ok {
			msg = x
		}
	}
	if msg == nil {
		return nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		// Marshalling a well-formed in-memory message cannot fail; an
		// empty value would read back as a deletion, so keep a marker.
		return []byte{}
	}
	return b
}

// ---------------------------------------------------------------------------
// Readers (any goroutine)
// ---------------------------------------------------------------------------

// Members returns the current members sorted by ID.
func (m *Machine) Members() []*pb.Member {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*pb.Member, 0, len(m.members))
	for _, id := range sortedIDs(m.members) {
		out = append(out, proto.Clone(m.members[id]).(*pb.Member))
	}
	return out
}

// Member returns one member.
func (m *Machine) Member(id uint64) (*pb.Member, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	x, ok := m.members[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(x).(*pb.Member), true
}

// Removed returns the IDs of removed members, sorted.
func (m *Machine) Removed() []uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return sortedIDs(m.removed)
}

// IsRemoved says whether id was removed from the cluster.
func (m *Machine) IsRemoved(id uint64) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.removed[id]
}

// Workers returns all workers sorted by ID.
func (m *Machine) Workers() []*pb.Worker {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*pb.Worker, 0, len(m.workers))
	for _, id := range sortedIDs(m.workers) {
		out = append(out, proto.Clone(m.workers[id]).(*pb.Worker))
	}
	return out
}

// Worker returns one worker.
func (m *Machine) Worker(id uint64) (*pb.Worker, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	x, ok := m.workers[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(x).(*pb.Worker), true
}

// WorkerStatus returns a worker's last usage report.
func (m *Machine) WorkerStatus(id uint64) (*pb.WorkerStatus, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	x, ok := m.statuses[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(x).(*pb.WorkerStatus), true
}

// Get returns a key-value entry.
func (m *Machine) Get(key string) (*pb.KV, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	x, ok := m.kv[key]
	if !ok {
		return nil, false
	}
	return proto.Clone(x).(*pb.KV), true
}
