package sim

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
	"github.com/blixard/blixard/internal/storage"
)

// checker holds what the invariants are checked against.
type checker struct {
	s       *Sim
	leaders map[uint64]uint64 // term → the one leader of that term
	ents    []entryRec        // by index: the committed entry, as first applied
	kv      []kvOp
	acks    map[string]ackRec // idempotency key → acknowledged task
	ackList []ackRec
	// putApplied is when each put value (all unique) was first applied
	// anywhere: it bounds when a put with an unknown outcome took effect.
	putApplied map[string]time.Duration
}

type entryRec struct {
	set        bool
	term, hash uint64
	node       uint64
	src        string
}

type ackRec struct{ key, task string }

func newChecker(s *Sim) *checker {
	return &checker{s: s, leaders: map[uint64]uint64{}, acks: map[string]ackRec{}, putApplied: map[string]time.Duration{}}
}

// ---------------------------------------------------------------------------
// Raft safety
// ---------------------------------------------------------------------------

// leader records that id leads term: at most one leader per term.
func (c *checker) leader(term, id uint64) {
	l, ok := c.leaders[term]
	switch {
	case !ok:
		c.leaders[term] = id
		c.s.stats.Terms++
		if c.s.tracing() {
			c.s.logf("n%d is LEADER of term %d", id, term)
		}
	case l != id:
		c.s.violate("raft", "two leaders in term %d: n%d and n%d", term, l, id)
	}
}

// entry records that n applied (index, term, content). Everything applied
// is committed, and a committed entry never changes, so every node must
// apply the same entry at an index: this makes each node's applied
// sequence a prefix of every longer one.
func (c *checker) entry(n *node, index, term, hash uint64, src string) {
	for uint64(len(c.ents)) <= index {
		c.ents = append(c.ents, make([]entryRec, len(c.ents)+64)...)
	}
	r := &c.ents[index]
	if !r.set {
		*r = entryRec{set: true, term: term, hash: hash, node: n.id, src: src}
		return
	}
	if r.hash != hash || (term != 0 && r.term != 0 && r.term != term) {
		c.s.violate("raft", "committed entry %d changed: n%d (%s) has term %d content %016x, but n%d (%s) applied term %d content %016x",
			index, n.id, src, term, hash, r.node, r.src, r.term, r.hash)
	}
}

// recorder sits between raftnode.Core and state.Machine and checks what
// is really applied. The broken-variant tests put their wrappers above
// it, so it sees whatever a broken layer feeds the machine.
type recorder struct {
	n    *node
	m    *state.Machine
	last uint64
}

func (r *recorder) ApplyCommand(index uint64, data []byte) (proto.Message, error) {
	n := r.n
	s := n.s
	if index <= r.last {
		s.violate("apply", "n%d applied index %d after %d", n.id, index, r.last)
	}
	r.last = index
	// Only committed entries may be applied. raftnode.Core saves each
	// Ready's hard state before applying its entries, so the commit
	// index on the node's own disk already covers anything it applies.
	if hs, _, err := n.disk.InitialState(); err == nil && index > hs.GetCommit() {
		s.violate("apply", "n%d applied index %d beyond its commit index %d", n.id, index, hs.GetCommit())
	}
	term, _ := n.disk.Term(index)
	s.chk.entry(n, index, term, payloadHash(data), "apply")
	var cmd pb.Command
	_ = proto.Unmarshal(data, &cmd)
	var pre *pb.Task
	if f := cmd.GetTaskFinished(); f != nil {
		pre, _ = r.m.Task(f.GetTaskId())
	}
	var preVM *pb.VM
	if c := cmd.GetCreateVm(); c != nil {
		preVM, _ = r.m.VM(c.GetSpec().GetName())
	}
	if p := cmd.GetPut(); p != nil {
		if _, ok := s.chk.putApplied[string(p.Value)]; !ok {
			s.chk.putApplied[string(p.Value)] = s.now
		}
	}
	res, err := r.m.ApplyCommand(index, data)
	s.trace(evApply, n.id, index, term)
	if s.tracing() {
		s.logf("n%d applies %d (term %d): %s", n.id, index, term, describeCommand(&cmd, err))
	}
	r.checkAfter(&cmd, pre, res, err)
	if preVM != nil && err == nil {
		s.violate("vms", "n%d created vm %s at index %d although vm %s (seq %d) existed", n.id, preVM.Spec.GetName(), index, preVM.Spec.GetName(), preVM.Seq)
	}
	return res, err
}

