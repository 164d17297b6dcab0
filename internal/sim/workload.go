package sim

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/raftnode"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
)

// kvKeys is the small key space the clients race on: few keys make
// conflicts likely, several keep each linearizability partition small.
var kvKeys = []string{"k0", "k1", "k2", "k3", "k4"}

// maxNodeID bounds membership churn: node IDs are never reused, so this
// caps the number of nodes one run can ever create.
const maxNodeID = 12

// client is one simulated API user. It performs one operation at a time
// against a node of its choice, the way the CLI talks to any node, and
// retries task submissions with the same idempotency key.
type client struct {
	s    *Sim
	id   int
	home uint64
	seq  int
}

func (c *client) timeout() time.Duration {
	return time.Duration(2000+c.s.rng.IntN(3000)) * time.Millisecond
}

// then schedules the next operation after a short think time.
func (c *client) then() {
	c.s.after(time.Duration(c.s.rng.IntN(60))*time.Millisecond, c.next)
}

func (c *client) next() {
	s := c.s
	if s.opsLeft == 0 || s.phase != phaseWorkload {
		s.clientDone()
		return
	}
	s.opsLeft--
	s.stats.ClientOps++
	if s.rng.Float64() < s.p.faultPerOp {
		s.injectFault()
	}
	c.seq++
	switch k := s.rng.IntN(100); {
	case k < 28:
		c.put()
	case k < 48:
		c.get()
	case k < 70:
		c.submit()
	case k < 76:
		c.cancel()
	case k < 90:
		c.readTask()
	case k < 97:
		c.vmOp()
	case k < 98:
		c.cordon()
	default:
		c.membership()
	}
}

// cordon is an operator's `worker cordon` or `uncordon` of a random node's
// worker (after the faults heal, the simulation uncordons every worker so
// that work pinned to one can finish).
func (c *client) cordon() {
	s := c.s
	id := s.ids[s.rng.IntN(len(s.ids))]
	on := s.rng.IntN(2) == 0
	n := c.pick()
	payload := mustMarshal(&pb.Command{Op: &pb.Command_CordonWorker{CordonWorker: &pb.CordonWorker{WorkerId: id, Cordoned: on, Reason: "sim", NowUnixNano: n.localNow().UnixNano()}}})
	n.issue(&request{kind: rqPropose, payload: payload, done: func(_ proto.Message, err error) {
		c.traceOp(n, fmt.Sprintf("cordon worker %d = %v", id, on), err)
		c.then()
	}}, c.timeout())
}

// pick chooses the node to talk to: usually the same one, sometimes
// another (a load balancer, a retry elsewhere).
func (c *client) pick() *node {
	s := c.s
	if n := s.nodes[c.home]; n != nil && n.st != stGone && !n.idle && s.rng.IntN(10) < 8 {
		return n
	}
	live := slices.DeleteFunc(s.live(), func(n *node) bool { return n.idle })
	n := live[s.rng.IntN(len(live))]
	c.home = n.id
	return n
}

func mustMarshal(cmd *pb.Command) []byte {
	// Deterministic: map fields must encode the same way on every run.
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		panic(fmt.Sprintf("sim: marshal command: %v", err))
	}
	return b
}

func (c *client) traceOp(n *node, what string, err error) {
	s := c.s
	s.trace(evClient, n.id, uint64(c.id), uint64(c.seq))
	if s.tracing() {
		res := "ok"
		if err != nil {
			res = err.Error()
		}
		s.logf("client%d via %s: %s → %s", c.id, n.name(), what, res)
	}
}

func (c *client) put() {
	s := c.s
	key := kvKeys[s.rng.IntN(len(kvKeys))]
	val := fmt.Sprintf("c%d.%d", c.id, c.seq)
	n := c.pick()
	op := s.chk.kvCall(c.id, key, true, val)
	payload := mustMarshal(&pb.Command{Op: &pb.Command_Put{Put: &pb.Put{Key: key, Value: []byte(val)}}})
	n.issue(&request{kind: rqPropose, payload: payload, done: func(_ proto.Message, err error) {
		c.traceOp(n, fmt.Sprintf("put %s=%s", key, val), err)
		switch {
		case err == nil:
			s.chk.kvReturn(op, false, "")
		case errors.Is(err, errRefused):
			s.chk.kvDrop(op)
		default:
			// It may still be applied, at any later time.
			s.chk.kvUnknown(op)
		}
		c.then()
	}}, c.timeout())
}

