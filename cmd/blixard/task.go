package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api/blixardpb"
)

// Task defaults, as documented in blixard.proto.
const (
	defaultKillGrace   = 10 * time.Second
	defaultBackoffBase = time.Second
	defaultBackoffMax  = time.Minute
)

// Exit codes of 'task submit --wait' for tasks that did not succeed,
// following the shell conventions of timeout(1) and SIGINT.
const (
	exitTaskTimedOut  = 124
	exitTaskCancelled = 130
)

func (a *app) newTaskCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "task",
		Short: "Submit, inspect and wait for tasks",
		Long: `Submit commands to run on the cluster's workers, and inspect, follow,
cancel and wait for them.`,
		Args: noSubcommand,
		RunE: showHelp,
	}
	cmd.AddCommand(
		a.newTaskSubmitCmd(),
		a.newTaskStatusCmd(),
		a.newTaskListCmd(),
		a.newTaskLogsCmd(),
		a.newTaskCancelCmd(),
		a.newTaskWaitCmd(),
	)
	return cmd
}

// checkTaskID rejects an empty task ID argument.
func checkTaskID(cmd *cobra.Command, id string) error {
	if strings.TrimSpace(id) == "" {
		return usageError("ID must not be empty", fmt.Sprintf("usage: %s ID; list tasks with 'blixard task list'", cmd.CommandPath()))
	}
	return nil
}

// interruptible returns a context that ends on SIGINT or SIGTERM, so a
// wait can say what keeps running.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// ---------------------------------------------------------------------------
// submit

type submitOptions struct {
	name        string
	cpu         float64
	memory      int64
	timeout     time.Duration
	killGrace   time.Duration
	retries     int
	backoffBase time.Duration
	backoffMax  time.Duration
	priority    int
	constraints []string
	node        uint64
	policy      string
	env         []string
	workdir     string
	user        string
	key         string
	wait        bool
}

const submitUsage = "usage: blixard task submit [flags] -- CMD [ARGS...]"

func (a *app) newTaskSubmitCmd() *cobra.Command {
	o := &submitOptions{}
	cmd := &cobra.Command{
		Use:   "submit [flags] -- CMD [ARGS...]",
		Short: "Submit a command to run on a worker",
		Long: `Submit a task: CMD with ARGS, run on a worker the scheduler picks. Put --
between the flags and the command. Prints the new task's ID.

The request carries an idempotency key (random unless --idempotency-key is
given) and is retried with the same key while the cluster is between
leaders, so a retried submit never creates a second task.

With --wait the command streams the task's stdout to stdout and its stderr
to stderr, and exits with the task's exit code: 0 if it succeeded, its exit
code if it failed (1 if it has none), 124 if it timed out, 130 if it was
cancelled, 1 if it was lost.

In this command --timeout is the task's time limit, not the request's.`,
		Example: `  blixard task submit -- echo hello
  blixard task submit --name build --cpu 2 --memory 4096 --timeout 10m --retries 2 -- make -j2 test
  blixard task submit --constraint zone=eu-1 --env GOFLAGS=-race --wait -- go test ./...`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := o.request(cmd, args)
			if err != nil {
				return err
			}
			return a.runSubmit(cmd, req, o.wait)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.name, "name", "", "a `NAME` for the task, shown in lists")
	fs.Float64Var(&o.cpu, "cpu", 0, "CPU `CORES` to reserve, fractions allowed, e.g. 0.5 (default 0: none)")
	fs.Int64Var(&o.memory, "memory", 0, "memory to reserve, in `MiB` (default 0: none)")
	fs.DurationVar(&o.timeout, "timeout", 0, "kill the task if an attempt runs longer than this (default 0: no limit)")
	fs.DurationVar(&o.killGrace, "kill-grace", defaultKillGrace, "time between SIGTERM and SIGKILL when the task is stopped")
	fs.IntVar(&o.retries, "retries", 0, "retry a failed task up to `N` times")
	fs.DurationVar(&o.backoffBase, "backoff-base", defaultBackoffBase, "delay before the first retry; it doubles with each retry")
	fs.DurationVar(&o.backoffMax, "backoff-max", defaultBackoffMax, "longest delay between retries")
	fs.IntVar(&o.priority, "priority", 0, "scheduling priority `N`; higher runs first")
	fs.StringArrayVar(&o.constraints, "constraint", nil, "run only on workers with label `KEY=VALUE` (repeatable)")
	fs.Uint64Var(&o.node, "node", 0, "run only on the worker with this `ID` (default 0: any)")
	fs.StringVar(&o.policy, "policy", "binpack", "placement `POLICY`: binpack (fill busy workers first) or spread")
	fs.StringArrayVar(&o.env, "env", nil, "set environment variable `KEY=VALUE` for the command (repeatable)")
	fs.StringVar(&o.workdir, "workdir", "", "working `DIR` of the command on the worker (default: the worker's)")
	fs.StringVar(&o.user, "user", "", "run as this `USER` (default: the worker's user)")
	fs.StringVar(&o.key, "idempotency-key", "", "`KEY` that makes resubmitting return the same task (default: random)")
	fs.BoolVar(&o.wait, "wait", false, "stream the task's output, wait for it to finish and exit with its exit code")
	expect(fs, "cpu", "a non-negative number of cores, e.g. 2 or 0.5")
	expect(fs, "memory", "a non-negative number of MiB")
	expect(fs, "retries", "a non-negative integer")
	expect(fs, "priority", "a non-negative integer")
	expect(fs, "node", "a worker ID (a non-negative integer)")
	return cmd
}