func (r *recorder) checkAfter(cmd *pb.Command, pre *pb.Task, res proto.Message, err error) {
	n := r.n
	chk := n.s.chk
	switch op := cmd.Op.(type) {
	case *pb.Command_TaskFinished:
		f := op.TaskFinished
		if err == nil {
			var a *pb.Attempt
			if pre != nil && int(f.Attempt) >= 1 && int(f.Attempt) <= len(pre.Attempts) {
				a = pre.Attempts[f.Attempt-1]
			}
			switch {
			case a == nil:
				n.s.violate("tasks", "n%d recorded a result for %s attempt %d, which did not exist", n.id, f.TaskId, f.Attempt)
			case a.Result != nil || !activeAttempt(a):
				n.s.violate("tasks", "n%d recorded a second result for %s attempt %d (was %v)", n.id, f.TaskId, f.Attempt, a.State)
			case a.WorkerId != f.WorkerId:
				n.s.violate("tasks", "n%d took %s attempt %d's result from worker %d, attempt ran on %d", n.id, f.TaskId, f.Attempt, f.WorkerId, a.WorkerId)
			}
		}
		chk.task(n, r.m, f.TaskId)
	case *pb.Command_TaskStarted:
		chk.task(n, r.m, op.TaskStarted.TaskId)
	case *pb.Command_SubmitTask:
		// A submission that carried a placement adds a reservation like
		// a PlaceTasks placement does.
		if w := op.SubmitTask.PlaceWorkerId; w != 0 && err == nil {
			t, _ := res.(*pb.Task)
			if t != nil {
				chk.task(n, r.m, t.Id)
			}
			if n.core != nil && n.core.IsLeader() {
				chk.capacity(n, r.m, w)
				if t != nil && t.State == pb.TaskState_TASK_STATE_ASSIGNED && len(t.Attempts) == 1 {
					n.s.stats.PlacedOnSubmit++
				}
			}
		}
	case *pb.Command_CancelTask:
		chk.task(n, r.m, op.CancelTask.TaskId)
	case *pb.Command_PlaceTasks:
		seen := map[uint64]bool{}
		for _, p := range op.PlaceTasks.Placements {
			chk.task(n, r.m, p.TaskId)
			// Capacity is a function of the (identical) state: checking
			// it on the leader alone is enough and saves copying.
			if n.core != nil && n.core.IsLeader() && !seen[p.WorkerId] {
				seen[p.WorkerId] = true
				chk.capacity(n, r.m, p.WorkerId)
			}
		}
	case *pb.Command_PlaceVms:
		// Placements are the only commands that add reservations (tasks'
		// and VMs'; a worker's capacity is fixed in the simulation), so
		// checking after them checks after every apply.
		seen := map[uint64]bool{}
		for _, p := range op.PlaceVms.Placements {
			if n.core != nil && n.core.IsLeader() && !seen[p.WorkerId] {
				seen[p.WorkerId] = true
				chk.capacity(n, r.m, p.WorkerId)
			}
		}
	}
}