func (c *client) get() {
	s := c.s
	key := kvKeys[s.rng.IntN(len(kvKeys))]
	n := c.pick()
	op := s.chk.kvCall(c.id, key, false, "")
	n.issue(&request{kind: rqRead, done: func(_ proto.Message, err error) {
		if err != nil {
			c.traceOp(n, "get "+key, err)
			s.chk.kvDrop(op) // a failed read has no effect
			c.then()
			return
		}
		// The read point is applied: read local state, as api.Get does.
		kv, ok := n.sm.Get(key)
		s.chk.kvReturn(op, ok, string(kv.GetValue()))
		c.traceOp(n, fmt.Sprintf("get %s = %q (found %v)", key, kv.GetValue(), ok), nil)
		c.then()
	}}, c.timeout())
}

func (c *client) spec() *pb.TaskSpec {
	r := c.s.rng
	return &pb.TaskSpec{
		Name:               fmt.Sprintf("job-%d-%d", c.id, c.seq),
		Command:            "/bin/simulated",
		Resources:          &pb.Resources{CpuMillis: int64(100 + r.IntN(10)*100), MemoryMib: int64(64 * (1 + r.IntN(16)))},
		MaxRetries:         int32(r.IntN(3)),
		RetryBackoffBaseMs: 100,
		RetryBackoffMaxMs:  2000,
		Priority:           int32(r.IntN(3)),
		Policy:             []pb.PlacementPolicy{pb.PlacementPolicy_PLACEMENT_POLICY_UNSPECIFIED, pb.PlacementPolicy_PLACEMENT_POLICY_BINPACK, pb.PlacementPolicy_PLACEMENT_POLICY_SPREAD}[r.IntN(3)],
	}
}

func (c *client) submit() {
	s := c.s
	key := fmt.Sprintf("c%d-s%d", c.id, c.seq)
	s.stats.TasksSubmitted++
	c.trySubmit(key, c.spec(), 1)
}

// trySubmit sends the submission, retrying retryable and unknown outcomes
// with the same idempotency key, as a CLI user (or script) would.
func (c *client) trySubmit(key string, spec *pb.TaskSpec, attempt int) {
	s := c.s
	n := c.pick()
	// Half the submissions carry a placement made on submit, as the
	// server's do (server.placeOnSubmit), from the issuing node's possibly
	// stale state; the apply-time checks must keep every one safe.
	var place uint64
	if n.sm != nil && s.rng.IntN(2) == 0 {
		view := n.sm.ForScheduling()
		place = scheduler.PlaceOnSubmit(n.localNow(), view, len(n.sm.PendingVMs()), state.PendingOf("submitted", 0, spec), s.rng)
	}
	payload := mustMarshal(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{
		Spec: spec, IdempotencyKey: key, NowUnixNano: n.localNow().UnixNano(), PlaceWorkerId: place,
	}}})
	n.issue(&request{kind: rqPropose, payload: payload, done: func(res proto.Message, err error) {
		c.traceOp(n, fmt.Sprintf("submit %s (try %d)", key, attempt), err)
		if err == nil {
			t, ok := res.(*pb.Task)
			if !ok {
				s.violate("tasks", "submit %s returned %T, not a task", key, res)
			} else {
				s.chk.ack(key, t.GetId())
			}
			c.then()
			return
		}
		if errors.Is(err, state.ErrInvalidCommand) {
			s.violate("tasks", "submit %s refused as invalid: %v", key, err)
			c.then()
			return
		}
		if attempt >= 8 {
			c.then()
			return
		}
		backoff := min(time.Duration(50<<attempt)*time.Millisecond, time.Second)
		s.after(backoff, func() { c.trySubmit(key, spec, attempt+1) })
	}}, c.timeout())
}

func (c *client) cancel() {
	s := c.s
	a, ok := s.chk.randomAck()
	if !ok {
		c.then()
		return
	}
	n := c.pick()
	payload := mustMarshal(&pb.Command{Op: &pb.Command_CancelTask{CancelTask: &pb.CancelTask{TaskId: a.task, NowUnixNano: n.localNow().UnixNano()}}})
	n.issue(&request{kind: rqPropose, payload: payload, done: func(_ proto.Message, err error) {
		c.traceOp(n, "cancel "+a.task, err)
		if errors.Is(err, state.ErrUnknownTask) {
			s.violate("tasks", "acknowledged task %s (key %s) unknown when cancelled: %v", a.task, a.key, err)
		}
		c.then()
	}}, c.timeout())
}

