// Package storage owns Blixard's files on disk: the raft write-ahead log,
// snapshot files, and the bbolt database holding the state tables.
//
// Two stores with different jobs live here.
//
// LogStore is the durable raft log. Raft needs each Ready's hard state and
// entries on stable storage before it may send messages, so the write path
// is the latency floor of every proposal. LogStore appends checksummed
// records to segment files and issues one fdatasync per Save, however many
// entries the Ready carries; reads are served from a raft.MemoryStorage
// rebuilt from the files at open. bbolt was measured as the alternative and
// is slower for this append-only pattern (see docs/BENCHMARKS.md, "Storage").
//
// StateDB holds the state machine's tables in bbolt, with the applied raft
// index written in the same transaction as the table changes, so a restart
// resumes applying exactly after the last checkpoint: nothing is applied
// twice and nothing is skipped.
//
// Layout under a LogStore directory:
//
//	wal/%016x-%016x.wal   segment files (sequence, first raft index it may hold)
//	snap/%016x-%016x.snap snapshot files (term, index)
//
// WAL record: 4-byte little-endian payload length, 4-byte little-endian
// crc32c (Castagnoli) over type+payload, 1-byte type, payload. Segments roll
// at 64 MiB; a new segment starts with header records (current snapshot
// marker, compaction point, hard state) so older segments can be deleted once
// the log is compacted past them.
//
// Nothing in this package starts goroutines or locks beyond what raft's
// MemoryStorage and bbolt do internally: a LogStore is driven from one
// goroutine (raft's), reads and writes alike.
package storage

import "errors"

// ErrCorrupt marks data on disk that failed validation somewhere other than
// the torn tail of the newest WAL segment. Errors wrapping it name the file
// and, for WAL records, the byte offset.
var ErrCorrupt = errors.New("storage: corrupt data")

// ErrClosed is returned by a LogStore used after Close.
var ErrClosed = errors.New("storage: closed")

// ErrUnknownTable is returned (wrapped, naming the table) by StateDB when a
// Change names a table that is not in Tables. Nothing is written.
var ErrUnknownTable = errors.New("storage: unknown table")

// ErrAppliedRegressed is returned (wrapped) by StateDB when asked to store an
// applied index lower than the one already stored: applying the same entries
// twice would be the likely cause.
var ErrAppliedRegressed = errors.New("storage: applied index would go backwards")