func (r *recorder) ValidateConfChange(cc *raftpb.ConfChange) error { return r.m.ValidateConfChange(cc) }
func (r *recorder) ApplyConfChange(cc *raftpb.ConfChange)          { r.m.ApplyConfChange(cc) }
func (r *recorder) Snapshot() ([]byte, error)                      { return r.m.Snapshot() }
func (r *recorder) Restore(data []byte) error                      { return r.m.Restore(data) }
func (r *recorder) TakeChanges() []storage.Change                  { return r.m.TakeChanges() }
func (r *recorder) AllRecords() []storage.Change                   { return r.m.AllRecords() }
func (r *recorder) LoadRecord(table string, key, value []byte) error {
	return r.m.LoadRecord(table, key, value)
}

// Member lets raftnode keep a promoted learner's address (it looks for
// this method on the state machine).
func (r *recorder) Member(id uint64) (*pb.Member, bool) { return r.m.Member(id) }

// ---------------------------------------------------------------------------
// Task invariants
// ---------------------------------------------------------------------------

func activeAttempt(a *pb.Attempt) bool {
	return a != nil && (a.State == pb.TaskState_TASK_STATE_ASSIGNED || a.State == pb.TaskState_TASK_STATE_RUNNING)
}

// task checks one task as n's machine holds it: attempts numbered in
// order, only the current one active, at most one success, a final task
// has no active attempt.
func (c *checker) task(n *node, m *state.Machine, id string) {
	t, ok := m.Task(id)
	if !ok {
		return
	}
	c.taskRecord(n, t)
}

func (c *checker) taskRecord(n *node, t *pb.Task) {
	succeeded, active := 0, 0
	for i, a := range t.Attempts {
		if a.Number != uint32(i+1) {
			c.s.violate("tasks", "n%d: task %s attempt %d has number %d", n.id, t.Id, i+1, a.Number)
		}
		if activeAttempt(a) {
			active++
			if i != len(t.Attempts)-1 {
				c.s.violate("tasks", "n%d: task %s has two active attempts (%d is active but not current)", n.id, t.Id, a.Number)
			}
		}
		if a.Result != nil && activeAttempt(a) {
			c.s.violate("tasks", "n%d: task %s attempt %d has a result but is still %v", n.id, t.Id, a.Number, a.State)
		}
		if a.State == pb.TaskState_TASK_STATE_SUCCEEDED {
			succeeded++
		}
	}
	if succeeded > 1 {
		c.s.violate("tasks", "n%d: task %s succeeded %d times", n.id, t.Id, succeeded)
	}
	if t.State == pb.TaskState_TASK_STATE_SUCCEEDED && succeeded != 1 {
		c.s.violate("tasks", "n%d: task %s is succeeded with %d successful attempts", n.id, t.Id, succeeded)
	}
	if state.FinalState(t.State) && active > 0 {
		c.s.violate("tasks", "n%d: task %s is %v but attempt %d is still active", n.id, t.Id, t.State, len(t.Attempts))
	}
}

// capacity checks that the attempts active on a worker and the VMs placed
// on it (running or stopped: both reserve) fit it.
func (c *checker) capacity(n *node, m *state.Machine, worker uint64) {
	w, ok := m.Worker(worker)
	if !ok {
		return
	}
	var cpu, mem int64
	for _, t := range m.Assigned(worker) {
		cpu += t.GetSpec().GetResources().GetCpuMillis()
		mem += t.GetSpec().GetResources().GetMemoryMib()
	}
	vms := 0
	ports := map[string]string{}
	for _, v := range m.VMsOnWorker(worker) {
		r := state.VMReservation(v.Spec)
		cpu += r.GetCpuMillis()
		mem += r.GetMemoryMib()
		vms++
		for _, p := range v.Spec.GetPorts() {
			k := state.HostPortKey(p)
			if other, ok := ports[k]; ok {
				c.s.violate("capacity", "n%d: worker %d holds vm %s and vm %s, which both forward host port %s", n.id, worker, other, v.Spec.GetName(), k)
			}
			ports[k] = v.Spec.GetName()
		}
	}
	if cpu > w.GetCapacity().GetCpuMillis() || mem > w.GetCapacity().GetMemoryMib() {
		c.s.violate("capacity", "n%d: worker %d holds %dm CPU / %d MiB of attempts and %d VMs, capacity %dm / %d MiB",
			n.id, worker, cpu, mem, vms, w.GetCapacity().GetCpuMillis(), w.GetCapacity().GetMemoryMib())
	}
}

