package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/loadgen"
	"github.com/blixard/blixard/internal/server"
)

const (
	benchMaxClients  = 10000
	benchMaxTotal    = 10_000_000 // every latency is kept: 80 MB at most
	benchMaxConns    = 64
	benchKeyPrefix   = "bench/"
	benchMaxKeySize  = 1024
	benchTaskName    = "bench"
	benchProgressDue = 250 * time.Millisecond
	// benchRequestSlack is what a Put request needs besides its key and
	// value, comfortably.
	benchRequestSlack = 64
	// benchErrorLines is how many error messages the table shows, and
	// benchErrorGroupsJSON how many the JSON object carries.
	benchErrorLines      = 5
	benchErrorGroupsJSON = 20
	// benchGiveUpMin is the fewest failures, none preceded by a success,
	// after which a run stops (at least --clients of them).
	benchGiveUpMin = 10
)

// benchOptions are the flags every bench subcommand has.
type benchOptions struct {
	clients   int
	total     int
	conns     int
	endpoints string
}

func (o *benchOptions) addFlags(fs *pflag.FlagSet, defaultTotal int) {
	fs.IntVar(&o.clients, "clients", 16, "`N` concurrent clients, each running one operation at a time")
	fs.IntVar(&o.total, "total", defaultTotal, "`N` operations in all, spread over the clients")
	fs.StringVar(&o.endpoints, "endpoints", "", "comma-separated `HOST:PORT,...` of nodes to spread the clients over, round robin (default: --addr)")
	fs.IntVar(&o.conns, "conns", 1, "`N` gRPC connections per endpoint, shared by its clients")
	expect(fs, "clients", "a positive integer")
	expect(fs, "total", "a positive integer")
	expect(fs, "conns", "a positive integer")
}

// check validates the common flags and returns the endpoints to dial.
func (o *benchOptions) check(a *app, cmd *cobra.Command) ([]string, error) {
	if o.clients < 1 || o.clients > benchMaxClients {
		return nil, usageError(fmt.Sprintf("--clients must be between 1 and %d (got \"%d\")", benchMaxClients, o.clients), "pass e.g. --clients 16")
	}
	if o.total < 1 || o.total > benchMaxTotal {
		return nil, usageError(fmt.Sprintf("--total must be between 1 and %d (got \"%d\")", benchMaxTotal, o.total), "pass e.g. --total 10000")
	}
	if o.conns < 1 || o.conns > benchMaxConns {
		return nil, usageError(fmt.Sprintf("--conns must be between 1 and %d (got \"%d\")", benchMaxConns, o.conns), "pass e.g. --conns 1")
	}
	fs := cmd.Flags()
	if !fs.Changed("endpoints") {
		if err := a.checkAddr(cmd); err != nil {
			return nil, err
		}
		return []string{a.addr}, nil
	}
	if fs.Changed("addr") {
		return nil, usageError("--addr and --endpoints: give one, not both", "pass --endpoints HOST:PORT,... (it may name a single node)")
	}
	hint := "pass a comma-separated list of HOST:PORT, e.g. --endpoints 127.0.0.1:7000,127.0.0.1:7001"
	if strings.TrimSpace(o.endpoints) == "" {
		return nil, usageError("--endpoints must not be empty", hint)
	}
	var eps []string
	for i, e := range strings.Split(o.endpoints, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			return nil, usageError(fmt.Sprintf("--endpoints entry %d is empty (got %q)", i+1, o.endpoints), hint)
		}
		if p := hostPortProblem(e, false, false); p != "" {
			return nil, usageError(fmt.Sprintf("--endpoints entry %q %s", e, p), hint)
		}
		eps = append(eps, e)
	}
	return eps, nil
}

// benchWorkload is what one bench subcommand measures.
type benchWorkload struct {
	kind     string // "kv" or "tasks"
	describe string // for the table's first row
	// op runs operation seq through c.
	op func(ctx context.Context, c rpcpb.ClusterClient, seq int) error
	// addJSON fills the kind's own JSON fields.
	addJSON func(*benchJSON)
	// allFailed maps a failure shared by every operation to the error
	// line, or returns nil to leave it to rpcError.
	allFailed func(g loadgen.ErrorGroup, res loadgen.Result) error
	// interruptedHint adds to the interruption's error line.
	interruptedHint string
}

