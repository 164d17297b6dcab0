package sim

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/raftnode"
	"github.com/blixard/blixard/internal/scheduler"
	"github.com/blixard/blixard/internal/state"
)

// simEpoch is what sim time zero reads as on a node's wall clock.
var simEpoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Config describes one simulation run. Everything random in it derives
// from Seed.
type Config struct {
	Seed uint64
	// Ops is the number of client operations (puts, gets, task
	// submissions, cancels, task reads, membership changes); default 2000.
	Ops int
	// Trace, if set, receives a readable line for every event.
	Trace io.Writer
	// DuplicateProposals lets the network duplicate forwarded proposals
	// (MsgProp) too. Off by default: the production transport (one gRPC
	// stream per peer, failed batches dropped, never resent) cannot
	// deliver a message twice, and nothing above it deduplicates
	// proposals, so a duplicated MsgProp applies its command twice (see
	// docs/RELIABILITY.md). Every other message type is duplicated.
	DuplicateProposals bool
	// ClockSkew, if set, puts each node's wall clock (the timestamps in
	// commands) a fixed random amount within ±ClockSkew off true time, as
	// with a broken NTP setup. By default wall clocks are within 250 ms.
	ClockSkew time.Duration
	// VMReplaceAfter is the leader's VM grace (--vm-replace-after): how
	// long after it sees a worker down it releases the worker's VMs.
	// Default 2× the worker TTL, the server's default.
	VMReplaceAfter time.Duration

	// Hooks for the deliberately broken variants in the tests. Nil means
	// the production behaviour; the simulation itself never needs them.
	NewDisk          func(id uint64, rng *rand.Rand) NodeDisk
	WrapStateMachine func(id uint64, sm raftnode.StateMachine, log raft.Storage) raftnode.StateMachine
	Schedule         func(scheduler.Input, *rand.Rand) scheduler.Plan
	// VMView, if set, replaces what a worker's VM reconciler is told the
	// state assigns it (state.Machine.VMsOnWorker).
	VMView func(worker uint64, assigned []*pb.VM) []*pb.VM
}

// Violation is one broken invariant.
type Violation struct {
	At   time.Duration
	Kind string
	Msg  string
}

func (v Violation) String() string {
	return fmt.Sprintf("[%s at %.3fs] %s", v.Kind, v.At.Seconds(), v.Msg)
}

// Result is the outcome of one run.
type Result struct {
	Seed       uint64
	TraceHash  uint64
	Stats      Stats
	Violations []Violation
}

// Err summarises the violations, or is nil.
func (r Result) Err() error {
	if len(r.Violations) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d invariant violation(s):", r.Seed, len(r.Violations))
	for i, v := range r.Violations {
		if i == 5 {
			fmt.Fprintf(&b, "\n  ... and %d more", len(r.Violations)-i)
			break
		}
		b.WriteString("\n  ")
		b.WriteString(v.String())
	}
	return errors.New(b.String())
}

// Stats counts what a run exercised, so a budget can be judged by more
// than its seed count.
type Stats struct {
	SimTime         time.Duration
	Events          uint64
	Voters          int
	NodesCreated    int
	MsgsSent        int
	MsgsDelivered   int
	MsgsDropped     int
	MsgsDuplicated  int
	Readies         int
	Crashes         int
	Restarts        int
	Pauses          int
	Partitions      int
	DiskFaults      int
	StorageFailures int
	Terms           int
	ConfChanges     int
	ClientOps       int
	KVOps           int
	KVUnknown       int
	TasksSubmitted  int
	TasksAcked      int
	TasksFinal      map[string]int
	Placements      int
	// PlacedOnSubmit counts submissions whose placement (made on
	// submit) was taken when applied, on the leader.
	PlacedOnSubmit   int
	LeaderAfterHeal  time.Duration
	QuiesceAfterHeal time.Duration
	ScanSkipped      int
	ClockSteps       int
	VMOps            int
	VMsCreated       int
	VMPlacements     int
	VMStarts         int
	VMFaults         int
	VMFenced         int // VM copies stopped by their guard (lease not renewed)
	VMAdopted        int
	// VMReleases counts ReleaseVMs that moved a down worker's VMs; of
	// those, VMReleasesOfLiveWorkers were of a worker whose process was
	// running (cut off by a partition or paused).
	VMReleases              int
	VMReleasesOfLiveWorkers int
	LongPartitions          int
	MachineLosses           int
}

