package storage

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

func openDB(t *testing.T, path string) *StateDB {
	t.Helper()
	d, err := OpenStateDB(path)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// dump loads every record as "table/key" -> value.
func dump(t *testing.T, d *StateDB) (map[string]string, uint64) {
	t.Helper()
	got := map[string]string{}
	applied, err := d.Load(func(table string, k, v []byte) error {
		got[table+"/"+string(k)] = string(v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, applied
}

func checkState(t *testing.T, d *StateDB, want map[string]string, wantApplied uint64) {
	t.Helper()
	got, applied := dump(t, d)
	if !maps.Equal(got, want) || applied != wantApplied {
		t.Fatalf("state = %v applied %d, want %v applied %d", got, applied, want, wantApplied)
	}
}

func put(table, k, v string) Change { return Change{Table: table, Key: []byte(k), Value: []byte(v)} }
func del(table, k string) Change    { return Change{Table: table, Key: []byte(k)} }

func TestStateDBFreshHasAllTables(t *testing.T) {
	d := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer mustClose(t, d)
	err := d.db.View(func(tx *bolt.Tx) error {
		for _, name := range append(Tables, "meta") {
			if tx.Bucket([]byte(name)) == nil {
				return fmt.Errorf("bucket %q missing", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkState(t, d, map[string]string{}, 0)
}

func TestStateDBCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	d := openDB(t, path)
	steps := []struct {
		name        string
		applied     uint64
		changes     []Change
		wantErr     error
		wantState   map[string]string
		wantApplied uint64
	}{
		{
			name:    "writes to every table",
			applied: 5,
			changes: []Change{
				put(TableMembers, "1", "node-1"), put(TableRemovedMembers, "9", "gone"),
				put(TableWorkers, "w1", "spec"), put(TableWorkerStatus, "w1", "up"),
				put(TableKV, "a", "1"), put(TableKV, "b", "2"), put(TableKV, "empty", ""),
			},
			wantState: map[string]string{
				"members/1": "node-1", "removed_members/9": "gone", "workers/w1": "spec",
				"worker_status/w1": "up", "kv/a": "1", "kv/b": "2", "kv/empty": "",
			},
			wantApplied: 5,
		},
		{
			name:    "overwrite and delete",
			applied: 7,
			changes: []Change{put(TableKV, "a", "10"), del(TableKV, "b"), del(TableKV, "never-there")},
			wantState: map[string]string{
				"members/1": "node-1", "removed_members/9": "gone", "workers/w1": "spec",
				"worker_status/w1": "up", "kv/a": "10", "kv/empty": "",
			},
			wantApplied: 7,
		},
		{
			name:    "applied going backwards is refused",
			applied: 6,
			changes: []Change{put(TableKV, "c", "3")},
			wantErr: ErrAppliedRegressed,
		},
		{
			name:    "unknown table is refused atomically",
			applied: 8,
			changes: []Change{put(TableKV, "c", "3"), put("nodes", "x", "y")},
			wantErr: ErrUnknownTable,
		},
		{
			name:    "meta is not a table",
			applied: 8,
			changes: []Change{put("meta", "applied", "junk")},
			wantErr: ErrUnknownTable,
		},
		{
			name:    "bbolt error rolls back the whole checkpoint",
			applied: 8,
			changes: []Change{put(TableKV, "c", "3"), {Table: TableKV, Key: nil, Value: []byte("v")}},
			wantErr: berrors.ErrKeyRequired,
		},
		{
			name:        "same applied again is allowed",
			applied:     7,
			changes:     []Change{put(TableKV, "a", "10")},
			wantApplied: 7,
		},
	}
	var lastState map[string]string
	var lastApplied uint64
	for _, st := range steps {
		err := d.Checkpoint(st.applied, st.changes)
		if st.wantErr != nil {
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("%s: error %v, want %v", st.name, err, st.wantErr)
			}
			checkState(t, d, lastState, lastApplied)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if st.wantState != nil {
			lastState = st.wantState
		}
		lastApplied = st.wantApplied
		checkState(t, d, lastState, lastApplied)
	}

	// Durable across close and reopen.
	mustClose(t, d)
	d = openDB(t, path)
	defer mustClose(t, d)
	checkState(t, d, lastState, lastApplied)
	if a, err := d.Applied(); err != nil || a != lastApplied {
		t.Fatalf("Applied = %d, %v", a, err)
	}
}

func TestStateDBUnknownTableNamed(t *testing.T) {
	d := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer mustClose(t, d)
	err := d.Checkpoint(1, []Change{put("jobs", "k", "v")})
	if err == nil || !strings.Contains(err.Error(), `"jobs"`) {
		t.Fatalf("error %v should name the table", err)
	}
	err = d.Replace(1, []Change{put("jobs", "k", "v")})
	if !errors.Is(err, ErrUnknownTable) {
		t.Fatalf("Replace error %v", err)
	}
}

func TestStateDBReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	d := openDB(t, path)
	if err := d.Checkpoint(10, []Change{put(TableKV, "old", "1"), put(TableMembers, "1", "m"), put(TableWorkers, "w", "x")}); err != nil {
		t.Fatal(err)
	}
	records := []Change{put(TableKV, "new", "2"), put(TableMembers, "2", "m2")}
	if err := d.Replace(20, records); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"kv/new": "2", "members/2": "m2"}
	checkState(t, d, want, 20)

	if err := d.Replace(15, nil); !errors.Is(err, ErrAppliedRegressed) {
		t.Fatalf("Replace below applied: %v", err)
	}
	if err := d.Replace(25, []Change{put(TableKV, "x", "1"), put("bogus", "k", "v")}); !errors.Is(err, ErrUnknownTable) {
		t.Fatalf("Replace with unknown table: %v", err)
	}
	checkState(t, d, want, 20)

	mustClose(t, d)
	d = openDB(t, path)
	defer mustClose(t, d)
	checkState(t, d, want, 20)
	// Tables emptied by Replace still exist.
	if err := d.Checkpoint(21, []Change{put(TableWorkerStatus, "w", "up")}); err != nil {
		t.Fatal(err)
	}
}

func TestStateDBLoadStopsOnError(t *testing.T) {
	d := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer mustClose(t, d)
	if err := d.Checkpoint(1, []Change{put(TableKV, "a", "1")}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if _, err := d.Load(func(string, []byte, []byte) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Load error %v", err)
	}
}