// request validates the flags and arguments and builds the submission.
func (o *submitOptions) request(cmd *cobra.Command, args []string) (*blixardpb.SubmitTaskRequest, error) {
	fs := cmd.Flags()
	switch dash := cmd.ArgsLenAtDash(); {
	case dash < 0 && len(args) > 0:
		return nil, usageError(fmt.Sprintf("missing -- before the command (got %q)", args[0]), submitUsage)
	case dash > 0:
		return nil, usageError(fmt.Sprintf("unexpected argument %q before --", args[0]), submitUsage)
	case len(args) == 0:
		return nil, usageError("missing command after --", submitUsage)
	case strings.TrimSpace(args[0]) == "":
		return nil, usageError("the command after -- must not be empty", submitUsage)
	}

	var cpuMillis int64
	if m := math.Round(o.cpu * 1000); math.IsNaN(o.cpu) || math.IsInf(o.cpu, 0) || m < 0 || m > 1e12 || (o.cpu > 0 && m < 1) {
		return nil, usageError(fmt.Sprintf("--cpu must be a non-negative number of cores, at least 0.001 if set (got %q)", fs.Lookup("cpu").Value.String()),
			"pass e.g. --cpu 0.5")
	} else {
		cpuMillis = int64(m)
	}
	if o.memory < 0 {
		return nil, usageError(fmt.Sprintf("--memory must be a non-negative number of MiB (got \"%d\")", o.memory), "pass e.g. --memory 512")
	}
	timeoutMs, err := flagMillis("timeout", o.timeout, true, "30s")
	if err != nil {
		return nil, err
	}
	killGraceMs, err := flagMillis("kill-grace", o.killGrace, false, defaultKillGrace.String())
	if err != nil {
		return nil, err
	}
	if o.retries < 0 || o.retries > math.MaxInt32 {
		return nil, usageError(fmt.Sprintf("--retries must be a non-negative integer (got \"%d\")", o.retries), "pass e.g. --retries 3")
	}
	baseMs, err := flagMillis("backoff-base", o.backoffBase, false, defaultBackoffBase.String())
	if err != nil {
		return nil, err
	}
	maxMs, err := flagMillis("backoff-max", o.backoffMax, false, defaultBackoffMax.String())
	if err != nil {
		return nil, err
	}
	if o.backoffMax < o.backoffBase {
		return nil, usageError(fmt.Sprintf("--backoff-max must not be less than --backoff-base (got %s and %s)", o.backoffMax, o.backoffBase),
			"raise --backoff-max or lower --backoff-base")
	}
	if o.priority < 0 || o.priority > math.MaxInt32 {
		return nil, usageError(fmt.Sprintf("--priority must be a non-negative integer (got \"%d\")", o.priority), "pass e.g. --priority 10")
	}
	constraints, err := parsePairs("constraint", o.constraints, true, "zone=eu-1")
	if err != nil {
		return nil, err
	}
	policy := blixardpb.PlacementPolicy_PLACEMENT_POLICY_UNSPECIFIED
	switch o.policy {
	case "binpack":
		if fs.Changed("policy") {
			policy = blixardpb.PlacementPolicy_PLACEMENT_POLICY_BINPACK
		}
	case "spread":
		policy = blixardpb.PlacementPolicy_PLACEMENT_POLICY_SPREAD
	default:
		return nil, usageError(fmt.Sprintf(`--policy must be "binpack" or "spread" (got %q)`, o.policy), "pass --policy binpack or --policy spread")
	}
	env, err := parsePairs("env", o.env, false, "LOG_LEVEL=debug")
	if err != nil {
		return nil, err
	}
	key := o.key
	if fs.Changed("idempotency-key") {
		if strings.TrimSpace(key) == "" {
			return nil, usageError("--idempotency-key must not be empty", "pass a key, or leave the flag out for a random one")
		}
	} else {
		key = newIdempotencyKey()
	}

	return &blixardpb.SubmitTaskRequest{
		IdempotencyKey: key,
		Spec: &blixardpb.TaskSpec{
			Name:               o.name,
			Command:            args[0],
			Args:               append([]string{}, args[1:]...),
			Env:                env,
			Workdir:            o.workdir,
			Resources:          &blixardpb.Resources{CpuMillis: cpuMillis, MemoryMib: o.memory},
			TimeoutMs:          timeoutMs,
			KillGraceMs:        killGraceMs,
			MaxRetries:         int32(o.retries),
			RetryBackoffBaseMs: baseMs,
			RetryBackoffMaxMs:  maxMs,
			Priority:           int32(o.priority),
			Constraints:        constraints,
			Node:               o.node,
			Policy:             policy,
			User:               o.user,
		},
	}, nil
}

