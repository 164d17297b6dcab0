package sim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/internal/raftnode"
	"github.com/blixard/blixard/internal/storage"
)

// NodeDisk is one node's simulated data directory: the raft log and the
// state database. It outlives the node's process, so a restart rebuilds
// the Core over whatever Crash left durable.
type NodeDisk interface {
	raftnode.LogStorage
	raftnode.StateStore
	// Crash throws away every write that was not yet durable, as a power
	// cut does. The sim calls it when the node's process dies.
	Crash()
	// FailNext makes the next write of kind op fail (the sim's fault
	// injector); torn lets a failed Save leave a prefix of its entries.
	FailNext(op DiskOp, torn bool)
	// Disarm cancels armed faults (the faults have healed).
	Disarm()
}

// DiskOp names the write paths a fault can hit.
type DiskOp int

// Disk write paths.
const (
	OpSave DiskOp = iota
	OpCheckpoint
	OpReplace
	OpCreateSnapshot
	numDiskOps
)

func (o DiskOp) String() string {
	return [...]string{"save", "checkpoint", "replace", "create-snapshot"}[o]
}

// ErrInjected is the error every injected disk fault returns.
var ErrInjected = errors.New("sim: injected disk write error (fsync failed)")

// Disk is the correct simulated disk. Entries, snapshots, votes and terms
// are durable when Save returns (Save is the fsync point), as in
// storage.LogStore. Like LogStore, a hard state that only moves the commit
// index is written without an fsync: it becomes durable with the next
// fsync, and a crash before that may or may not keep it (the page cache
// may have been flushed). State-database writes (Checkpoint, Replace) are
// atomic and durable on return, as bbolt transactions are.
type Disk struct {
	rng *rand.Rand
	ms  *raft.MemoryStorage
	// hs is the last hard state written; durHS the last one fsynced. They
	// differ only after commit-only Saves.
	hs, durHS *raftpb.HardState
	snapIndex uint64
	snap      *raftpb.Snapshot // cached copy of ms's snapshot; nil after it changes

	applied uint64
	tables  map[string]map[string][]byte

	failNext [numDiskOps]bool
	torn     bool
}

// NewDisk returns an empty disk; rng decides what a crash keeps of
// unsynced commit-only hard states.
func NewDisk(rng *rand.Rand) *Disk {
	return &Disk{rng: rng, ms: raft.NewMemoryStorage(), tables: map[string]map[string][]byte{}}
}

// FailNext arms an injected error for the next write of kind op.
func (d *Disk) FailNext(op DiskOp, torn bool) {
	d.failNext[op] = true
	if op == OpSave {
		d.torn = torn
	}
}

// Disarm cancels every armed fault.
func (d *Disk) Disarm() { d.failNext = [numDiskOps]bool{} }

func (d *Disk) injected(op DiskOp) bool {
	if d.failNext[op] {
		d.failNext[op] = false
		return true
	}
	return false
}

// InitialState implements raft.Storage.
func (d *Disk) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	return d.ms.InitialState()
}

// Entries implements raft.Storage.
func (d *Disk) Entries(lo, hi, maxSize uint64) ([]*raftpb.Entry, error) {
	return d.ms.Entries(lo, hi, maxSize)
}

// Term implements raft.Storage.
func (d *Disk) Term(i uint64) (uint64, error) { return d.ms.Term(i) }

// LastIndex implements raft.Storage.
func (d *Disk) LastIndex() (uint64, error) { return d.ms.LastIndex() }

// FirstIndex implements raft.Storage.
func (d *Disk) FirstIndex() (uint64, error) { return d.ms.FirstIndex() }

// Snapshot implements raft.Storage. MemoryStorage deep-copies the
// snapshot on every call, which the leader makes for every snapshot it
// sends; the data is never written to, so it is shared.
func (d *Disk) Snapshot() (*raftpb.Snapshot, error) {
	if d.snap == nil {
		s, err := d.ms.Snapshot()
		if err != nil {
			return nil, err
		}
		d.snap = s
	}
	return &raftpb.Snapshot{Data: d.snap.Data, Metadata: proto.CloneOf(d.snap.Metadata)}, nil
}