// readTask reads an acknowledged task linearizably: it must exist.
func (c *client) readTask() {
	s := c.s
	a, ok := s.chk.randomAck()
	if !ok {
		c.then()
		return
	}
	n := c.pick()
	n.issue(&request{kind: rqRead, done: func(_ proto.Message, err error) {
		c.traceOp(n, "read task "+a.task, err)
		if err == nil {
			t, ok := n.sm.Task(a.task)
			switch {
			case !ok:
				s.violate("tasks", "acknowledged task %s (key %s) not found by a linearizable read on n%d", a.task, a.key, n.id)
			case t.IdempotencyKey != a.key:
				s.violate("tasks", "task %s has idempotency key %q, acknowledged for %q", a.task, t.IdempotencyKey, a.key)
			}
		}
		c.then()
	}}, c.timeout())
}

// membership changes the cluster through the leader, as the Join and
// RemoveMember APIs forward to it: add a learner (a fresh node with a
// new ID and an empty disk), promote one, or remove a voter.
func (c *client) membership() {
	s := c.s
	via := c.pick()
	if via.st != stUp || via.lead == 0 {
		c.then()
		return
	}
	l := s.nodes[via.lead]
	if l == nil || l.st != stUp {
		c.then()
		return
	}
	st := l.core.Status()
	voters := sortedKeys(st.Config.Voters[0])
	learners := sortedKeys(st.Config.Learners)
	r := &request{kind: rqConf}
	var fresh *node
	switch {
	case len(learners) == 0 && len(voters) < 5 && s.nextNode <= maxNodeID && s.rng.IntN(10) < 6:
		// One learner at a time: raftnode.Core promotes learners in map
		// order, which would make two simultaneous ones nondeterministic.
		id := s.nextNode
		s.nextNode++
		fresh = s.newNode(id, nil)
		fresh.open()
		r.typ, r.target, r.addr = raftpb.ConfChangeAddLearnerNode, id, addrOf(id)
	case len(learners) > 0 && caughtUp(st, learners[0]):
		// Promote by hand, as raftnode.Core does on its own; production
		// only ever promotes a learner that has caught up.
		r.typ, r.target = raftpb.ConfChangeAddNode, learners[0]
	case len(voters) > 3:
		cands := slices.DeleteFunc(voters, func(id uint64) bool { return id == l.id })
		r.typ, r.target = raftpb.ConfChangeRemoveNode, cands[s.rng.IntN(len(cands))]
	default:
		c.then()
		return
	}
	what := fmt.Sprintf("membership %v n%d", r.typ, r.target)
	s.trace(evConf, l.id, uint64(r.typ), r.target)
	r.done = func(_ proto.Message, err error) {
		c.traceOp(l, what, err)
		switch {
		case fresh == nil || err == nil:
		case !outcomeUnknown(err):
			fresh.stop(raftnode.ErrRemoved)
		default:
			// The join may or may not have happened, and may still
			// happen: the entry can commit much later. A node that is
			// not a member after a while keeps running, but clients stop
			// using it (they would only time out there); stopping it
			// instead would leave a member down if the join lands late.
			s.after(15*time.Second, func() {
				if lead := s.leader(); lead != nil && fresh.st != stGone && !slices.Contains(members(lead.core.Status()), fresh.id) {
					if s.tracing() {
						s.logf("n%d has not joined after 15s; clients stop using it", fresh.id)
					}
					fresh.idle = true
				}
			})
		}
		c.then()
	}
	l.issue(r, c.timeout())
}

func caughtUp(st raft.Status, id uint64) bool {
	pr, ok := st.Progress[id]
	return ok && pr.State == tracker.StateReplicate && pr.Match >= st.HardState.GetCommit()
}

// outcomeUnknown says whether a failed request may still take effect.
func outcomeUnknown(err error) bool {
	return errors.Is(err, raftnode.ErrLeaderChanged) || errors.Is(err, errTimeout) || errors.Is(err, raftnode.ErrStopped)
}

// vmNames is the small name space VM operations race on: creates of a
// name in use must be refused, deletes and re-creates reuse names, and
// five 1-vCPU VMs fit the smallest cluster (three 2-CPU workers).
var vmNames = []string{"vm-a", "vm-b", "vm-c", "vm-d", "vm-e"}

