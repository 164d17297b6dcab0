package transport

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// maxSnapshotPrealloc caps the buffer allocated up front from a sender's
// claimed total_size, so a bogus header cannot make us allocate gigabytes
// before any data arrives; larger snapshots just grow the buffer.
const maxSnapshotPrealloc = 64 << 20

// raftService is the receiving side. It is a separate type because the
// generated server interface's Send would clash with Transport.Send.
type raftService struct {
	rpcpb.UnimplementedRaftServer
	t *Transport
}

var errStopped = status.Error(codes.Unavailable, "transport: stopped")

// processContext is the stream's context, also cancelled by Stop, so that a
// Process blocked on a stopping node returns.
func (t *Transport) processContext(stream context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(stream)
	stop := context.AfterFunc(t.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// Send receives one peer's message stream. Bad messages are dropped, not
// fatal: raft tolerates loss and the rest of the stream is still good.
func (s *raftService) Send(stream grpc.ClientStreamingServer[blixardpb.RaftBatch, blixardpb.SendAck]) error {
	t := s.t
	ctx, cancel := t.processContext(stream.Context())
	defer cancel()
	var allowed uint64 // the sender last authorized on this stream
	for {
		if t.stopping() {
			return errStopped
		}
		batch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&blixardpb.SendAck{})
		}
		if err != nil {
			return err
		}
		for _, raw := range batch.GetMessages() {
			m, err := decodeMessage(raw, t.cfg.ID)
			if err != nil {
				t.stats.messagesRejected.Add(1)
				t.log.Warn("message dropped", "err", err)
				continue
			}
			if t.cfg.Authorize != nil && (allowed == 0 || m.GetFrom() != allowed) {
				if aerr := t.cfg.Authorize(stream.Context(), m.GetFrom()); aerr != nil {
					t.stats.messagesRejected.Add(1)
					t.log.Warn("raft stream refused", "from", m.GetFrom(), "err", aerr)
					return aerr
				}
				allowed = m.GetFrom()
			}
			if err := t.cfg.Handler.Process(ctx, m); err != nil {
				if ctx.Err() != nil {
					return status.FromContextError(ctx.Err()).Err()
				}
				t.log.Warn("process message", "from", m.GetFrom(), "type", m.GetType(), "err", err)
				continue
			}
			t.stats.messagesReceived.Add(1)
		}
	}
}

// SendSnapshot receives one snapshot in chunks, checks it in full (offsets,
// size, CRC-32C) and only then hands it to the Handler; the acknowledgement
// tells the sender that raft has it.
func (s *raftService) SendSnapshot(stream grpc.ClientStreamingServer[blixardpb.SnapshotChunk, blixardpb.SendAck]) error {
	t := s.t
	if t.stopping() {
		return errStopped
	}
	m, err := receiveSnapshot(t.cfg.ID, t.crcTable, stream.Recv)
	if err != nil {
		if status.Code(err) == codes.FailedPrecondition {
			t.stats.messagesRejected.Add(1)
			t.log.Warn("snapshot rejected", "err", err)
		}
		return err
	}
	if t.cfg.Authorize != nil {
		// After the decode (a pure function of the stream): only a peer
		// with a node certificate gets this far.
		if aerr := t.cfg.Authorize(stream.Context(), m.GetFrom()); aerr != nil {
			t.stats.messagesRejected.Add(1)
			t.log.Warn("snapshot refused", "from", m.GetFrom(), "err", aerr)
			return aerr
		}
	}
	data := m.GetSnapshot().GetData()

	ctx, cancel := t.processContext(stream.Context())
	defer cancel()
	if err := t.cfg.Handler.Process(ctx, m); err != nil {
		t.log.Warn("process snapshot", "from", m.GetFrom(), "err", err)
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "snapshot: not accepted: %v", err)
	}
	t.stats.messagesReceived.Add(1)
	t.log.Info("snapshot received", "from", m.GetFrom(), "bytes", len(data))
	return stream.SendAndClose(&blixardpb.SendAck{})
}

// decodeMessage decodes one raft message of a peer's batch, refusing one
// addressed to another node than self.
func decodeMessage(raw []byte, self uint64) (*raftpb.Message, error) {
	m := &raftpb.Message{}
	if err := proto.Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("undecodable raft message: %w", err)
	}
	if m.GetTo() != self {
		return nil, fmt.Errorf("raft message %v from %d is for node %d, this is node %d", m.GetType(), m.GetFrom(), m.GetTo(), self)
	}
	return m, nil
}

// receiveSnapshot reads one snapshot's chunks with recv and checks them in
// full (header first and only there, consecutive offsets, total size,
// CRC-32C) before returning the MsgSnap carrying the data. Its errors are
// gRPC statuses for the sender.
func receiveSnapshot(self uint64, crcTable *crc32.Table, recv func() (*blixardpb.SnapshotChunk, error)) (*raftpb.Message, error) {
	first, err := recv()
	if errors.Is(err, io.EOF) {
		return nil, status.Error(codes.InvalidArgument, "snapshot: empty stream")
	}
	if err != nil {
		return nil, err
	}
	if len(first.GetHeader()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "snapshot: first chunk has no header")
	}
	m := &raftpb.Message{}
	if headerErr := proto.Unmarshal(first.GetHeader(), m); headerErr != nil {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot: bad header: %v", headerErr)
	}
	if m.GetType() != raftpb.MsgSnap {
		return nil, status.Errorf(codes.InvalidArgument, "snapshot: header is a %v message", m.GetType())
	}
	if m.GetTo() != self {
		return nil, status.Errorf(codes.FailedPrecondition, "snapshot: for node %d (from %d), this is node %d", m.GetTo(), m.GetFrom(), self)
	}
	total, sum := first.GetTotalSize(), first.GetCrc32C()
	data := make([]byte, 0, min(total, maxSnapshotPrealloc))
	for c := first; ; {
		if c != first && len(c.GetHeader()) != 0 {
			return nil, status.Error(codes.InvalidArgument, "snapshot: header on a chunk other than the first")
		}
		if c.GetOffset() != uint64(len(data)) {
			return nil, status.Errorf(codes.InvalidArgument, "snapshot: chunk at offset %d, expected %d", c.GetOffset(), len(data))
		}
		if uint64(len(data))+uint64(len(c.GetData())) > total {
			return nil, status.Errorf(codes.DataLoss, "snapshot: more than total_size %d bytes", total)
		}
		data = append(data, c.GetData()...)
		if c.GetLast() {
			break
		}
		c, err = recv()
		if errors.Is(err, io.EOF) {
			return nil, status.Errorf(codes.DataLoss, "snapshot: stream ended at %d of %d bytes without a last chunk", len(data), total)
		}
		if err != nil {
			return nil, err
		}
	}
	if uint64(len(data)) != total {
		return nil, status.Errorf(codes.DataLoss, "snapshot: got %d bytes, total_size is %d", len(data), total)
	}
	if got := crc32.Checksum(data, crcTable); got != sum {
		return nil, status.Errorf(codes.DataLoss, "snapshot: crc32c %08x, header says %08x", got, sum)
	}
	if m.Snapshot == nil {
		m.Snapshot = &raftpb.Snapshot{}
	}
	m.Snapshot.Data = data
	return m, nil
}
