package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// waitTimeout bounds every wait; generous for -race on a loaded machine.
const waitTimeout = 15 * time.Second

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder is the Handler of a test node.
type recorder struct {
	msgs  chan *raftpb.Message
	calls atomic.Int64
	// blockSnap makes Process hold MsgSnap until its context ends, and
	// signals snapEntered when it starts doing so.
	blockSnap   bool
	snapEntered chan struct{}
}

func newRecorder() *recorder {
	return &recorder{msgs: make(chan *raftpb.Message, 10000), snapEntered: make(chan struct{}, 1)}
}

func (r *recorder) Process(ctx context.Context, m *raftpb.Message) error {
	r.calls.Add(1)
	if r.blockSnap && m.GetType() == raftpb.MsgSnap {
		r.snapEntered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	select {
	case r.msgs <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type snapReport struct {
	id     uint64
	status raft.SnapshotStatus
}

// reports is the Reporter of a test node. It never blocks the transport:
// unreachable reports repeat, so losing some on a full buffer is harmless.
type reports struct {
	unreachable chan uint64
	snapshots   chan snapReport
}

func newReports() *reports {
	return &reports{unreachable: make(chan uint64, 1024), snapshots: make(chan snapReport, 64)}
}

func (r *reports) ReportUnreachable(id uint64) {
	select {
	case r.unreachable <- id:
	default:
	}
}

func (r *reports) ReportSnapshot(id uint64, s raft.SnapshotStatus) {
	r.snapshots <- snapReport{id, s}
}

// node is a transport with its own gRPC server.
type node struct {
	tr      *Transport
	h       *recorder
	r       *reports
	addr    string
	srv     *grpc.Server
	served  chan struct{}
	srvOpts []grpc.ServerOption
}

func startNode(t *testing.T, id uint64, mutate func(*Config, *node)) *node {
	t.Helper()
	n := &node{h: newRecorder(), r: newReports()}
	cfg := Config{ID: id, Handler: n.h, Reporter: n.r}
	if mutate != nil {
		mutate(&cfg, n)
	}
	n.tr = New(cfg)
	n.serve(t, "127.0.0.1:0")
	// Cleanups run last-in first-out: the server stops after the transport.
	t.Cleanup(n.stopServer)
	t.Cleanup(n.tr.Stop)
	return n
}

func (n *node) serve(t *testing.T, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	n.addr = lis.Addr().String()
	n.srv = grpc.NewServer(n.srvOpts...)
	n.tr.Register(n.srv)
	n.served = make(chan struct{})
	go func(srv *grpc.Server, done chan struct{}) {
		defer close(done)
		_ = srv.Serve(lis)
	}(n.srv, n.served)
}

// stopServer stops the server hard (as a crash would) and waits for Serve.
func (n *node) stopServer() {
	if n.srv == nil {
		return
	}
	n.srv.Stop()
	<-n.served
	n.srv = nil
}

// deadAddr returns an address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		panic("unreachable")
	}
}

// waitUnreachable waits for a ReportUnreachable(id), skipping other ids.
func waitUnreachable(t *testing.T, r *reports, id uint64, whileWaiting func()) {
	t.Helper()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case got := <-r.unreachable:
			if got == id {
				return
			}
		case <-tick.C:
			if whileWaiting != nil {
				whileWaiting()
			}
		case <-deadline:
			t.Fatalf("timed out after %v waiting for ReportUnreachable(%d)", waitTimeout, id)
		}
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
	}
}

// appMsgs returns n MsgApp messages from->to with Index first, first+1, ...
func appMsgs(from, to uint64, first uint64, n int) []*raftpb.Message {
	msgs := make([]*raftpb.Message, n)
	for i := range msgs {
		m := &raftpb.Message{}
		msgs[i] = m
		m.Type = raftpb.MsgApp.Enum()
		m.From = proto.Uint64(from)
		m.To = proto.Uint64(to)
		m.Term = proto.Uint64(1)
		m.Index = proto.Uint64(first + uint64(i))
		m.Entries = []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(first + uint64(i) + 1), Data: bytes.Repeat([]byte{'x'}, 64)}}
	}
	return msgs
}