// params are the per-seed knobs: each seed draws its own cluster size,
// network quality, fault rate and so on, so the seed space covers calm
// runs and hostile ones.
type params struct {
	voters             int
	snapEvery          uint64
	snapKeep           uint64
	clients            int
	faultMean          time.Duration // background faults, independent of load
	faultPerOp         float64       // chance that a client operation brings a fault with it
	fsyncMin, fsyncMax time.Duration
	maxDown            int
}

type phase int

const (
	phaseWorkload phase = iota
	phaseHeal
	phaseDone
)

// Sim is one run. It is driven by exactly one goroutine: Run pops events
// in (time, sequence) order and each event runs to completion.
type Sim struct {
	cfg      Config
	p        params
	rng      *rand.Rand
	clockRng *rand.Rand

	now time.Duration
	q   eventQueue
	seq uint64
	tr  tracer

	nodes    map[uint64]*node
	ids      []uint64 // every node ever created, in creation order
	nextNode uint64
	net      *network
	chk      *checker
	clients  []*client
	opsLeft  int
	busy     int // clients with an operation in flight or thinking

	nextID     uint64
	phase      phase
	healAt     time.Duration
	leaderSeen bool
	partition  bool
	// uncordoning are the workers whose uncordon after the heal is in flight.
	uncordoning map[uint64]bool
	downCount   int

	stats      Stats
	violations []Violation
}

// Run executes one simulation. It is deterministic for a given Config
// provided crypto/rand is pinned: etcd raft draws its randomized election
// timeouts from crypto/rand, so callers (the tests) first call
// testing/cryptotest.SetGlobalRandom with the seed.
func Run(cfg Config) (res Result) {
	if cfg.VMReplaceAfter == 0 {
		cfg.VMReplaceAfter = 2 * workerTTL
	}
	if cfg.Ops == 0 {
		cfg.Ops = 2000
	}
	s := newSim(cfg)
	defer func() {
		if r := recover(); r != nil {
			s.violate("panic", "%v\n%s", r, trimStack(debug.Stack()))
		}
		s.stats.SimTime = s.now
		s.stats.Events = s.tr.events
		res = Result{Seed: cfg.Seed, TraceHash: s.tr.h, Stats: s.stats, Violations: s.violations}
	}()
	s.setup()
	for len(s.q) > 0 && s.phase != phaseDone {
		e := s.q.pop()
		s.now = e.at
		e.fn()
	}
	if s.phase != phaseDone {
		s.violate("liveness", "the simulation ran out of events before finishing")
	}
	return res
}

func newSim(cfg Config) *Sim {
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	s := &Sim{cfg: cfg, rng: rng, nodes: map[uint64]*node{}, tr: tracer{w: cfg.Trace}, opsLeft: cfg.Ops, uncordoning: map[uint64]bool{}}
	s.p = params{
		voters:    []int{3, 3, 5}[rng.IntN(3)],
		snapEvery: uint64(50 + rng.IntN(1000)),
		clients:   3 + rng.IntN(6),
		// Most faults ride on client operations, so a seed's fault count
		// follows its workload, not its sim time: a time-based rate
		// alone feeds on itself (faults slow operations, which stretch
		// the run, which brings more faults).
		faultMean:  time.Duration(5+rng.IntN(20)) * time.Second,
		faultPerOp: []float64{0, 0.005, 0.01, 0.02, 0.04}[rng.IntN(5)],
		fsyncMin:   time.Duration(50+rng.IntN(200)) * time.Microsecond,
		fsyncMax:   time.Duration(1+rng.IntN(8)) * time.Millisecond,
	}
	// 0 leaves raftnode's default (5000): those seeds keep long logs.
	s.p.snapKeep = uint64(rng.IntN(int(s.p.snapEvery)))
	s.p.maxDown = s.p.voters / 2
	s.net = &network{
		s:        s,
		rng:      rand.New(rand.NewPCG(cfg.Seed, 0x7e7)),
		cut:      map[link]bool{},
		loss:     []float64{0, 0.01, 0.05, 0.15}[rng.IntN(4)],
		dup:      []float64{0, 0.01, 0.05}[rng.IntN(3)],
		minDelay: time.Duration(100+rng.IntN(900)) * time.Microsecond,
		spike:    []float64{0, 0.01, 0.05}[rng.IntN(3)],
	}
	s.net.maxDelay = s.net.minDelay + time.Duration(1+rng.IntN(20))*time.Millisecond
	s.clockRng = rand.New(rand.NewPCG(cfg.Seed, 0xc10c))
	s.chk = newChecker(s)
	s.stats.Voters = s.p.voters
	s.stats.TasksFinal = map[string]int{}
	return s
}

