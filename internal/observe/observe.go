// Package observe serves a node's metrics, health and dashboard over HTTP.
//
// It reads everything at request time from a Source (the node's replicated
// state and raft status), so observing costs nothing on the write path; the
// only hot-path hooks are the gRPC interceptors and the proposal timer in
// Metrics. Tracing (OpenTelemetry) is set up by NewTracing.
package observe

import (
	"context"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

// RaftStatus is a node's view of raft.
type RaftStatus struct {
	Term    uint64 `json:"term"`
	Leader  uint64 `json:"leader"`       // 0: none known
	Commit  uint64 `json:"commit_index"` // highest index known committed (0 when unknown)
	Applied uint64 `json:"applied_index"`
	Role    string `json:"role"` // leader, follower, candidate
}

// Source is what a node exposes to observe. Every method may be called
// on any goroutine and returns copies.
type Source interface {
	NodeID() uint64
	// Raft reads the raft status; an error means the raft loop did not
	// answer (stopped, or busy past ctx).
	Raft(ctx context.Context) (RaftStatus, error)
	// Removed says whether this node was removed from the cluster.
	Removed() bool
	Members() []*pb.Member
	Workers() []*pb.Worker
	WorkerStatus(id uint64) (*pb.WorkerStatus, bool)
	// TaskSummary counts the tasks by state and returns the newest recent
	// ones (with the leader's pending reasons when this node leads),
	// without copying the whole table.
	TaskSummary(recent int) state.TaskSummary
	// Reservations is what active attempts and placed VMs reserve on each
	// worker.
	Reservations() map[uint64]state.Usage
	// PendingTasks is the number of tasks waiting for placement (cheap).
	PendingTasks() int
	// VMs returns every VM sorted by name, with the leader's pending
	// reasons when this node leads.
	VMs() []*pb.VM
}
