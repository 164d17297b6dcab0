package raftnode

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// chanNet connects Nodes in one process; messages to or from a cut node
// are dropped, like a partition.
type chanNet struct {
	mu    sync.Mutex
	nodes map[uint64]*Node
	cut   map[uint64]bool
	wg    sync.WaitGroup
}

type chanTransport struct {
	net  *chanNet
	from uint64
}

func (t chanTransport) Send(msgs []*raftpb.Message) {
	t.net.mu.Lock()
	defer t.net.mu.Unlock()
	for _, m := range msgs {
		to, ok := t.net.nodes[m.GetTo()]
		if !ok || t.net.cut[m.GetTo()] || t.net.cut[t.from] {
			continue
		}
		t.net.wg.Add(1)
		go func() {
			defer t.net.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = to.Process(ctx, m)
		}()
	}
}
func (chanTransport) AddPeer(uint64, string) {}
func (chanTransport) RemovePeer(uint64)      {}

func (n *chanNet) setCut(id uint64, cut bool) {
	n.mu.Lock()
	n.cut[id] = cut
	n.mu.Unlock()
}

func startNodes(t *testing.T, ids ...uint64) (*chanNet, map[uint64]*Node) {
	t.Helper()
	cn := &chanNet{nodes: map[uint64]*Node{}, cut: map[uint64]bool{}}
	var peers []raft.Peer
	for _, id := range ids {
		peers = append(peers, raft.Peer{ID: id, Context: state.EncodeMemberContext(id, fmt.Sprint(id), pb.MemberRole_MEMBER_ROLE_VOTER)})
	}
	nodes := map[uint64]*Node{}
	for _, id := range ids {
		core, err := NewCore(Config{ID: id}, &memLog{MemoryStorage: raft.NewMemoryStorage()}, newMemStore(), state.New(), chanTransport{net: cn, from: id}, peers)
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = NewNode(core, NodeConfig{TickInterval: 5 * time.Millisecond})
	}
	cn.mu.Lock()
	cn.nodes = nodes
	cn.mu.Unlock()
	for _, n := range nodes {
		n.Start()
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.Stop()
		}
		cn.wg.Wait()
	})
	return cn, nodes
}

func waitLeader(t *testing.T, nodes map[uint64]*Node) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range nodes {
		if err := n.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		if n.IsLeader() {
			return n
		}
	}
	// Followers know a leader; its own node may not have noticed yet.
	return nodes[nodes[1].Leader()]
}

func TestNodeProposeOnFollowerAndLinearizableRead(t *testing.T) {
	_, nodes := startNodes(t, 1, 2, 3)
	lead := waitLeader(t, nodes)
	var follower *Node
	for _, n := range nodes {
		if n != lead {
			follower = n
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := follower.Propose(ctx, putCmd(t, "k", "v"))
	if err != nil {
		t.Fatalf("propose on follower: %v", err)
	}
	kv, ok := res.(*pb.KV)
	if !ok || string(kv.Value) != "v" {
		t.Fatalf("result %v, want the stored kv", res)
	}
	for _, n := range nodes {
		if err := n.ReadIndex(ctx); err != nil {
			t.Fatalf("read index on %d: %v", n.ID(), err)
		}
		if n.AppliedIndex() < kv.ModIndex {
			t.Fatalf("node %d applied %d after ReadIndex, write was at %d", n.ID(), n.AppliedIndex(), kv.ModIndex)
		}
	}
}

// Without a quorum nothing can commit: every call must come back with an
// error by its deadline, never hang.
func TestNodeCallsReturnWithoutQuorum(t *testing.T) {
	cn, nodes := startNodes(t, 1, 2, 3)
	lead := waitLeader(t, nodes)
	for id := range nodes {
		if id != lead.ID() {
			cn.setCut(id, true)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 2)
	go func() { _, err := lead.Propose(ctx, putCmd(t, "k", "v")); done <- err }()
	go func() { done <- lead.ReadIndex(ctx) }()
	for i := 0; i < 2; i++ {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("a call succeeded without a quorum")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a call hung past its deadline without a quorum")
		}
	}
}

// A node that has no leader waits for one instead of failing at once, and
// the proposal then succeeds.
func TestNodeProposalWaitsForLeader(t *testing.T) {
	cn, nodes := startNodes(t, 1, 2, 3)
	waitLeader(t, nodes)
	for id := range nodes {
		cn.setCut(id, true)
	}
	// Wait until node 1 has noticed it has no leader (CheckQuorum/PreVote).
	deadline := time.Now().Add(10 * time.Second)
	for nodes[1].Leader() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("node 1 still sees a leader 10s into a full partition")
		}
		<-time.After(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { _, err := nodes[1].Propose(ctx, putCmd(t, "x", "y")); errc <- err }()
	for id := range nodes {
		cn.setCut(id, false)
	}
	if err := <-errc; err != nil && !errors.Is(err, ErrLeaderChanged) {
		t.Fatalf("proposal after healing: %v", err)
	}
}

// A request made before a fresh node's first election (no leader yet)
// was never appended anywhere, so the term changes of that election must
// not fail it with "outcome unknown" (ErrLeaderChanged): it waits for the
// leader and succeeds. (A `blixard dev` node failed its own worker
// registration and the first CLI commands this way.)
func TestNodeRequestBeforeFirstElectionSucceeds(t *testing.T) {
	for range 5 {
		_, nodes := startNodes(t, 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errc := make(chan error, 2)
		go func() { _, err := nodes[1].Propose(ctx, putCmd(t, "k", "v")); errc <- err }()
		go func() { errc <- nodes[1].ReadIndex(ctx) }()
		for range 2 {
			if err := <-errc; err != nil {
				t.Fatalf("a request made before the first election: %v", err)
			}
		}
		cancel()
	}
}

func TestNodeStopFailsWaiters(t *testing.T) {
	cn, nodes := startNodes(t, 1, 2, 3)
	lead := waitLeader(t, nodes)
	for id := range nodes {
		if id != lead.ID() {
			cn.setCut(id, true)
		}
	}
	errc := make(chan error, 1)
	go func() { _, err := lead.Propose(context.Background(), putCmd(t, "k", "v")); errc <- err }()
	// The proposal is queued or in flight; stopping must release it.
	go lead.Stop()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("proposal succeeded without quorum")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stop left a proposal hanging")
	}
}
