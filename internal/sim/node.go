package sim

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/internal/raftnode"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
	"github.com/blixard/blixard/internal/worker"
)

type nodeState int

const (
	stUp     nodeState = iota
	stPaused           // process stopped (SIGSTOP, a long GC): keeps its memory
	stDown             // process dead; restarts from its disk
	stGone             // removed from the cluster, or never restartable
)

func (st nodeState) String() string {
	return [...]string{"up", "paused", "down", "gone"}[st]
}

// Tunables that mirror production defaults (server.Config, raftnode).
const (
	tickInterval      = 100 * time.Millisecond
	checkpointEvery   = 100 * time.Millisecond
	heartbeatInterval = time.Second
	workerTTL         = 5 * time.Second
	taskRetention     = 24 * time.Hour // server.Config's default: no run lasts that long
	inboxLimit        = 4096           // raftnode.Node's receive channel
)

// Client-side errors.
var (
	// errTimeout is a client-side deadline: the outcome is unknown.
	errTimeout = errors.New("sim: request deadline passed; outcome unknown")
	// errRefused means the process was not running: nothing was sent.
	errRefused = errors.New("sim: connection refused (process not running)")
)

// node is one simulated Blixard process: the production raftnode.Core and
// state.Machine, plus the plumbing raftnode.Node and the server give them
// (proposal waiters, linearizable reads, checkpoints, leader duties), here
// driven by sim events instead of goroutines.
type node struct {
	s     *Sim
	id    uint64
	peers []raft.Peer // bootstrap members pass these on every start, as --bootstrap does
	disk  NodeDisk
	st    nodeState
	inc   int // incarnation: events of an earlier process are ignored

	rate   float64       // local clock speed (drift)
	offset time.Duration // where the node's clocks started
	step   time.Duration // wall-clock error beyond NTP's: skew and steps

	core *raftnode.Core
	sm   *state.Machine

	lead, term uint64
	epoch      uint64
	waiters    map[uint64]*request
	parked     []*request // dropped for lack of a leader: certainly not appended, resent later
	reads      []raft.ReadState
	inbox      []*raftpb.Message
	deferred   []func()
	readyDue   bool
	scanned    uint64 // highest applied index whose log entry was checked

	mon       *worker.Monitor
	duties    *worker.LeaderDuties
	schedBusy bool
	schedDue  bool
	schedRng  *rand.Rand
	backoffs  scheduler.Backoffs // the leader's memory of retries in backoff; lost on crash
	// schedWake is the scheduling loop's one timer: the latest pass's
	// NextWake (or a retry after a failed proposal); schedWakeSeq
	// cancels the earlier ones, as the server's loop stops its timer.
	schedWake    time.Time
	schedWakeSeq uint64
	w            *simWorker
	vmh          *vmHost // the machine: outlives the process
	stopDue      bool    // removal applied somewhere: the operator stops it soon
	idle         bool    // a join that has not happened (yet): clients avoid it
}

func (n *node) name() string { return fmt.Sprintf("n%d", n.id) }

// monoNow is the node's monotonic clock: its oscillator runs at its own
// rate (the same drift as its ticks) and is never stepped.
func (n *node) monoNow() time.Time {
	return simEpoch.Add(n.offset + time.Duration(float64(n.s.now)*n.rate))
}

// localNow is the node's wall clock, which stamps commands. NTP keeps it
// within 250 ms of true time, except when a clock-step fault moves it or
// Config.ClockSkew sets it off.
func (n *node) localNow() time.Time {
	return simEpoch.Add(n.offset/8 + n.step + n.s.now)
}

// after runs fn after d of this node's local time, unless the process dies
// first; while paused, fn waits for the resume.
func (n *node) after(d time.Duration, fn func()) {
	inc := n.inc
	n.s.after(time.Duration(float64(d)/n.rate), func() {
		if n.inc != inc {
			return
		}
		switch n.st {
		case stUp:
			fn()
		case stPaused:
			n.deferred = append(n.deferred, fn)
		}
	})
}

// kick schedules a Ready cycle after the disk's fsync latency. Everything
// that arrives before it is batched into the same Ready, as raftnode.Node
// drains its queues before handling Ready.
func (n *node) kick() {
	if n.readyDue || n.st != stUp {
		return
	}
	n.readyDue = true
	n.after(n.s.fsyncDelay(), n.ready)
}

