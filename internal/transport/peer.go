package transport

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// peer is one remote member: its connection, its outgoing queue and the
// goroutines using them.
type peer struct {
	id     uint64
	addr   string
	conn   *grpc.ClientConn
	client rpcpb.RaftClient
	// queue holds marshalled messages. It is never closed (Send may race
	// with removal); the goroutines stop on ctx instead.
	queue chan []byte
	// ctx is cancelled when the peer is removed or replaced, or the
	// transport stops; it aborts every stream of the peer.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts runPeer and the snapshot goroutines, the users of conn.
	wg sync.WaitGroup
}

// reap closes the peer's connection once it has been removed and nothing
// uses the connection any more. It runs on its own goroutine so that
// RemovePeer and AddPeer need not wait.
func (t *Transport) reap(p *peer) {
	defer t.wg.Done()
	<-p.ctx.Done()
	p.wg.Wait()
	if err := p.conn.Close(); err != nil {
		t.log.Debug("close peer connection", "peer", p.id, "err", err)
	}
}

// runPeer drains the peer's queue onto one long-lived Send stream, batching
// whatever has accumulated since the previous write. On failure the batch
// is dropped (raft retransmits), the peer is reported unreachable and the
// stream is reopened after a backoff; messages queued meanwhile stay queued
// up to the queue's capacity.
func (t *Transport) runPeer(p *peer) {
	defer p.wg.Done()
	var (
		stream       rpcpb.Raft_SendClient
		cancelStream context.CancelFunc
		delay        = minBackoff
		carry        []byte // taken from the queue but did not fit the last batch
		healthy      = true // for logging state changes only once
		batch        [][]byte
	)
	closeStream := func() {
		if stream != nil {
			// Cancelling (rather than CloseAndRecv) never waits for the
			// peer and releases the stream's resources.
			cancelStream()
			stream, cancelStream = nil, nil
		}
	}
	defer closeStream()

	fail := func(n int, err error) bool {
		closeStream()
		t.stats.messagesDropped.Add(uint64(n))
		if p.ctx.Err() != nil {
			// Removed, replaced or stopped: nobody wants the report.
			return false
		}
		if healthy {
			t.log.Warn("peer unreachable", "peer", p.id, "addr", p.addr, "err", err)
			healthy = false
		} else {
			t.log.Debug("peer still unreachable", "peer", p.id, "err", err)
		}
		t.reportUnreachable(p.id)
		// Make gRPC reconnect now instead of at the end of its own backoff.
		p.conn.ResetConnectBackoff()
		timer := time.NewTimer(t.jitter(delay))
		defer timer.Stop()
		delay = min(2*delay, maxBackoff)
		select {
		case <-p.ctx.Done():
			return false
		case <-timer.C:
			return true
		}
	}

	for {
		batch = batch[:0]
		size := 0
		if carry != nil {
			batch, size, carry = append(batch, carry), len(carry), nil
		} else {
			select {
			case <-p.ctx.Done():
				return
			case b := <-p.queue:
				batch, size = append(batch, b), len(b)
			}
		}
	drain:
		for size < maxBatchBytes {
			select {
			case b := <-p.queue:
				if size+len(b) > maxBatchBytes {
					carry = b
					break drain
				}
				batch, size = append(batch, b), size+len(b)
			default:
				break drain
			}
		}

		if stream == nil {
			ctx, cancel := context.WithCancel(p.ctx)
			s, err := p.client.Send(ctx)
			if err != nil {
				cancel()
				if !fail(len(batch), fmt.Errorf("open stream to %s: %w", p.addr, err)) {
					return
				}
				continue
			}
			stream, cancelStream = s, cancel
		}
		if err := stream.Send(&blixardpb.RaftBatch{Messages: batch}); err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream; the reason is in the status.
				_, err = stream.CloseAndRecv()
			}
			if !fail(len(batch), fmt.Errorf("send to %s: %w", p.addr, err)) {
				return
			}
			continue
		}
		t.stats.messagesSent.Add(uint64(len(batch)))
		t.stats.batchesSent.Add(1)
		delay = minBackoff
		if !healthy {
			t.log.Info("peer reachable again", "peer", p.id, "addr", p.addr)
			healthy = true
		}
		// The batch's byte slices now belong to gRPC's encoded frame; drop
		// our references so the backing array does not pin them.
		clear(batch)
	}
}

// runSnapshot streams one snapshot and reports its outcome to raft.
func (t *Transport) runSnapshot(p *peer, header, data []byte) {
	defer p.wg.Done()
	err := t.streamSnapshot(p, header, data)
	if err == nil {
		t.stats.snapshotsSent.Add(1)
		t.log.Info("snapshot sent", "peer", p.id, "bytes", len(data))
		t.reportSnapshot(p.id, raft.SnapshotFinish)
		return
	}
	if t.stopping() {
		t.stats.snapshotsFailed.Add(1)
		return
	}
	// A replaced peer (new address) is still tracked by raft, so failures
	// after a plain peer cancellation are reported too.
	t.log.Warn("snapshot failed", "peer", p.id, "addr", p.addr, "err", err)
	t.snapshotFailed(p.id)
}

func (t *Transport) streamSnapshot(p *peer, header, data []byte) error {
	// A deadline keeps a blackholed peer from holding raft in snapshot
	// state forever: a minute, plus a second per MiB (far slower than any
	// working link).
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute+time.Duration(len(data)>>20)*time.Second)
	defer cancel() // aborts the stream on any early return
	stream, err := p.client.SendSnapshot(ctx)
	if err != nil {
		return fmt.Errorf("open snapshot stream to %s: %w", p.addr, err)
	}
	chunk := t.cfg.SnapshotChunkSize
	for off := 0; ; {
		end := min(off+chunk, len(data))
		c := &blixardpb.SnapshotChunk{
			Data:   data[off:end],
			Offset: uint64(off),
			Last:   end == len(data),
		}
		if off == 0 {
			c.Header = header
			c.TotalSize = uint64(len(data))
			c.Crc32C = crc32.Checksum(data, t.crcTable)
		}
		if err := stream.Send(c); err != nil {
			if errors.Is(err, io.EOF) {
				// The receiver rejected the stream; the reason is in the status.
				_, err = stream.CloseAndRecv()
			}
			return fmt.Errorf("send snapshot chunk at %d to %s: %w", off, p.addr, err)
		}
		if c.Last {
			break
		}
		off = end
	}
	// The receiver acknowledges only after checking and handing the
	// snapshot to raft.
	if _, err := stream.CloseAndRecv(); err != nil {
		return fmt.Errorf("snapshot to %s: %w", p.addr, err)
	}
	return nil
}

// snapshotHeader marshals m without its snapshot data, without copying or
// modifying m (which still belongs to the caller of Send).
func snapshotHeader(m *raftpb.Message) ([]byte, error) {
	hdr := &raftpb.Message{}
	dst := hdr.ProtoReflect()
	src := m.ProtoReflect()
	// A shallow field-by-field copy: composite values may be shared with m,
	// which is fine as hdr is only read (marshalled) before returning.
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dst.Set(fd, v)
		return true
	})
	dst.SetUnknown(src.GetUnknown())
	if s := m.GetSnapshot(); s != nil {
		hdr.Snapshot = &raftpb.Snapshot{Metadata: s.GetMetadata()}
		hdr.Snapshot.ProtoReflect().SetUnknown(s.ProtoReflect().GetUnknown())
	}
	b, err := proto.Marshal(hdr)
	if err != nil {
		return nil, fmt.Errorf("marshal snapshot header: %w", err)
	}
	return b, nil
}
