package observe

import (
	"context"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

// RecentTasks is how many of the newest tasks /api/overview lists.
const RecentTasks = 50

// Overview is the JSON of /api/overview: this node's view of the cluster.
type Overview struct {
	NodeID      uint64    `json:"node_id"`
	GeneratedAt time.Time `json:"generated_at"`
	// View says whose view this is: "leader" (complete), or "follower" /
	// "candidate" (this node's replicated state, which may trail the
	// leader's by a few entries; pending reasons, known only to the
	// leader, are missing).
	View  string    `json:"view"`
	Ready Readiness `json:"ready"`

	Members []OverviewMember `json:"members"`
	Workers []OverviewWorker `json:"workers"`
	Tasks   OverviewTasks    `json:"tasks"`
	VMs     []OverviewVM     `json:"vms"`
}

// OverviewMember is one raft member.
type OverviewMember struct {
	ID     uint64 `json:"id"`
	Addr   string `json:"addr"`
	Role   string `json:"role"` // voter, learner
	Leader bool   `json:"leader"`
	Self   bool   `json:"self"` // the node serving this page
}

// OverviewWorker is one registered worker.
type OverviewWorker struct {
	ID                  uint64            `json:"id"`
	Addr                string            `json:"addr"`
	State               string            `json:"state"`       // ready, down
	Schedulable         bool              `json:"schedulable"` // ready, not cordoned, not unschedulable
	Cordoned            bool              `json:"cordoned"`    // by an operator (worker cordon)
	CordonReason        string            `json:"cordon_reason,omitempty"`
	UnschedulableReason string            `json:"unschedulable_reason,omitempty"` // the worker's own mark
	Capacity            Reserved          `json:"capacity"`
	Reserved            Reserved          `json:"reserved"`
	Labels              map[string]string `json:"labels,omitempty"`
	Capabilities        []string          `json:"capabilities,omitempty"`
	// Usage is the worker's last usage report (nil before the first).
	Usage *OverviewUsage `json:"usage,omitempty"`
}

// OverviewUsage is a worker's last reported usage.
type OverviewUsage struct {
	CPUPercent    float64   `json:"cpu_percent"`
	MemoryUsedMiB int64     `json:"memory_used_mib"`
	RunningTasks  int32     `json:"running_tasks"`
	ReportedAt    time.Time `json:"reported_at"`
}

// OverviewTasks counts tasks and lists the newest.
type OverviewTasks struct {
	Total  int            `json:"total"`
	Counts map[string]int `json:"counts"` // by state, every state present
	Recent []OverviewTask `json:"recent"` // newest first, at most RecentTasks
}

// OverviewTask is one task.
type OverviewTask struct {
	ID            string     `json:"id"`
	Name          string     `json:"name,omitempty"`
	Command       string     `json:"command"`
	State         string     `json:"state"`
	Worker        uint64     `json:"worker,omitempty"` // of the current attempt
	Attempts      int        `json:"attempts"`
	ExitCode      *int32     `json:"exit_code,omitempty"` // of the last finished attempt
	Signal        string     `json:"signal,omitempty"`    // that killed the last finished attempt
	PendingReason string     `json:"pending_reason,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	FinishedAt    *time.Time `json:"finished_at,omitempty"`
}

// OverviewVM is one VM.
type OverviewVM struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	Desired   string `json:"desired"`
	Worker    uint64 `json:"worker,omitempty"`
	VCPUs     uint32 `json:"vcpus"`
	MemoryMiB uint32 `json:"memory_mib"`
	Restarts  uint32 `json:"restarts"`
	Reason    string `json:"reason,omitempty"`
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// BuildOverview reads src once.
func BuildOverview(ctx context.Context, src Source, now time.Time) Overview {
	return buildOverview(ctx, src, readTables(src, now), now)
}

func buildOverview(ctx context.Context, src Source, t *tables, now time.Time) Overview {
	r := CheckReady(ctx, src)
	o := Overview{NodeID: src.NodeID(), GeneratedAt: now.UTC(), View: r.Role, Ready: r,
		Members: []OverviewMember{}, Workers: []OverviewWorker{}, VMs: []OverviewVM{}}
	if o.View == "" {
		o.View = "unknown"
	}
	for _, m := range t.members {
		o.Members = append(o.Members, OverviewMember{ID: m.Id, Addr: m.Addr, Role: roleWord(m.Role), Leader: m.Id == r.Leader, Self: m.Id == o.NodeID})
	}
	for _, w := range t.workers {
		ow := OverviewWorker{
			ID: w.Id, Addr: w.Addr, State: workerWord(w.State),
			Schedulable:         state.Schedulable(w),
			Cordoned:            w.Cordoned,
			CordonReason:        w.CordonReason,
			UnschedulableReason: w.UnschedulableReason,
			Capacity:            Reserved{CPUMillis: w.GetCapacity().GetCpuMillis(), MemoryMiB: w.GetCapacity().GetMemoryMib()},
			Reserved:            t.reserved[w.Id],
			Labels:              w.Labels,
			Capabilities:        w.Capabilities,
		}
		if st, ok := t.statuses[w.Id]; ok {
			ow.Usage = &OverviewUsage{CPUPercent: st.CpuPercent, MemoryUsedMiB: st.MemoryUsedMib, RunningTasks: st.RunningTasks, ReportedAt: unixTime(st.ReportedAtUnixNano)}
		}
		o.Workers = append(o.Workers, ow)
	}
	o.Tasks = OverviewTasks{Total: t.taskTotal, Counts: map[string]int{}, Recent: []OverviewTask{}}
	for _, s := range taskStates {
		o.Tasks.Counts[taskWord(s)] = 0
	}
	for s, n := range t.taskCount {
		o.Tasks.Counts[taskWord(s)] += n
	}
	for _, task := range t.recent {
		o.Tasks.Recent = append(o.Tasks.Recent, overviewTask(task))
	}
	for _, vm := range t.vms {
		o.VMs = append(o.VMs, OverviewVM{
			Name: vm.Spec.GetName(), State: vmWord(vm.State), Desired: desiredWord(vm.Desired), Worker: vm.WorkerId,
			VCPUs: vm.Spec.GetVcpus(), MemoryMiB: vm.Spec.GetMemoryMib(), Restarts: vm.Restarts, Reason: vm.Reason,
		})
	}
	return o
}

func overviewTask(t *pb.Task) OverviewTask {
	ot := OverviewTask{
		ID: t.Id, Name: t.Spec.GetName(), Command: t.Spec.GetCommand(), State: taskWord(t.State),
		Attempts: len(t.Attempts), PendingReason: t.PendingReason, CreatedAt: unixTime(t.CreatedAtUnixNano),
	}
	if n := len(t.Attempts); n > 0 {
		a := t.Attempts[n-1]
		ot.Worker = a.WorkerId
		if a.Result != nil && a.FinishedAtUnixNano != 0 {
			code := a.Result.GetExitCode()
			ot.ExitCode, ot.Signal = &code, a.Result.GetSignal()
		}
	}
	if t.FinishedAtUnixNano != 0 {
		f := unixTime(t.FinishedAtUnixNano)
		ot.FinishedAt = &f
	}
	return ot
}