// open builds the process: a fresh state machine and a Core over the
// durable disk, exactly as server.New does.
func (n *node) open() {
	s := n.s
	n.sm = state.New()
	var sm raftnode.StateMachine = &recorder{n: n, m: n.sm}
	if s.cfg.WrapStateMachine != nil {
		sm = s.cfg.WrapStateMachine(n.id, sm, n.disk)
	}
	var logger *slog.Logger
	if s.tracing() {
		logger = slog.New(&logHandler{s: s, node: n.id})
	}
	core, err := raftnode.NewCore(raftnode.Config{
		ID:            n.id,
		SnapshotEvery: s.p.snapEvery,
		SnapshotKeep:  s.p.snapKeep,
		Logger:        logger,
	}, n.disk, n.disk, sm, transport{s.net, n.id}, n.peers)
	if errors.Is(err, ErrInjected) {
		// A write at start-up (installing the snapshot's state) failed:
		// the process exits and its supervisor tries again.
		n.st = stDown
		n.inc++
		s.stats.StorageFailures++
		if s.tracing() {
			s.logf("%s start-up failed: %v", n.name(), err)
		}
		s.restartLater(n, time.Duration(200+s.rng.IntN(1800))*time.Millisecond)
		return
	}
	if err != nil {
		s.violate("restart", "n%d cannot start from its own durable disk: %v", n.id, err)
		n.st = stGone
		return
	}
	n.core = core
	n.st = stUp
	n.lead, n.term = 0, 0
	n.waiters = map[uint64]*request{}
	n.parked, n.reads, n.inbox, n.deferred = nil, nil, nil, nil
	n.readyDue, n.schedBusy, n.schedDue = false, false, false
	n.scanned = core.AppliedIndex()
	n.mon = worker.NewMonitor(workerTTL)
	n.duties = worker.NewLeaderDuties(n.mon, taskRetention, n.s.cfg.VMReplaceAfter)
	n.after(tickInterval, n.tickLoop)
	n.after(time.Duration(s.rng.Int64N(int64(checkpointEvery))), n.checkpointLoop)
	n.after(heartbeatInterval/2, n.dutiesLoop)
	n.w.start()
	n.kick()
}

func (n *node) tickLoop() {
	n.core.Tick()
	n.s.trace(evTick, n.id, 0, 0)
	// raftnode.Node resends a proposal raft dropped for lack of a leader
	// once one is known; doing it on the tick bounds the retry rate.
	if len(n.parked) > 0 && n.core.Leader() != 0 {
		p := n.parked
		n.parked = nil
		for _, r := range p {
			n.send(r)
		}
	}
	n.kick()
	n.after(tickInterval, n.tickLoop)
}

func (n *node) checkpointLoop() {
	if err := n.core.Checkpoint(); err != nil {
		n.fail(err)
		return
	}
	// A little jitter moves the checkpoint relative to crashes.
	n.after(checkpointEvery+time.Duration(n.s.rng.Int64N(int64(10*time.Millisecond))), n.checkpointLoop)
}

// receive hands a delivered message to raft, or queues it while paused.
func (n *node) receive(m *raftpb.Message) {
	if n.st == stPaused {
		if len(n.inbox) < inboxLimit {
			n.inbox = append(n.inbox, m)
		}
		return
	}
	if err := n.core.Step(m); err != nil && n.s.tracing() {
		n.s.logf("%s step %v from n%d: %v", n.name(), m.GetType(), m.GetFrom(), err)
	}
	n.kick()
}

// ready is raftnode.Node's loop body: Ready cycles until raft is idle.
func (n *node) ready() {
	n.readyDue = false
	for n.st == stUp && n.core.HasReady() {
		out, err := n.core.HandleReady()
		n.s.stats.Readies++
		if err != nil {
			n.fail(err)
			return
		}
		n.handleOutput(out)
	}
}

