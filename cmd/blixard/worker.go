package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/state"
)

func (a *app) newWorkerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Inspect workers, cordon and drain them",
		Args:  noSubcommand,
		RunE:  showHelp,
	}
	cmd.AddCommand(a.newWorkerListCmd(), a.newWorkerCordonCmd(), a.newWorkerUncordonCmd(), a.newWorkerDrainCmd())
	return cmd
}

// workerJSON is one element of the JSON form of 'worker list'.
type workerJSON struct {
	ID            uint64            `json:"id"`
	Addr          string            `json:"addr"`
	Status        string            `json:"status"`
	CPU           float64           `json:"cpu"`
	MemoryMiB     int64             `json:"memory_mib"`
	Labels        map[string]string `json:"labels"`
	LastHeartbeat *string           `json:"last_heartbeat"`
	Capabilities  []string          `json:"capabilities"`
	DiskMiB       int64             `json:"disk_mib"`
	Usage         usageJSON         `json:"usage"`
	// Schedulable is whether new work may be placed there: ready, not
	// cordoned, not unschedulable.
	Schedulable bool `json:"schedulable"`
	// Cordoned is an operator's cordon; CordonReason its --reason.
	Cordoned     bool   `json:"cordoned"`
	CordonReason string `json:"cordon_reason"`
	// Unschedulable is the worker's own mark after repeated executor
	// failures; 'worker uncordon' clears it.
	Unschedulable       bool   `json:"unschedulable"`
	UnschedulableReason string `json:"unschedulable_reason"`
}

type usageJSON struct {
	CPUPercent    float64 `json:"cpu_percent"`
	MemoryUsedMiB int64   `json:"memory_used_mib"`
	RunningTasks  int32   `json:"running_tasks"`
	ReportedAt    *string `json:"reported_at"`
}

func workerStatusName(s blixardpb.WorkerState) string {
	switch s {
	case blixardpb.WorkerState_WORKER_STATE_READY:
		return "ready"
	case blixardpb.WorkerState_WORKER_STATE_DOWN:
		return "down"
	}
	return "unknown"
}

// timeJSON renders a Unix-nanosecond time as RFC 3339 (UTC), or null if zero.
func timeJSON(unixNano int64) *string {
	if unixNano == 0 {
		return nil
	}
	s := time.Unix(0, unixNano).UTC().Format(time.RFC3339Nano)
	return &s
}

func cores(millis int64) float64 { return float64(millis) / 1000 }

func formatCores(millis int64) string {
	return strconv.FormatFloat(cores(millis), 'f', -1, 64)
}

func (a *app) newWorkerListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List workers with their capacity, status and usage",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.ListWorkersResponse, error) {
				return c.ListWorkers(ctx, &blixardpb.ListWorkersRequest{})
			})
			if err != nil {
				return err
			}
			return a.printWorkers(cmd, resp.GetWorkers())
		},
	}
}

// workerToJSON is one worker as 'worker list' prints it in JSON.
func workerToJSON(in *blixardpb.WorkerInfo) workerJSON {
	w, st := in.GetWorker(), in.GetStatus()
	labels := map[string]string{}
	for k, v := range w.GetLabels() {
		labels[k] = v
	}
	return workerJSON{
		ID:            w.GetId(),
		Addr:          w.GetAddr(),
		Status:        workerStatusName(w.GetState()),
		CPU:           cores(w.GetCapacity().GetCpuMillis()),
		MemoryMiB:     w.GetCapacity().GetMemoryMib(),
		Labels:        labels,
		LastHeartbeat: timeJSON(in.GetLastHeartbeatUnixNano()),
		Capabilities:  append([]string{}, w.GetCapabilities()...),
		DiskMiB:       w.GetCapacity().GetDiskMib(),
		Usage: usageJSON{
			CPUPercent:    st.GetCpuPercent(),
			MemoryUsedMiB: st.GetMemoryUsedMib(),
			RunningTasks:  st.GetRunningTasks(),
			ReportedAt:    timeJSON(st.GetReportedAtUnixNano()),
		},
		Schedulable:         state.Schedulable(w),
		Cordoned:            w.GetCordoned(),
		CordonReason:        w.GetCordonReason(),
		Unschedulable:       w.GetUnschedulable(),
		UnschedulableReason: w.GetUnschedulableReason(),
	}
}

// scheduling is the SCHEDULING column of 'worker list'.
func scheduling(w *blixardpb.Worker) string {
	var why []string
	if w.GetCordoned() {
		why = append(why, "cordoned"+parenthesized(w.GetCordonReason()))
	}
	if w.GetUnschedulable() {
		why = append(why, "unschedulable"+parenthesized(w.GetUnschedulableReason()))
	}
	switch {
	case len(why) > 0:
		return strings.Join(why, ", ")
	case w.GetState() != blixardpb.WorkerState_WORKER_STATE_READY:
		return "no"
	}
	return "yes"
}

func parenthesized(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func (a *app) printWorkers(cmd *cobra.Command, infos []*blixardpb.WorkerInfo) error {
	infos = slices.Clone(infos)
	slices.SortFunc(infos, func(x, y *blixardpb.WorkerInfo) int {
		return cmp.Compare(x.GetWorker().GetId(), y.GetWorker().GetId())
	})
	out := cmd.OutOrStdout()
	if a.jsonOutput() {
		list := []workerJSON{}
		for _, in := range infos {
			list = append(list, workerToJSON(in))
		}
		return writeJSON(out, list)
	}

	now := a.now()
	tw := newTable(out)
	fmt.Fprintln(tw, "ID\tADDR\tSTATUS\tSCHEDULING\tCPU\tMEMORY\tDISK\tCPU USED\tMEMORY USED\tTASKS\tLAST HEARTBEAT\tLABELS\tCAPABILITIES")
	for _, in := range infos {
		w, st := in.GetWorker(), in.GetStatus()
		c := w.GetCapacity()
		disk := "-"
		if c.GetDiskMib() > 0 {
			disk = fmt.Sprintf("%dMiB", c.GetDiskMib())
		}
		cpuUsed, memUsed, tasks := "-", "-", "-"
		if st.GetReportedAtUnixNano() != 0 {
			cpuUsed = strconv.FormatFloat(st.GetCpuPercent(), 'f', 1, 64) + "%"
			memUsed = fmt.Sprintf("%dMiB", st.GetMemoryUsedMib())
			tasks = strconv.Itoa(int(st.GetRunningTasks()))
		}
		heartbeat := "-"
		if hb := in.GetLastHeartbeatUnixNano(); hb != 0 {
			heartbeat = ago(now, time.Unix(0, hb))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%dMiB\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			w.GetId(), dash(w.GetAddr()), workerStatusName(w.GetState()), scheduling(w), formatCores(c.GetCpuMillis()),
			c.GetMemoryMib(), disk, cpuUsed, memUsed, tasks, heartbeat,
			formatLabels(w.GetLabels()), dash(strings.Join(w.GetCapabilities(), ",")))
	}
	return flushTable(tw)
}

// formatLabels renders labels as sorted k=v pairs, or "-".
func formatLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	pairs := make([]string, 0, len(labels))
	for k, v := range labels {
		pairs = append(pairs, k+"="+v)
	}
	slices.Sort(pairs)
	return strings.Join(pairs, ",")
}

// ago renders how long before now t was, rounded for reading.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < 0:
		d = 0
	case d < time.Minute:
		d = d.Round(100 * time.Millisecond)
	case d < time.Hour:
		d = d.Round(time.Second)
	default:
		d = d.Round(time.Minute)
	}
	return d.String() + " ago"
}
