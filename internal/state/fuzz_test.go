package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// Fuzz targets for what a peer can make a node apply: any raft entry's
// payload reaches ApplyCommand, any snapshot's data reaches Restore.
// scripts/fuzz.sh runs them; without -fuzz their seeds run as tests.

// fuzzScenario is a realistic history (indexes 1..n): workers, a task
// through placement, start and a failure with a retry left, a VM placed and
// running, a worker lost, cordons, kv writes. Task "t3" and VM "web"
// (generation base 7) exist after it.
func fuzzScenario() []*pb.Command {
	res := &pb.Resources{CpuMillis: 500, MemoryMib: 128}
	return []*pb.Command{
		{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: &pb.Worker{Id: 1, Addr: "n1:7000", Capacity: &pb.Resources{CpuMillis: 4000, MemoryMib: 4096}, Labels: map[string]string{"zone": "a"}}, NowUnixNano: 10}}},
		{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: &pb.Worker{Id: 2, Addr: "n2:7000", Capacity: &pb.Resources{CpuMillis: 4000, MemoryMib: 4096}, Capabilities: []string{CapabilityVMs}}, NowUnixNano: 11}}},
		{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{Spec: &pb.TaskSpec{Command: "/bin/sh", Args: []string{"-c", "exit 1"}, Resources: res, MaxRetries: 1, RetryBackoffBaseMs: 100, Env: map[string]string{"A": "b"}}, IdempotencyKey: "k1", NowUnixNano: 20}}},
		{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: "t3", Attempt: 1, WorkerId: 1}}, NowUnixNano: 30}}},
		{Op: &pb.Command_TaskStarted{TaskStarted: &pb.TaskStarted{TaskId: "t3", Attempt: 1, WorkerId: 1, NowUnixNano: 40}}},
		{Op: &pb.Command_TaskFinished{TaskFinished: &pb.TaskFinished{TaskId: "t3", Attempt: 1, WorkerId: 1, Result: &pb.TaskResult{ExitCode: 1, StderrTail: []byte("boom\n"), StartedAtUnixNano: 40}, NowUnixNano: 50}}},
		{Op: &pb.Command_CreateVm{CreateVm: &pb.CreateVM{Spec: &pb.VMSpec{Name: "web", Vcpus: 1, MemoryMib: 128, Ports: []*pb.PortForward{{HostPort: 8080, GuestPort: 80}}}, NowUnixNano: 60}}},
		{Op: &pb.Command_PlaceVms{PlaceVms: &pb.PlaceVMs{Placements: []*pb.VMPlacement{{Name: "web", Generation: 8, WorkerId: 2}}, NowUnixNano: 70}}},
		{Op: &pb.Command_ReportVm{ReportVm: &pb.ReportVM{Name: "web", Generation: 8, WorkerId: 2, State: pb.VMState_VM_STATE_RUNNING, StartedAtUnixNano: 80, NowUnixNano: 80}}},
		{Op: &pb.Command_ReportWorkerUsage{ReportWorkerUsage: &pb.ReportWorkerUsage{Status: &pb.WorkerStatus{WorkerId: 1}}}},
		{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: 2, State: pb.WorkerState_WORKER_STATE_DOWN, NowUnixNano: 90}}},
		{Op: &pb.Command_ReleaseVms{ReleaseVms: &pb.ReleaseVMs{WorkerId: 2, NowUnixNano: 100}}},
		{Op: &pb.Command_CordonWorker{CordonWorker: &pb.CordonWorker{WorkerId: 1, Cordoned: true, Reason: "maintenance", NowUnixNano: 110}}},
		{Op: &pb.Command_SetWorkerSchedulable{SetWorkerSchedulable: &pb.SetWorkerSchedulable{WorkerId: 1, Schedulable: false, Reason: "executor", NowUnixNano: 120}}},
		{Op: &pb.Command_Put{Put: &pb.Put{Key: "k", Value: []byte("v")}}},
		{Op: &pb.Command_Delete{Delete: &pb.Delete{Key: "gone"}}},
		{Op: &pb.Command_ReconcileWorker{ReconcileWorker: &pb.ReconcileWorker{WorkerId: 1, RunningTaskIds: []string{"t3"}, NowUnixNano: 130}}},
		{Op: &pb.Command_SetVmDesired{SetVmDesired: &pb.SetVMDesired{Name: "web", Desired: pb.VMDesired_VM_DESIRED_STOPPED, NowUnixNano: 140}}},
		{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: "t3", NowUnixNano: 150}}},
		{Op: &pb.Command_PurgeTasks{PurgeTasks: &pb.PurgeTasks{FinishedBeforeUnixNano: 160}}},
	}
}

