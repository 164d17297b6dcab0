// Package raftnode drives one etcd raft node: it persists, sends and
// applies what raft decides. Core is the deterministic, single-goroutine
// heart (no clocks, no goroutines, all I/O behind LogStorage, StateStore
// and Transport), so the simulation can run many of them from one seed;
// Node wraps a Core in the production goroutine, with timers and callers
// that wait for their proposals.
//
// Determinism: Core itself draws no randomness, but etcd raft picks each
// randomized election timeout from crypto/rand (raft.go's globalRand). A
// simulation makes those draws reproducible with
// testing/cryptotest.SetGlobalRandom(t, seed) (Go 1.26), called before the
// Cores are created and with all Cores driven from one goroutine.
package raftnode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/storage"
)

// StateMachine is what committed entries are applied to (state.Machine).
type StateMachine interface {
	ApplyCommand(index uint64, data []byte) (proto.Message, error)
	ValidateConfChange(cc *raftpb.ConfChange) error
	ApplyConfChange(cc *raftpb.ConfChange)
	Snapshot() ([]byte, error)
	Restore(data []byte) error
	LoadRecord(table string, key, value []byte) error
	TakeChanges() []storage.Change
	AllRecords() []storage.Change
}

// Errors a caller may see. All but ErrStopped and ErrRemoved are
// retryable: the operation can be sent again (with the same idempotency
// key where it has one).
var (
	ErrNoLeader          = errors.New("no raft leader is known right now; retry shortly")
	ErrNotLeader         = errors.New("this node is not the leader")
	ErrLeaderChanged     = errors.New("the leader changed while the request was in flight; its outcome is unknown, retry it")
	ErrConfChangePending = errors.New("another membership change is still in progress; retry when it completes")
	ErrLeaderCatchingUp  = errors.New("the new leader is still applying its log; retry shortly")
	ErrStopped           = errors.New("the node is stopping")
	ErrRemoved           = errors.New("this node was removed from the cluster")
)

// Config tunes a Core.
type Config struct {
	ID             uint64
	ElectionTicks  int    // default 10
	HeartbeatTicks int    // default 1
	SnapshotEvery  uint64 // applied entries between snapshots; default 10000
	SnapshotKeep   uint64 // entries kept behind a snapshot; default 5000
	// PromoteEveryTicks is how often a leader looks for learners that
	// have caught up; default 5.
	PromoteEveryTicks int
	Logger            *slog.Logger
}

// Defaults for Config's zero values.
const (
	DefaultElectionTicks  = 10
	DefaultHeartbeatTicks = 1
	DefaultSnapshotEvery  = 10000
	DefaultSnapshotKeep   = 5000
)

