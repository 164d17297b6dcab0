package transport

import (
	"encoding/binary"
	"hash/crc32"
	"io"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/api/blixardpb"
)

// Fuzz targets for what a peer sends: each message of a RaftBatch and each
// chunk of a SendSnapshot stream go through these decoders before raft
// sees anything. scripts/fuzz.sh runs them; without -fuzz their seeds run
// as tests.

const fuzzSelf = 2

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzDecodeRaftMessage: any bytes give an error or a message for this
// node, never a panic.
func FuzzDecodeRaftMessage(f *testing.F) {
	for _, m := range []*raftpb.Message{
		{Type: new(raftpb.MsgApp), To: new(uint64(fuzzSelf)), From: new(uint64(1)), Term: new(uint64(3)), LogTerm: new(uint64(2)), Index: new(uint64(7)), Commit: new(uint64(7)),
			Entries: []*raftpb.Entry{{Index: new(uint64(8)), Term: new(uint64(3)), Type: new(raftpb.EntryNormal), Data: []byte("cmd")}}},
		{Type: new(raftpb.MsgHeartbeat), To: new(uint64(fuzzSelf)), From: new(uint64(1)), Term: new(uint64(3))},
		{Type: new(raftpb.MsgVote), To: new(uint64(3)), From: new(uint64(1)), Term: new(uint64(4))},
	} {
		f.Add(mustMarshal(f, m))
	}
	f.Add([]byte{})
	f.Add([]byte{0x08, 0xff})
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := decodeMessage(raw, fuzzSelf)
		if err != nil {
			return
		}
		if m.GetTo() != fuzzSelf {
			t.Fatalf("accepted a message for node %d", m.GetTo())
		}
	})
}

// chunkSource frames a sequence of marshalled SnapshotChunks in one fuzz
// input (a uvarint length before each) and serves them as a stream's Recv
// does: io.EOF after the last; undecodable chunks end the stream with the
// decoding error, as gRPC would.
func chunkSource(data []byte) func() (*blixardpb.SnapshotChunk, error) {
	return func() (*blixardpb.SnapshotChunk, error) {
		if len(data) == 0 {
			return nil, io.EOF
		}
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(len(data)-k) {
			n, k = uint64(len(data)), 0
		}
		raw := data[k : k+int(n)]
		data = data[k+int(n):]
		c := &blixardpb.SnapshotChunk{}
		if err := proto.Unmarshal(raw, c); err != nil {
			return nil, err
		}
		return c, nil
	}
}

func frameChunks(tb testing.TB, chunks ...*blixardpb.SnapshotChunk) []byte {
	var out []byte
	for _, c := range chunks {
		b := mustMarshal(tb, c)
		out = binary.AppendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	return out
}

// FuzzReceiveSnapshot feeds arbitrary chunk streams to the snapshot
// receiver: it must refuse or return a MsgSnap for this node whose data has
// exactly the announced size and CRC-32C, never panic.
func FuzzReceiveSnapshot(f *testing.F) {
	table := crc32.MakeTable(crc32.Castagnoli)
	hdr := mustMarshal(f, &raftpb.Message{Type: new(raftpb.MsgSnap), To: new(uint64(fuzzSelf)), From: new(uint64(1)), Term: new(uint64(3)),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: new(uint64(10)), Term: new(uint64(3)), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}}})
	data := []byte("snapshot data, in three chunks")
	sum := crc32.Checksum(data, table)
	total := uint64(len(data))
	f.Add(frameChunks(f,
		&blixardpb.SnapshotChunk{Header: hdr, Data: data[:10], TotalSize: total, Crc32C: sum},
		&blixardpb.SnapshotChunk{Data: data[10:20], Offset: 10},
		&blixardpb.SnapshotChunk{Data: data[20:], Offset: 20, Last: true}))
	f.Add(frameChunks(f, &blixardpb.SnapshotChunk{Header: hdr, Data: data, TotalSize: total, Crc32C: sum, Last: true}))
	f.Add(frameChunks(f, &blixardpb.SnapshotChunk{Header: hdr, TotalSize: 0, Crc32C: 0, Last: true}))
	f.Add(frameChunks(f,
		&blixardpb.SnapshotChunk{Header: hdr, Data: data[:10], TotalSize: total, Crc32C: sum},
		&blixardpb.SnapshotChunk{Data: data[10:], Offset: 11, Last: true}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, stream []byte) {
		m, err := receiveSnapshot(fuzzSelf, table, chunkSource(stream))
		if err != nil {
			return
		}
		if m.GetType() != raftpb.MsgSnap || m.GetTo() != fuzzSelf {
			t.Fatalf("accepted a %v for node %d", m.GetType(), m.GetTo())
		}
		// The first chunk announced the size and checksum; re-read it.
		first, _ := chunkSource(stream)()
		got := m.GetSnapshot().GetData()
		if uint64(len(got)) != first.GetTotalSize() || crc32.Checksum(got, table) != first.GetCrc32C() {
			t.Fatalf("accepted %d bytes with crc %08x; announced %d bytes, crc %08x", len(got), crc32.Checksum(got, table), first.GetTotalSize(), first.GetCrc32C())
		}
	})
}