func (s *Sim) after(d time.Duration, fn func()) {
	s.seq++
	s.q.push(event{at: s.now + d, seq: s.seq, fn: fn})
}

func (s *Sim) newID() uint64 {
	s.nextID++
	return s.nextID
}

func (s *Sim) fsyncDelay() time.Duration {
	return s.p.fsyncMin + time.Duration(s.rng.Int64N(int64(s.p.fsyncMax-s.p.fsyncMin)+1))
}

func (s *Sim) violate(kind, format string, args ...any) {
	v := Violation{At: s.now, Kind: kind, Msg: fmt.Sprintf(format, args...)}
	s.violations = append(s.violations, v)
	if s.tracing() {
		s.logf("VIOLATION %s", v)
	}
	// The first violation ends the run: what follows it is noise, and a
	// short trace is easier to read.
	s.phase = phaseDone
}

func (s *Sim) setup() {
	if s.tracing() {
		s.logf("seed %d: %d voters, %d clients, %d ops; net loss=%.2f dup=%.2f delay=%v..%v spike=%.2f; faults every ~%v and per op %.3f; snapshot every %d keep %d",
			s.cfg.Seed, s.p.voters, s.p.clients, s.cfg.Ops, s.net.loss, s.net.dup, s.net.minDelay, s.net.maxDelay, s.net.spike, s.p.faultMean, s.p.faultPerOp, s.p.snapEvery, s.p.snapKeep)
	}
	var peers []raft.Peer
	for i := 1; i <= s.p.voters; i++ {
		id := uint64(i)
		peers = append(peers, raft.Peer{ID: id, Context: state.EncodeMemberContext(id, addrOf(id), pb.MemberRole_MEMBER_ROLE_VOTER)})
	}
	s.nextNode = uint64(s.p.voters) + 1
	for i := 1; i <= s.p.voters; i++ {
		n := s.newNode(uint64(i), peers)
		n.open()
	}
	for i := 0; i < s.p.clients; i++ {
		c := &client{s: s, id: i, home: uint64(1 + s.rng.IntN(s.p.voters))}
		s.clients = append(s.clients, c)
		s.busy++
		s.after(time.Duration(s.rng.IntN(200))*time.Millisecond, c.next)
	}
	s.after(time.Duration(float64(s.p.faultMean)*s.rng.ExpFloat64())+time.Second, s.faultLoop)
	s.after(10*time.Second, s.sweepLoop)
	s.after(s.clockFaultGap(), s.clockFaultLoop)
	s.after(time.Duration(float64(8*time.Second)*s.rng.ExpFloat64())+time.Second, s.vmFaultLoop)
	s.after(250*time.Millisecond, s.vmCheckLoop)
}

func (s *Sim) clockFaultGap() time.Duration {
	return time.Duration(float64(60*time.Second) * s.clockRng.ExpFloat64())
}

