package raftnode

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/internal/clock"
)

// NodeConfig configures the production driver around a Core.
type NodeConfig struct {
	Clock           clock.Clock
	TickInterval    time.Duration // default 50ms
	CheckpointEvery time.Duration // default 100ms
	// MaxWait bounds every wait for callers that pass no deadline.
	MaxWait time.Duration // default 30s
	// OnChange is called on the node's goroutine after a Ready that
	// changed the leader or membership. It must not block.
	OnChange func(Output)
	// OnApply is called on the node's goroutine after a Ready that
	// applied entries. It must not block.
	OnApply func(Output)
}

// Node runs a Core on its own goroutine and lets any goroutine propose,
// read linearizably and wait for the outcome. Every call returns: on
// apply, on a clear retryable error, or when its context ends.
type Node struct {
	cfg  NodeConfig
	core *Core

	recvc chan *raftpb.Message
	propc chan proposal
	funcc chan func()
	stopc chan struct{}
	donec chan struct{}

	nextID atomic.Uint64

	mu       sync.Mutex
	waiters  map[uint64]*waiter
	epoch    uint64        // bumped on every leader change
	leaderCh chan struct{} // closed and replaced on every leader change
	err      error         // why the loop stopped

	// Loop-only state.
	pendingReads []raft.ReadState

	// Cheap status for any goroutine.
	lead    atomic.Uint64
	term    atomic.Uint64
	applied atomic.Uint64
	removed atomic.Bool
}

type proposal struct {
	id      uint64
	payload []byte
	conf    *confReq
}

type confReq struct {
	typ    raftpb.ConfChangeType
	nodeID uint64
	addr   string
}

type waiter struct {
	epoch uint64
	done  chan Applied
}

// NewNode wraps core. Call Start to run it.
func NewNode(core *Core, cfg NodeConfig) *Node {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.TickInterval == 0 {
		cfg.TickInterval = 50 * time.Millisecond
	}
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = 100 * time.Millisecond
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 30 * time.Second
	}
	n := &Node{
		cfg:      cfg,
		core:     core,
		recvc:    make(chan *raftpb.Message, 4096),
		propc:    make(chan proposal, 4096),
		funcc:    make(chan func(), 64),
		stopc:    make(chan struct{}),
		donec:    make(chan struct{}),
		waiters:  map[uint64]*waiter{},
		leaderCh: make(chan struct{}),
	}
	// Proposal IDs start from the clock so that IDs from before a restart
	// (still in the log) never match a waiter after it.
	n.nextID.Store(uint64(cfg.Clock.Now().UnixNano()))
	n.applied.Store(core.AppliedIndex())
	return n
}

// Start runs the node's goroutine; Stop ends it.
func (n *Node) Start() { go n.run() }

// Stop ends the goroutine, checkpointing state first. Safe to call twice.
func (n *Node) Stop() {
	select {
	case <-n.stopc:
	default:
		close(n.stopc)
	}
	<-n.donec
}

// Done is closed when the node's goroutine has exited.
func (n *Node) Done() <-chan struct{} { return n.donec }

// Err says why the node stopped (nil after a plain Stop).
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// ID is this node's raft ID.
func (n *Node) ID() uint64 { return n.core.ID() }

// Leader is the current leader as last seen (0 if none).
func (n *Node) Leader() uint64 { return n.lead.Load() }

// Term is the current term as last seen.
func (n *Node) Term() uint64 { return n.term.Load() }

// AppliedIndex is the highest applied entry as last seen.
func (n *Node) AppliedIndex() uint64 { return n.applied.Load() }

// IsRemoved says whether this node applied its own removal.
func (n *Node) IsRemoved() bool { return n.removed.Load() }

// IsLeader says whether this node was leader at its last Ready.
func (n *Node) IsLeader() bool { return n.lead.Load() == n.core.ID() }

// Process hands a message from the network to raft (transport.Handler).
func (n *Node) Process(ctx context.Context, m *raftpb.Message) error {
	select {
	case n.recvc <- m:
		return nil
	case <-n.stopc:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReportUnreachable implements the transport's reporter.
func (n *Node) ReportUnreachable(id uint64) {
	n.post(func() { n.core.ReportUnreachable(id) })
}

// ReportSnapshot implements the transport's reporter.
func (n *Node) ReportSnapshot(id uint64, st raft.SnapshotStatus) {
	n.post(func() { n.core.ReportSnapshot(id, st) })
}

// post runs f on the loop unless the node has stopped.
func (n *Node) post(f func()) {
	select {
	case n.funcc <- f:
	case <-n.stopc:
	}
}

// call runs f on the loop and waits for it.
func (n *Node) call(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case n.funcc <- func() { f(); close(done) }:
	case <-n.stopc:
		return n.stoppedErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-n.donec:
		return n.stoppedErr()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) stoppedErr() error {
	if err := n.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrStopped, err)
	}
	return ErrStopped
}