func (c *Config) setDefaults() {
	def := func(v *uint64, d uint64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.SnapshotEvery, DefaultSnapshotEvery)
	def(&c.SnapshotKeep, DefaultSnapshotKeep)
	if c.ElectionTicks == 0 {
		c.ElectionTicks = DefaultElectionTicks
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = DefaultHeartbeatTicks
	}
	if c.PromoteEveryTicks == 0 {
		c.PromoteEveryTicks = 5
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Applied is the outcome of one of this node's own proposals.
type Applied struct {
	ID     uint64
	Index  uint64
	Result proto.Message
	Err    error
}

// Output is what one Ready cycle produced for the layer above.
type Output struct {
	Applied           []Applied
	ReadStates        []raft.ReadState
	AppliedIndex      uint64
	LeaderChanged     bool
	Leader            uint64
	Term              uint64
	MembershipChanged bool
	Removed           bool
}

// Core owns a raft.RawNode and everything it touches. Not safe for
// concurrent use: exactly one goroutine calls its methods.
type Core struct {
	cfg   Config
	rn    *raft.RawNode
	log   LogStorage
	store StateStore
	sm    StateMachine
	tr    Transport

	appliedIndex uint64 // highest entry raft has handed to us and we processed
	stateIndex   uint64 // highest index reflected in sm (ahead of appliedIndex while replaying)
	durableIndex uint64 // highest index checkpointed into the StateStore
	snapIndex    uint64
	confState    *raftpb.ConfState

	lead      uint64
	term      uint64
	raftState raft.StateType
	// leaderFrom is the last log index when this node became leader: raft
	// refuses membership changes until everything before it is applied.
	leaderFrom    uint64
	pendingConfID uint64
	removed       bool
	// confSnapshot asks for a snapshot after a membership change: etcd
	// raft will not restore a snapshot whose ConfState lacks the recipient,
	// so a member added after the newest snapshot could not be seeded
	// from a compacted log until the next periodic one (found by the
	// simulation).
	confSnapshot bool
	ticks        int
	// proposals are the (origin, proposal ID) pairs of the entries in this
	// leader's log window and of the proposals it accepted this term, by
	// log index; a forwarded proposal delivered twice is appended once
	// (see dropDuplicateProposals). Nil unless leading.
	proposals     map[proposalKey]uint64
	proposalsTerm uint64
}

type proposalKey struct{ origin, id uint64 }

// NewCore opens a node over its storage. peers is non-empty only when a
// brand-new cluster is bootstrapped; it is ignored if the log has state.
func NewCore(cfg Config, log LogStorage, store StateStore, sm StateMachine, tr Transport, peers []raft.Peer) (*Core, error) {
	cfg.setDefaults()
	if cfg.ID == 0 {
		return nil, errors.New("raftnode: node ID must be non-zero")
	}
	c := &Core{cfg: cfg, log: log, store: store, sm: sm, tr: tr}

	stateIndex, err := store.Load(sm.LoadRecord)
	if err != nil {
		return nil, fmt.Errorf("raftnode: load state: %w", err)
	}
	snap, err := log.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("raftnode: read snapshot: %w", err)
	}
	snapIndex := snap.GetMetadata().GetIndex()
	if snapIndex > stateIndex {
		// The state database is older than the newest snapshot (the
		// snapshot arrived from a leader, or was taken, after the last
		// checkpoint): start from the snapshot instead.
		if restoreErr := sm.Restore(snap.GetData()); restoreErr != nil {
			return nil, fmt.Errorf("raftnode: restore snapshot at %d: %w", snapIndex, restoreErr)
		}
		if replaceErr := store.Replace(snapIndex, sm.AllRecords()); replaceErr != nil {
			return nil, fmt.Errorf("raftnode: write snapshot state at %d: %w", snapIndex, replaceErr)
		}
		stateIndex = snapIndex
	}
	hs, cs, err := log.InitialState()
	if err != nil {
		return nil, fmt.Errorf("raftnode: initial state: %w", err)
	}
	// The commit index in the hard state is not synced on its own (it can
	// be relearned), so the state may be ahead of it; but every applied
	// entry was appended durably, so the log always reaches stateIndex.
	if last, _ := log.LastIndex(); stateIndex > last && stateIndex > snapIndex {
		return nil, fmt.Errorf("raftnode: state database is at index %d but the raft log ends at %d: the data dir is inconsistent (was state.db copied from another node?)", stateIndex, last)
	}
	c.stateIndex, c.durableIndex, c.snapIndex, c.appliedIndex = stateIndex, stateIndex, snapIndex, snapIndex
	c.confState = cs
	c.term = hs.GetTerm()

	rn, err := raft.NewRawNode(&raft.Config{
		ID:                cfg.ID,
		ElectionTick:      cfg.ElectionTicks,
		HeartbeatTick:     cfg.HeartbeatTicks,
		Storage:           log,
		Applied:           snapIndex,
		MaxSizePerMsg:     1 << 20,
		MaxInflightMsgs:   256,
		CheckQuorum:       true,
		PreVote:           true,
		StepDownOnRemoval: true,
		Logger:            &raftLogger{l: cfg.Logger},
	})
	if err != nil {
		return nil, fmt.Errorf("raftnode: %w", err)
	}
	c.rn = rn
	last, _ := log.LastIndex()
	if len(peers) > 0 && last == 0 && raft.IsEmptyHardState(hs) {
		if err := rn.Bootstrap(peers); err != nil {
			return nil, fmt.Errorf("raftnode: bootstrap: %w", err)
		}
	}
	return c, nil
}

// ID is this node's raft ID.
func (c *Core) ID() uint64 { return c.cfg.ID }

// Leader is the leader this node knows of (0 if none).
func (c *Core) Leader() uint64 { return c.lead }

// Term is the current term.
func (c *Core) Term() uint64 { return c.term }

// IsLeader says whether this node leads.
func (c *Core) IsLeader() bool { return c.raftState == raft.StateLeader }

// AppliedIndex is the highest applied entry.
func (c *Core) AppliedIndex() uint64 { return c.appliedIndex }

// Removed says whether this node has applied its own removal.
func (c *Core) Removed() bool { return c.removed }

// Status is raft's full status.
func (c *Core) Status() raft.Status { return c.rn.Status() }

// Tick advances raft's logical clock by one tick.
func (c *Core) Tick() {
	c.rn.Tick()
	c.ticks++
	if c.IsLeader() && c.ticks%c.cfg.PromoteEveryTicks == 0 {
		c.promoteLearners()
	}
}

// Step hands raft a message from a peer.
func (c *Core) Step(m *raftpb.Message) error {
	// Local message types must never arrive from the network.
	if raft.IsLocalMsg(m.GetType()) {
		return fmt.Errorf("raftnode: refusing local message type %v from the network", m.GetType())
	}
	if m.GetType() == raftpb.MessageType_MsgProp {
		if m = c.dropDuplicateProposals(m); m == nil {
			return nil
		}
	}
	if err := c.rn.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
		return err
	}
	return nil
}