// flagMillis checks a duration flag and converts it to milliseconds.
// allowZero admits 0 (meaning "none").
func flagMillis(name string, d time.Duration, allowZero bool, example string) (int64, error) {
	if d < 0 || (d == 0 && !allowZero) {
		want := "a positive duration"
		if allowZero {
			want = "a non-negative duration (0 for none)"
		}
		return 0, usageError(fmt.Sprintf("--%s must be %s (got %q)", name, want, d.String()),
			fmt.Sprintf("pass e.g. --%s %s", name, example))
	}
	if d > 0 && d < time.Millisecond {
		return 0, usageError(fmt.Sprintf("--%s must be at least 1ms (got %q)", name, d.String()),
			fmt.Sprintf("pass e.g. --%s %s", name, example))
	}
	return d.Milliseconds(), nil
}

// parsePairs parses repeated KEY=VALUE flag values. labelKeys restricts
// keys to label-key characters; otherwise keys are environment variable
// names (no '=' or NUL).
func parsePairs(flag string, vals []string, labelKeys bool, example string) (map[string]string, error) {
	out := map[string]string{}
	hint := fmt.Sprintf("pass one KEY=VALUE per --%s, e.g. --%s %s", flag, flag, example)
	for _, v := range vals {
		key, value, ok := strings.Cut(v, "=")
		switch {
		case !ok:
			return nil, usageError(fmt.Sprintf("--%s %q is not KEY=VALUE", flag, v), hint)
		case key == "":
			return nil, usageError(fmt.Sprintf("--%s %q has an empty key", flag, v), hint)
		case labelKeys && !labelNameOK(key):
			return nil, usageError(fmt.Sprintf("--%s key %q may only contain %s", flag, key, nameChars), hint)
		case strings.ContainsRune(v, 0):
			return nil, usageError(fmt.Sprintf("--%s %q contains a NUL byte", flag, v), hint)
		}
		if _, dup := out[key]; dup {
			return nil, usageError(fmt.Sprintf("--%s sets key %q more than once", flag, key), "give each key once")
		}
		out[key] = value
	}
	return out, nil
}

// newIdempotencyKey returns 16 random bytes in hex.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (it aborts the program instead)
	return hex.EncodeToString(b[:])
}

func (a *app) runSubmit(cmd *cobra.Command, req *blixardpb.SubmitTaskRequest, wait bool) error {
	tc, err := a.dialTasks(cmd)
	if err != nil {
		return err
	}
	defer tc.close()
	t, err := tc.submit(cmd.Context(), req)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if !wait {
		if a.jsonOutput() {
			return writeJSON(out, toTaskJSON(t))
		}
		fmt.Fprintln(out, t.GetId())
		return nil
	}

	id := t.GetId()
	tc.created = id
	ctx, stop := interruptible(cmd.Context())
	defer stop()
	if a.jsonOutput() {
		// stdout is for the JSON object: wait without streaming output.
		t, err = tc.waitFinal(ctx, id)
	} else {
		t, err = tc.followTask(ctx, id, out, cmd.ErrOrStderr())
	}
	if err != nil {
		if ctx.Err() != nil {
			return interruptedWaiting(id)
		}
		return err
	}
	if a.jsonOutput() {
		if err := writeJSON(out, toTaskJSON(t)); err != nil {
			return err
		}
	}
	return taskOutcome(t)
}