// plan checks a scheduler pass against its input: the scheduler's
// contract is that placements never over-commit a worker, respect
// constraints, pinning and backoff, and place each task once.
func (c *checker) plan(n *node, in scheduler.Input, p scheduler.Plan) {
	workers := map[uint64]scheduler.Worker{}
	for _, w := range in.Workers {
		if _, ok := workers[w.ID]; !ok {
			workers[w.ID] = w
		}
	}
	tasks := map[string]scheduler.Task{}
	for _, t := range in.Pending {
		tasks[t.ID] = t
	}
	used := map[uint64]scheduler.Resources{}
	placed := map[string]bool{}
	for _, pl := range p.Placements {
		t, tok := tasks[pl.TaskID]
		w, wok := workers[pl.WorkerID]
		if !tok || !wok {
			c.s.violate("scheduler", "n%d: placement %s→%d names an unknown task or worker", n.id, pl.TaskID, pl.WorkerID)
			return
		}
		if placed[t.ID] {
			c.s.violate("scheduler", "n%d: task %s placed twice in one pass", n.id, t.ID)
		}
		placed[t.ID] = true
		if !t.NotBefore.IsZero() && t.NotBefore.After(in.Now) {
			c.s.violate("scheduler", "n%d: task %s placed during its retry backoff", n.id, t.ID)
		}
		if t.Node != 0 && t.Node != w.ID {
			c.s.violate("scheduler", "n%d: task %s pinned to %d placed on %d", n.id, t.ID, t.Node, w.ID)
		}
		for k, v := range t.Constraints {
			if got, ok := w.Labels[k]; !ok || got != v {
				c.s.violate("scheduler", "n%d: task %s needs %s=%s, worker %d has %q", n.id, t.ID, k, v, w.ID, got)
			}
		}
		u, ok := used[w.ID]
		if !ok {
			u = w.Used
		}
		u.CPUMillis += t.Resources.CPUMillis
		u.MemoryMiB += t.Resources.MemoryMiB
		used[w.ID] = u
		if u.CPUMillis > w.Capacity.CPUMillis || u.MemoryMiB > w.Capacity.MemoryMiB {
			c.s.violate("scheduler", "n%d: pass over-commits worker %d: %dm/%d MiB placed on capacity %dm/%d MiB",
				n.id, w.ID, u.CPUMillis, u.MemoryMiB, w.Capacity.CPUMillis, w.Capacity.MemoryMiB)
			return
		}
	}
}

// ack records an acknowledged submission; a retry of the same key must
// be acknowledged with the same task.
func (c *checker) ack(key, id string) {
	if prev, ok := c.acks[key]; ok {
		if prev.task != id {
			c.s.violate("tasks", "idempotency key %s acknowledged as task %s and as task %s", key, prev.task, id)
		}
		return
	}
	a := ackRec{key: key, task: id}
	c.acks[key] = a
	c.ackList = append(c.ackList, a)
	c.s.stats.TasksAcked++
}

func (c *checker) randomAck() (ackRec, bool) {
	if len(c.ackList) == 0 {
		return ackRec{}, false
	}
	return c.ackList[c.s.rng.IntN(len(c.ackList))], true
}

// sweepLoop checks every task and worker on the leader's machine now and
// then, for the invariants a single command's check cannot see.
func (s *Sim) sweepLoop() {
	if s.phase == phaseDone {
		return
	}
	if l := s.leader(); l != nil {
		s.sweep(l)
	}
	s.after(10*time.Second, s.sweepLoop)
}