// clockFaultLoop steps a node's wall clock now and then (a bad NTP
// server, a VM restored from a snapshot). Clock faults draw from their own
// random stream, so that -sim.clock-skew leaves every other random choice
// of a seed as it was.
func (s *Sim) clockFaultLoop() {
	if s.phase != phaseWorkload {
		return
	}
	if live := s.live(); len(live) > 0 {
		n := live[s.clockRng.IntN(len(live))]
		d := time.Duration(1+s.clockRng.IntN(30)) * time.Second
		if s.clockRng.IntN(2) == 0 {
			d = -d
		}
		n.step += d
		s.stats.ClockSteps++
		s.trace(evClock, n.id, uint64(d), 0)
		if s.tracing() {
			s.logf("n%d wall clock stepped by %v (now %v off)", n.id, d, n.step)
		}
	}
	s.after(s.clockFaultGap(), s.clockFaultLoop)
}

func addrOf(id uint64) string { return fmt.Sprintf("n%d:7000", id) }

// newNode creates a node process with an empty disk (not yet started).
func (s *Sim) newNode(id uint64, peers []raft.Peer) *node {
	var d NodeDisk
	drng := rand.New(rand.NewPCG(s.cfg.Seed, 0xd15c+id))
	if s.cfg.NewDisk != nil {
		d = s.cfg.NewDisk(id, drng)
	} else {
		d = NewDisk(drng)
	}
	n := &node{
		s:        s,
		id:       id,
		peers:    peers,
		disk:     d,
		rate:     1 + (s.rng.Float64()*2-1)*0.05,
		offset:   time.Duration(s.rng.Int64N(int64(2 * time.Second))),
		schedRng: rand.New(rand.NewPCG(s.cfg.Seed, 0x5c4ed+id)),
	}
	if s.cfg.ClockSkew > 0 {
		n.step = time.Duration(s.clockRng.Int64N(int64(2*s.cfg.ClockSkew))) - s.cfg.ClockSkew
	}
	n.w = newWorker(n)
	n.vmh = newVMHost(n)
	if s.tracing() {
		s.logf("n%d created: clock rate %.4f, wall clock %v off, worker capacity %dm CPU / %d MiB",
			id, n.rate, n.offset/8+n.step, n.w.capacity.GetCpuMillis(), n.w.capacity.GetMemoryMib())
	}
	s.nodes[id] = n
	s.ids = append(s.ids, id)
	s.stats.NodesCreated++
	return n
}

// live returns the nodes that are not gone, in creation order.
func (s *Sim) live() []*node {
	var out []*node
	for _, id := range s.ids {
		if n := s.nodes[id]; n.st != stGone {
			out = append(out, n)
		}
	}
	return out
}

// leader returns an up node that believes it leads with the highest term
// among up nodes, or nil.
func (s *Sim) leader() *node {
	var best *node
	var maxTerm uint64
	for _, n := range s.live() {
		if n.st != stUp {
			continue
		}
		maxTerm = max(maxTerm, n.core.Term())
		if n.core.IsLeader() && (best == nil || n.core.Term() > best.core.Term()) {
			best = n
		}
	}
	if best == nil || best.core.Term() < maxTerm {
		return nil
	}
	return best
}

func (s *Sim) restartLater(n *node, d time.Duration) {
	inc := n.inc
	s.after(d, func() {
		if n.inc == inc && n.st == stDown {
			s.downCount--
			n.restart()
		}
	})
	s.downCount++
}

