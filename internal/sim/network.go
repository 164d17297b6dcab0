package sim

import (
	"math/rand/v2"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// link is a directed connection between two nodes.
type link struct{ from, to uint64 }

// network carries raft messages between simulated nodes. Each message gets
// its own random delay, so messages between one pair overtake each other
// (more hostile than production's ordered gRPC stream, and raft must not
// care); it may be lost or delivered twice, and a cut link drops it.
type network struct {
	s   *Sim
	rng *rand.Rand
	cut map[link]bool

	loss, dup          float64
	minDelay, maxDelay time.Duration
	spike              float64 // chance of a long delay (a retransmit, a GC pause on the path)
}

// transport is one node's raftnode.Transport.
type transport struct {
	net  *network
	from uint64
}

func (t transport) Send(msgs []*raftpb.Message) { t.net.send(t.from, msgs) }
func (t transport) AddPeer(uint64, string)      {}
func (t transport) RemovePeer(uint64)           {}

func (nw *network) connected(from, to uint64) bool {
	return !nw.cut[link{from, to}]
}

func (nw *network) delay() time.Duration {
	d := nw.minDelay + time.Duration(nw.rng.Int64N(int64(nw.maxDelay-nw.minDelay)+1))
	if nw.rng.Float64() < nw.spike {
		d += time.Duration(nw.rng.Int64N(int64(300 * time.Millisecond)))
	}
	return d
}

// send is called from inside HandleReady: it must not touch any Core, so
// everything it causes, reports to raft included, happens in later events.
func (nw *network) send(from uint64, msgs []*raftpb.Message) {
	s := nw.s
	src := s.nodes[from]
	for _, m := range msgs {
		to := m.GetTo()
		s.stats.MsgsSent++
		if s.nodes[to] == nil {
			// Never existed (a removed learner's address was never
			// known): the transport has no peer to send to.
			continue
		}
		if !nw.connected(from, to) {
			s.stats.MsgsDropped++
			s.trace(evDrop, from, to, uint64(m.GetType()))
			if s.tracing() {
				s.logf("n%d→n%d %v term=%d index=%d DROPPED (link cut)", from, to, m.GetType(), m.GetTerm(), m.GetIndex())
			}
			// The stream to the peer breaks: the transport reports it.
			nw.report(src, to, m.GetType() == raftpb.MsgSnap, true)
			continue
		}
		if nw.rng.Float64() < nw.loss {
			s.stats.MsgsDropped++
			s.trace(evDrop, from, to, uint64(m.GetType())|1<<32)
			if s.tracing() {
				s.logf("n%d→n%d %v term=%d index=%d LOST", from, to, m.GetType(), m.GetTerm(), m.GetIndex())
			}
			if m.GetType() == raftpb.MsgSnap {
				nw.report(src, to, true, false)
			}
			continue
		}
		c := wireCopy(m)
		d := nw.delay()
		s.trace(evSend, from, to, uint64(m.GetType())<<32|uint64(d/time.Microsecond))
		if s.tracing() {
			s.logf("n%d→n%d %v term=%d index=%d ents=%d delay=%v", from, to, m.GetType(), m.GetTerm(), m.GetIndex(), len(m.GetEntries()), d)
		}
		nw.schedule(src, c, d)
		if nw.rng.Float64() < nw.dup && (m.GetType() != raftpb.MsgProp || s.cfg.DuplicateProposals) {
			s.stats.MsgsDuplicated++
			d2 := nw.delay()
			s.trace(evDup, from, to, uint64(m.GetType())<<32|uint64(d2/time.Microsecond))
			if s.tracing() {
				s.logf("n%d→n%d %v DUPLICATED, copy delay=%v", from, to, m.GetType(), d2)
			}
			nw.schedule(src, wireCopy(m), d2)
		}
	}
}

func (nw *network) schedule(src *node, m *raftpb.Message, d time.Duration) {
	inc := src.inc
	nw.s.after(d, func() { nw.deliver(src, inc, m) })
}

func (nw *network) deliver(src *node, srcInc int, m *raftpb.Message) {
	s := nw.s
	to := m.GetTo()
	dst := s.nodes[to]
	snap := m.GetType() == raftpb.MsgSnap
	if dst == nil || dst.st == stDown || dst.st == stGone || !nw.connected(src.id, to) {
		s.stats.MsgsDropped++
		s.trace(evDrop, src.id, to, uint64(m.GetType())|2<<32)
		if s.tracing() {
			s.logf("n%d→n%d %v term=%d DROPPED at arrival (receiver down or link cut)", src.id, to, m.GetType(), m.GetTerm())
		}
		if src.inc == srcInc {
			nw.report(src, to, snap, true)
		}
		return
	}
	s.stats.MsgsDelivered++
	s.trace(evDeliver, src.id, to, uint64(m.GetType())<<32|m.GetIndex())
	dst.receive(m)
	if snap && src.inc == srcInc && src.st != stDown && src.st != stGone {
		// The snapshot stream completed: the transport reports success.
		// A report must not be lost (raft waits for it in StateSnapshot);
		// node.after holds it while the sender is paused.
		src.after(0, func() {
			src.core.ReportSnapshot(to, raft.SnapshotFinish)
			src.kick()
		})
	}
}

// wireCopy copies a message as the wire would, so no node ever holds
// another's message or entry structs. Entry payloads and snapshot data are
// shared: nothing writes to those byte slices, and copying them was the
// simulation's largest cost.
func wireCopy(m *raftpb.Message) *raftpb.Message {
	ents := m.Entries
	var snapData []byte
	if m.Snapshot != nil {
		snapData = m.Snapshot.Data
		m.Snapshot.Data = nil
	}
	m.Entries = nil
	c := proto.CloneOf(m)
	m.Entries = ents
	if m.Snapshot != nil {
		m.Snapshot.Data = snapData
		c.Snapshot.Data = snapData
	}
	if len(ents) > 0 {
		c.Entries = make([]*raftpb.Entry, len(ents))
		for i, e := range ents {
			c.Entries[i] = &raftpb.Entry{Term: proto.Uint64(e.GetTerm()), Index: proto.Uint64(e.GetIndex()), Type: e.GetType().Enum(), Data: e.Data}
		}
	}
	return c
}

// report tells the sender's raft about a failed delivery, as the
// production transport does when a stream to a peer breaks.
func (nw *network) report(src *node, to uint64, snap, unreachable bool) {
	if src == nil || src.st == stDown || src.st == stGone {
		return
	}
	src.after(time.Millisecond, func() {
		if unreachable {
			src.core.ReportUnreachable(to)
		}
		if snap {
			src.core.ReportSnapshot(to, raft.SnapshotFailure)
		}
		src.kick()
	})
}