// dropDuplicateProposals removes, on the leader, the entries of a
// forwarded proposal whose (origin, proposal ID) is already in its log or
// was accepted before this term: a network that delivers a MsgProp twice
// would otherwise have the command appended, and applied, twice (found by
// the simulation). The check is the leader's alone, before anything is
// appended, so every node still applies exactly the log; a new leader
// rebuilds the set from its log, which holds every committed entry. A copy
// delayed until its original was compacted out of the leader's log
// (SnapshotKeep entries behind a snapshot) is not recognised. It returns
// nil when nothing is left to step.
func (c *Core) dropDuplicateProposals(m *raftpb.Message) *raftpb.Message {
	st := c.rn.BasicStatus()
	if st.RaftState != raft.StateLeader {
		c.proposals = nil
		return m
	}
	if c.proposals == nil || c.proposalsTerm != st.GetTerm() {
		c.indexProposals(st.GetTerm())
	}
	last, _ := c.log.LastIndex()
	var kept []*raftpb.Entry
	dropped := 0
	for i, e := range m.GetEntries() {
		k, ok := proposalOf(e)
		if ok {
			if _, seen := c.proposals[k]; seen {
				if kept == nil {
					kept = append([]*raftpb.Entry{}, m.GetEntries()[:i]...)
				}
				dropped++
				continue
			}
			c.proposals[k] = last + 1
		}
		if kept != nil {
			kept = append(kept, e)
		}
	}
	if dropped == 0 {
		return m
	}
	c.cfg.Logger.Warn("dropping duplicated proposals", "from", m.GetFrom(), "entries", dropped)
	if len(kept) == 0 {
		return nil
	}
	m = proto.Clone(m).(*raftpb.Message)
	m.Entries = kept
	return m
}

// indexProposals rebuilds the leader's proposal set from its log.
func (c *Core) indexProposals(term uint64) {
	c.proposals, c.proposalsTerm = map[proposalKey]uint64{}, term
	first, err := c.log.FirstIndex()
	if err != nil {
		return
	}
	last, err := c.log.LastIndex()
	if err != nil || last < first {
		return
	}
	ents, err := c.log.Entries(first, last+1, 1<<62)
	if err != nil {
		c.cfg.Logger.Warn("cannot read the log to index proposals", "err", err)
		return
	}
	for _, e := range ents {
		if k, ok := proposalOf(e); ok {
			c.proposals[k] = e.GetIndex()
		}
	}
}

// pruneProposals forgets proposals compacted out of the log.
func (c *Core) pruneProposals() {
	first, err := c.log.FirstIndex()
	if c.proposals == nil || err != nil {
		return
	}
	for k, idx := range c.proposals {
		if idx < first {
			delete(c.proposals, k)
		}
	}
}

// proposalOf is the origin and proposal ID of a normal entry with an
// envelope and a non-zero ID.
func proposalOf(e *raftpb.Entry) (proposalKey, bool) {
	if e.GetType() != raftpb.EntryNormal {
		return proposalKey{}, false
	}
	origin, id, _, ok := decodeEnvelope(e.GetData())
	if !ok || id == 0 {
		return proposalKey{}, false
	}
	return proposalKey{origin, id}, true
}

// Propose appends a command; id (non-zero) comes back in Output.Applied
// when the entry is applied on this node.
func (c *Core) Propose(id uint64, payload []byte) error {
	if c.removed {
		return ErrRemoved
	}
	if c.lead == 0 {
		return ErrNoLeader
	}
	if err := c.rn.Propose(encodeEnvelope(c.cfg.ID, id, payload)); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			return ErrNoLeader
		}
		return err
	}
	return nil
}

