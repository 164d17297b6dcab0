package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// parseWorkerID parses a worker ID argument.
func parseWorkerID(cmd *cobra.Command, s string) (uint64, error) {
	return parseID(cmd, s, "list workers with 'blixard worker list'")
}

// cordonJSON is the JSON form of 'worker cordon', 'uncordon' and 'drain'.
type cordonJSON struct {
	Worker workerJSON `json:"worker"`
	// Drain only: the tasks it waited for, and the VMs left on the worker.
	WaitedFor []string `json:"waited_for,omitempty"`
	VMs       []string `json:"vms,omitempty"`
}

func (a *app) cordon(cmd *cobra.Command, id uint64, on bool, reason string) (*blixardpb.Worker, error) {
	resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.CordonWorkerResponse, error) {
		return c.CordonWorker(ctx, &blixardpb.CordonWorkerRequest{WorkerId: id, Cordon: on, Reason: reason})
	})
	if err != nil {
		return nil, err
	}
	return resp.GetWorker(), nil
}

func (a *app) newWorkerCordonCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cordon ID",
		Short: "Stop placing new tasks and VMs on a worker",
		Long: `Cordon a worker: the scheduler places no new task attempt or VM on it. What
already runs there keeps running. The cordon survives the worker's restarts;
'blixard worker uncordon ID' lifts it. See also 'blixard worker drain'.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseWorkerID(cmd, args[0])
			if err != nil {
				return err
			}
			w, err := a.cordon(cmd, id, true, reason)
			if err != nil {
				return err
			}
			return a.printCordon(cmd, w, "cordoned", nil, nil)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, shown by 'worker list' (at most 256 bytes)")
	return cmd
}

func (a *app) newWorkerUncordonCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "uncordon ID",
		Short: "Let the scheduler place work on a worker again",
		Long: `Lift an operator's cordon. This also clears the mark a worker sets on itself
when its executor keeps failing ('unschedulable'), once the cause is fixed.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseWorkerID(cmd, args[0])
			if err != nil {
				return err
			}
			w, err := a.cordon(cmd, id, false, "")
			if err != nil {
				return err
			}
			return a.printCordon(cmd, w, "uncordoned", nil, nil)
		},
	}
}

