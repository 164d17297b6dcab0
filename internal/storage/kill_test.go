package storage

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

const killDirEnv = "BLIXARD_STORAGE_KILL_DIR"

// TestKillHelper is the child process of TestKill9: it saves entries (with
// rolls and snapshots along the way) and prints each index once Save has
// returned, until it is killed.
func TestKillHelper(t *testing.T) {
	dir := os.Getenv(killDirEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9")
	}
	s, err := openLogStore(dir, logOptions{segmentBytes: 4096})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for i := uint64(1); i < 1_000_000; i++ {
		if err := s.Save(hardState(1, 1, i), []*raftpb.Entry{ent(i, 1, fmt.Sprintf("entry-%d", i))}, nil); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		if i%50 == 0 {
			if err := s.CreateSnapshot(i, confState(1), []byte(fmt.Sprintf("state@%d", i)), 10); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
		fmt.Println(i)
	}
	os.Exit(0)
}

// TestKill9 kills a writer with SIGKILL at an arbitrary moment and checks
// that everything it was told was saved is there after reopening.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), killDirEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked uint64
	sc := bufio.NewScanner(out)
	for acked < 333 && sc.Scan() {
		n, err := strconv.ParseUint(sc.Text(), 10, 64)
		if err != nil {
			t.Fatalf("helper: %s", sc.Text())
		}
		acked = n
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if acked < 333 {
		t.Fatalf("helper stopped after %d saves", acked)
	}

	s := mustOpen(t, dir, 4096)
	defer mustClose(t, s)
	last := lastIndex(t, s)
	if last < acked {
		t.Fatalf("last index %d, but %d was acknowledged", last, acked)
	}
	hs, _, _ := s.InitialState()
	if hs.GetCommit() < acked {
		t.Fatalf("hard state commit %d, but %d was acknowledged", hs.GetCommit(), acked)
	}
	first := firstIndex(t, s)
	checkEntries(t, s, first, last)
	snap, _ := s.Snapshot()
	if idx := snap.GetMetadata().GetIndex(); idx < acked/50*50-50 || string(snap.GetData()) != fmt.Sprintf("state@%d", idx) {
		t.Fatalf("snapshot %v after kill at %d", snap.GetMetadata(), acked)
	}
}