// ProposeConfChange validates and proposes a membership change. Only the
// leader does this, one change at a time, so validation cannot race.
func (c *Core) ProposeConfChange(id uint64, typ raftpb.ConfChangeType, nodeID uint64, addr string) error {
	if c.removed {
		return ErrRemoved
	}
	if !c.IsLeader() {
		return ErrNotLeader
	}
	if c.pendingConfID != 0 {
		return ErrConfChangePending
	}
	if c.appliedIndex < c.leaderFrom {
		return ErrLeaderCatchingUp
	}
	role := pb.MemberRole_MEMBER_ROLE_VOTER
	if typ == raftpb.ConfChangeAddLearnerNode {
		role = pb.MemberRole_MEMBER_ROLE_LEARNER
	}
	mc := &pb.MemberContext{Member: &pb.Member{Id: nodeID, Addr: addr, Role: role}, Origin: c.cfg.ID, ProposalId: id}
	if typ == raftpb.ConfChangeAddNode {
		// A promotion keeps the member's address.
		if m, ok := memberAddr(c.sm, nodeID); ok {
			mc.Member.Addr = m
		}
	}
	ctx, err := proto.Marshal(mc)
	if err != nil {
		return fmt.Errorf("raftnode: encode membership change: %w", err)
	}
	cc := &raftpb.ConfChange{Type: typ.Enum(), NodeId: proto.Uint64(nodeID), Context: ctx}
	if err := c.sm.ValidateConfChange(cc); err != nil {
		return err
	}
	if err := c.rn.ProposeConfChange(cc); err != nil {
		if errors.Is(err, raft.ErrProposalDropped) {
			return ErrNoLeader
		}
		return err
	}
	c.pendingConfID = id
	if c.pendingConfID == 0 {
		c.pendingConfID = ^uint64(0)
	}
	return nil
}

// memberAddr finds a member's address when the machine can tell.
func memberAddr(sm StateMachine, id uint64) (string, bool) {
	type memberLookup interface {
		Member(id uint64) (*pb.Member, bool)
	}
	if ml, ok := sm.(memberLookup); ok {
		if m, ok := ml.Member(id); ok {
			return m.GetAddr(), true
		}
	}
	return "", false
}

// promoteLearners turns caught-up learners into voters, one at a time.
func (c *Core) promoteLearners() {
	if c.pendingConfID != 0 || c.appliedIndex < c.leaderFrom {
		return
	}
	st := c.rn.Status()
	for id := range st.Config.Learners {
		pr, ok := st.Progress[id]
		if !ok || pr.State != tracker.StateReplicate {
			continue
		}
		// Caught up: the learner has everything the leader has committed.
		if pr.Match >= st.HardState.GetCommit() {
			if err := c.ProposeConfChange(0, raftpb.ConfChangeAddNode, id, ""); err != nil {
				c.cfg.Logger.Debug("learner promotion deferred", "node", id, "err", err)
			} else {
				c.cfg.Logger.Info("promoting learner to voter", "node", id, "match", pr.Match)
			}
			return
		}
	}
}

