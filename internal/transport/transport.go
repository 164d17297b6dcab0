// Package transport carries raft messages between Blixard members over
// gRPC (the Raft service of api/blixardpb).
//
// Outgoing messages are queued per peer and written by one goroutine per
// peer onto a long-lived client stream, so Send never waits for the network;
// snapshots travel on their own stream in chunks so that a large snapshot
// does not hold up heartbeats and appends to the same peer. Delivery is best
// effort, exactly what raft expects: a message that cannot be delivered is
// dropped and the peer is reported unreachable, and raft retransmits.
package transport

import (
	"context"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

const (
	defaultSnapshotChunkSize = 1 << 20
	defaultQueueSize         = 4096

	// maxBatchBytes keeps one RaftBatch well under gRPC's default 4 MiB
	// receive limit; a single larger message is still sent, alone.
	maxBatchBytes = 1 << 20

	// Reconnect backoff of a peer goroutine: short enough that a restarted
	// peer is back within one election timeout or so, long enough not to
	// spin on a dead address.
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// Handler receives the messages addressed to this node; in production it is
// the raft node. Process may block (back pressure onto the sending peer) but
// must return once ctx is done.
type Handler interface {
	Process(ctx context.Context, m *raftpb.Message) error
}

// HandlerFunc adapts a function to Handler. It lets the caller break the
// construction cycle between the transport (needs a Handler) and the raft
// node (needs a Transport).
type HandlerFunc func(ctx context.Context, m *raftpb.Message) error

// Process calls f.
func (f HandlerFunc) Process(ctx context.Context, m *raftpb.Message) error { return f(ctx, m) }

// Reporter is how the transport tells raft about delivery problems. It has
// the methods of raftnode.Reporter; it is declared here so that neither
// package imports the other. Its methods are called from a single transport
// goroutine, never from Send, so they may post into the raft loop that
// calls Send. Repeated unreachable reports for a peer may be coalesced.
// Stop waits for a call in progress to return.
type Reporter interface {
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
}

// Config configures a Transport.
type Config struct {
	// ID is this node's raft ID; incoming messages for any other ID are
	// dropped. Required.
	ID uint64
	// Handler receives incoming messages. Required.
	Handler Handler
	// Reporter is told about unreachable peers and snapshot outcomes. Nil
	// discards the reports (tests only: raft needs them in production).
	Reporter Reporter
	// Logger defaults to discarding.
	Logger *slog.Logger
	// SnapshotChunkSize is the data size of one SnapshotChunk; default
	// 1 MiB. Keep it below the peers' gRPC max receive size (4 MiB default).
	SnapshotChunkSize int
	// QueueSize is the number of messages queued per peer before new ones
	// are dropped; default 4096.
	QueueSize int
	// DialOptions for peer connections; default insecure credentials.
	// Reconnect backoff defaults are applied first, so these may override
	// them.
	DialOptions []grpc.DialOption
	// Authorize, when set, is asked about the sender of every incoming
	// message (its From) with the receiving stream's context; an error
	// ends the stream with that error and nothing of it reaches Handler.
	// On a TLS cluster it checks the sender's certificate.
	Authorize func(ctx context.Context, from uint64) error
}

// Stats are cumulative counters since New.
type Stats struct {
	MessagesSent     uint64 // written to a peer stream (not acknowledged)
	MessagesDropped  uint64 // queue full, unknown peer, stream failure or stopped
	BatchesSent      uint64 // RaftBatch writes; MessagesSent/BatchesSent is the batching factor
	MessagesReceived uint64 // handed to Handler.Process
	MessagesRejected uint64 // incoming, undecodable or addressed to another node
	SnapshotsSent    uint64 // acknowledged by the receiver
	SnapshotsFailed  uint64
}

type counters struct {
	messagesSent, messagesDropped, batchesSent atomic.Uint64
	messagesReceived, messagesRejected         atomic.Uint64
	snapshotsSent, snapshotsFailed             atomic.Uint64
}

// Transport sends raft messages to peers and serves the Raft gRPC service
// for incoming ones. All methods are safe for concurrent use.
type Transport struct {
	cfg      Config
	log      *slog.Logger
	reporter Reporter
	reports  *reportQueue
	dialOpts []grpc.DialOption
	crcTable *crc32.Table

	// ctx is cancelled by Stop; every peer context derives from it.
	ctx    context.Context
	cancel context.CancelFunc

	// wg counts the reporter goroutine and the per-peer reapers, each of
	// which outlives its peer's goroutines, so waiting on it waits for
	// everything the transport started.
	wg sync.WaitGroup

	// mu guards peers and stopped. Cancelling a peer or the transport and
	// adding to a peer's WaitGroup both happen under mu, which is what
	// makes WaitGroup.Add never race with the reaper's Wait.
	mu      sync.RWMutex
	peers   map[uint64]*peer
	stopped bool

	// rng gives backoff jitter, so that peers that failed together do not
	// retry in lockstep; *rand.Rand is not safe for concurrent use.
	rngMu sync.Mutex
	rng   *rand.Rand

	stats counters
}

// ServerOptions are the gRPC server options a node's server needs for
// peers' keepalive pings to be accepted.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 2 * time.Second, PermitWithoutStream: true})}
}

// New returns a Transport with no peers; Stop releases it. It panics if
// cfg.ID is zero or cfg.Handler is nil, both wiring bugs.
func New(cfg Config) *Transport {
	if cfg.ID == 0 {
		panic("transport: Config.ID must be non-zero")
	}
	if cfg.Handler == nil {
		panic("transport: Config.Handler is required")
	}
	if cfg.SnapshotChunkSize <= 0 {
		cfg.SnapshotChunkSize = defaultSnapshotChunkSize
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = defaultQueueSize
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reporter := cfg.Reporter
	if reporter == nil {
		reporter = nopReporter{}
	}
	// gRPC's own reconnect backoff defaults to 1 s growing to 120 s, which
	// would keep a restarted peer unreachable long after our own retry;
	// align it with ours.
	dialOpts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  minBackoff,
			Multiplier: 2,
			Jitter:     0.2,
			MaxDelay:   maxBackoff,
		},
		MinConnectTimeout: 5 * time.Second,
	}),
		// Keepalive pings notice a peer that vanished without closing
		// the connection (power loss, partition) within seconds instead
		// of the kernel's TCP timeout. Servers must permit them: see
		// ServerOptions.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	}
	if len(cfg.DialOptions) == 0 {
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		dialOpts = append(dialOpts, cfg.DialOptions...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	now := uint64(time.Now().UnixNano())
	t := &Transport{
		cfg:      cfg,
		log:      log,
		reporter: reporter,
		reports:  newReportQueue(),
		dialOpts: dialOpts,
		crcTable: crc32.MakeTable(crc32.Castagnoli),
		ctx:      ctx,
		cancel:   cancel,
		peers:    make(map[uint64]*peer),
		rng:      rand.New(rand.NewPCG(now, cfg.ID)),
	}
	t.wg.Add(1)
	go t.runReporter()
	return t
}

// Register registers the Raft service on s, which the caller owns, starts
// and stops. Incoming streams end when their sender closes them or s stops;
// after Stop they are refused.
func (t *Transport) Register(s grpc.ServiceRegistrar) {
	rpcpb.RegisterRaftServer(s, &raftService{t: t})
}

// AddPeer makes id reachable at addr. Adding a known peer with the same
// address is a no-op; a different address replaces the connection (queued
// messages for the old address are dropped).
func (t *Transport) AddPeer(id uint64, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	if old, ok := t.peers[id]; ok {
		if old.addr == addr {
			return
		}
		delete(t.peers, id)
		old.cancel()
		t.log.Info("peer address changed", "peer", id, "old", old.addr, "new", addr)
	}
	// NewClient does no I/O (the connection is made by the first stream),
	// so it is fine under the lock.
	conn, err := grpc.NewClient(addr, t.dialOpts...)
	if err != nil {
		// The peer stays unknown, so sends to it are dropped and reported
		// unreachable; a later AddPeer may succeed.
		t.log.Error("add peer", "peer", id, "addr", addr, "err", err)
		return
	}
	ctx, cancel := context.WithCancel(t.ctx)
	p := &peer{
		id:     id,
		addr:   addr,
		conn:   conn,
		client: rpcpb.NewRaftClient(conn),
		queue:  make(chan []byte, t.cfg.QueueSize),
		ctx:    ctx,
		cancel: cancel,
	}
	t.peers[id] = p
	p.wg.Add(1)
	go t.runPeer(p)
	t.wg.Add(1)
	go t.reap(p)
}

// RemovePeer forgets id, dropping its queued messages and aborting its
// streams. It does not wait for them to finish: it may be called from the
// goroutine that the Reporter feeds.
func (t *Transport) RemovePeer(id uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		delete(t.peers, id)
		p.cancel()
	}
}

