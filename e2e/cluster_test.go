package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/observe/observetest"
)

func TestThreeNodeFormationAndReplication(t *testing.T) {
	c := threeNodes(t)
	if err := put(c.nodes[2].addr, "greeting", "hello"); err != nil {
		t.Fatal(err)
	}
	// A linearizable read on any node sees the acknowledged write.
	for id, n := range c.nodes {
		v, err := get(n.addr, "greeting", false)
		if err != nil {
			t.Fatal(err)
		}
		if v != "hello" {
			t.Fatalf("node %d read %q, want %q", id, v, "hello")
		}
	}
	// Every node serves health and metrics on its --http-addr; exactly one
	// says it leads.
	leaders := 0
	for id, n := range c.nodes {
		if code, body := httpGet(t, "http://"+n.http+"/readyz"); code != 200 || body != "ok\n" {
			t.Errorf("node %d /readyz = %d %q", id, code, body)
		}
		_, metrics := httpGet(t, "http://"+n.http+"/metrics")
		if strings.Contains(metrics, "\nblixard_raft_is_leader 1\n") {
			leaders++
		} else if !strings.Contains(metrics, "\nblixard_raft_is_leader 0\n") {
			t.Errorf("node %d /metrics has no blixard_raft_is_leader:\n%s", id, metrics)
		}
	}
	if leaders != 1 {
		t.Errorf("%d nodes report blixard_raft_is_leader 1, want 1", leaders)
	}
}

// httpGet fetches url on a fresh connection.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	code, _, body := observetest.Get(t, url)
	return code, body
}

func leaderOf(t testing.TB, c *cluster) *node {
	t.Helper()
	var lead uint64
	waitFor(t, 30*time.Second, "a leader", func() (bool, string) {
		for _, n := range c.nodes {
			if !n.running() {
				continue
			}
			st, raw := status(n.addr)
			if st.Leader != 0 {
				lead = st.Leader
				return true, raw
			}
		}
		return false, "no running node reports a leader"
	})
	return c.nodes[lead]
}

func TestLeaderCrashNewLeaderAndCatchUp(t *testing.T) {
	c := threeNodes(t)
	old := leaderOf(t, c)
	if err := put(old.addr, "before", "1"); err != nil {
		t.Fatal(err)
	}
	old.kill9()

	survivor := c.other(old)
	// Writes succeed again once a new leader is elected.
	waitFor(t, 30*time.Second, "a write after the leader crash", func() (bool, string) {
		err := put(survivor.addr, "after", "2")
		return err == nil, fmt.Sprint(err)
	})
	st, _ := status(survivor.addr)
	if st.Leader == old.id || st.Leader == 0 {
		t.Fatalf("leader after crash is %d, want a new one (old %d)", st.Leader, old.id)
	}

	// The crashed node restarts from its data dir and catches up.
	old.restart()
	waitFor(t, 30*time.Second, "restarted node to see the write made while it was down", func() (bool, string) {
		v, err := get(old.addr, "after", true)
		return err == nil && v == "2", fmt.Sprintf("value %q err %v", v, err)
	})
	if v, err := get(old.addr, "before", true); err != nil || v != "1" {
		t.Fatalf("restarted node lost an acknowledged write: value %q err %v", v, err)
	}
}