// handleOutput mirrors raftnode.Node.handleOutput and the server's
// OnApply/OnChange hooks.
func (n *node) handleOutput(out raftnode.Output) {
	s := n.s
	advanced := out.AppliedIndex > n.scanned
	if out.Leader != n.lead || out.Term != n.term {
		s.trace(evLeader, n.id, out.Leader, out.Term)
		if s.tracing() {
			if out.Leader == 0 {
				s.logf("%s knows no leader (term %d)", n.name(), out.Term)
			} else {
				s.logf("%s follows leader n%d (term %d)", n.name(), out.Leader, out.Term)
			}
		}
	}
	prevLead := n.lead
	n.lead, n.term = out.Leader, out.Term
	if n.core.IsLeader() {
		s.chk.leader(out.Term, n.id)
	}
	n.scanLog(out.AppliedIndex)
	for _, a := range out.Applied {
		n.complete(a)
	}
	if len(out.ReadStates) > 0 || len(n.reads) > 0 {
		n.reads = append(n.reads, out.ReadStates...)
		kept := n.reads[:0]
		for _, rs := range n.reads {
			if rs.Index <= out.AppliedIndex && len(rs.RequestCtx) == 8 {
				n.complete(raftnode.Applied{ID: beUint64(rs.RequestCtx)})
			} else {
				kept = append(kept, rs)
			}
		}
		n.reads = kept
	}
	if out.LeaderChanged {
		n.leaderChanged(prevLead)
	}
	if out.MembershipChanged {
		s.onMembership(n)
	}
	if out.Removed && n.st == stUp {
		n.removed()
		return
	}
	if advanced {
		n.w.kick()
		if n.w.vms != nil {
			n.w.vms.applied()
		}
		n.schedKick()
	}
}

// scanLog checks the log entries this node has applied against what every
// other node applied at the same index: committed entries never change.
func (n *node) scanLog(upTo uint64) {
	lo := n.scanned + 1
	if upTo < lo {
		return
	}
	n.scanned = upTo
	if first, _ := n.disk.FirstIndex(); lo < first {
		lo = first // covered by a snapshot
	}
	if lo > upTo {
		return
	}
	ents, err := n.disk.Entries(lo, upTo+1, 1<<62)
	if err != nil {
		n.s.stats.ScanSkipped++
		return
	}
	for _, e := range ents {
		n.s.chk.entry(n, e.GetIndex(), e.GetTerm(), entryHash(e), "log")
	}
}

// request is one proposal or read waiting for its outcome, with
// raftnode.Node's semantics: applied, refused, or failed with
// ErrLeaderChanged / ErrStopped / a deadline (all "outcome unknown").
type request struct {
	kind    reqKind
	payload []byte
	typ     raftpb.ConfChangeType
	target  uint64
	addr    string
	id      uint64
	epoch   uint64
	done    func(proto.Message, error)
	over    bool
}

type reqKind int

const (
	rqPropose reqKind = iota
	rqConf
	rqRead
)

func (r *request) finish(res proto.Message, err error) {
	if r.over {
		return
	}
	r.over = true
	r.done(res, err)
}

// issue starts r on n with a client-side deadline. A node that is not
// running refuses at once (connection refused); a paused one accepts and
// hangs, as a stopped process's socket does.
func (n *node) issue(r *request, timeout time.Duration) {
	switch n.st {
	case stDown, stGone:
		n.s.after(time.Millisecond, func() { r.finish(nil, errRefused) })
		return
	}
	inc := n.inc
	n.s.after(timeout, func() {
		if r.over {
			return
		}
		if n.inc == inc {
			delete(n.waiters, r.id)
			n.parked = slices.DeleteFunc(n.parked, func(p *request) bool { return p == r })
		}
		r.finish(nil, errTimeout)
	})
	if n.st == stPaused {
		n.deferred = append(n.deferred, func() { n.send(r) })
		return
	}
	n.send(r)
}

func (n *node) send(r *request) {
	if r.over {
		return
	}
	r.id = n.s.newID()
	r.epoch = n.epoch
	n.waiters[r.id] = r
	var err error
	switch r.kind {
	case rqPropose:
		err = n.core.Propose(r.id, r.payload)
	case rqConf:
		err = n.core.ProposeConfChange(r.id, r.typ, r.target, r.addr)
	case rqRead:
		err = n.core.ReadIndex(r.id)
	}
	n.kick()
	if err != nil {
		n.complete(raftnode.Applied{ID: r.id, Err: err})
	}
}

func (n *node) complete(a raftnode.Applied) {
	r, ok := n.waiters[a.ID]
	if !ok {
		return
	}
	delete(n.waiters, a.ID)
	if errors.Is(a.Err, raftnode.ErrNoLeader) {
		n.parked = append(n.parked, r)
		return
	}
	r.finish(a.Result, a.Err)
}

