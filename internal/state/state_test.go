package state

import (
	"errors"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/storage"
)

func cmd(t *testing.T, c *pb.Command) []byte {
	t.Helper()
	b, err := proto.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func register(id uint64, now int64) *pb.Command {
	return &pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{
		Worker:      &pb.Worker{Id: id, Addr: "a", Capacity: &pb.Resources{CpuMillis: 1000, MemoryMib: 512}},
		NowUnixNano: now,
	}}}
}

func TestApplyCommands(t *testing.T) {
	m := New()
	steps := []struct {
		name    string
		c       *pb.Command
		wantErr error
	}{
		{"register worker", register(1, 100), nil},
		{"re-register is idempotent", register(1, 200), nil},
		{"register id 0", register(0, 100), ErrInvalidCommand},
		{"down", &pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1, State: pb.WorkerState_WORKER_STATE_DOWN, NowUnixNano: 300}}}, nil},
		{"unknown worker", &pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 9, State: pb.WorkerState_WORKER_STATE_DOWN}}}, ErrUnknownWorker},
		{"bad state", &pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 1}}}, ErrInvalidCommand},
		{"usage", &pb.Command{Op: &pb.Command_ReportWorkerUsage{ReportWorkerUsage: &pb.ReportWorkerUsage{Status: &pb.WorkerStatus{WorkerId: 1, CpuPercent: 12}}}}, nil},
		{"usage unknown worker", &pb.Command{Op: &pb.Command_ReportWorkerUsage{ReportWorkerUsage: &pb.ReportWorkerUsage{Status: &pb.WorkerStatus{WorkerId: 7}}}}, ErrUnknownWorker},
		{"put", &pb.Command{Op: &pb.Command_Put{Put: &pb.Put{Key: "k", Value: []byte("v")}}}, nil},
		{"put empty key", &pb.Command{Op: &pb.Command_Put{Put: &pb.Put{}}}, ErrInvalidCommand},
		{"empty command", &pb.Command{}, ErrInvalidCommand},
	}
	for i, s := range steps {
		_, err := m.ApplyCommand(uint64(i+1), cmd(t, s.c))
		if !errors.Is(err, s.wantErr) {
			t.Fatalf("%s: err %v, want %v", s.name, err, s.wantErr)
		}
	}
	w, ok := m.Worker(1)
	if !ok || w.State != pb.WorkerState_WORKER_STATE_DOWN || w.RegisteredAtUnixNano != 100 || w.StateChangedAtUnixNano != 300 {
		t.Fatalf("worker 1 = %v", w)
	}
	if _, err := m.ApplyCommand(99, []byte{0xff, 0xff}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("garbage command: %v", err)
	}
}

func confChange(typ raftpb.ConfChangeType, id uint64, addr string) *raftpb.ConfChange {
	return &raftpb.ConfChange{Type: typ.Enum(), NodeId: proto.Uint64(id), Context: EncodeMemberContext(id, addr, pb.MemberRole_MEMBER_ROLE_LEARNER)}
}

func TestMembershipRules(t *testing.T) {
	m := New()
	m.ApplyConfChange(&raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: proto.Uint64(1), Context: EncodeMemberContext(1, "h:1", pb.MemberRole_MEMBER_ROLE_VOTER)})
	cases := []struct {
		name string
		cc   *raftpb.ConfChange
		code MembershipCode // 0 = allowed
	}{
		{"new learner", confChange(raftpb.ConfChangeAddLearnerNode, 2, "h:2"), 0},
		{"duplicate id", confChange(raftpb.ConfChangeAddLearnerNode, 1, "h:9"), CodeExists},
		{"duplicate addr", confChange(raftpb.ConfChangeAddLearnerNode, 3, "h:1"), CodeExists},
		{"remove non-member", confChange(raftpb.ConfChangeRemoveNode, 8, ""), CodeNotFound},
		{"remove last voter", confChange(raftpb.ConfChangeRemoveNode, 1, ""), CodeInvalid},
		{"promote non-member", confChange(raftpb.ConfChangeAddNode, 8, ""), CodeNotFound},
	}
	for _, c := range cases {
		err := m.ValidateConfChange(c.cc)
		var me *MembershipError
		switch {
		case c.code == 0 && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.code != 0 && (!errors.As(err, &me) || me.Code != c.code):
			t.Errorf("%s: err %v, want code %d", c.name, err, c.code)
		}
	}
	m.ApplyConfChange(confChange(raftpb.ConfChangeAddLearnerNode, 2, "h:2"))
	m.ApplyConfChange(confChange(raftpb.ConfChangeRemoveNode, 2, ""))
	var me *MembershipError
	if err := m.ValidateConfChange(confChange(raftpb.ConfChangeAddLearnerNode, 2, "h:5")); !errors.As(err, &me) || me.Code != CodeRemoved {
		t.Fatalf("re-adding removed node: %v", err)
	}
	// Applying an add for a removed node (validated against an older
	// state) changes nothing.
	m.ApplyConfChange(confChange(raftpb.ConfChangeAddLearnerNode, 2, "h:2"))
	if _, ok := m.Member(2); ok {
		t.Fatal("removed node came back")
	}
}

func TestSnapshotRestoreAndRecordsRoundTrip(t *testing.T) {
	m := New()
	m.ApplyConfChange(&raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: proto.Uint64(1), Context: EncodeMemberContext(1, "h:1", pb.MemberRole_MEMBER_ROLE_VOTER)})
	for i, c := range []*pb.Command{register(1, 5), {Op: &pb.Command_Put{Put: &pb.Put{Key: "x", Value: []byte("y")}}}} {
		if _, err := m.ApplyCommand(uint64(i+1), cmd(t, c)); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	r := New()
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	snap2, _ := r.Snapshot()
	if string(snap) != string(snap2) {
		t.Fatal("snapshot after restore differs")
	}

	// Changes → records → LoadRecord reproduces the state.
	changes := m.TakeChanges()
	if len(changes) != 3 {
		t.Fatalf("got %d changes, want 3 (member, worker, kv): %v", len(changes), changes)
	}
	l := New()
	for _, c := range changes {
		if err := l.LoadRecord(c.Table, c.Key, c.Value); err != nil {
			t.Fatal(err)
		}
	}
	snap3, _ := l.Snapshot()
	if string(snap) != string(snap3) {
		t.Fatal("state loaded from records differs from original")
	}
	if len(m.TakeChanges()) != 0 {
		t.Fatal("changes not forgotten after TakeChanges")
	}
	if err := l.LoadRecord("nope", nil, nil); err == nil {
		t.Fatal("unknown table accepted")
	}
	// Deletion shows up as a nil value.
	if _, err := m.ApplyCommand(9, cmd(t, &pb.Command{Op: &pb.Command_Delete{Delete: &pb.Delete{Key: "x"}}})); err != nil {
		t.Fatal(err)
	}
	ch := m.TakeChanges()
	if len(ch) != 1 || ch[0].Table != storage.TableKV || ch[0].Value != nil {
		t.Fatalf("delete change = %v", ch)
	}
}