// Send queues msgs for their peers and returns without waiting for the
// network. A message that cannot be queued (unknown peer, full queue) is
// dropped and its peer reported unreachable. Messages are marshalled before
// Send returns, so the caller may reuse or modify them afterwards, except
// the data of a MsgSnap snapshot, which is read while it is streamed.
func (t *Transport) Send(msgs []*raftpb.Message) {
	for _, m := range msgs {
		if m == nil {
			continue
		}
		if m.GetType() == raftpb.MsgSnap {
			t.sendSnapshot(m)
		} else {
			t.sendMessage(m)
		}
	}
}

func (t *Transport) sendMessage(m *raftpb.Message) {
	to := m.GetTo()
	b, err := proto.Marshal(m)
	if err != nil {
		t.stats.messagesDropped.Add(1)
		t.log.Error("marshal message", "peer", to, "type", m.GetType(), "err", err)
		return
	}
	t.mu.RLock()
	if t.stopped {
		t.mu.RUnlock()
		t.stats.messagesDropped.Add(1)
		return
	}
	p, ok := t.peers[to]
	queued := false
	if ok {
		select {
		case p.queue <- b:
			queued = true
		default:
		}
	}
	t.mu.RUnlock()
	if queued {
		return
	}
	t.stats.messagesDropped.Add(1)
	if !ok {
		t.log.Debug("message for unknown peer dropped", "peer", to, "type", m.GetType())
	} else {
		t.log.Debug("peer queue full, message dropped", "peer", to, "type", m.GetType())
	}
	t.reportUnreachable(to)
}