// leaderChanged fails requests made under the old leader, as
// raftnode.Node does: raft may have dropped them silently. Requests of an
// epoch without a leader were appended by no one and go on.
func (n *node) leaderChanged(prevLead uint64) {
	old := n.epoch
	n.epoch++
	for _, id := range sortedKeys(n.waiters) {
		switch r := n.waiters[id]; {
		case r.epoch > old:
		case prevLead == 0:
			r.epoch = n.epoch
		default:
			delete(n.waiters, id)
			r.finish(nil, raftnode.ErrLeaderChanged)
		}
	}
	n.reads = nil
}

// failAll ends every request on a process that is going away.
func (n *node) failAll(err error) {
	ws := n.waiters
	n.waiters = map[uint64]*request{}
	for _, id := range sortedKeys(ws) {
		ws[id].finish(nil, err)
	}
	p := n.parked
	n.parked = nil
	for _, r := range p {
		r.finish(nil, err)
	}
	// Deferred work (requests sent to a paused process among it) dies
	// with the process; those requests end at their deadlines.
	n.deferred = nil
}

// crash kills the process: memory is lost, the disk keeps only what was
// durable.
func (n *node) crash(why string) {
	s := n.s
	if n.st == stDown || n.st == stGone {
		return
	}
	s.trace(evCrash, n.id, uint64(n.inc), 0)
	if s.tracing() {
		s.logf("%s CRASH (%s); applied=%d", n.name(), why, n.core.AppliedIndex())
	}
	n.st = stDown
	n.inc++
	n.failAll(raftnode.ErrStopped)
	n.w.crash()
	n.disk.Crash()
	n.core, n.sm = nil, nil
	n.inbox = nil
	n.backoffs.Reset()
}

// fail is the process exiting because storage failed, as
// raftnode.Node does; a supervisor restarts it.
func (n *node) fail(err error) {
	s := n.s
	s.stats.StorageFailures++
	n.crash(fmt.Sprintf("storage error: %v", err))
	s.restartLater(n, time.Duration(200+s.rng.IntN(1800))*time.Millisecond)
}

func (n *node) restart() {
	if n.st != stDown {
		return
	}
	n.s.stats.Restarts++
	n.s.trace(evRestart, n.id, uint64(n.inc), 0)
	n.open()
	if n.s.tracing() && n.core != nil {
		st, _ := n.disk.LastIndex()
		n.s.logf("%s RESTART from disk: last log index %d, applied %d", n.name(), st, n.core.AppliedIndex())
	}
}

func (n *node) pause() {
	if n.st != stUp {
		return
	}
	n.st = stPaused
	n.s.trace(evPause, n.id, 0, 0)
	if n.s.tracing() {
		n.s.logf("%s PAUSED", n.name())
	}
}

func (n *node) resume() {
	if n.st != stPaused {
		return
	}
	n.st = stUp
	n.s.trace(evResume, n.id, uint64(len(n.inbox)), uint64(len(n.deferred)))
	if n.s.tracing() {
		n.s.logf("%s RESUMED with %d queued messages", n.name(), len(n.inbox))
	}
	in := n.inbox
	n.inbox = nil
	for _, m := range in {
		n.receive(m)
		if n.st != stUp {
			return
		}
	}
	d := n.deferred
	n.deferred = nil
	for _, f := range d {
		if n.st != stUp {
			return
		}
		f()
	}
	n.kick()
}

// removed: the node applied its own removal and the server stops.
func (n *node) removed() {
	s := n.s
	s.trace(evRemoved, n.id, 0, 0)
	if s.tracing() {
		s.logf("%s applied its own removal and stops", n.name())
	}
	n.stop(raftnode.ErrRemoved)
}

// stop ends the node for good (removed from the cluster).
func (n *node) stop(err error) {
	if n.st == stGone {
		return
	}
	n.inc++
	if n.st != stDown {
		n.failAll(err)
		n.w.crash()
	}
	n.st = stGone
	// The operator decommissions the machine: its VMs go with it.
	n.vmh.powerLoss("decommissioned after its removal")
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b[:8] {
		v = v<<8 | uint64(c)
	}
	return v
}