// taskExitStatus maps a final task to the exit code of 'task submit
// --wait'.
func taskExitStatus(t *blixardpb.Task) int {
	switch t.GetState() {
	case blixardpb.TaskState_TASK_STATE_SUCCEEDED:
		return exitOK
	case blixardpb.TaskState_TASK_STATE_FAILED:
		if c := taskExitCode(t); c != nil && *c >= 1 && *c <= 255 {
			return int(*c)
		}
		return exitFailure
	case blixardpb.TaskState_TASK_STATE_TIMED_OUT:
		return exitTaskTimedOut
	case blixardpb.TaskState_TASK_STATE_CANCELLED:
		return exitTaskCancelled
	}
	return exitFailure
}

// taskOutcome is nil for a succeeded task, else the error whose line
// summarizes what happened and whose code is taskExitStatus.
func taskOutcome(t *blixardpb.Task) error {
	code := taskExitStatus(t)
	if code == exitOK {
		return nil
	}
	what, hint := taskSummary(t)
	return &cliError{code: code, what: what, hint: hint}
}

// taskSummary says in one line how a final task that did not succeed
// ended, and what to look at.
func taskSummary(t *blixardpb.Task) (what, hint string) {
	id := t.GetId()
	status := fmt.Sprintf("see 'blixard task status %s'", id)
	latest := latestAttempt(t)
	r := latest.GetResult()
	var after string
	if n := latest.GetNumber(); n > 1 {
		after = fmt.Sprintf(" (after %d attempts)", n)
	}
	switch t.GetState() {
	case blixardpb.TaskState_TASK_STATE_FAILED:
		logs := fmt.Sprintf("see its output with 'blixard task logs %s --stderr' and %s", id, strings.TrimPrefix(status, "see "))
		switch {
		case r.GetError() != "":
			return fmt.Sprintf("task %s could not start: %s%s", id, r.GetError(), after), status
		case r.GetOomKilled():
			return fmt.Sprintf("task %s was killed for using too much memory%s", id, after), "raise --memory, or " + logs
		case r.GetSignal() != "":
			return fmt.Sprintf("task %s was killed by %s%s", id, r.GetSignal(), after), logs
		case latest != nil && latest.GetResult() != nil:
			return fmt.Sprintf("task %s failed with exit code %d%s", id, r.GetExitCode(), after), logs
		}
		return fmt.Sprintf("task %s failed%s", id, after), status
	case blixardpb.TaskState_TASK_STATE_TIMED_OUT:
		limit := ""
		if ms := t.GetSpec().GetTimeoutMs(); ms > 0 {
			limit = " after " + (time.Duration(ms) * time.Millisecond).String()
		}
		return fmt.Sprintf("task %s timed out%s%s", id, limit, after), "raise --timeout, or " + status
	case blixardpb.TaskState_TASK_STATE_CANCELLED:
		return fmt.Sprintf("task %s was cancelled", id), status
	case blixardpb.TaskState_TASK_STATE_LOST:
		return fmt.Sprintf("task %s was lost: its worker went away", id), status + "; submit it again if needed"
	}
	return fmt.Sprintf("task %s ended in state %s", id, taskStateName(t.GetState())), status
}

// ---------------------------------------------------------------------------
// status, list, cancel

func (a *app) newTaskStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status ID",
		Short: "Show a task's state, result and attempts",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkTaskID(cmd, id); err != nil {
				return err
			}
			tc, err := a.dialTasks(cmd)
			if err != nil {
				return err
			}
			defer tc.close()
			t, err := tc.get(cmd.Context(), id)
			if err != nil {
				return tc.mapErr(err, id)
			}
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), toTaskJSON(t))
			}
			return a.printTaskDetail(cmd.OutOrStdout(), t)
		},
	}
}

func (a *app) newTaskListCmd() *cobra.Command {
	var state string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tasks, oldest first",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var filter blixardpb.TaskState
			if state != "" {
				s, ok := parseTaskState(state)
				if !ok {
					return usageError(fmt.Sprintf("--state must be one of %s (got %q)", taskStateNames(), state),
						"pass e.g. --state running")
				}
				filter = s
			}
			tc, err := a.dialTasks(cmd)
			if err != nil {
				return err
			}
			defer tc.close()
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			resp, err := tc.c.ListTasks(ctx, &blixardpb.ListTasksRequest{State: filter})
			if err != nil {
				return tc.mapErr(err, "")
			}
			tasks := resp.GetTasks()
			if filter != blixardpb.TaskState_TASK_STATE_UNSPECIFIED {
				// In case the server ignores the filter.
				kept := tasks[:0:0]
				for _, t := range tasks {
					if t.GetState() == filter {
						kept = append(kept, t)
					}
				}
				tasks = kept
			}
			tasks = sortTasks(tasks)
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), tasksJSON(tasks))
			}
			return a.printTaskTable(cmd.OutOrStdout(), tasks)
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "list only tasks in this `STATE`: "+taskStateNames())
	return cmd
}