func marshalCmd(tb testing.TB, c *pb.Command) []byte {
	tb.Helper()
	b, err := proto.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// encodeEntries and decodeEntries frame a sequence of entry payloads in
// one fuzz input: a uvarint length before each (a short last one takes
// what is left).
func encodeEntries(payloads ...[]byte) []byte {
	var out []byte
	for _, p := range payloads {
		out = binary.AppendUvarint(out, uint64(len(p)))
		out = append(out, p...)
	}
	return out
}

func decodeEntries(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 && len(out) < 64 {
		n, k := binary.Uvarint(data)
		if k <= 0 {
			out = append(out, data)
			break
		}
		data = data[k:]
		if n > uint64(len(data)) {
			n = uint64(len(data))
		}
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

// outcome is what an entry's application returns to its proposer, in a
// comparable form.
func outcome(res proto.Message, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	if res == nil {
		return "nil"
	}
	b, mErr := proto.MarshalOptions{Deterministic: true}.Marshal(res)
	if mErr != nil {
		return "unmarshalable result: " + mErr.Error()
	}
	return fmt.Sprintf("%T %x", res, b)
}

func snapshotOf(t *testing.T, m *Machine) []byte {
	t.Helper()
	b, err := m.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return b
}

// FuzzApplyCommand applies one arbitrary payload on top of the scenario
// (so mutations of valid commands reach deep paths): it must not panic,
// and two replicas must agree on its outcome and on the state after it.
func FuzzApplyCommand(f *testing.F) {
	scen := fuzzScenario()
	for _, c := range scen {
		f.Add(marshalCmd(f, c))
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Add(marshalCmd(f, &pb.Command{Op: &pb.Command_PlaceTasks{PlaceTasks: &pb.PlaceTasks{Placements: []*pb.Placement{{TaskId: "t3", Attempt: 2, WorkerId: 1}, nil, {}}}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var snaps [2][]byte
		var outs [2]string
		for i := range 2 {
			m := New()
			for j, c := range scen {
				_, _ = m.ApplyCommand(uint64(j+1), marshalCmd(t, c))
			}
			outs[i] = outcome(m.ApplyCommand(uint64(len(scen)+1), data))
			snaps[i] = snapshotOf(t, m)
		}
		if outs[0] != outs[1] {
			t.Fatalf("replicas disagree on the outcome: %s vs %s", outs[0], outs[1])
		}
		if !bytes.Equal(snaps[0], snaps[1]) {
			t.Fatal("replicas' snapshots differ after the same entry")
		}
	})
}

// FuzzApplySequence applies a sequence of arbitrary entries to three
// replicas: two from scratch and one that installs a snapshot taken
// halfway (a follower catching up). All must agree entry by entry and
// end with byte-identical snapshots; no entry may panic.
func FuzzApplySequence(f *testing.F) {
	scen := fuzzScenario()
	var all [][]byte
	for _, c := range scen {
		all = append(all, marshalCmd(f, c))
	}
	f.Add(encodeEntries(all...))
	f.Add(encodeEntries(all[:6]...))
	f.Add(encodeEntries(all[0], all[1], all[6], all[7], all[8], all[10], all[11], all[7]))
	f.Add(encodeEntries(all[0], all[2], all[2], all[3], all[3], all[5], []byte{0x0a}, all[4]))
	f.Fuzz(func(t *testing.T, data []byte) {
		ents := decodeEntries(data)
		a, b, c := New(), New(), New()
		half := len(ents) / 2
		var d *Machine
		for i, e := range ents {
			idx := uint64(i + 1)
			if i == half {
				d = New()
				if err := d.Restore(snapshotOf(t, c)); err != nil {
					t.Fatalf("restore a snapshot just taken: %v", err)
				}
			}
			oa := outcome(a.ApplyCommand(idx, e))
			ob := outcome(b.ApplyCommand(idx, e))
			if oa != ob {
				t.Fatalf("entry %d: replicas disagree: %s vs %s", i, oa, ob)
			}
			if i < half {
				_, _ = c.ApplyCommand(idx, e)
				continue
			}
			if od := outcome(d.ApplyCommand(idx, e)); od != oa {
				t.Fatalf("entry %d: the replica restored from a snapshot at %d disagrees: %s vs %s", i, half, od, oa)
			}
		}
		sa, sb := snapshotOf(t, a), snapshotOf(t, b)
		if !bytes.Equal(sa, sb) {
			t.Fatal("replicas' snapshots differ after the same entries")
		}
		if d != nil && !bytes.Equal(sa, snapshotOf(t, d)) {
			t.Fatalf("the replica restored from a snapshot at %d ends with a different snapshot", half)
		}
	})
}

// FuzzRestore feeds arbitrary bytes to Restore: it must fail or succeed
// without panicking, and a machine restored from it must keep working
// (applying the scenario, snapshotting) and round-trip its own snapshot.
func FuzzRestore(f *testing.F) {
	m := New()
	for i, c := range fuzzScenario() {
		_, _ = m.ApplyCommand(uint64(i+1), marshalCmd(f, c))
		if i == 8 {
			b, err := m.Snapshot()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	b, err := m.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte("not a snapshot"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := New()
		if err := r.Restore(data); err != nil {
			return
		}
		s1 := snapshotOf(t, r)
		r2 := New()
		if err := r2.Restore(s1); err != nil {
			t.Fatalf("restore of a restored machine's snapshot: %v", err)
		}
		if !bytes.Equal(s1, snapshotOf(t, r2)) {
			t.Fatal("snapshot does not round-trip through Restore")
		}
		for i, c := range fuzzScenario() {
			_, _ = r.ApplyCommand(uint64(1000+i), marshalCmd(t, c))
		}
		_ = snapshotOf(t, r)
	})
}