func snapMsg(from, to uint64, data []byte) []*raftpb.Message {
	m := &raftpb.Message{}
	m.Type = raftpb.MsgSnap.Enum()
	m.From = proto.Uint64(from)
	m.To = proto.Uint64(to)
	m.Term = proto.Uint64(3)
	m.Snapshot = &raftpb.Snapshot{
		Data: data,
		Metadata: &raftpb.SnapshotMetadata{
			Index:     proto.Uint64(42),
			Term:      proto.Uint64(3),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2}},
		},
	}
	return []*raftpb.Message{m}
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestExchangePreservesOrderAndBatches(t *testing.T) {
	a := startNode(t, 1, nil)
	b := startNode(t, 2, nil)
	a.tr.AddPeer(2, b.addr)
	b.tr.AddPeer(1, a.addr)

	const n = 3000 // below the default queue size, so nothing is dropped
	toB, toA := appMsgs(1, 2, 0, n), appMsgs(2, 1, 0, n)
	// Several Send calls each way, interleaved, so order must hold across
	// calls as well as within one.
	for i := 0; i < n; i += 500 {
		a.tr.Send(toB[i : i+500])
		b.tr.Send(toA[i : i+500])
	}

	check := func(dst *node, from uint64) {
		t.Helper()
		for i := range n {
			m := waitFor(t, dst.h.msgs, fmt.Sprintf("message %d from %d", i, from))
			if m.GetFrom() != from || m.GetIndex() != uint64(i) {
				t.Fatalf("message %d: got from=%d index=%d, want from=%d index=%d", i, m.GetFrom(), m.GetIndex(), from, i)
			}
		}
	}
	check(b, 1)
	check(a, 2)

	for _, x := range []*node{a, b} {
		eventually(t, "all messages counted as sent", func() bool { return x.tr.Stats().MessagesSent == n })
		st := x.tr.Stats()
		if st.MessagesDropped != 0 {
			t.Errorf("node %d dropped %d messages", x.tr.cfg.ID, st.MessagesDropped)
		}
		if st.BatchesSent >= st.MessagesSent {
			t.Errorf("node %d: %d batches for %d messages, want batching", x.tr.cfg.ID, st.BatchesSent, st.MessagesSent)
		}
		if st.MessagesReceived != n {
			t.Errorf("node %d received %d, want %d", x.tr.cfg.ID, st.MessagesReceived, n)
		}
		t.Logf("node %d: %d messages in %d batches", x.tr.cfg.ID, st.MessagesSent, st.BatchesSent)
	}
}

func TestReconnectsAfterPeerRestart(t *testing.T) {
	a := startNode(t, 1, nil)
	b := startNode(t, 2, nil)
	a.tr.AddPeer(2, b.addr)

	next := uint64(0)
	send := func() {
		a.tr.Send(appMsgs(1, 2, next, 1))
		next++
	}
	send()
	if m := waitFor(t, b.h.msgs, "first message"); m.GetIndex() != 0 {
		t.Fatalf("got index %d, want 0", m.GetIndex())
	}

	addr := b.addr
	b.stopServer()
	// The broken stream shows on the next write, so keep writing.
	waitUnreachable(t, a.r, 2, send)

	b.serve(t, addr)
	restartedAt := next
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	last := uint64(0)
	for {
		select {
		case m := <-b.h.msgs:
			if m.GetIndex() <= last {
				t.Fatalf("index %d after %d: order broken", m.GetIndex(), last)
			}
			last = m.GetIndex()
			if last >= restartedAt {
				return // a message sent after the restart got through
			}
		case <-tick.C:
			send()
		case <-deadline:
			t.Fatalf("no message sent after the restart (index >= %d) delivered within %v; last %d", restartedAt, waitTimeout, last)
		}
	}
}

