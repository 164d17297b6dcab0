package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// cmdHarness applies commands to a machine at consecutive raft indexes.
type cmdHarness struct {
	t     *testing.T
	m     *Machine
	index uint64
}

// newCmdHarness returns a fresh machine with the given workers registered,
// each offering cpu millicores and mem MiB.
func newCmdHarness(t *testing.T, cpu, mem int64, workers ...uint64) *cmdHarness {
	h := &cmdHarness{t: t, m: New()}
	for _, id := range workers {
		h.ok(&pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{
			Worker: &pb.Worker{Id: id, Capacity: &pb.Resources{CpuMillis: cpu, MemoryMib: mem}}}}})
	}
	return h
}

func (h *cmdHarness) apply(c *pb.Command) (proto.Message, error) {
	h.t.Helper()
	h.index++
	b, err := proto.Marshal(c)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.m.ApplyCommand(h.index, b)
}

func (h *cmdHarness) ok(c *pb.Command) proto.Message {
	h.t.Helper()
	r, err := h.apply(c)
	if err != nil {
		h.t.Fatalf("apply %v: %v", c, err)
	}
	return r
}