func (a *app) newWorkerDrainCmd() *cobra.Command {
	var reason string
	var within time.Duration
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Cordon a worker and wait until no task runs on it",
		Long: `Cordon a worker, then wait until none of the task attempts placed on it is
still assigned or running (they finish; a retry goes to another worker).
Progress goes to stderr. VMs are not moved: the command lists the VMs left on
the worker; stop or delete them (a VM moves only when its worker goes down).
Interrupting the wait leaves the worker cordoned.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseWorkerID(cmd, args[0])
			if err != nil {
				return err
			}
			if within < 0 {
				return usageError(fmt.Sprintf("--within must not be negative (got %v)", within), "e.g. --within 10m, or leave it out to wait until done")
			}
			w, err := a.cordon(cmd, id, true, reason)
			if err != nil {
				return err
			}
			waited, err := a.waitDrained(cmd, id, within)
			if err != nil {
				return err
			}
			vms, err := a.vmsOn(cmd, id)
			if err != nil {
				return err
			}
			return a.printCordon(cmd, w, "drained", waited, vms)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&reason, "reason", "drain", "why, shown by 'worker list'")
	fs.DurationVar(&within, "within", 0, "give up (exit 1, worker stays cordoned) if tasks still run after `D`; 0 waits until done")
	return cmd
}

// activeOn lists the tasks whose current attempt is assigned to or
// running on worker id, in ID order.
func activeOn(ctx context.Context, c rpcpb.ClusterClient, id uint64) ([]string, error) {
	var out []string
	for _, st := range []blixardpb.TaskState{blixardpb.TaskState_TASK_STATE_ASSIGNED, blixardpb.TaskState_TASK_STATE_RUNNING} {
		resp, err := c.ListTasks(ctx, &blixardpb.ListTasksRequest{State: st})
		if err != nil {
			return nil, err
		}
		for _, t := range resp.GetTasks() {
			if as := t.GetAttempts(); len(as) > 0 && as[len(as)-1].GetWorkerId() == id {
				out = append(out, t.GetId())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// waitDrained polls until no task is active on worker id and returns the
// tasks it saw active. Progress goes to stderr.
func (a *app) waitDrained(cmd *cobra.Command, id uint64, within time.Duration) ([]string, error) {
	conn, reached, err := a.dial(cmd)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	c := rpcpb.NewClusterClient(conn)
	sigCtx, stop := interruptible(cmd.Context())
	defer stop()
	var deadline time.Time
	if within > 0 {
		deadline = time.Now().Add(within)
	}
	errw := cmd.ErrOrStderr()
	tty := a.isTerminal != nil && a.isTerminal(errw)
	seen := map[string]bool{}
	last := ""
	for {
		ctx, cancel := context.WithTimeout(sigCtx, a.timeout)
		active, err := activeOn(ctx, c, id)
		cancel()
		switch {
		case sigCtx.Err() != nil:
			return nil, failure(fmt.Sprintf("interrupted; worker %d stays cordoned", id), fmt.Sprintf("run 'blixard worker drain %d' again to keep waiting, or 'blixard worker uncordon %d'", id, id))
		case err != nil && status.Code(err) != codes.Unavailable:
			return nil, rpcError(err, a.addr, a.timeout, reached.Load())
		case err == nil:
			for _, t := range active {
				seen[t] = true
			}
			if len(active) == 0 {
				if tty && last != "" {
					fmt.Fprintln(errw)
				}
				waited := make([]string, 0, len(seen))
				for t := range seen {
					waited = append(waited, t)
				}
				slices.Sort(waited)
				return waited, nil
			}
			line := fmt.Sprintf("draining worker %d: %d task(s) still there (%s)", id, len(active), shortList(active, 5))
			if line != last {
				if tty {
					fmt.Fprintf(errw, "\r\033[K%s", line)
				} else {
					fmt.Fprintln(errw, line)
				}
				last = line
			}
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return nil, failure(fmt.Sprintf("worker %d still runs tasks after %v; it stays cordoned", id, within),
				fmt.Sprintf("see 'blixard task list --state running'; cancel them or run 'blixard worker drain %d' again", id))
		}
		select {
		case <-sigCtx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// vmsOn lists the VMs placed on worker id.
func (a *app) vmsOn(cmd *cobra.Command, id uint64) ([]string, error) {
	resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.ListVMsResponse, error) {
		return c.ListVMs(ctx, &blixardpb.ListVMsRequest{})
	})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, v := range resp.GetVms() {
		if v.GetWorkerId() == id {
			out = append(out, v.GetSpec().GetName())
		}
	}
	slices.Sort(out)
	return out, nil
}

// shortList joins up to n items, then "…".
func shortList(items []string, n int) string {
	if len(items) > n {
		return strings.Join(items[:n], ", ") + ", …"
	}
	return strings.Join(items, ", ")
}

func (a *app) printCordon(cmd *cobra.Command, w *blixardpb.Worker, done string, waited, vms []string) error {
	out := cmd.OutOrStdout()
	if a.jsonOutput() {
		return writeJSON(out, cordonJSON{Worker: workerToJSON(&blixardpb.WorkerInfo{Worker: w}), WaitedFor: waited, VMs: vms})
	}
	fmt.Fprintf(out, "worker %d %s\n", w.GetId(), done)
	if done == "drained" {
		fmt.Fprintf(out, "waited for %d task(s)\n", len(waited))
		if len(vms) > 0 {
			fmt.Fprintf(out, "%d VM(s) still on worker %d (%s): they keep running; stop or delete them, they move only if the worker goes down\n",
				len(vms), w.GetId(), shortList(vms, 5))
		}
	}
	return nil
}