func TestLargeSnapshotArrivesInChunks(t *testing.T) {
	var chunks atomic.Int64
	countChunks := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == rpcpb.Raft_SendSnapshot_FullMethodName {
			ss = &countingStream{ServerStream: ss, n: &chunks}
		}
		return handler(srv, ss)
	}
	a := startNode(t, 1, nil)
	b := startNode(t, 2, func(_ *Config, n *node) {
		n.srvOpts = []grpc.ServerOption{grpc.StreamInterceptor(countChunks)}
	})
	a.tr.AddPeer(2, b.addr)

	data := randomBytes(5<<20, 7)
	msgs := snapMsg(1, 2, data)
	a.tr.Send(msgs)

	m := waitFor(t, b.h.msgs, "snapshot message")
	if m.GetType() != raftpb.MsgSnap || m.GetFrom() != 1 || m.GetTerm() != 3 {
		t.Fatalf("got %v from %d term %d", m.GetType(), m.GetFrom(), m.GetTerm())
	}
	if md := m.GetSnapshot().GetMetadata(); md.GetIndex() != 42 || len(md.GetConfState().GetVoters()) != 2 {
		t.Fatalf("metadata not preserved: %v", md)
	}
	if !bytes.Equal(m.GetSnapshot().GetData(), data) {
		t.Fatalf("snapshot data differs (%d bytes received, %d sent)", len(m.GetSnapshot().GetData()), len(data))
	}
	if rep := waitFor(t, a.r.snapshots, "ReportSnapshot"); rep != (snapReport{2, raft.SnapshotFinish}) {
		t.Fatalf("got %+v, want SnapshotFinish for 2", rep)
	}
	if got := chunks.Load(); got != 5 {
		t.Errorf("received %d chunks, want 5 (5 MiB in 1 MiB chunks)", got)
	}
	if len(msgs[0].GetSnapshot().GetData()) != len(data) {
		t.Error("Send modified the caller's message")
	}
	if st := a.tr.Stats(); st.SnapshotsSent != 1 || st.SnapshotsFailed != 0 {
		t.Errorf("stats %+v, want 1 snapshot sent", st)
	}
}

type countingStream struct {
	grpc.ServerStream
	n *atomic.Int64
}

func (s *countingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.n.Add(1)
	}
	return err
}

func TestSnapshotFailureIsReported(t *testing.T) {
	a := startNode(t, 1, nil)
	a.tr.AddPeer(2, deadAddr(t))

	a.tr.Send(snapMsg(1, 2, randomBytes(1000, 1)))
	if rep := waitFor(t, a.r.snapshots, "ReportSnapshot for a dead peer"); rep != (snapReport{2, raft.SnapshotFailure}) {
		t.Fatalf("got %+v, want SnapshotFailure for 2", rep)
	}
	waitUnreachable(t, a.r, 2, nil)

	// An unknown peer fails at once.
	a.tr.Send(snapMsg(1, 9, []byte("x")))
	if rep := waitFor(t, a.r.snapshots, "ReportSnapshot for an unknown peer"); rep != (snapReport{9, raft.SnapshotFailure}) {
		t.Fatalf("got %+v, want SnapshotFailure for 9", rep)
	}
	if st := a.tr.Stats(); st.SnapshotsFailed != 2 || st.SnapshotsSent != 0 {
		t.Errorf("stats %+v, want 2 snapshots failed", st)
	}
}