func (n *Node) withMaxWait(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, n.cfg.MaxWait)
}

// Propose submits a command payload and waits until it is applied on this
// node, returning the state machine's result. If no leader is known it
// waits for one (the proposal was certainly not appended). A leader change
// while it is in flight returns ErrLeaderChanged: the outcome is unknown.
func (n *Node) Propose(ctx context.Context, payload []byte) (proto.Message, error) {
	return n.submit(ctx, func(id uint64) proposal { return proposal{id: id, payload: payload} })
}

// ProposeConfChange proposes a membership change on the leader and waits
// for it to be applied. Callers on followers get ErrNotLeader.
func (n *Node) ProposeConfChange(ctx context.Context, typ raftpb.ConfChangeType, nodeID uint64, addr string) error {
	_, err := n.submit(ctx, func(id uint64) proposal {
		return proposal{id: id, conf: &confReq{typ: typ, nodeID: nodeID, addr: addr}}
	})
	return err
}

func (n *Node) submit(ctx context.Context, mk func(id uint64) proposal) (proto.Message, error) {
	a, err := n.await(ctx, "proposal", func(ctx context.Context, id uint64) error {
		select {
		case n.propc <- mk(id):
			return nil
		case <-n.stopc:
			return n.stoppedErr()
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	return a.Result, err
}

// await registers a waiter, hands the request to the loop with send, and
// waits for its completion. A request raft dropped for lack of a leader
// was certainly not appended, so it is sent again once a leader appears.
func (n *Node) await(ctx context.Context, what string, send func(ctx context.Context, id uint64) error) (Applied, error) {
	ctx, cancel := n.withMaxWait(ctx)
	defer cancel()
	for {
		id := n.nextID.Add(1)
		w, leaderCh := n.register(id)
		if err := send(ctx, id); err != nil {
			n.unregister(id)
			return Applied{}, fmt.Errorf("%s not sent: %w", what, err)
		}
		select {
		case a := <-w.done:
			if errors.Is(a.Err, ErrNoLeader) {
				if err := n.waitLeaderChange(ctx, leaderCh); err != nil {
					return Applied{}, fmt.Errorf("%w (%v)", ErrNoLeader, err)
				}
				continue
			}
			return a, a.Err
		case <-n.donec:
			n.unregister(id)
			return Applied{}, n.stoppedErr()
		case <-ctx.Done():
			n.unregister(id)
			return Applied{}, fmt.Errorf("%s outcome unknown: %w; retry it", what, ctx.Err())
		}
	}
}

func (n *Node) waitLeaderChange(ctx context.Context, ch <-chan struct{}) error {
	if n.Leader() != 0 {
		// A leader appeared between the drop and now.
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-n.donec:
		return n.stoppedErr()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) register(id uint64) (*waiter, <-chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w := &waiter{epoch: n.epoch, done: make(chan Applied, 1)}
	n.waiters[id] = w
	return w, n.leaderCh
}

func (n *Node) unregister(id uint64) {
	n.mu.Lock()
	delete(n.waiters, id)
	n.mu.Unlock()
}

func (n *Node) complete(a Applied) {
	n.mu.Lock()
	w, ok := n.waiters[a.ID]
	delete(n.waiters, a.ID)
	n.mu.Unlock()
	if ok {
		w.done <- a
	}
}

// ReadIndex waits until this node's state reflects every write committed
// before the call (a linearizable read point), then returns; the caller
// reads local state.
func (n *Node) ReadIndex(ctx context.Context) error {
	_, err := n.await(ctx, "linearizable read", func(ctx context.Context, id uint64) error {
		return n.call(ctx, func() {
			if err := n.core.ReadIndex(id); err != nil {
				n.complete(Applied{ID: id, Err: err})
			}
		})
	})
	return err
}

// Status returns raft's status and the applied index, read on the loop.
func (n *Node) Status(ctx context.Context) (raft.Status, uint64, error) {
	var st raft.Status
	var applied uint64
	err := n.call(ctx, func() { st, applied = n.core.Status(), n.core.AppliedIndex() })
	return st, applied, err
}

// TransferLeader asks raft to hand leadership to id and waits until the
// leader changes or ctx ends.
func (n *Node) TransferLeader(ctx context.Context, id uint64) error {
	ctx, cancel := n.withMaxWait(ctx)
	defer cancel()
	n.mu.Lock()
	ch := n.leaderCh
	n.mu.Unlock()
	if err := n.call(ctx, func() { n.core.TransferLeader(id) }); err != nil {
		return err
	}
	for n.Leader() != id {
		select {
		case <-ch:
			n.mu.Lock()
			ch = n.leaderCh
			n.mu.Unlock()
		case <-n.donec:
			return n.stoppedErr()
		case <-ctx.Done():
			return fmt.Errorf("leadership transfer to %d did not finish: %w", id, ctx.Err())
		}
	}
	return nil
}

// WaitLeader returns once some leader is known.
func (n *Node) WaitLeader(ctx context.Context) error {
	for {
		n.mu.Lock()
		ch := n.leaderCh
		n.mu.Unlock()
		if n.Leader() != 0 {
			return nil
		}
		select {
		case <-ch:
		case <-n.donec:
			return n.stoppedErr()
		case <-ctx.Done():
			return fmt.Errorf("waiting for a leader: %w", ctx.Err())
		}
	}
}

func (n *Node) run() {
	defer close(n.donec)
	ticker := n.cfg.Clock.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	cp := n.cfg.Clock.NewTicker(n.cfg.CheckpointEvery)
	defer cp.Stop()
	for {
		select {
		case <-ticker.C():
			n.core.Tick()
		case m := <-n.recvc:
			n.step(m)
		case p := <-n.propc:
			n.propose(p)
		case f := <-n.funcc:
			f()
		case <-cp.C():
			if err := n.core.Checkpoint(); err != nil {
				n.fail(err)
				return
			}
		case <-n.stopc:
			if err := n.core.Checkpoint(); err != nil {
				n.fail(err)
				return
			}
			n.fail(nil)
			return
		}
		// Drain whatever else is queued so one Ready (one fsync) covers
		// as many proposals and messages as possible.
		n.drain()
		for n.core.HasReady() {
			out, err := n.core.HandleReady()
			if err != nil {
				n.fail(err)
				return
			}
			n.handleOutput(out)
		}
	}
}

func (n *Node) drain() {
	for i := 0; i < 4096; i++ {
		select {
		case m := <-n.recvc:
			n.step(m)
		case p := <-n.propc:
			n.propose(p)
		case f := <-n.funcc:
			f()
		default:
			return
		}
	}
}

func (n *Node) step(m *raftpb.Message) {
	if err := n.core.Step(m); err != nil {
		n.core.cfg.Logger.Debug("dropping raft message", "from", m.GetFrom(), "type", m.GetType(), "err", err)
	}
}

func (n *Node) propose(p proposal) {
	var err error
	if p.conf != nil {
		err = n.core.ProposeConfChange(p.id, p.conf.typ, p.conf.nodeID, p.conf.addr)
	} else {
		err = n.core.Propose(p.id, p.payload)
	}
	if err != nil {
		n.complete(Applied{ID: p.id, Err: err})
	}
}

func (n *Node) handleOutput(out Output) {
	advanced := out.AppliedIndex > n.applied.Load()
	n.applied.Store(out.AppliedIndex)
	prevLead := n.lead.Swap(out.Leader)
	n.term.Store(out.Term)
	if out.Removed {
		n.removed.Store(true)
	}
	for _, a := range out.Applied {
		n.complete(a)
	}
	n.pendingReads = append(n.pendingReads, out.ReadStates...)
	if len(n.pendingReads) > 0 {
		kept := n.pendingReads[:0]
		for _, rs := range n.pendingReads {
			if rs.Index <= out.AppliedIndex && len(rs.RequestCtx) == 8 {
				n.complete(Applied{ID: binary.BigEndian.Uint64(rs.RequestCtx)})
			} else {
				kept = append(kept, rs)
			}
		}
		n.pendingReads = kept
	}
	if out.LeaderChanged {
		n.leaderChanged(prevLead)
	}
	if (out.LeaderChanged || out.MembershipChanged || out.Removed) && n.cfg.OnChange != nil {
		n.cfg.OnChange(out)
	}
	if advanced && n.cfg.OnApply != nil {
		n.cfg.OnApply(out)
	}
}

// leaderChanged fails every request made under the old leader: raft may
// have dropped it silently, so waiting could hang until the deadline.
func (n *Node) leaderChanged(prevLead uint64) {
	n.mu.Lock()
	old := n.epoch
	n.epoch++
	close(n.leaderCh)
	n.leaderCh = make(chan struct{})
	var failed []*waiter
	for id, w := range n.waiters {
		switch {
		case w.epoch > old:
		case prevLead == 0:
			// No leader during its epoch: the core refused it (ErrNoLeader,
			// already delivered, and await sends it again) or it is not
			// sent yet. Nothing appended it, so its outcome is not unknown:
			// it goes on under the new epoch rather than failing with
			// ErrLeaderChanged (which made every request in a node's
			// first election timeout fail with "outcome unknown").
			w.epoch = n.epoch
		default:
			failed = append(failed, w)
			delete(n.waiters, id)
		}
	}
	n.mu.Unlock()
	for _, w := range failed {
		w.done <- Applied{Err: ErrLeaderChanged}
	}
	n.pendingReads = nil
}

func (n *Node) fail(err error) {
	n.mu.Lock()
	n.err = err
	ws := n.waiters
	n.waiters = map[uint64]*waiter{}
	n.mu.Unlock()
	e := ErrStopped
	if err != nil {
		e = fmt.Errorf("%w: %v", ErrStopped, err)
	}
	for _, w := range ws {
		w.done <- Applied{Err: e}
	}
}