func (s *Sim) sweep(n *node) {
	for _, t := range n.sm.Tasks(pb.TaskState_TASK_STATE_UNSPECIFIED) {
		s.chk.taskRecord(n, t)
	}
	for _, w := range n.sm.Workers() {
		s.chk.capacity(n, n.sm, w.Id)
	}
}

// ---------------------------------------------------------------------------
// Final checks, once the healed cluster is quiet
// ---------------------------------------------------------------------------

func (s *Sim) finalChecks(l *node) {
	st := l.core.Status()
	want, err := l.sm.Snapshot()
	if err != nil {
		s.violate("state", "leader snapshot: %v", err)
		return
	}
	for _, id := range members(st) {
		m := s.nodes[id]
		got, err := m.sm.Snapshot()
		if err != nil || !bytes.Equal(got, want) {
			s.violate("state", "n%d's state differs from leader n%d's at applied index %d (%d vs %d bytes): %s",
				id, l.id, l.core.AppliedIndex(), len(got), len(want), diffState(m.sm, l.sm))
		}
	}
	s.sweep(l)
	tasks := l.sm.Tasks(pb.TaskState_TASK_STATE_UNSPECIFIED)
	byKey := map[string]string{}
	for _, t := range tasks {
		s.stats.TasksFinal[t.State.String()]++
		if t.IdempotencyKey == "" {
			continue
		}
		if other, dup := byKey[t.IdempotencyKey]; dup {
			s.violate("tasks", "idempotency key %s created two tasks: %s and %s", t.IdempotencyKey, other, t.Id)
		}
		byKey[t.IdempotencyKey] = t.Id
	}
	for _, a := range s.chk.ackList {
		if byKey[a.key] != a.task {
			s.violate("tasks", "acknowledged submission %s (task %s) is lost: the final state has %q", a.key, a.task, byKey[a.key])
		}
	}
	s.chk.linearizable()
}

// diffState names the first table where two machines differ.
func diffState(a, b *state.Machine) string {
	ta, tb := a.Tasks(pb.TaskState_TASK_STATE_UNSPECIFIED), b.Tasks(pb.TaskState_TASK_STATE_UNSPECIFIED)
	if len(ta) != len(tb) {
		return fmt.Sprintf("%d tasks vs %d", len(ta), len(tb))
	}
	for i := range ta {
		if !proto.Equal(ta[i], tb[i]) {
			return fmt.Sprintf("task %s: %v vs %v", ta[i].Id, ta[i], tb[i])
		}
	}
	wa, wb := a.Workers(), b.Workers()
	for i := range min(len(wa), len(wb)) {
		if !proto.Equal(wa[i], wb[i]) {
			return fmt.Sprintf("worker %d: %v vs %v", wa[i].Id, wa[i], wb[i])
		}
	}
	va, vb := a.VMs(), b.VMs()
	if len(va) != len(vb) {
		return fmt.Sprintf("%d vms vs %d", len(va), len(vb))
	}
	for i := range va {
		if !proto.Equal(va[i], vb[i]) {
			return fmt.Sprintf("vm %s: %v vs %v", va[i].Spec.GetName(), va[i], vb[i])
		}
	}
	ma, mb := a.Members(), b.Members()
	if len(ma) != len(mb) {
		return fmt.Sprintf("%d members vs %d", len(ma), len(mb))
	}
	return "tables differ elsewhere (kv or worker status)"
}

// ---------------------------------------------------------------------------
// Key-value linearizability (porcupine)
// ---------------------------------------------------------------------------

type kvInput struct {
	put        bool
	key, value string
}

type kvOutput struct {
	found bool
	value string
}

type kvOp struct {
	op      porcupine.Operation
	dropped bool
	unknown bool
}

func (c *checker) kvCall(client int, key string, put bool, value string) int {
	c.kv = append(c.kv, kvOp{op: porcupine.Operation{ClientId: client, Input: kvInput{put: put, key: key, value: value}, Call: int64(c.s.now), Return: -1}})
	c.s.stats.KVOps++
	return len(c.kv) - 1
}