// onMembership runs after a node applied a membership change: a node the
// cluster removed is stopped by its operator a little later (production
// nodes also find out themselves, see server.checkRemoved).
func (s *Sim) onMembership(n *node) {
	s.stats.ConfChanges++
	for _, id := range s.ids {
		m := s.nodes[id]
		if m.idle {
			if _, ok := n.sm.Member(id); ok {
				m.idle = false // the join landed after all
			}
		}
		if m.st == stGone || m.stopDue || !n.sm.IsRemoved(id) {
			continue
		}
		m.stopDue = true
		s.after(time.Duration(s.rng.IntN(3000))*time.Millisecond, func() {
			if m.st == stDown {
				s.downCount--
			}
			if s.tracing() {
				s.logf("n%d stopped by the operator after its removal", m.id)
			}
			m.stop(raftnode.ErrRemoved)
		})
	}
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

func (s *Sim) faultLoop() {
	if s.phase != phaseWorkload {
		return
	}
	s.injectFault()
	s.after(time.Duration(float64(s.p.faultMean)*s.rng.ExpFloat64()), s.faultLoop)
}

func (s *Sim) pickUp() *node {
	var ups []*node
	for _, n := range s.live() {
		if n.st == stUp {
			ups = append(ups, n)
		}
	}
	if len(ups) == 0 {
		return nil
	}
	return ups[s.rng.IntN(len(ups))]
}

func (s *Sim) injectFault() {
	// Usually keep a quorum's worth of processes running so the workload
	// makes progress; sometimes take one more down and lose quorum.
	allowDown := s.downCount < s.p.maxDown || (s.downCount == s.p.maxDown && s.rng.IntN(10) == 0)
	switch k := s.rng.IntN(100); {
	case k < 20 && allowDown:
		n := s.pickUp()
		if n == nil {
			return
		}
		s.stats.Crashes++
		n.crash("fault injection")
		// The process died alone (its VMs run on and the next process
		// adopts them) or with its machine (the VMs are gone).
		if s.rng.IntN(2) == 0 {
			s.stats.MachineLosses++
			n.vmh.powerLoss("the machine crashed")
		}
		d := time.Duration(100+s.rng.IntN(5000)) * time.Millisecond
		s.restartLater(n, d)
	case k < 32 && allowDown:
		n := s.pickUp()
		if n == nil {
			return
		}
		s.stats.Pauses++
		n.pause()
		s.downCount++
		inc := n.inc
		s.after(time.Duration(50+s.rng.IntN(3000))*time.Millisecond, func() {
			s.downCount--
			if n.inc == inc {
				n.resume()
			}
		})
	case k < 70:
		if s.partition {
			return
		}
		s.partitionFault()
	case k < 85:
		n := s.pickUp()
		if n == nil {
			return
		}
		op := []DiskOp{OpSave, OpSave, OpSave, OpCheckpoint, OpCheckpoint, OpCreateSnapshot, OpReplace}[s.rng.IntN(7)]
		torn := s.rng.IntN(2) == 0
		s.stats.DiskFaults++
		s.trace(evDiskFault, n.id, uint64(op), 0)
		if s.tracing() {
			s.logf("n%d disk: next %v will fail (torn=%v)", n.id, op, torn)
		}
		n.disk.FailNext(op, torn)
	default:
		// A loss storm: a flaky switch for a while.
		base := s.net.loss
		s.net.loss = 0.3 + s.rng.Float64()*0.4
		if s.tracing() {
			s.logf("network: loss storm %.2f", s.net.loss)
		}
		s.after(time.Duration(200+s.rng.IntN(3000))*time.Millisecond, func() {
			if s.phase == phaseWorkload {
				s.net.loss = base
			}
		})
	}
}

func (s *Sim) partitionFault() {
	live := s.live()
	if len(live) < 2 {
		return
	}
	s.partition = true
	s.stats.Partitions++
	var desc string
	switch k := s.rng.IntN(4); k {
	case 0: // isolate the leader
		l := s.leader()
		if l == nil {
			l = live[s.rng.IntN(len(live))]
		}
		for _, m := range live {
			if m != l {
				s.net.cut[link{l.id, m.id}] = true
				s.net.cut[link{m.id, l.id}] = true
			}
		}
		desc = fmt.Sprintf("isolate n%d (leader)", l.id)
	case 1: // symmetric split into two groups
		perm := s.rng.Perm(len(live))
		k := 1 + s.rng.IntN(len(live)-1)
		side := map[uint64]bool{}
		for _, i := range perm[:k] {
			side[live[i].id] = true
		}
		for _, a := range live {
			for _, b := range live {
				if side[a.id] != side[b.id] {
					s.net.cut[link{a.id, b.id}] = true
				}
			}
		}
		var g []string
		for _, a := range live {
			if side[a.id] {
				g = append(g, a.name())
			}
		}
		desc = fmt.Sprintf("split %v | rest", g)
	case 2: // one-way: the leader can send but not hear back, or the reverse
		l := s.leader()
		if l == nil {
			l = live[s.rng.IntN(len(live))]
		}
		out := s.rng.IntN(2) == 0
		for _, m := range live {
			if m != l {
				if out {
					s.net.cut[link{m.id, l.id}] = true
				} else {
					s.net.cut[link{l.id, m.id}] = true
				}
			}
		}
		desc = fmt.Sprintf("one-way around n%d (it can send: %v)", l.id, out)
	default: // a few random directed links
		for i := 0; i < 1+s.rng.IntN(4); i++ {
			a, b := live[s.rng.IntN(len(live))], live[s.rng.IntN(len(live))]
			if a != b {
				s.net.cut[link{a.id, b.id}] = true
			}
		}
		desc = "random one-way links"
	}
	d := time.Duration(300+s.rng.IntN(6000)) * time.Millisecond
	if s.rng.IntN(8) == 0 {
		// Now and then a long one: past the worker TTL plus the VM grace
		// (15 s), so a cut-off worker is marked down, its VMs are released
		// and re-placed while its own copies must already be fenced.
		d = time.Duration(16+s.rng.IntN(20)) * time.Second
		s.stats.LongPartitions++
		desc += fmt.Sprintf(" for %v", d)
	}
	s.trace(evPartition, uint64(len(s.net.cut)), 0, 0)
	if s.tracing() {
		s.logf("PARTITION: %s (%d directed links cut)", desc, len(s.net.cut))
	}
	s.after(d, s.healNetwork)
}

func (s *Sim) healNetwork() {
	if !s.partition {
		return
	}
	s.partition = false
	clear(s.net.cut)
	s.trace(evHeal, 0, 0, 0)
	if s.tracing() {
		s.logf("network healed")
	}
}

// heal ends the fault phase: every process runs, the network is whole
// and reliable (delays and reordering stay), and no disk fault is armed.
func (s *Sim) heal() {
	s.phase = phaseHeal
	s.healAt = s.now
	s.partition = true
	s.healNetwork()
	s.net.loss, s.net.dup, s.net.spike = 0, 0, 0
	if s.tracing() {
		s.logf("=== HEAL: faults stop; liveness must follow ===")
	}
	for _, n := range s.live() {
		n.disk.Disarm()
		switch n.st {
		case stPaused:
			n.resume()
		case stDown:
			n.restart()
		}
	}
	s.downCount = 0
	s.after(100*time.Millisecond, s.quiesceLoop)
}

// quiesceLoop waits, after the heal, for a leader (within a bounded number
// of election timeouts) and then for the cluster to finish its work:
// every task final and every member's state identical.
func (s *Sim) quiesceLoop() {
	if s.phase != phaseHeal {
		return
	}
	since := s.now - s.healAt
	l := s.leader()
	if !s.leaderSeen {
		if l != nil && s.majorityFollows(l) {
			s.leaderSeen = true
			s.stats.LeaderAfterHeal = since
		} else if since > leaderBound {
			s.violate("liveness", "no leader %v (%d election timeouts) after the faults healed; nodes: %s",
				since, leaderBound/electionTimeout, s.describeNodes())
			return
		}
	}
	if s.leaderSeen && l != nil {
		s.uncordonAll(l)
	}
	if s.leaderSeen && l != nil && s.busy == 0 {
		if done, _ := s.quiet(l); done {
			s.stats.QuiesceAfterHeal = since
			s.finalChecks(l)
			s.phase = phaseDone
			return
		}
	}
	if since > quiesceBound {
		why := "no stable leader"
		if l != nil {
			_, why = s.quiet(l)
		}
		s.violate("liveness", "cluster not quiescent %v after the faults healed: %s; nodes: %s", since, why, s.describeNodes())
		return
	}
	s.after(250*time.Millisecond, s.quiesceLoop)
}

// uncordonAll is the operator lifting every cordon once the faults have
// healed, through the leader, one proposal per cordoned worker per round
// until none is left.
func (s *Sim) uncordonAll(l *node) {
	for _, w := range l.sm.Workers() {
		if !w.Cordoned || s.uncordoning[w.Id] {
			continue
		}
		id := w.Id
		s.uncordoning[id] = true
		payload := mustMarshal(&pb.Command{Op: &pb.Command_CordonWorker{CordonWorker: &pb.CordonWorker{WorkerId: id, NowUnixNano: l.localNow().UnixNano()}}})
		l.issue(&request{kind: rqPropose, payload: payload, done: func(proto.Message, error) { delete(s.uncordoning, id) }}, 5*time.Second)
	}
}

const (
	electionTimeout = raftnode.DefaultElectionTicks * tickInterval
	leaderBound     = 10 * electionTimeout
	quiesceBound    = 5 * time.Minute
)

func (s *Sim) majorityFollows(l *node) bool {
	st := l.core.Status()
	voters := st.Config.Voters[0]
	n := 0
	for id := range voters {
		if m := s.nodes[id]; m != nil && m.st == stUp && m.lead == l.id && m.term == l.core.Term() {
			n++
		}
	}
	return n > len(voters)/2
}

// quiet says whether the cluster has finished: all tasks final and every
// member caught up with the leader and holding the same state.
func (s *Sim) quiet(l *node) (bool, string) {
	st := l.core.Status()
	if l.core.AppliedIndex() < st.HardState.GetCommit() {
		return false, "leader has unapplied entries"
	}
	for _, id := range members(st) {
		m := s.nodes[id]
		if m == nil || m.st != stUp {
			return false, fmt.Sprintf("member n%d is not running", id)
		}
		if m.core.AppliedIndex() != l.core.AppliedIndex() {
			return false, fmt.Sprintf("member n%d applied %d, leader %d (leader's progress for it: %v)", id, m.core.AppliedIndex(), l.core.AppliedIndex(), st.Progress[id])
		}
	}
	// Only the non-final states are asked for: Tasks copies what it returns.
	for _, st := range []pb.TaskState{pb.TaskState_TASK_STATE_PENDING, pb.TaskState_TASK_STATE_ASSIGNED, pb.TaskState_TASK_STATE_RUNNING} {
		if ts := l.sm.Tasks(st); len(ts) > 0 {
			t := ts[0]
			return false, fmt.Sprintf("%d tasks %v, e.g. %s (attempts %d, cancel=%v)", len(ts), st, t.Id, len(t.Attempts), t.CancelRequested)
		}
	}
	return s.vmsQuiet(l)
}

func members(st raft.Status) []uint64 {
	var ids []uint64
	for id := range st.Config.Voters[0] {
		ids = append(ids, id)
	}
	for id := range st.Config.Learners {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (s *Sim) describeNodes() string {
	var b strings.Builder
	for _, id := range s.ids {
		n := s.nodes[id]
		fmt.Fprintf(&b, "n%d=%v", id, n.st)
		if n.st == stUp {
			st := n.core.Status()
			fmt.Fprintf(&b, "(%v term=%d lead=%d commit=%d applied=%d)", st.RaftState, st.HardState.GetTerm(), st.Lead, st.HardState.GetCommit(), n.core.AppliedIndex())
		}
		b.WriteString(" ")
	}
	return b.String()
}

// clientDone is called when a client has no operations left.
func (s *Sim) clientDone() {
	s.busy--
	if s.busy == 0 && s.phase == phaseWorkload {
		s.heal()
	}
}

func sortedKeys[V any](m map[uint64]V) []uint64 {
	ks := make([]uint64, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// entryHash identifies a log entry's content for the checker: for normal
// entries the command payload inside raftnode's envelope (version byte,
// origin, proposal ID; a persisted format), so the log scan and the
// state-machine recorder agree.
func entryHash(e *raftpb.Entry) uint64 {
	d := e.GetData()
	switch e.GetType() {
	case raftpb.EntryNormal:
		if len(d) >= 17 && d[0] == 1 {
			return payloadHash(d[17:])
		}
		return payloadHash(d) ^ 0x1
	default:
		return payloadHash(d) ^ uint64(e.GetType())<<56 ^ 0x2
	}
}

func payloadHash(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// trimStack keeps the frames from the panic to the simulation's own code:
// enough to see which production call failed.
func trimStack(st []byte) string {
	lines := strings.Split(string(st), "\n")
	start := 0
	for i, l := range lines {
		if strings.HasPrefix(l, "panic(") {
			start = i
			break
		}
	}
	end := min(len(lines), start+24)
	return strings.Join(lines[start:end], "\n")
}