func (a *app) newTaskCancelCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a task and print its resulting state",
		Long: `Cancel a task. A pending task is cancelled at once; a running one is sent
SIGTERM, then SIGKILL after its kill grace. Prints the task's state after
the request: "cancelled", or its state with "(cancel requested)" while the
process is being stopped, or the final state it had already reached.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkTaskID(cmd, id); err != nil {
				return err
			}
			tc, err := a.dialTasks(cmd)
			if err != nil {
				return err
			}
			defer tc.close()
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			resp, err := tc.c.CancelTask(ctx, &blixardpb.CancelTaskRequest{Id: id})
			if err != nil {
				return tc.mapErr(err, id)
			}
			t := resp.GetTask()
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), toTaskJSON(t))
			}
			state := taskStateName(t.GetState())
			if t.GetCancelRequested() && !isFinalState(t.GetState()) {
				state += " (cancel requested)"
			}
			fmt.Fprintln(cmd.OutOrStdout(), state)
			return nil
		},
	}
}

// ---------------------------------------------------------------------------
// logs

func (a *app) newTaskLogsCmd() *cobra.Command {
	var stderr, follow bool
	var attempt uint32
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a task's output",
		Long: `Print the stdout (or with --stderr the stderr) of a task's latest attempt,
or of attempt N, as raw bytes.

With --follow the output is printed as it is produced until the attempt
finishes; without --attempt it then goes on with each later attempt (a
retry) until the task is final, waiting for the first attempt if the task
has not started yet.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := checkTaskID(cmd, id); err != nil {
				return err
			}
			attemptSet := cmd.Flags().Changed("attempt")
			if attemptSet && attempt == 0 {
				return usageError(`--attempt must be a positive integer (got "0")`, "attempts are numbered from 1; see 'blixard task status "+id+"'")
			}
			tc, err := a.dialTasks(cmd)
			if err != nil {
				return err
			}
			defer tc.close()
			t, err := tc.get(cmd.Context(), id)
			if err != nil {
				return tc.mapErr(err, id)
			}
			out := cmd.OutOrStdout()
			latest := latestAttempt(t)
			if follow && !attemptSet {
				ctx, stop := interruptible(cmd.Context())
				defer stop()
				warn := func(err error) {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: task %s: %s\n", id, oneLine.Replace(err.Error()))
				}
				err = tc.followAttempts(ctx, id, stderr, out, nil, warn)
				if err != nil && ctx.Err() != nil {
					return nil // stopped by the user, as with tail -f
				}
				return err
			}
			n := attempt
			switch {
			case attemptSet && findAttempt(t, n) == nil:
				return failure(fmt.Sprintf("task %s has no attempt %d (latest is %d)", id, n, latest.GetNumber()),
					fmt.Sprintf("see 'blixard task status %s'", id))
			case !attemptSet && latest == nil:
				return failure(fmt.Sprintf("task %s has not started yet (it is %s)", id, taskStateName(t.GetState())),
					fmt.Sprintf("follow its output with 'blixard task logs -f %s'", id))
			case !attemptSet:
				n = latest.GetNumber()
			}
			ctx := cmd.Context()
			if follow {
				var stop context.CancelFunc
				ctx, stop = interruptible(ctx)
				defer stop()
			}
			err = tc.streamAttempt(ctx, id, n, stderr, follow, out)
			if err != nil && follow && ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&stderr, "stderr", false, "print the task's stderr instead of its stdout")
	fs.BoolVarP(&follow, "follow", "f", false, "keep printing output as it is produced until the task finishes")
	fs.Uint32Var(&attempt, "attempt", 0, "print attempt `N` (default: the latest)")
	expect(fs, "attempt", "a positive integer")
	return cmd
}

// ---------------------------------------------------------------------------
// wait