func (t *Transport) sendSnapshot(m *raftpb.Message) {
	to := m.GetTo()
	header, err := snapshotHeader(m)
	if err != nil {
		t.log.Error("marshal snapshot header", "peer", to, "err", err)
		t.snapshotFailed(to)
		return
	}
	t.mu.RLock()
	if t.stopped {
		t.mu.RUnlock()
		t.stats.snapshotsFailed.Add(1)
		return
	}
	p, ok := t.peers[to]
	if ok {
		p.wg.Add(1)
		go t.runSnapshot(p, header, m.GetSnapshot().GetData())
	}
	t.mu.RUnlock()
	if !ok {
		t.log.Debug("snapshot for unknown peer dropped", "peer", to)
		t.snapshotFailed(to)
	}
}

// snapshotFailed counts and reports a failed snapshot. Raft keeps the peer
// paused in snapshot state until it hears the outcome, so every MsgSnap
// must end in exactly one ReportSnapshot.
func (t *Transport) snapshotFailed(to uint64) {
	t.stats.snapshotsFailed.Add(1)
	t.reportUnreachable(to)
	t.reportSnapshot(to, raft.SnapshotFailure)
}

// Stop aborts every stream, closes every connection and waits for every
// goroutine the transport started. It is safe to call more than once and
// concurrently. Send, AddPeer and RemovePeer are no-ops afterwards.
func (t *Transport) Stop() {
	t.mu.Lock()
	if !t.stopped {
		t.stopped = true
		clear(t.peers)
		t.cancel()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// Stats returns a snapshot of the counters.
func (t *Transport) Stats() Stats {
	c := &t.stats
	return Stats{
		MessagesSent:     c.messagesSent.Load(),
		MessagesDropped:  c.messagesDropped.Load(),
		BatchesSent:      c.batchesSent.Load(),
		MessagesReceived: c.messagesReceived.Load(),
		MessagesRejected: c.messagesRejected.Load(),
		SnapshotsSent:    c.snapshotsSent.Load(),
		SnapshotsFailed:  c.snapshotsFailed.Load(),
	}
}

// jitter returns a delay uniformly drawn from [d/2, 3d/2).
func (t *Transport) jitter(d time.Duration) time.Duration {
	t.rngMu.Lock()
	defer t.rngMu.Unlock()
	return d/2 + time.Duration(t.rng.Int64N(int64(d)))
}

// stopping reports whether Stop has been called; failures caused by Stop
// are not reported to raft, which is going away too.
func (t *Transport) stopping() bool { return t.ctx.Err() != nil }

type nopReporter struct{}

func (nopReporter) ReportUnreachable(uint64)                   {}
func (nopReporter) ReportSnapshot(uint64, raft.SnapshotStatus) {}
