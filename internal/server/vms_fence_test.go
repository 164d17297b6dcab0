package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/vm/guard"
)

// A worker that is alive but cannot reach the leader stops renewing its VM
// lease (so its guards stop its VMs) well before the leader releases the
// VMs for placement elsewhere; when it is back in contact it renews again.
func TestCutOffWorkerStopsRenewingItsLeaseBeforeItsVMsAreReleased(t *testing.T) {
	const cut = 3
	servers := startCluster(t, 3, func(c *Config) {
		if c.ID == cut {
			// The VM worker; its VMs cannot start (no image, none built),
			// which leaves the lease as the only thing observed.
			c.VMs = true
			c.VMImageDir = filepath.Join(t.TempDir(), "no-image")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := serverByID(servers, cut)
	if w.Node().IsLeader() {
		if err := w.node.TransferLeader(ctx, 1); err != nil {
			t.Fatalf("move leadership off the VM worker: %v", err)
		}
		waitUntil(t, 10*time.Second, "a leader other than the VM worker", func() (bool, string) {
			l := leaderOf(servers)
			return l != nil && l != w, fmt.Sprintf("leader %v", l)
		})
	}
	lead := leaderOf(servers)
	c := clientOf(t, lead)
	if _, err := c.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "fenced", MemoryMib: 64, Node: cut}}); err != nil {
		t.Fatal(err)
	}
	placed := waitVM(t, lead, "fenced", "placed on the VM worker", func(vm *pb.VM, ok bool) bool { return ok && vm.WorkerId == cut })

	lease := filepath.Join(w.cfg.vmStateRoot(), vmLeaseName)
	mtime := func() time.Time {
		st, err := os.Stat(lease)
		if err != nil {
			t.Fatalf("the VM lease: %v", err)
		}
		return st.ModTime()
	}
	first := mtime()
	waitUntil(t, 5*time.Second, "the lease renewed while in contact", func() (bool, string) {
		return mtime().After(first), fmt.Sprintf("mtime %v", mtime())
	})

	// Cut the worker's heartbeats off: its cached connection to the
	// leader now points at a closed port. Raft traffic (its own transport)
	// still flows, so the node keeps applying the log.
	dead, err := grpc.NewClient(freePort(t), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	leaderAddr := lead.cfg.Advertise
	if _, err := w.conns.get(leaderAddr); err != nil {
		t.Fatal(err)
	}
	w.conns.mu.Lock()
	saved := w.conns.conns[leaderAddr]
	w.conns.conns[leaderAddr] = dead
	w.conns.mu.Unlock()
	cutAt := time.Now()

	// Watch the lease until the leader releases the VM.
	lastChange, last := time.Now(), mtime()
	released := waitVM(t, lead, "fenced", "released by the leader", func(vm *pb.VM, ok bool) bool {
		if m := mtime(); !m.Equal(last) {
			lastChange, last = time.Now(), m
		}
		return ok && vm.WorkerId != cut
	})
	releasedAt := time.Now()
	if released.Generation != placed.Generation+1 || released.Reason != fmt.Sprintf("worker %d down", cut) {
		t.Fatalf("released vm = %v (was %v)", released, placed)
	}
	if wk, _ := lead.State().Worker(cut); wk.GetState() != pb.WorkerState_WORKER_STATE_DOWN {
		t.Fatalf("worker %d is %v at the release, want down", cut, wk.GetState())
	}
	// The guard stops QEMU at most MaxLifetime after the last renewal: that
	// must be over before the release.
	ttl := w.cfg.WorkerTTL / 2
	fenced := lastChange.Add(guard.MaxLifetime(ttl))
	t.Logf("cut off at 0; last lease renewal seen at %v; its VMs fenced by %v; released at %v",
		lastChange.Sub(cutAt), fenced.Sub(cutAt), releasedAt.Sub(cutAt))
	if !fenced.Before(releasedAt) {
		t.Fatalf("the lease was last renewed %v after the cut, so a VM could run until %v, but the leader released it at %v",
			lastChange.Sub(cutAt), fenced.Sub(cutAt), releasedAt.Sub(cutAt))
	}
	if lastChange.Sub(cutAt) > w.cfg.WorkerTTL+time.Second {
		t.Fatalf("the lease was still renewed %v after the cut (gate %v)", lastChange.Sub(cutAt), w.cfg.WorkerTTL)
	}

	// Back in contact: ready again, and the lease is renewed again.
	w.conns.mu.Lock()
	w.conns.conns[leaderAddr] = saved
	w.conns.mu.Unlock()
	waitUntil(t, 10*time.Second, "the worker ready and its lease renewed again", func() (bool, string) {
		wk, _ := lead.State().Worker(cut)
		return wk.GetState() == pb.WorkerState_WORKER_STATE_READY && mtime().After(last),
			fmt.Sprintf("worker %v, lease mtime %v (last before: %v)", wk.GetState(), mtime(), last)
	})
}