func (a *app) newTaskWaitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "wait ID...",
		Short: "Wait for tasks to finish",
		Long: `Wait until every task is in a final state, then print them (as 'task list'
does). Exits 0 if all succeeded, 1 otherwise.

When waiting for more than one task, a progress line goes to stderr: redrawn
in place on a terminal, otherwise one line per finished task.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError("missing ID", "usage: "+cmd.CommandPath()+" ID...")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var ids []string
			seen := map[string]bool{}
			for _, id := range args {
				if err := checkTaskID(cmd, id); err != nil {
					return err
				}
				if !seen[id] {
					seen[id] = true
					ids = append(ids, id)
				}
			}
			tc, err := a.dialTasks(cmd)
			if err != nil {
				return err
			}
			defer tc.close()
			return a.runWait(cmd, tc, ids)
		},
	}
}

func (a *app) runWait(cmd *cobra.Command, tc *taskConn, ids []string) error {
	sigCtx, stop := interruptible(cmd.Context())
	defer stop()
	ctx, cancel := context.WithCancel(sigCtx)
	defer cancel()

	type result struct {
		i   int
		t   *blixardpb.Task
		err error
	}
	results := make(chan result, len(ids))
	for i, id := range ids {
		go func() {
			t, err := tc.waitFinal(ctx, id)
			results <- result{i, t, err}
		}()
	}

	var p *progress
	if len(ids) > 1 {
		errw := cmd.ErrOrStderr()
		p = &progress{w: errw, tty: a.isTerminal != nil && a.isTerminal(errw), total: len(ids)}
		p.start()
	}
	final := make([]*blixardpb.Task, len(ids))
	var firstErr error
	for range ids {
		r := <-results
		switch {
		case r.err != nil:
			if firstErr == nil {
				firstErr = r.err
				cancel()
			}
		case firstErr == nil:
			final[r.i] = r.t
			p.completed(r.t)
		}
	}
	p.end()
	if firstErr != nil {
		if sigCtx.Err() != nil {
			return interruptedWaiting(ids...)
		}
		return firstErr
	}

	out := cmd.OutOrStdout()
	if a.jsonOutput() {
		if err := writeJSON(out, tasksJSON(final)); err != nil {
			return err
		}
	} else if err := a.printTaskTable(out, final); err != nil {
		return err
	}

	var bad []*blixardpb.Task
	for _, t := range final {
		if t.GetState() != blixardpb.TaskState_TASK_STATE_SUCCEEDED {
			bad = append(bad, t)
		}
	}
	switch {
	case len(bad) == 0:
		return nil
	case len(ids) == 1:
		what, hint := taskSummary(bad[0])
		return failure(what, hint)
	}
	var names []string
	for i, t := range bad {
		if i == 3 {
			names = append(names, "…")
			break
		}
		names = append(names, t.GetId()+" "+taskStateName(t.GetState()))
	}
	return failure(fmt.Sprintf("%d of %d tasks did not succeed (%s)", len(bad), len(ids), strings.Join(names, ", ")),
		"see 'blixard task status ID' for each")
}

// progress draws "[#####.....] 5/10 done, 1 failed" on w: redrawn in
// place on a terminal, else one line per finished task. A nil *progress
// draws nothing.
type progress struct {
	w                    io.Writer
	tty                  bool
	total, done, failed  int
	drawnOnce, finalized bool
}

func (p *progress) bar() string {
	width := min(max(p.total, 10), 30)
	filled := p.done * width / p.total
	return fmt.Sprintf("[%s%s] %d/%d done, %d failed",
		strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.done, p.total, p.failed)
}

func (p *progress) start() {
	if p != nil && p.tty {
		fmt.Fprint(p.w, "\r"+p.bar())
		p.drawnOnce = true
	}
}

func (p *progress) completed(t *blixardpb.Task) {
	if p == nil {
		return
	}
	p.done++
	if t.GetState() != blixardpb.TaskState_TASK_STATE_SUCCEEDED {
		p.failed++
	}
	if p.tty {
		fmt.Fprint(p.w, "\r"+p.bar())
		return
	}
	state := taskStateName(t.GetState())
	if c := taskExitCode(t); c != nil && t.GetState() == blixardpb.TaskState_TASK_STATE_FAILED {
		state += fmt.Sprintf(", exit code %d", *c)
	}
	fmt.Fprintf(p.w, "%s (%s %s)\n", p.bar(), t.GetId(), state)
}

// end finishes a redrawn line so that what follows starts on its own.
func (p *progress) end() {
	if p != nil && p.tty && p.drawnOnce && !p.finalized {
		fmt.Fprintln(p.w)
		p.finalized = true
	}
}