func (c *checker) kvReturn(i int, found bool, value string) {
	c.kv[i].op.Output = kvOutput{found: found, value: value}
	c.kv[i].op.Return = int64(c.s.now)
}

// kvUnknown: the put may take effect at any time after its call. The
// history is completed at the end (see linearizable).
func (c *checker) kvUnknown(i int) {
	c.kv[i].unknown = true
	c.s.stats.KVUnknown++
}

func (c *checker) kvDrop(i int) { c.kv[i].dropped = true }

var kvModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		idx := map[string]int{}
		var out [][]porcupine.Operation
		for _, op := range h {
			k := op.Input.(kvInput).key
			i, ok := idx[k]
			if !ok {
				i = len(out)
				idx[k] = i
				out = append(out, nil)
			}
			out[i] = append(out[i], op)
		}
		return out
	},
	Init: func() any { return kvOutput{} },
	Step: func(st, in, out any) (bool, any) {
		cur := st.(kvOutput)
		i := in.(kvInput)
		if i.put {
			return true, kvOutput{found: true, value: i.value}
		}
		return out.(kvOutput) == cur, cur
	},
	DescribeOperation: func(in, out any) string {
		i := in.(kvInput)
		if i.put {
			return fmt.Sprintf("put %s=%s", i.key, i.value)
		}
		o, _ := out.(kvOutput)
		return fmt.Sprintf("get %s → %q (found %v)", i.key, o.value, o.found)
	},
	DescribeState: func(st any) string {
		s := st.(kvOutput)
		return fmt.Sprintf("%q (found %v)", s.value, s.found)
	},
}

// linearizabilityTimeout bounds porcupine; running out counts as failure.
const linearizabilityTimeout = 30 * time.Second

// history completes the client-visible history for porcupine.
func (c *checker) history() ([]porcupine.Operation, error) {
	var h []porcupine.Operation
	for _, o := range c.kv {
		if o.dropped {
			continue
		}
		if o.unknown {
			// A put whose outcome the client never learned. Taken
			// literally it returns "never", but then porcupine has to
			// try every subset of the unknown puts and gives up on a
			// few dozen. The simulation knows better: a put that no
			// node ever applied had no effect and is left out (a read
			// that saw it still fails, as its value was never written);
			// one that was applied took effect by the time it was first
			// applied, which a correct cluster always satisfies.
			at, ok := c.putApplied[o.op.Input.(kvInput).value]
			if !ok {
				continue
			}
			o.op.Return = max(int64(at), o.op.Call)
		}
		if o.op.Return < 0 {
			return nil, fmt.Errorf("operation %v never completed", o.op.Input)
		}
		h = append(h, o.op)
	}
	return h, nil
}

func (c *checker) linearizable() {
	h, err := c.history()
	if err != nil {
		c.s.violate("kv", "%v", err)
		return
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, h, linearizabilityTimeout)
	switch res {
	case porcupine.Ok:
		return
	case porcupine.Unknown:
		c.s.violate("kv", "porcupine could not decide linearizability of %d operations within %v", len(h), linearizabilityTimeout)
	default:
		where := ""
		if c.s.tracing() {
			p := filepath.Join(os.TempDir(), fmt.Sprintf("blixard-sim-%d-kv.html", c.s.cfg.Seed))
			if err := porcupine.VisualizePath(kvModel, info, p); err == nil {
				where = "; visualization: " + p
			}
		}
		c.s.violate("kv", "the key-value history (%d operations) is not linearizable%s%s", len(h), c.firstBadKey(h), where)
	}
}

