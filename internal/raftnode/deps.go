package raftnode

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/blixard/blixard/internal/storage"
)

// LogStorage is the durable raft log: hard state, entries and snapshots.
// Production uses storage.LogStore (a WAL plus snapshot files); the
// simulation injects its own. Reads come through raft.Storage.
type LogStorage interface {
	raft.Storage
	// Save makes hs, ents and snap durable with at most one fsync and then
	// makes them visible through raft.Storage. A nil or empty snap or hs
	// is skipped. (raft v3.7's raftpb types are protobuf-go messages: always
	// pointers, never copied by value.) It is called once per Ready.
	Save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) error
	// CreateSnapshot durably records a snapshot of the applied state at
	// index and then compacts the log, keeping up to keep entries before
	// index so slow followers can catch up without a snapshot.
	CreateSnapshot(index uint64, cs *raftpb.ConfState, data []byte, keep uint64) error
}

// StateStore persists the state machine's tables with the applied index in
// the same transaction. Production uses storage.StateDB (bbolt).
type StateStore interface {
	// Load calls fn for every record and returns the applied index stored
	// with them (0 for a new store).
	Load(fn func(table string, key, value []byte) error) (applied uint64, err error)
	// Checkpoint writes changes and applied atomically and durably.
	Checkpoint(applied uint64, changes []storage.Change) error
	// Replace discards every table and writes records in their place,
	// atomically with applied (used when a snapshot is installed).
	Replace(applied uint64, records []storage.Change) error
}

// Transport carries raft messages to peers. Send must not block on the
// network: a slow or dead peer is reported through Reporter instead.
type Transport interface {
	Send(msgs []*raftpb.Message)
	AddPeer(id uint64, addr string)
	RemovePeer(id uint64)
}

// Reporter is how a transport tells raft about delivery problems.
type Reporter interface {
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
}
