package raftnode

import (
	"fmt"
	"strings"
	"testing"
	"testing/cryptotest"

	"github.com/cockroachdb/datadriven"
	"go.etcd.io/raft/v3/raftpb"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// TestDataDriven runs raft-node scenarios from testdata/. Raft's election
// timeouts come from crypto/rand, made reproducible per file with
// cryptotest.SetGlobalRandom, so the expected output is stable.
//
// Commands:
//
//	cluster ids=(1,2,3) [snapshot-every=N snapshot-keep=N]
//	elect                         tick until some node leads
//	tick [n=N]                    tick every reachable node N times
//	propose node=N key=K value=V  a kv put proposed on node N
//	isolate node=N | heal         cut a node off / reconnect everyone
//	crash node=N                  drop the node's memory, reopen from its storage
//	add-learner id=N | remove id=N (on the leader)
//	status                        per node: role, term, applied index, kv
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		cryptotest.SetGlobalRandom(t, 1)
		var tc *testCluster
		nextID := uint64(1)
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(key string) uint64 {
				var v uint64
				if d.HasArg(key) {
					d.ScanArgs(t, key, &v)
				}
				return v
			}
			switch d.Cmd {
			case "cluster":
				var ids []uint64
				d.ScanArgs(t, "ids", &ids)
				tc = newTestCluster(t, Config{SnapshotEvery: arg("snapshot-every"), SnapshotKeep: arg("snapshot-keep")}, ids...)
				tc.stabilize()
				return "ok"
			case "elect":
				return fmt.Sprintf("leader %d", tc.elect())
			case "tick":
				n := int(arg("n"))
				if n == 0 {
					n = 1
				}
				tc.tickAll(n)
				return "ok"
			case "propose":
				var key, value string
				d.ScanArgs(t, "key", &key)
				d.ScanArgs(t, "value", &value)
				id := nextID
				nextID++
				if err := tc.cores[arg("node")].Propose(id, putCmd(t, key, value)); err != nil {
					return "error: " + err.Error()
				}
				tc.stabilize()
				if a, ok := tc.results[id]; ok {
					return fmt.Sprintf("applied at %d", a.Index)
				}
				return "not applied (yet)"
			case "isolate":
				tc.net.down[arg("node")] = true
				return "ok"
			case "heal":
				tc.net.down = map[uint64]bool{}
				return "ok"
			case "crash":
				tc.open(arg("node"), nil)
				tc.stabilize()
				return "ok"
			case "add-learner", "remove":
				typ := raftpb.ConfChangeAddLearnerNode
				if d.Cmd == "remove" {
					typ = raftpb.ConfChangeRemoveNode
				}
				id := arg("id")
				lead := tc.leader()
				if lead == 0 {
					return "error: no leader"
				}
				if err := tc.cores[lead].ProposeConfChange(nextID, typ, id, fmt.Sprintf("n%d", id)); err != nil {
					return "error: " + err.Error()
				}
				nextID++
				tc.stabilize()
				return "ok"
			case "status":
				var b strings.Builder
				for _, id := range tc.ids() {
					c := tc.cores[id]
					role := "follower"
					if c.IsLeader() {
						role = "leader"
					}
					if tc.net.down[id] {
						role += " (isolated)"
					}
					var kvs []string
					for _, snap := range []*pb.StateSnapshot{snapshotOf(t, tc, id)} {
						for _, kv := range snap.Kvs {
							kvs = append(kvs, kv.Key+"="+string(kv.Value))
						}
					}
					var members []string
					for _, m := range tc.sms[id].Members() {
						members = append(members, fmt.Sprintf("%d/%s", m.Id, strings.TrimPrefix(strings.ToLower(m.Role.String()), "member_role_")))
					}
					fmt.Fprintf(&b, "node %d: %s term=%d applied=%d members=[%s] kv=[%s]\n", id, role, c.Term(), c.AppliedIndex(), strings.Join(members, " "), strings.Join(kvs, " "))
				}
				return b.String()
			default:
				t.Fatalf("unknown command %q", d.Cmd)
				return ""
			}
		})
	})
}

func snapshotOf(t *testing.T, tc *testCluster, id uint64) *pb.StateSnapshot {
	t.Helper()
	b, err := tc.sms[id].Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s pb.StateSnapshot
	if err := protoUnmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}
