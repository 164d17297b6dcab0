package storage

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// These benchmarks decide where the raft log lives. Each Save is what one
// Ready costs: a batch of 256-byte entries plus the hard state, durable
// before it returns. Run:
//
//	go test -run '^$' -bench . -benchtime 2000x ./internal/storage/

var benchBatches = []int{1, 16, 128}

const benchEntryBytes = 256

func benchBatch(next uint64, n int, payload []byte) []*raftpb.Entry {
	es := make([]*raftpb.Entry, n)
	for i := range es {
		es[i] = &raftpb.Entry{Term: new(uint64(1)), Index: new(next + uint64(i)), Type: new(raftpb.EntryNormal), Data: payload}
	}
	return es
}

func reportPerEntry(b *testing.B, batch int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/entry")
}

func BenchmarkLogStoreSave(b *testing.B) {
	payload := make([]byte, benchEntryBytes)
	for _, batch := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s, err := OpenLogStore(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer mustClose(b, s)
			b.SetBytes(int64(batch * benchEntryBytes))
			next := uint64(1)
			for b.Loop() {
				ents := benchBatch(next, batch, payload)
				next += uint64(batch)
				if err := s.Save(hardState(1, 1, next-1), ents, nil); err != nil {
					b.Fatal(err)
				}
			}
			reportPerEntry(b, batch)
		})
	}
}

// BenchmarkBoltLogSave does what a bbolt-backed raft log would: every entry
// put in a bucket keyed by its index, the hard state put under a fixed key,
// one transaction commit per batch.
func BenchmarkBoltLogSave(b *testing.B) {
	payload := make([]byte, benchEntryBytes)
	entriesBucket, metaB, hsKey := []byte("entries"), []byte("meta"), []byte("hardstate")
	for _, batch := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			db, err := bolt.Open(filepath.Join(b.TempDir(), "raftlog.db"), 0o600, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer mustClose(b, db)
			if err := db.Update(func(tx *bolt.Tx) error {
				if _, err := tx.CreateBucket(entriesBucket); err != nil {
					return err
				}
				_, err := tx.CreateBucket(metaB)
				return err
			}); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(batch * benchEntryBytes))
			next := uint64(1)
			for b.Loop() {
				ents := benchBatch(next, batch, payload)
				next += uint64(batch)
				hs := hardState(1, 1, next-1)
				err := db.Update(func(tx *bolt.Tx) error {
					eb := tx.Bucket(entriesBucket)
					for _, e := range ents {
						v, err := proto.Marshal(e)
						if err != nil {
							return err
						}
						if err := eb.Put(binary.BigEndian.AppendUint64(nil, e.GetIndex()), v); err != nil {
							return err
						}
					}
					v, err := proto.Marshal(hs)
					if err != nil {
						return err
					}
					return tx.Bucket(metaB).Put(hsKey, v)
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			reportPerEntry(b, batch)
		})
	}
}

// BenchmarkFdatasync is the floor: 256 bytes and one sync. "prezeroed"
// overwrites a file already written with zeros, which is what
// preallocating WAL segments would buy.
func BenchmarkFdatasync(b *testing.B) {
	buf := make([]byte, benchEntryBytes)
	tests := []struct {
		name      string
		prezeroed bool
		sync      func(*os.File) error
	}{
		{"append/fdatasync", false, fdatasync},
		{"append/fsync", false, (*os.File).Sync},
		{"prezeroed/fdatasync", true, fdatasync},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			f, err := os.OpenFile(filepath.Join(b.TempDir(), "f"), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			defer mustClose(b, f)
			if tt.prezeroed {
				if _, writeErr := f.Write(make([]byte, 64<<20)); writeErr != nil {
					b.Fatal(writeErr)
				}
				if syncErr := f.Sync(); syncErr != nil {
					b.Fatal(syncErr)
				}
			}
			var off int64
			for b.Loop() {
				if tt.prezeroed {
					_, err = f.WriteAt(buf, off%(64<<20))
				} else {
					_, err = f.Write(buf)
				}
				if err != nil {
					b.Fatal(err)
				}
				off += int64(len(buf))
				if err := tt.sync(f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