// Save implements raftnode.LogStorage with storage.LogStore's checks and
// durability rules.
func (d *Disk) Save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) error {
	install := snap != nil && !raft.IsEmptySnap(snap)
	first, _ := d.ms.FirstIndex()
	last, _ := d.ms.LastIndex()
	if install {
		si := snap.GetMetadata().GetIndex()
		if d.snapIndex != 0 && d.snapIndex >= si {
			return fmt.Errorf("save snapshot at %d, have %d: %w", si, d.snapIndex, raft.ErrSnapOutOfDate)
		}
		first, last = si+1, si
	}
	for i := 1; i < len(ents); i++ {
		if ents[i].GetIndex() != ents[i-1].GetIndex()+1 {
			return fmt.Errorf("save: entry %d follows entry %d", ents[i].GetIndex(), ents[i-1].GetIndex())
		}
	}
	if len(ents) > 0 {
		lo := ents[0].GetIndex()
		switch {
		case lo+uint64(len(ents))-1 < first:
			ents = nil
		case lo < first:
			ents = ents[first-lo:]
		}
	}
	if len(ents) > 0 && ents[0].GetIndex() > last+1 {
		// MemoryStorage would panic on a gap; LogStore refuses it.
		return fmt.Errorf("save: entry %d leaves a gap after last index %d: %w", ents[0].GetIndex(), last, raft.ErrUnavailable)
	}
	writeHS := hs != nil && !raft.IsEmptyHardState(hs)
	if !install && len(ents) == 0 && !writeHS {
		return nil
	}
	if d.injected(OpSave) {
		// A failed fsync may still have put a prefix of the records on
		// disk (the WAL checksums each record, so a torn one is dropped
		// at reopen). Nothing of it was acknowledged to raft.
		if d.torn && !install && len(ents) > 1 {
			k := 1 + d.rng.IntN(len(ents)-1)
			if err := d.ms.Append(ents[:k]); err != nil {
				return fmt.Errorf("sim disk: torn append: %w", err)
			}
		}
		return ErrInjected
	}
	mustSync := install || len(ents) > 0 || (writeHS && (d.hs == nil || hs.GetTerm() != d.hs.GetTerm() || hs.GetVote() != d.hs.GetVote()))
	if install {
		if err := d.ms.ApplySnapshot(snap); err != nil {
			return fmt.Errorf("sim disk: apply snapshot: %w", err)
		}
		d.snapIndex = snap.GetMetadata().GetIndex()
		d.snap = nil
	}
	if len(ents) > 0 {
		if err := d.ms.Append(ents); err != nil {
			return fmt.Errorf("sim disk: append: %w", err)
		}
	}
	if writeHS {
		h := proto.CloneOf(hs)
		if err := d.ms.SetHardState(h); err != nil {
			return fmt.Errorf("sim disk: set hard state: %w", err)
		}
		d.hs = h
	}
	if mustSync {
		d.sync()
	}
	return nil
}

// sync makes everything written so far durable: one WAL fsync covers the
// unsynced commit-only hard states written before it.
func (d *Disk) sync() {
	d.durHS = d.hs
}

// CreateSnapshot implements raftnode.LogStorage as LogStore does: the
// snapshot and the compaction are durable when it returns.
func (d *Disk) CreateSnapshot(index uint64, cs *raftpb.ConfState, data []byte, keep uint64) error {
	if index <= d.snapIndex {
		return fmt.Errorf("create snapshot at %d, have %d: %w", index, d.snapIndex, raft.ErrSnapOutOfDate)
	}
	last, _ := d.ms.LastIndex()
	if index > last {
		return fmt.Errorf("create snapshot at %d past last index %d: %w", index, last, raft.ErrUnavailable)
	}
	if d.injected(OpCreateSnapshot) {
		return ErrInjected
	}
	if cs == nil {
		snap, _ := d.ms.Snapshot()
		cs = snap.GetMetadata().GetConfState()
	}
	if _, err := d.ms.CreateSnapshot(index, cs, data); err != nil {
		return fmt.Errorf("sim disk: create snapshot: %w", err)
	}
	d.snapIndex = index
	d.snap = nil
	first, _ := d.ms.FirstIndex()
	if keep < index && index-keep >= first {
		if err := d.ms.Compact(index - keep); err != nil {
			return fmt.Errorf("sim disk: compact: %w", err)
		}
	}
	d.sync()
	return nil
}

// Crash implements NodeDisk: an unsynced commit-only hard state survives
// only if the page cache happened to reach the disk.
func (d *Disk) Crash() {
	if d.hs == d.durHS {
		return
	}
	if d.rng.IntN(2) == 0 {
		d.hs = d.durHS
		h := d.durHS
		if h == nil {
			h = &raftpb.HardState{}
		}
		// SetHardState only stores the pointer; it cannot fail.
		_ = d.ms.SetHardState(h)
	}
	d.durHS = d.hs
}

// Load implements raftnode.StateStore in storage.StateDB's order: table
// by table as in storage.Tables, by key within a table.
func (d *Disk) Load(fn func(table string, key, value []byte) error) (uint64, error) {
	for _, n := range storage.Tables {
		t := d.tables[n]
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if err := fn(n, []byte(k), t[k]); err != nil {
				return 0, err
			}
		}
	}
	return d.applied, nil
}

// Checkpoint implements raftnode.StateStore: one atomic transaction.
func (d *Disk) Checkpoint(applied uint64, changes []storage.Change) error {
	if applied < d.applied {
		// StateDB refuses this too: it would apply entries twice.
		return fmt.Errorf("sim disk: checkpoint at %d below stored applied %d", applied, d.applied)
	}
	if d.injected(OpCheckpoint) {
		return ErrInjected
	}
	d.write(applied, changes)
	return nil
}

// Replace implements raftnode.StateStore: one atomic transaction.
func (d *Disk) Replace(applied uint64, records []storage.Change) error {
	if applied < d.applied {
		return fmt.Errorf("sim disk: replace at %d below stored applied %d", applied, d.applied)
	}
	if d.injected(OpReplace) {
		return ErrInjected
	}
	d.tables = map[string]map[string][]byte{}
	d.write(applied, records)
	return nil
}

func (d *Disk) write(applied uint64, changes []storage.Change) {
	for _, c := range changes {
		t := d.tables[c.Table]
		if t == nil {
			t = map[string][]byte{}
			d.tables[c.Table] = t
		}
		if c.Value == nil {
			delete(t, string(c.Key))
		} else {
			t[string(c.Key)] = append([]byte(nil), c.Value...)
		}
	}
	d.applied = applied
}
