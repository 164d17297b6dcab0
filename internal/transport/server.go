package transport

import (
	"context"
	"errors"
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
			m := &raftpb.Message{}
			if err := proto.Unmarshal(raw, m); err != nil {
				t.stats.messagesRejected.Add(1)
				t.log.Warn("undecodable message dropped", "err", err)
				continue
			}
			if m.GetTo() != t.cfg.ID {
				t.stats.messagesRejected.Add(1)
				t.log.Warn("message for another node dropped", "to", m.GetTo(), "from", m.GetFrom(), "type", m.GetType())
				continue
			}
			if t.cfg.Authorize != nil && (allowed == 0 || m.GetFrom() != allowed) {
				if err := t.cfg.Authorize(stream.Context(), m.GetFrom()); err != nil {
					t.stats.messagesRejected.Add(1)
					t.log.Warn("raft stream refused", "from", m.GetFrom(), "err", err)
					return err
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
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "snapshot: empty stream")
	}
	if err != nil {
		return err
	}
	if len(first.GetHeader()) == 0 {
		return status.Error(codes.InvalidArgument, "snapshot: first chunk has no header")
	}
	m := &raftpb.Message{}
	if headerErr := proto.Unmarshal(first.GetHeader(), m); headerErr != nil {
		return status.Errorf(codes.InvalidArgument, "snapshot: bad header: %v", headerErr)
	}
	if m.GetType() != raftpb.MsgSnap {
		return status.Errorf(codes.InvalidArgument, "snapshot: header is a %v message", m.GetType())
	}
	if m.GetTo() != t.cfg.ID {
		t.stats.messagesRejected.Add(1)
		t.log.Warn("snapshot for another node rejected", "to", m.GetTo(), "from", m.GetFrom())
		return status.Errorf(codes.FailedPrecondition, "snapshot: for node %d, this is node %d", m.GetTo(), t.cfg.ID)
	}
	if t.cfg.Authorize != nil {
		if err = t.cfg.Authorize(stream.Context(), m.GetFrom()); err != nil {
			t.stats.messagesRejected.Add(1)
			t.log.Warn("snapshot refused", "from", m.GetFrom(), "err", err)
			return err
		}
	}
	total, sum := first.GetTotalSize(), first.GetCrc32C()
	data := make([]byte, 0, min(total, maxSnapshotPrealloc))
	for c := first; ; {
		if c != first && len(c.GetHeader()) != 0 {
			return status.Error(codes.InvalidArgument, "snapshot: header on a chunk other than the first")
		}
		if c.GetOffset() != uint64(len(data)) {
			return status.Errorf(codes.InvalidArgument, "snapshot: chunk at offset %d, expected %d", c.GetOffset(), len(data))
		}
		if uint64(len(data))+uint64(len(c.GetData())) > total {
			return status.Errorf(codes.DataLoss, "snapshot: more than total_size %d bytes", total)
		}
		data = append(data, c.GetData()...)
		if c.GetLast() {
			break
		}
		c, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			return status.Errorf(codes.DataLoss, "snapshot: stream ended at %d of %d bytes without a last chunk", len(data), total)
		}
		if err != nil {
			return err
		}
	}
	if uint64(len(data)) != total {
		return status.Errorf(codes.DataLoss, "snapshot: got %d bytes, total_size is %d", len(data), total)
	}
	if got := crc32.Checksum(data, t.crcTable); got != sum {
		return status.Errorf(codes.DataLoss, "snapshot: crc32c %08x, header says %08x", got, sum)
	}
	if m.Snapshot == nil {
		m.Snapshot = &raftpb.Snapshot{}
	}
	m.Snapshot.Data = data

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