// vmOp is one VM command, as the CLI's vm create/stop/start/restart/delete
// send it, retried by the client while its outcome is unknown.
func (c *client) vmOp() {
	s := c.s
	name := vmNames[s.rng.IntN(len(vmNames))]
	s.stats.VMOps++
	switch k := s.rng.IntN(10); {
	case k < 4:
		r := s.rng
		spec := state.NormalizeVMSpec(&pb.VMSpec{
			Name:      name,
			MemoryMib: uint32(64 * (1 + r.IntN(4))),
			Restart: []pb.RestartPolicy{pb.RestartPolicy_RESTART_POLICY_ALWAYS, pb.RestartPolicy_RESTART_POLICY_ALWAYS,
				pb.RestartPolicy_RESTART_POLICY_ALWAYS, pb.RestartPolicy_RESTART_POLICY_ON_FAILURE, pb.RestartPolicy_RESTART_POLICY_NEVER}[r.IntN(5)],
		})
		if r.IntN(2) == 0 {
			// Two host ports for five names: VMs that must not share a worker.
			spec.Ports = []*pb.PortForward{{HostPort: uint32(8080 + r.IntN(2)), GuestPort: 80, Protocol: "tcp"}}
		}
		c.createVM(spec, 1)
	case k < 6:
		c.setVM(name, pb.VMDesired_VM_DESIRED_STOPPED, false, 1)
	case k < 7:
		c.setVM(name, pb.VMDesired_VM_DESIRED_RUNNING, false, 1)
	case k < 8:
		c.setVM(name, pb.VMDesired_VM_DESIRED_RUNNING, true, 1)
	default:
		c.setVM(name, pb.VMDesired_VM_DESIRED_DELETED, false, 1)
	}
}

// retryVM retries a VM command whose outcome is unknown (or that found no
// process), as a user would, a few times with backoff.
func (c *client) retryVM(attempt int, again func()) {
	if attempt >= 6 {
		c.then()
		return
	}
	c.s.after(min(time.Duration(50<<attempt)*time.Millisecond, time.Second), again)
}

// createVM is api.CreateVM: a linearizable read, the name check, then the
// proposal (which refuses a duplicate that slipped past the check).
func (c *client) createVM(spec *pb.VMSpec, attempt int) {
	s := c.s
	n := c.pick()
	name := spec.Name
	again := func() { c.createVM(spec, attempt+1) }
	n.issue(&request{kind: rqRead, done: func(_ proto.Message, err error) {
		if err != nil {
			c.traceOp(n, "vm create "+name+" (read)", err)
			c.retryVM(attempt, again)
			return
		}
		if _, ok := n.sm.VM(name); ok {
			c.traceOp(n, "vm create "+name, errors.New("already exists (API check)"))
			c.then()
			return
		}
		payload := mustMarshal(&pb.Command{Op: &pb.Command_CreateVm{CreateVm: &pb.CreateVM{Spec: spec, NowUnixNano: n.localNow().UnixNano()}}})
		n.issue(&request{kind: rqPropose, payload: payload, done: func(_ proto.Message, err error) {
			c.traceOp(n, fmt.Sprintf("vm create %s (try %d)", name, attempt), err)
			switch {
			case err == nil:
				s.stats.VMsCreated++
				c.then()
			case errors.Is(err, state.ErrVMExists):
				c.then()
			case errors.Is(err, state.ErrInvalidCommand):
				s.violate("vms", "vm create %s refused as invalid: %v", name, err)
			default:
				c.retryVM(attempt, again)
			}
		}}, c.timeout())
	}}, c.timeout())
}

// setVM is api.SetVMDesired: vm stop, start, restart or delete.
func (c *client) setVM(name string, desired pb.VMDesired, restart bool, attempt int) {
	s := c.s
	n := c.pick()
	payload := mustMarshal(&pb.Command{Op: &pb.Command_SetVmDesired{SetVmDesired: &pb.SetVMDesired{
		Name: name, Desired: desired, Restart: restart, NowUnixNano: n.localNow().UnixNano(),
	}}})
	n.issue(&request{kind: rqPropose, payload: payload, done: func(_ proto.Message, err error) {
		c.traceOp(n, fmt.Sprintf("vm %s desired %v restart=%v (try %d)", name, desired, restart, attempt), err)
		switch {
		case err == nil, errors.Is(err, state.ErrUnknownVM), errors.Is(err, state.ErrVMDeleting):
			c.then()
		case errors.Is(err, state.ErrInvalidCommand):
			s.violate("vms", "vm %s desired %v refused as invalid: %v", name, desired, err)
		default:
			c.retryVM(attempt, func() { c.setVM(name, desired, restart, attempt+1) })
		}
	}}, c.timeout())
}
