package storage

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	metaBucket = []byte("meta")
	appliedKey = []byte("applied")
)

// StateDB holds the state tables in bbolt: one bucket per name in Tables,
// plus a "meta" bucket with the applied raft index (8 bytes, big-endian).
// Every change is written in the same transaction as the applied index it
// brings the tables up to, so after a crash the tables and the index agree
// and the node resumes applying at exactly the right entry. It implements
// raftnode.StateStore.
type StateDB struct {
	db   *bolt.DB
	path string
}

// OpenStateDB opens (creating if needed) the database at path and creates,
// in one transaction, every table bucket that does not exist yet, so no
// code path ever meets a missing table. It fails after a second if another
// process holds the database.
func OpenStateDB(path string) (*StateDB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state db %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range append(slices.Clone(Tables), string(metaBucket)) {
			if _, createErr := tx.CreateBucketIfNotExists([]byte(name)); createErr != nil {
				return fmt.Errorf("create table %q: %w", name, createErr)
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open state db %s: %w", path, err)
	}
	return &StateDB{db: db, path: path}, nil
}

// Close closes the database.
func (d *StateDB) Close() error {
	if err := d.db.Close(); err != nil {
		return fmt.Errorf("close state db %s: %w", d.path, err)
	}
	return nil
}

// Load calls fn for every record, table by table in the order of Tables and
// by key within a table, and returns the stored applied index (0 for a new
// database). key and value are only valid during the call: copy them to
// keep them. An error from fn stops the load and is returned.
func (d *StateDB) Load(fn func(table string, key, value []byte) error) (uint64, error) {
	var applied uint64
	err := d.db.View(func(tx *bolt.Tx) error {
		var err error
		if applied, err = readApplied(tx); err != nil {
			return err
		}
		for _, name := range Tables {
			b := tx.Bucket([]byte(name))
			if b == nil {
				return fmt.Errorf("table %q missing", name)
			}
			if err := b.ForEach(func(k, v []byte) error { return fn(name, k, v) }); err != nil {
				return fmt.Errorf("table %q: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("load state db %s: %w", d.path, err)
	}
	return applied, nil
}

// Applied returns the stored applied index.
func (d *StateDB) Applied() (uint64, error) {
	var applied uint64
	err := d.db.View(func(tx *bolt.Tx) (err error) {
		applied, err = readApplied(tx)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("state db %s: %w", d.path, err)
	}
	return applied, nil
}

// Checkpoint writes changes and applied in one durable transaction. An
// unknown table or an applied index below the stored one (the same entries
// applied twice) is an error and nothing is written. applied equal to the
// stored index is allowed: changes are plain puts and deletes, so writing
// them again is harmless.
func (d *StateDB) Checkpoint(applied uint64, changes []Change) error {
	if err := checkTables(changes); err != nil {
		return fmt.Errorf("checkpoint at %d: %w", applied, err)
	}
	err := d.db.Update(func(tx *bolt.Tx) error {
		if err := checkApplied(tx, applied); err != nil {
			return err
		}
		if err := writeChanges(tx, changes); err != nil {
			return err
		}
		return putApplied(tx, applied)
	})
	if err != nil {
		return fmt.Errorf("checkpoint state db %s at %d: %w", d.path, applied, err)
	}
	return nil
}

// Replace empties every table and writes records (Value nil ones are
// skipped: there is nothing to delete) with applied, in one durable
// transaction: how an installed snapshot replaces the state. Like
// Checkpoint it refuses an applied index below the stored one, which would
// roll the state back.
func (d *StateDB) Replace(applied uint64, records []Change) error {
	if err := checkTables(records); err != nil {
		return fmt.Errorf("replace at %d: %w", applied, err)
	}
	err := d.db.Update(func(tx *bolt.Tx) error {
		if err := checkApplied(tx, applied); err != nil {
			return err
		}
		for _, name := range Tables {
			if err := tx.DeleteBucket([]byte(name)); err != nil {
				return fmt.Errorf("drop table %q: %w", name, err)
			}
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return fmt.Errorf("recreate table %q: %w", name, err)
			}
		}
		if err := writeChanges(tx, records); err != nil {
			return err
		}
		return putApplied(tx, applied)
	})
	if err != nil {
		return fmt.Errorf("replace state db %s at %d: %w", d.path, applied, err)
	}
	return nil
}

func checkTables(changes []Change) error {
	for i, c := range changes {
		if !slices.Contains(Tables, c.Table) {
			return fmt.Errorf("change %d: %w %q", i, ErrUnknownTable, c.Table)
		}
	}
	return nil
}

func readApplied(tx *bolt.Tx) (uint64, error) {
	b := tx.Bucket(metaBucket)
	if b == nil {
		return 0, fmt.Errorf("meta bucket missing")
	}
	v := b.Get(appliedKey)
	switch len(v) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64(v), nil
	}
	return 0, fmt.Errorf("%w: applied index is %d bytes, want 8", ErrCorrupt, len(v))
}

func checkApplied(tx *bolt.Tx, applied uint64) error {
	cur, err := readApplied(tx)
	if err != nil {
		return err
	}
	if applied < cur {
		return fmt.Errorf("%w: stored %d, asked for %d", ErrAppliedRegressed, cur, applied)
	}
	return nil
}

func putApplied(tx *bolt.Tx, applied uint64) error {
	if err := tx.Bucket(metaBucket).Put(appliedKey, binary.BigEndian.AppendUint64(nil, applied)); err != nil {
		return fmt.Errorf("store applied index: %w", err)
	}
	return nil
}

func writeChanges(tx *bolt.Tx, changes []Change) error {
	for i, c := range changes {
		b := tx.Bucket([]byte(c.Table))
		var err error
		if c.Value == nil {
			err = b.Delete(c.Key)
		} else {
			err = b.Put(c.Key, c.Value)
		}
		if err != nil {
			return fmt.Errorf("change %d (table %q, key %q): %w", i, c.Table, c.Key, err)
		}
	}
	return nil
}