func TestReceiverRejectsCorruptSnapshot(t *testing.T) {
	b := startNode(t, 2, nil)
	conn, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := rpcpb.NewRaftClient(conn)

	header := func(to uint64, typ raftpb.MessageType) []byte {
		m := &raftpb.Message{Type: typ.Enum(), From: proto.Uint64(1), To: proto.Uint64(to),
			Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(5), Term: proto.Uint64(1)}}}
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	data := randomBytes(3000, 3)
	sum := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
	// good returns a valid three-chunk stream; cases corrupt a copy.
	good := func() []*blixardpb.SnapshotChunk {
		return []*blixardpb.SnapshotChunk{
			{Header: header(2, raftpb.MsgSnap), Data: data[:1000], Offset: 0, TotalSize: 3000, Crc32C: sum},
			{Data: data[1000:2000], Offset: 1000},
			{Data: data[2000:], Offset: 2000, Last: true},
		}
	}
	send := func(chunks []*blixardpb.SnapshotChunk) error {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		stream, err := client.SendSnapshot(ctx)
		if err != nil {
			return err
		}
		for _, c := range chunks {
			// io.EOF means the server already rejected the stream; the
			// status comes from CloseAndRecv.
			if sendErr := stream.Send(c); errors.Is(sendErr, io.EOF) {
				break
			} else if sendErr != nil {
				return sendErr
			}
		}
		_, err = stream.CloseAndRecv()
		return err
	}

	cases := []struct {
		name    string
		corrupt func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk
		want    codes.Code
	}{
		{"wrong checksum", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[0].Crc32C ^= 1
			return c
		}, codes.DataLoss},
		{"flipped data byte", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			d := bytes.Clone(c[1].Data)
			d[10] ^= 0xff
			c[1].Data = d
			return c
		}, codes.DataLoss},
		{"offset gap", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[1].Offset = 1500
			return c
		}, codes.InvalidArgument},
		{"chunk repeated", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			return []*blixardpb.SnapshotChunk{c[0], c[1], c[1], c[2]}
		}, codes.InvalidArgument},
		{"more data than total_size", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[0].TotalSize = 2500
			return c
		}, codes.DataLoss},
		{"less data than total_size", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[0].TotalSize = 4000
			return c
		}, codes.DataLoss},
		{"stream ends without last chunk", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			return c[:2]
		}, codes.DataLoss},
		{"no header", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[0].Header = nil
			return c
		}, codes.InvalidArgument},
		{"garbage header", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[0].Header = []byte{0xff, 0xff, 0xff}
			return c
		}, codes.InvalidArgument},
		{"header not MsgSnap", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[0].Header = header(2, raftpb.MsgApp)
			return c
		}, codes.InvalidArgument},
		{"header on later chunk", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[1].Header = c[0].Header
			return c
		}, codes.InvalidArgument},
		{"addressed to another node", func(c []*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			c[0].Header = header(3, raftpb.MsgSnap)
			return c
		}, codes.FailedPrecondition},
		{"empty stream", func([]*blixardpb.SnapshotChunk) []*blixardpb.SnapshotChunk {
			return nil
		}, codes.InvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := send(tc.corrupt(good()))
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	if n := b.h.calls.Load(); n != 0 {
		t.Fatalf("Handler.Process called %d times for rejected snapshots", n)
	}

	// The same driver with an intact stream succeeds, so the rejections
	// above are the receiver's checks and not a broken driver.
	if err := send(good()); err != nil {
		t.Fatalf("valid snapshot rejected: %v", err)
	}
	m := waitFor(t, b.h.msgs, "valid snapshot")
	if !bytes.Equal(m.GetSnapshot().GetData(), data) {
		t.Fatal("valid snapshot data differs")
	}
}

func TestQueueOverflowDropsWithoutBlocking(t *testing.T) {
	const queue = 8
	a := startNode(t, 1, func(c *Config, _ *node) { c.QueueSize = queue })
	// A dead peer: its goroutine is stuck in dial failures and backoff, so
	// the queue fills up and stays full.
	a.tr.AddPeer(2, deadAddr(t))

	const n = 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.tr.Send(appMsgs(1, 2, 0, n))
	}()
	waitFor(t, done, "Send to a peer with a full queue to return")
	waitUnreachable(t, a.r, 2, nil)

	st := a.tr.Stats()
	// All but the queue and what the peer goroutine took out while failing;
	// it takes at most a batch per backoff of >= 25 ms.
	if st.MessagesDropped < n/2 {
		t.Errorf("dropped %d of %d messages with a queue of %d", st.MessagesDropped, n, queue)
	}
	if st.MessagesSent != 0 {
		t.Errorf("sent %d messages to a dead peer", st.MessagesSent)
	}

	// A message for an unknown peer is dropped and reported too.
	before := a.tr.Stats().MessagesDropped
	a.tr.Send(appMsgs(1, 9, 0, 1))
	waitUnreachable(t, a.r, 9, nil)
	if got := a.tr.Stats().MessagesDropped; got < before+1 {
		t.Errorf("message to unknown peer not counted as dropped (%d -> %d)", before, got)
	}
}