func (a *app) newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running cluster's throughput and latency",
		Long: `Run a fixed number of operations against a running cluster from many
concurrent clients, then print the rate and the latency percentiles.

The clients share one gRPC connection per endpoint (see --conns); with
--endpoints they are spread round robin over several nodes. --timeout limits
each operation. A progress bar goes to stderr when it is a terminal.

Exits 0 if every operation succeeded, 1 if any failed (the result is still
printed, with the errors grouped by message, unless every one failed), 130
if interrupted (the result so far is printed).`,
		Args: noSubcommand,
		RunE: showHelp,
	}
	cmd.AddCommand(a.newBenchKVCmd(), a.newBenchTasksCmd())
	return cmd
}

func (a *app) newBenchKVCmd() *cobra.Command {
	o := &benchOptions{}
	var keySize, valSize int
	cmd := &cobra.Command{
		Use:   "kv",
		Short: "Measure Cluster.Put: --total writes of --val-size bytes",
		Long: `Write --total keys with Cluster.Put, --val-size bytes each, from --clients
concurrent clients. Operation N writes the key "bench/" followed by N,
zero-padded to --key-size bytes (bench/0000000000 ...), so a run writes
--total distinct keys and running it again overwrites them.`,
		Example: `  blixard bench kv --total 10000 --clients 16 --val-size 256
  blixard bench kv --endpoints 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000 --clients 64 --total 100000`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, err := o.check(a, cmd)
			if err != nil {
				return err
			}
			if need := len(benchKeyPrefix) + len(strconv.Itoa(o.total-1)); keySize < need || keySize > benchMaxKeySize {
				return usageError(fmt.Sprintf("--key-size must be between %d and %d bytes for --total %d (got \"%d\")", need, benchMaxKeySize, o.total, keySize),
					fmt.Sprintf("keys are %q and a zero-padded number; pass e.g. --key-size %d", benchKeyPrefix, max(need, 16)))
			}
			if most := server.MaxRequestBytes - keySize - benchRequestSlack; valSize < 1 || valSize > most {
				return usageError(fmt.Sprintf("--val-size must be between 1 and %d bytes (got \"%d\")", most, valSize),
					fmt.Sprintf("a request may have at most %d MiB; pass e.g. --val-size 256", server.MaxRequestBytes>>20))
			}
			return a.runBench(cmd, o, eps, kvWorkload(keySize, valSize))
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	o.addFlags(fs, 10000)
	fs.IntVar(&keySize, "key-size", 16, "`BYTES` per key, at least 6 plus the digits of --total")
	fs.IntVar(&valSize, "val-size", 256, "`BYTES` per value")
	expect(fs, "key-size", "a positive integer")
	expect(fs, "val-size", "a positive integer")
	return cmd
}

// benchKey is the key operation seq of 'bench kv' writes: the prefix and
// seq, zero-padded to size bytes.
func benchKey(size, seq int) string {
	return fmt.Sprintf("%s%0*d", benchKeyPrefix, size-len(benchKeyPrefix), seq)
}

func kvWorkload(keySize, valSize int) benchWorkload {
	// One value for every request: the requests only read it.
	val := bytes.Repeat([]byte{'x'}, valSize)
	return benchWorkload{
		kind:     "kv",
		describe: fmt.Sprintf("kv put, %d-byte values, %d-byte keys", valSize, keySize),
		op: func(ctx context.Context, c rpcpb.ClusterClient, seq int) error {
			_, err := c.Put(ctx, &blixardpb.PutRequest{Key: benchKey(keySize, seq), Value: val})
			return err
		},
		addJSON: func(j *benchJSON) {
			j.ValSize, j.KeySize = &valSize, &keySize
		},
		allFailed: func(loadgen.ErrorGroup, loadgen.Result) error { return nil },
	}
}

func (a *app) newBenchTasksCmd() *cobra.Command {
	o := &benchOptions{}
	var command string
	cmd := &cobra.Command{
		Use:   "tasks",
		Short: "Measure tasks end to end: submit, run on a worker, wait until final",
		Long: `Run --total tasks from --clients concurrent clients. Each operation submits
a task running --command (no arguments; a fresh idempotency key each) and
waits until it is final; a task that does not succeed counts as an error.
--timeout limits the whole operation, submit to final.

The tasks stay in 'blixard task list' (named "bench") until the cluster
purges final tasks.`,
		Example: `  blixard bench tasks --total 200 --clients 8
  blixard bench tasks --command /usr/bin/true --total 1000 --clients 32 --timeout 30s`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, err := o.check(a, cmd)
			if err != nil {
				return err
			}
			if strings.TrimSpace(command) == "" {
				return usageError("--command must not be empty", "pass a program on the workers, e.g. --command /bin/true")
			}
			return a.runBench(cmd, o, eps, a.tasksWorkload(command))
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	o.addFlags(fs, 100)
	fs.StringVar(&command, "command", "/bin/true", "`PROGRAM` each task runs, without arguments")
	return cmd
}

// benchStepError is a failed call of a multi-call operation.
type benchStepError struct {
	step string // the RPC, e.g. "SubmitTask"
	id   string // the task it was about, if known
	err  error
}

func (e *benchStepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *benchStepError) Unwrap() error { return e.err }

// benchTaskFailed is a task that ended in a final state other than
// succeeded.
type benchTaskFailed struct{ task *blixardpb.Task }

// Error says how the task ended, without its ID: it groups failures.
func (e *benchTaskFailed) Error() string {
	return withoutID(e.describe(), e.task.GetId())
}

func (e *benchTaskFailed) describe() string {
	r := latestAttempt(e.task).GetResult()
	switch e.task.GetState() {
	case blixardpb.TaskState_TASK_STATE_FAILED:
		switch {
		case r.GetError() != "":
			return "task could not start: " + r.GetError()
		case r.GetOomKilled():
			return "task was killed for using too much memory"
		case r.GetSignal() != "":
			return "task was killed by " + r.GetSignal()
		case r != nil:
			return fmt.Sprintf("task failed with exit code %d", r.GetExitCode())
		}
		return "task failed"
	case blixardpb.TaskState_TASK_STATE_LOST:
		return "task was lost: its worker went away"
	}
	return "task ended " + taskStateName(e.task.GetState())
}

// benchTaskTimeout is a task not final when the operation's time was up.
type benchTaskTimeout struct {
	id    string
	state blixardpb.TaskState
	err   error
}

func (e *benchTaskTimeout) Error() string {
	return fmt.Sprintf("task %s still %s: %v", e.id, taskStateName(e.state), e.err)
}
func (e *benchTaskTimeout) Unwrap() error { return e.err }

func (a *app) tasksWorkload(command string) benchWorkload {
	return benchWorkload{
		kind:     "tasks",
		describe: fmt.Sprintf("tasks, %s submitted and waited for", command),
		op: func(ctx context.Context, c rpcpb.ClusterClient, _ int) error {
			resp, err := c.SubmitTask(ctx, &blixardpb.SubmitTaskRequest{
				IdempotencyKey: newIdempotencyKey(),
				Spec:           &blixardpb.TaskSpec{Name: benchTaskName, Command: command},
			})
			if err != nil {
				return &benchStepError{step: "SubmitTask", err: err}
			}
			t := resp.GetTask()
			for !isFinalState(t.GetState()) {
				w, err := c.WaitTask(ctx, &blixardpb.WaitTaskRequest{Id: t.GetId()})
				if err != nil {
					if ctx.Err() != nil {
						return &benchTaskTimeout{id: t.GetId(), state: t.GetState(), err: err}
					}
					return &benchStepError{step: "WaitTask", id: t.GetId(), err: err}
				}
				t = w.GetTask()
			}
			if t.GetState() != blixardpb.TaskState_TASK_STATE_SUCCEEDED {
				return &benchTaskFailed{task: t}
			}
			return nil
		},
		addJSON: func(j *benchJSON) { j.Command = command },
		allFailed: func(g loadgen.ErrorGroup, res loadgen.Result) error {
			var tf *benchTaskFailed
			var tt *benchTaskTimeout
			switch {
			case errors.As(g.First, &tf):
				return failure(fmt.Sprintf("no task succeeded: %s (%s)", g.Message, howManyFailed(g, res)),
					fmt.Sprintf("check that --command %q runs on the workers; see 'blixard task status %s'", command, tf.task.GetId()))
			case errors.As(g.First, &tt):
				return failure(fmt.Sprintf("no task was final within --timeout %s (task %s is still %s)", a.timeout, tt.id, taskStateName(tt.state)),
					fmt.Sprintf("check 'blixard worker list' for a ready worker and 'blixard task status %s', or raise --timeout", tt.id))
			}
			return nil
		},
		interruptedHint: "; the tasks already submitted keep running",
	}
}

// benchTarget is the bench's connections: conns per endpoint, in the
// order endpoint 0, 1, ..., 0, 1, ..., so that client i talks to endpoint
// i mod len(endpoints).
type benchTarget struct {
	endpoints []string
	conns     []*grpc.ClientConn
	clients   []rpcpb.ClusterClient
	reached   []*atomic.Bool
}

func (a *app) dialBench(eps []string, perEndpoint int) (*benchTarget, error) {
	t := &benchTarget{endpoints: eps}
	for range perEndpoint {
		for _, e := range eps {
			conn, reached, err := a.dialAddr(e, "--endpoints")
			if err != nil {
				t.close()
				return nil, err
			}
			t.conns = append(t.conns, conn)
			t.clients = append(t.clients, rpcpb.NewClusterClient(conn))
			t.reached = append(t.reached, reached)
		}
	}
	return t, nil
}

func (t *benchTarget) close() {
	for _, c := range t.conns {
		_ = c.Close()
	}
}

func (t *benchTarget) client(i int) rpcpb.ClusterClient { return t.clients[i%len(t.clients)] }

func (t *benchTarget) anyReached() bool {
	for _, r := range t.reached {
		if r.Load() {
			return true
		}
	}
	return false
}

// benchErrorMessage is the message a failed operation is grouped by:
// what happened, without the IDs that would make every message unique.
func benchErrorMessage(err error, timeout time.Duration) string {
	var tf *benchTaskFailed
	var tt *benchTaskTimeout
	switch {
	case errors.As(err, &tf):
		return tf.Error()
	case errors.As(err, &tt):
		return fmt.Sprintf("task not final within --timeout %s (still %s)", timeout, taskStateName(tt.state))
	}
	prefix, id := "", ""
	var se *benchStepError
	if errors.As(err, &se) {
		prefix, id, err = se.step+": ", se.id, se.err
	}
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded {
		return prefix + fmt.Sprintf("no answer within --timeout %s", timeout)
	}
	if st, ok := status.FromError(err); ok {
		return prefix + st.Code().String() + ": " + withoutID(oneLine.Replace(st.Message()), id)
	}
	return prefix + withoutID(oneLine.Replace(err.Error()), id)
}

// withoutID replaces a task's ID in msg with "ID", so that one failure of
// many tasks is one message.
func withoutID(msg, id string) string {
	if id == "" {
		return msg
	}
	return strings.ReplaceAll(msg, id, "ID")
}

// howManyFailed says how many of the failures of a run with no success
// g is: "all 20", "15 of 20", "the first 10, then it stopped".
func howManyFailed(g loadgen.ErrorGroup, res loadgen.Result) string {
	switch {
	case res.GaveUp && g.Count == res.Done:
		return fmt.Sprintf("all of the first %s, then the run stopped", commas(res.Done))
	case res.GaveUp:
		return fmt.Sprintf("%s of the first %s, then the run stopped", commas(g.Count), commas(res.Done))
	case g.Count == res.Done:
		return "all " + commas(res.Done)
	}
	return fmt.Sprintf("%s of %s", commas(g.Count), commas(res.Done))
}

// rpcCause is the RPC error inside a bench error, for rpcError.
func rpcCause(err error) error {
	var se *benchStepError
	if errors.As(err, &se) {
		return se.err
	}
	return err
}

func (a *app) runBench(cmd *cobra.Command, o *benchOptions, eps []string, w benchWorkload) error {
	target, err := a.dialBench(eps, o.conns)
	if err != nil {
		return err
	}
	defer target.close()

	ctx, stop := interruptible(cmd.Context())
	defer stop()
	cfg := loadgen.Config{
		Clients:     o.clients,
		Total:       o.total,
		Timeout:     a.timeout,
		GroupKey:    func(err error) string { return benchErrorMessage(err, a.timeout) },
		GiveUpAfter: max(o.clients, benchGiveUpMin),
	}
	errw := cmd.ErrOrStderr()
	var bar *benchProgress
	if !a.jsonOutput() && a.isTerminal != nil && a.isTerminal(errw) {
		bar = &benchProgress{w: errw}
		cfg.Progress, cfg.ProgressEvery = bar.draw, benchProgressDue
	}
	res, err := loadgen.Run(ctx, cfg, func(ctx context.Context, client, seq int) error {
		return w.op(ctx, target.client(client), seq)
	})
	if err != nil {
		return failure(fmt.Sprintf("cannot run the benchmark: %v", err), "check the flags; see '"+cmd.CommandPath()+" --help'")
	}
	bar.end()

	everyOpFailed := res.Done > 0 && res.Succeeded() == 0
	if everyOpFailed && !res.Interrupted {
		// Nothing was measured: one error line about why.
		g := res.ErrorGroups[0]
		if err := w.allFailed(g, res); err != nil {
			return err
		}
		return rpcError(rpcCause(g.First), strings.Join(eps, ", "), a.timeout, target.anyReached())
	}

	out := cmd.OutOrStdout()
	if a.jsonOutput() {
		j := newBenchJSON(w, eps, len(target.conns), res)
		if err := writeJSON(out, j); err != nil {
			return err
		}
	} else if err := printBench(out, w, eps, len(target.conns), res); err != nil {
		return err
	}

	where := "see the errors above"
	if a.jsonOutput() {
		where = "see error_groups in the output"
	}
	switch {
	case res.Interrupted:
		return &cliError{code: exitInterrupted, what: "interrupted",
			hint: fmt.Sprintf("the result covers the %s of %s operations that finished%s", commas(res.Done), commas(res.Total), w.interruptedHint)}
	case res.Errors > 0:
		return failure(fmt.Sprintf("%s of %s operations failed (most often: %s)", commas(res.Errors), commas(res.Done), res.ErrorGroups[0].Message),
			where+"; the nodes' logs may say more")
	}
	return nil
}

// benchJSON is the JSON form of a bench result.
type benchJSON struct {
	Benchmark   string           `json:"benchmark"`
	Endpoints   []string         `json:"endpoints"`
	Conns       int              `json:"conns"`
	Clients     int              `json:"clients"`
	Requested   int              `json:"requested"`
	Total       int              `json:"total"`
	Errors      int              `json:"errors"`
	Interrupted bool             `json:"interrupted"`
	ElapsedSec  float64          `json:"elapsed_sec"`
	RatePerSec  float64          `json:"rate_per_sec"`
	MeanMs      float64          `json:"mean_ms"`
	P50Ms       float64          `json:"p50_ms"`
	P90Ms       float64          `json:"p90_ms"`
	P99Ms       float64          `json:"p99_ms"`
	MaxMs       float64          `json:"max_ms"`
	ValSize     *int             `json:"val_size,omitempty"`
	KeySize     *int             `json:"key_size,omitempty"`
	Command     string           `json:"command,omitempty"`
	ErrorGroups []benchErrorJSON `json:"error_groups"`
}

type benchErrorJSON struct {
	Message string `json:"message"`
	Count   int    `json:"count"`
}

// roundTo rounds x to places decimal places.
func roundTo(x float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(x*p) / p
}

func millis(d time.Duration) float64 { return roundTo(float64(d)/float64(time.Millisecond), 3) }

func newBenchJSON(w benchWorkload, eps []string, conns int, r loadgen.Result) benchJSON {
	st := r.Stats()
	j := benchJSON{
		Benchmark:   w.kind,
		Endpoints:   eps,
		Conns:       conns,
		Clients:     r.Clients,
		Requested:   r.Total,
		Total:       r.Done,
		Errors:      r.Errors,
		Interrupted: r.Interrupted,
		ElapsedSec:  roundTo(r.Elapsed.Seconds(), 6),
		RatePerSec:  roundTo(r.Rate(), 1),
		MeanMs:      millis(st.Mean),
		P50Ms:       millis(st.P50),
		P90Ms:       millis(st.P90),
		P99Ms:       millis(st.P99),
		MaxMs:       millis(st.Max),
		ErrorGroups: []benchErrorJSON{},
	}
	for i, g := range r.ErrorGroups {
		if i == benchErrorGroupsJSON {
			break
		}
		j.ErrorGroups = append(j.ErrorGroups, benchErrorJSON{Message: g.Message, Count: g.Count})
	}
	w.addJSON(&j)
	return j
}

func fmtMillis(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + "ms"
}

// printBench writes the result as a table and the most frequent errors.
func printBench(out io.Writer, w benchWorkload, eps []string, conns int, r loadgen.Result) error {
	tw := newTable(out)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("Benchmark", w.describe)
	row("Endpoints", fmt.Sprintf("%s (%s)", strings.Join(eps, ", "), plural(conns, "connection")))
	row("Clients", commas(r.Clients))
	total := commas(r.Done)
	if r.Interrupted {
		total = fmt.Sprintf("%s of %s (interrupted)", commas(r.Done), commas(r.Total))
	}
	row("Total", total)
	row("Errors", commas(r.Errors))
	row("Elapsed", strconv.FormatFloat(r.Elapsed.Seconds(), 'f', 3, 64)+"s")
	row("Rate", formatRate(r.Rate())+" ops/s")
	if st := r.Stats(); st.Count > 0 {
		row("Latency", fmt.Sprintf("mean %s, p50 %s, p90 %s, p99 %s, max %s",
			fmtMillis(st.Mean), fmtMillis(st.P50), fmtMillis(st.P90), fmtMillis(st.P99), fmtMillis(st.Max)))
	} else {
		row("Latency", "- (no operation succeeded)")
	}
	if err := flushTable(tw); err != nil {
		return err
	}
	if len(r.ErrorGroups) == 0 {
		return nil
	}
	fmt.Fprintln(out, "\nErrors by message:")
	for i, g := range r.ErrorGroups {
		if i == benchErrorLines {
			more, s := len(r.ErrorGroups)-i, "s"
			if more == 1 {
				s = ""
			}
			fmt.Fprintf(out, "  … and %s more message%s\n", commas(more), s)
			break
		}
		fmt.Fprintf(out, "  %8s  %s\n", commas(g.Count), g.Message)
	}
	return nil
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return commas(n) + " " + word + "s"
}

// commas formats n with thousands separators: 12,345.
func commas(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// formatRate formats a rate with one decimal and thousands separators.
func formatRate(r float64) string {
	tenths := int(math.Round(r * 10))
	return fmt.Sprintf("%s.%d", commas(tenths/10), tenths%10)
}

// benchProgress draws "[#####     ] 4,000/10,000  1,234/s" on a
// terminal, redrawn in place. A nil *benchProgress draws nothing. Calls
// never overlap (loadgen makes them one after another).
type benchProgress struct {
	w     io.Writer
	drawn bool
}

const benchBarWidth = 20

// benchBar is the progress line for p.
func benchBar(p loadgen.Progress) string {
	filled := 0
	if p.Total > 0 {
		filled = min(p.Done*benchBarWidth/p.Total, benchBarWidth)
	}
	rate := 0
	if s := p.Elapsed.Seconds(); s > 0 {
		rate = int(math.Round(float64(p.Done) / s))
	}
	line := fmt.Sprintf("[%s%s] %s/%s  %s/s", strings.Repeat("#", filled), strings.Repeat(" ", benchBarWidth-filled),
		commas(p.Done), commas(p.Total), commas(rate))
	if p.Errors > 0 {
		line += fmt.Sprintf("  %s failed", commas(p.Errors))
	}
	return line
}

func (b *benchProgress) draw(p loadgen.Progress) {
	// \r back to the line's start, \x1b[K erases what a longer line left.
	fmt.Fprint(b.w, "\r"+benchBar(p)+"\x1b[K")
	b.drawn = true
}

// end finishes the drawn line so that what follows starts on its own.
func (b *benchProgress) end() {
	if b != nil && b.drawn {
		fmt.Fprintln(b.w)
	}
}