// ReadIndex asks for a linearizable read point; the answer arrives in
// Output.ReadStates with the 8-byte id as its context.
func (c *Core) ReadIndex(id uint64) error {
	if c.removed {
		return ErrRemoved
	}
	if c.lead == 0 {
		return ErrNoLeader
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	c.rn.ReadIndex(b[:])
	return nil
}

// TransferLeader asks raft to hand leadership to id.
func (c *Core) TransferLeader(id uint64) { c.rn.TransferLeader(id) }

// ReportUnreachable tells raft a peer could not be reached.
func (c *Core) ReportUnreachable(id uint64) { c.rn.ReportUnreachable(id) }

// ReportSnapshot tells raft how sending a snapshot went.
func (c *Core) ReportSnapshot(id uint64, st raft.SnapshotStatus) { c.rn.ReportSnapshot(id, st) }

// HasReady says whether HandleReady has work.
func (c *Core) HasReady() bool { return c.rn.HasReady() }

// HandleReady runs one Ready cycle: persist, send, apply, advance. An
// error means storage failed; the node must stop (its disk state is no
// longer known to match what raft believes).
func (c *Core) HandleReady() (Output, error) {
	var out Output
	rd := c.rn.Ready()
	if rd.SoftState != nil {
		if rd.SoftState.Lead != c.lead {
			out.LeaderChanged = true
			c.pendingConfID = 0
		}
		if rd.SoftState.RaftState == raft.StateLeader && c.raftState != raft.StateLeader {
			c.leaderFrom, _ = c.log.LastIndex()
			if n := uint64(len(rd.Entries)); n > 0 {
				c.leaderFrom = rd.Entries[n-1].GetIndex()
			}
		}
		c.lead = rd.SoftState.Lead
		c.raftState = rd.SoftState.RaftState
	}
	if rd.HardState != nil && rd.HardState.GetTerm() != c.term {
		c.term = rd.HardState.GetTerm()
		out.LeaderChanged = true
	}
	// The leader may send before its own fsync (raft thesis 10.2.1): it
	// only counts itself towards a quorum once the entries are stable.
	// Everyone else must persist votes and entries before answering.
	leader := c.raftState == raft.StateLeader
	if leader {
		c.tr.Send(rd.Messages)
	}
	if err := c.log.Save(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
		return out, fmt.Errorf("raftnode: persist ready: %w", err)
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := c.installSnapshot(rd.Snapshot); err != nil {
			return out, err
		}
		out.MembershipChanged = true
	}
	if !leader {
		c.tr.Send(rd.Messages)
	}
	if err := c.apply(rd.CommittedEntries, &out); err != nil {
		return out, err
	}
	out.ReadStates = rd.ReadStates
	c.rn.Advance(rd)
	if err := c.maybeSnapshot(); err != nil {
		return out, err
	}
	out.AppliedIndex, out.Leader, out.Term, out.Removed = c.appliedIndex, c.lead, c.term, c.removed
	return out, nil
}

func (c *Core) installSnapshot(snap *raftpb.Snapshot) error {
	idx := snap.GetMetadata().GetIndex()
	if idx <= c.appliedIndex {
		return nil
	}
	if err := c.sm.Restore(snap.GetData()); err != nil {
		return fmt.Errorf("raftnode: restore snapshot at %d: %w", idx, err)
	}
	if err := c.store.Replace(idx, c.sm.AllRecords()); err != nil {
		return fmt.Errorf("raftnode: write snapshot state at %d: %w", idx, err)
	}
	c.appliedIndex, c.stateIndex, c.durableIndex, c.snapIndex = idx, idx, idx, idx
	c.confState = snap.GetMetadata().GetConfState()
	c.cfg.Logger.Info("installed snapshot", "index", idx, "term", snap.GetMetadata().GetTerm())
	return nil
}

func (c *Core) apply(ents []*raftpb.Entry, out *Output) error {
	for _, e := range ents {
		idx := e.GetIndex()
		if idx <= c.appliedIndex {
			continue
		}
		replay := idx <= c.stateIndex
		switch e.GetType() {
		case raftpb.EntryNormal:
			if replay || len(e.GetData()) == 0 {
				break
			}
			origin, id, payload, ok := decodeEnvelope(e.GetData())
			if !ok {
				c.cfg.Logger.Error("skipping entry with unknown envelope", "index", idx)
				break
			}
			res, err := c.sm.ApplyCommand(idx, payload)
			if origin == c.cfg.ID && id != 0 {
				out.Applied = append(out.Applied, Applied{ID: id, Index: idx, Result: res, Err: err})
			}
		case raftpb.EntryConfChange:
			cc := &raftpb.ConfChange{}
			if err := proto.Unmarshal(e.GetData(), cc); err != nil {
				return fmt.Errorf("raftnode: decode membership change at %d: %w", idx, err)
			}
			// Raft's own configuration is rebuilt from the log on every
			// start, so this runs on replay too; the tables only once.
			c.confState = c.rn.ApplyConfChange(cc)
			c.confSnapshot = true
			if !replay {
				c.sm.ApplyConfChange(cc)
			}
			out.MembershipChanged = true
			var mc pb.MemberContext
			if proto.Unmarshal(cc.GetContext(), &mc) == nil && mc.Origin == c.cfg.ID {
				if mc.ProposalId != 0 {
					out.Applied = append(out.Applied, Applied{ID: mc.ProposalId, Index: idx})
				}
				c.pendingConfID = 0
			}
			if cc.GetType() == raftpb.ConfChangeRemoveNode && cc.GetNodeId() == c.cfg.ID {
				c.removed = true
			}
		default:
			return fmt.Errorf("raftnode: unsupported entry type %v at %d", e.GetType(), idx)
		}
		c.appliedIndex = idx
		if idx > c.stateIndex {
			c.stateIndex = idx
		}
	}
	return nil
}

// maybeSnapshot takes a snapshot every SnapshotEvery applied entries, and
// after every membership change so that the newest snapshot always lists
// every member (a member added later could not be seeded from it).
func (c *Core) maybeSnapshot() error {
	if c.stateIndex != c.appliedIndex || c.appliedIndex == c.snapIndex {
		return nil
	}
	if c.appliedIndex-c.snapIndex < c.cfg.SnapshotEvery && !c.confSnapshot {
		return nil
	}
	c.confSnapshot = false
	return c.snapshot()
}

func (c *Core) snapshot() error {
	data, err := c.sm.Snapshot()
	if err != nil {
		return fmt.Errorf("raftnode: snapshot state: %w", err)
	}
	if err := c.log.CreateSnapshot(c.appliedIndex, c.confState, data, c.cfg.SnapshotKeep); err != nil {
		return fmt.Errorf("raftnode: save snapshot at %d: %w", c.appliedIndex, err)
	}
	c.snapIndex = c.appliedIndex
	c.pruneProposals()
	c.cfg.Logger.Debug("snapshot taken", "index", c.appliedIndex, "bytes", len(data))
	return nil
}

// Checkpoint writes the tables changed since the last checkpoint, with
// the applied index, into the StateStore. The raft log keeps everything
// after it, so a crash between checkpoints only costs replay time.
func (c *Core) Checkpoint() error {
	changes := c.sm.TakeChanges()
	if len(changes) == 0 && c.durableIndex == c.stateIndex {
		return nil
	}
	if err := c.store.Checkpoint(c.stateIndex, changes); err != nil {
		return fmt.Errorf("raftnode: checkpoint state at %d: %w", c.stateIndex, err)
	}
	c.durableIndex = c.stateIndex
	return nil
}

// Entry envelope: version byte, origin node ID, proposal ID, payload. The
// layout is persisted in the log; version 1 is the only one.
const envelopeV1 = 1

func encodeEnvelope(origin, id uint64, payload []byte) []byte {
	b := make([]byte, 17+len(payload))
	b[0] = envelopeV1
	binary.BigEndian.PutUint64(b[1:], origin)
	binary.BigEndian.PutUint64(b[9:], id)
	copy(b[17:], payload)
	return b
}

func decodeEnvelope(b []byte) (origin, id uint64, payload []byte, ok bool) {
	if len(b) < 17 || b[0] != envelopeV1 {
		return 0, 0, nil, false
	}
	return binary.BigEndian.Uint64(b[1:]), binary.BigEndian.Uint64(b[9:]), b[17:], true
}

// raftLogger routes etcd raft's logging into slog.
type raftLogger struct{ l *slog.Logger }

// Raft logs a lot at debug and info (mapped to debug): format only when
// debug is enabled (found by the simulation's profile: 3–9% of its CPU).
func (r *raftLogger) debug() bool { return r.l.Enabled(context.Background(), slog.LevelDebug) }
func (r *raftLogger) Debug(v ...any) {
	if r.debug() {
		r.l.Debug(fmt.Sprint(v...))
	}
}
func (r *raftLogger) Debugf(format string, v ...any) {
	if r.debug() {
		r.l.Debug(fmt.Sprintf(format, v...))
	}
}
func (r *raftLogger) Info(v ...any) {
	if r.debug() {
		r.l.Debug(fmt.Sprint(v...))
	}
}
func (r *raftLogger) Infof(format string, v ...any) {
	if r.debug() {
		r.l.Debug(fmt.Sprintf(format, v...))
	}
}
func (r *raftLogger) Warning(v ...any) { r.l.Warn(fmt.Sprint(v...)) }
func (r *raftLogger) Warningf(format string, v ...any) {
	r.l.Warn(fmt.Sprintf(format, v...))
}
func (r *raftLogger) Error(v ...any)                 { r.l.Error(fmt.Sprint(v...)) }
func (r *raftLogger) Errorf(format string, v ...any) { r.l.Error(fmt.Sprintf(format, v...)) }

// Fatal and Panic are raft's invariant violations: continuing would risk
// the log's safety, so they stop the process as etcd does.
func (r *raftLogger) Fatal(v ...any) { r.Panic(v...) }
func (r *raftLogger) Fatalf(format string, v ...any) {
	r.Panicf(format, v...)
}
func (r *raftLogger) Panic(v ...any) {
	r.l.Error(fmt.Sprint(v...))
	panic(fmt.Sprint(v...))
}
func (r *raftLogger) Panicf(format string, v ...any) {
	r.l.Error(fmt.Sprintf(format, v...))
	panic(fmt.Sprintf(format, v...))
}