func TestPeerManagementAndMisaddressed(t *testing.T) {
	a := startNode(t, 1, nil)
	b := startNode(t, 2, nil)

	// Start at a dead address, then move the peer to the live one.
	a.tr.AddPeer(2, deadAddr(t))
	a.tr.AddPeer(2, b.addr)
	a.tr.mu.RLock()
	p := a.tr.peers[2]
	a.tr.mu.RUnlock()
	a.tr.AddPeer(2, b.addr) // same address: no-op
	a.tr.mu.RLock()
	same := a.tr.peers[2] == p
	a.tr.mu.RUnlock()
	if !same {
		t.Fatal("AddPeer with an unchanged address replaced the peer")
	}
	a.tr.Send(appMsgs(1, 2, 7, 1))
	if m := waitFor(t, b.h.msgs, "message after address change"); m.GetIndex() != 7 {
		t.Fatalf("got index %d, want 7", m.GetIndex())
	}

	// b is not node 3: it drops the message without calling Process.
	a.tr.AddPeer(3, b.addr)
	a.tr.Send(appMsgs(1, 3, 0, 1))
	eventually(t, "misaddressed message rejected", func() bool { return b.tr.Stats().MessagesRejected == 1 })
	if n := b.h.calls.Load(); n != 1 {
		t.Fatalf("Process called %d times, want 1", n)
	}

	a.tr.Send([]*raftpb.Message{nil}) // ignored
	a.tr.RemovePeer(2)
	a.tr.RemovePeer(2) // unknown: no-op
	a.tr.Send(appMsgs(1, 2, 8, 1))
	waitUnreachable(t, a.r, 2, nil)
}

func TestStopIsIdempotentAndLeakFree(t *testing.T) {
	a := startNode(t, 1, nil)
	b := startNode(t, 2, func(_ *Config, n *node) { n.h.blockSnap = true })
	a.tr.AddPeer(2, b.addr)
	a.tr.AddPeer(3, deadAddr(t))
	b.tr.AddPeer(1, a.addr)

	a.tr.Send(appMsgs(1, 2, 0, 100))
	a.tr.Send(appMsgs(1, 3, 0, 100))
	b.tr.Send(appMsgs(2, 1, 0, 100))
	for range 100 {
		waitFor(t, b.h.msgs, "message before Stop")
	}
	// A snapshot held by the receiver: Stop must abort it, not wait for it.
	a.tr.Send(snapMsg(1, 2, randomBytes(3<<20, 9)))
	waitFor(t, b.h.snapEntered, "receiver processing the snapshot")
	a.tr.Send(snapMsg(1, 3, []byte("to a dead peer")))

	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		a.tr.Stop()
	}()
	a.tr.Stop() // concurrently with the first call
	waitFor(t, stopped, "Stop to return")
	a.tr.Stop() // and once more after

	// Everything is a no-op now, and must not panic.
	a.tr.Send(appMsgs(1, 2, 0, 10))
	a.tr.Send(snapMsg(1, 2, []byte("late")))
	a.tr.AddPeer(4, b.addr)
	a.tr.RemovePeer(2)
	if n := len(a.tr.peers); n != 0 {
		t.Errorf("%d peers after Stop", n)
	}
	select {
	case rep := <-a.r.snapshots:
		if rep.status == raft.SnapshotFinish {
			t.Errorf("aborted snapshot reported as finished: %+v", rep)
		}
	default:
	}

	b.tr.Stop()
	a.stopServer()
	b.stopServer()
	goleak.VerifyNone(t)
}

// blockingReporter stands in for a raft loop that is busy (for instance
// inside Send itself): its calls wait until released.
type blockingReporter struct {
	entered chan struct{}
	release chan struct{}
}

func (r *blockingReporter) ReportUnreachable(uint64) {
	select {
	case r.entered <- struct{}{}:
	default:
	}
	<-r.release
}

func (r *blockingReporter) ReportSnapshot(uint64, raft.SnapshotStatus) { <-r.release }

func TestSendDoesNotWaitForReporter(t *testing.T) {
	rep := &blockingReporter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	a := startNode(t, 1, func(c *Config, _ *node) { c.Reporter = rep; c.QueueSize = 4 })
	a.tr.AddPeer(2, deadAddr(t))

	done := make(chan struct{})
	go func() {
		defer close(done)
		// Every one of these is dropped and reported unreachable.
		for range 100 {
			a.tr.Send(appMsgs(1, 9, 0, 10))
			a.tr.Send(appMsgs(1, 2, 0, 10))
			a.tr.Send(snapMsg(1, 9, []byte("x")))
		}
	}()
	waitFor(t, done, "Send to return while the Reporter is blocked")
	waitFor(t, rep.entered, "the Reporter to be called")
	close(rep.release)
	// Stop must still work after the Reporter was stuck (cleanup calls it).
}