// firstBadKey names a key whose history alone is not linearizable and,
// when tracing, prints the operations that show it.
func (c *checker) firstBadKey(h []porcupine.Operation) string {
	for _, part := range kvModel.Partition(h) {
		if porcupine.CheckOperationsTimeout(kvModel, part, linearizabilityTimeout) != porcupine.Illegal {
			continue
		}
		if c.s.tracing() {
			c.minimalPrefix(part)
		}
		return fmt.Sprintf(" (key %s, %d operations)", part[0].Input.(kvInput).key, len(part))
	}
	return ""
}

// minimalPrefix prints the shortest prefix (by call time) of a bad
// history that is already not linearizable: its last operation is the
// one no order can explain.
func (c *checker) minimalPrefix(h []porcupine.Operation) {
	sorted := slices.Clone(h)
	slices.SortStableFunc(sorted, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	lo, hi := 1, len(sorted)
	for lo < hi {
		mid := (lo + hi) / 2
		if porcupine.CheckOperationsTimeout(kvModel, sorted[:mid], linearizabilityTimeout) == porcupine.Illegal {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	c.s.logf("shortest non-linearizable prefix: %d operations; its last ones:", lo)
	for _, o := range sorted[max(0, lo-12):lo] {
		c.s.logf("  client%d %.6fs → %.6fs  %s", o.ClientId, time.Duration(o.Call).Seconds(), time.Duration(o.Return).Seconds(), kvModel.DescribeOperation(o.Input, o.Output))
	}
}

// describeCommand is a short readable form of a command for the trace.
func describeCommand(cmd *pb.Command, err error) string {
	var d string
	switch op := cmd.Op.(type) {
	case *pb.Command_Put:
		d = fmt.Sprintf("put %s=%s", op.Put.Key, op.Put.Value)
	case *pb.Command_SubmitTask:
		d = "submit " + op.SubmitTask.IdempotencyKey
	case *pb.Command_PlaceTasks:
		d = fmt.Sprintf("place %d", len(op.PlaceTasks.Placements))
	case *pb.Command_TaskStarted:
		d = fmt.Sprintf("started %s#%d on %d", op.TaskStarted.TaskId, op.TaskStarted.Attempt, op.TaskStarted.WorkerId)
	case *pb.Command_TaskFinished:
		d = fmt.Sprintf("finished %s#%d on %d", op.TaskFinished.TaskId, op.TaskFinished.Attempt, op.TaskFinished.WorkerId)
	case *pb.Command_CancelTask:
		d = "cancel " + op.CancelTask.TaskId
	case *pb.Command_SetWorkerState:
		d = fmt.Sprintf("worker %d %v", op.SetWorkerState.WorkerId, op.SetWorkerState.State)
	case *pb.Command_ReleaseVms:
		d = fmt.Sprintf("release the VMs of down worker %d", op.ReleaseVms.WorkerId)
	case *pb.Command_CordonWorker:
		d = fmt.Sprintf("cordon worker %d = %v", op.CordonWorker.WorkerId, op.CordonWorker.Cordoned)
	case *pb.Command_RegisterWorker:
		d = fmt.Sprintf("register worker %d", op.RegisterWorker.Worker.GetId())
	case *pb.Command_ReconcileWorker:
		d = fmt.Sprintf("reconcile worker %d", op.ReconcileWorker.WorkerId)
	case *pb.Command_CreateVm:
		d = "create vm " + op.CreateVm.GetSpec().GetName()
	case *pb.Command_SetVmDesired:
		d = fmt.Sprintf("vm %s desired %v restart=%v", op.SetVmDesired.Name, op.SetVmDesired.Desired, op.SetVmDesired.Restart)
	case *pb.Command_PlaceVms:
		d = fmt.Sprintf("place %d vms", len(op.PlaceVms.Placements))
	case *pb.Command_ReportVm:
		r := op.ReportVm
		d = fmt.Sprintf("report vm %s gen %d on %d: %v (%s)", r.Name, r.Generation, r.WorkerId, r.State, r.Reason)
	default:
		d = fmt.Sprintf("%T", cmd.Op)
	}
	if err != nil {
		d += " → " + err.Error()
	}
	return d
}