func TestFollowerCatchesUpBySnapshotAfterCompaction(t *testing.T) {
	c := threeNodes(t, "--snapshot-every", "20", "--snapshot-keep", "5")
	lead := leaderOf(t, c)
	follower := c.other(lead)
	follower.kill9()
	for i := 0; i < 120; i++ {
		if err := put(lead.addr, fmt.Sprintf("k%03d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	follower.restart()
	waitFor(t, 30*time.Second, "follower to catch up to k119", func() (bool, string) {
		v, err := get(follower.addr, "k119", true)
		return err == nil && v == "119", fmt.Sprintf("value %q err %v", v, err)
	})
	if !strings.Contains(follower.logs(), "installed snapshot") {
		t.Fatalf("follower caught up without installing a snapshot; the log was not compacted past it")
	}
	if v, err := get(follower.addr, "k000", true); err != nil || v != "0" {
		t.Fatalf("k000 after snapshot catch-up: value %q err %v", v, err)
	}

	// A new member joining after compaction is seeded by a snapshot too.
	n4 := c.add(4, "--join", lead.addr, "--snapshot-every", "20", "--snapshot-keep", "5")
	c.waitVoters(lead, 1, 2, 3, 4)
	waitFor(t, 30*time.Second, "new member to have k119", func() (bool, string) {
		v, err := get(n4.addr, "k119", true)
		return err == nil && v == "119", fmt.Sprintf("value %q err %v", v, err)
	})
	if !strings.Contains(n4.logs(), "installed snapshot") {
		t.Fatalf("new member was not seeded by a snapshot")
	}
}

func TestJoinRemoveAndRefusals(t *testing.T) {
	c := threeNodes(t)
	n1 := c.nodes[1]

	// A node claiming an existing member's ID is refused and exits.
	dup := c.addRefused(2, "--join", n1.addr)
	waitFor(t, 30*time.Second, "duplicate-ID node to exit", func() (bool, string) { return !dup.running(), "still running" })
	if dup.exitErr == nil || !strings.Contains(dup.logs(), "already a member") {
		t.Fatalf("duplicate ID join: exit %v, log:\n%s", dup.exitErr, dup.logs())
	}

	n4 := c.add(4, "--join", n1.addr)
	c.waitVoters(n1, 1, 2, 3, 4)
	if err := put(n4.addr, "from4", "x"); err != nil {
		t.Fatal(err)
	}

	if _, errOut, err := cli(n1.addr, "cluster", "remove", "4"); err != nil {
		t.Fatalf("cluster remove 4: %v: %s", err, errOut)
	}
	c.waitVoters(n1, 1, 2, 3)
	waitFor(t, 60*time.Second, "removed node 4 to exit", func() (bool, string) { return !n4.running(), "still running" })

	// The removed ID can never come back, even with a fresh data dir.
	back := c.addRefused(4, "--join", n1.addr)
	waitFor(t, 30*time.Second, "re-join of removed ID to be refused", func() (bool, string) { return !back.running(), "still running" })
	if back.exitErr == nil || !strings.Contains(back.logs(), "was removed") {
		t.Fatalf("re-join of removed node: exit %v, log:\n%s", back.exitErr, back.logs())
	}
	if err := put(n1.addr, "still", "works"); err != nil {
		t.Fatal(err)
	}
}

type workerJSON struct {
	ID     uint64 `json:"id"`
	Status string `json:"status"`
}

func workerStatus(addr string, id uint64) (string, string) {
	out, errOut, err := cli(addr, "--output", "json", "worker", "list")
	if err != nil {
		return "", fmt.Sprintf("worker list: %v: %s", err, errOut)
	}
	var ws []workerJSON
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		return "", fmt.Sprintf("bad JSON %q: %v", out, err)
	}
	for _, w := range ws {
		if w.ID == id {
			return w.Status, out
		}
	}
	return "", out
}

func TestWorkerDownAndBackUp(t *testing.T) {
	c := threeNodes(t)
	for id := uint64(1); id <= 3; id++ {
		waitFor(t, 30*time.Second, fmt.Sprintf("worker %d ready", id), func() (bool, string) {
			s, raw := workerStatus(c.nodes[1].addr, id)
			return s == "ready", raw
		})
	}
	lead := leaderOf(t, c)
	victim := c.other(lead)
	victim.kill9()
	waitFor(t, 30*time.Second, fmt.Sprintf("worker %d down", victim.id), func() (bool, string) {
		s, raw := workerStatus(lead.addr, victim.id)
		return s == "down", raw
	})
	victim.restart()
	waitFor(t, 30*time.Second, fmt.Sprintf("worker %d ready again", victim.id), func() (bool, string) {
		s, raw := workerStatus(lead.addr, victim.id)
		return s == "ready", raw
	})
}

func TestGracefulLeaderShutdownTransfersLeadership(t *testing.T) {
	c := threeNodes(t)
	lead := leaderOf(t, c)
	// An operator can move leadership by hand, asking any node.
	target := c.other(lead)
	out, errOut, err := cli(lead.addr, "--output", "json", "cluster", "transfer-leader", fmt.Sprint(target.id))
	if err != nil {
		t.Fatalf("transfer-leader: %v: %s", err, errOut)
	}
	if st, raw := status(lead.addr); st.Leader != target.id {
		t.Fatalf("after transfer-leader %d (%s) status says leader %d: %s", target.id, out, st.Leader, raw)
	}
	lead = target
	lead.stop(20 * time.Second)
	if !strings.Contains(lead.logs(), "transferring leadership before shutdown") {
		t.Fatalf("leader did not transfer leadership before shutdown; log:\n%s", lead.logs())
	}
	other := c.other(lead)
	waitFor(t, 10*time.Second, "a write after graceful leader shutdown", func() (bool, string) {
		err := put(other.addr, "k", "v")
		return err == nil, fmt.Sprint(err)
	})
}
