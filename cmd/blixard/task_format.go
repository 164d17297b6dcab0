package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/api/blixardpb"
)

// taskStates maps the CLI's state names to the wire enum, in lifecycle
// order.
var taskStates = []struct {
	name  string
	state blixardpb.TaskState
}{
	{"pending", blixardpb.TaskState_TASK_STATE_PENDING},
	{"assigned", blixardpb.TaskState_TASK_STATE_ASSIGNED},
	{"running", blixardpb.TaskState_TASK_STATE_RUNNING},
	{"succeeded", blixardpb.TaskState_TASK_STATE_SUCCEEDED},
	{"failed", blixardpb.TaskState_TASK_STATE_FAILED},
	{"cancelled", blixardpb.TaskState_TASK_STATE_CANCELLED},
	{"timed_out", blixardpb.TaskState_TASK_STATE_TIMED_OUT},
	{"lost", blixardpb.TaskState_TASK_STATE_LOST},
}

func taskStateName(s blixardpb.TaskState) string {
	for _, ts := range taskStates {
		if ts.state == s {
			return ts.name
		}
	}
	return "unknown"
}

func parseTaskState(name string) (blixardpb.TaskState, bool) {
	for _, ts := range taskStates {
		if ts.name == name {
			return ts.state, true
		}
	}
	return 0, false
}

func taskStateNames() string {
	names := make([]string, len(taskStates))
	for i, ts := range taskStates {
		names[i] = ts.name
	}
	return strings.Join(names, ", ")
}

// isFinalState reports whether a task (or attempt) in state s will not
// change any more.
func isFinalState(s blixardpb.TaskState) bool {
	switch s {
	case blixardpb.TaskState_TASK_STATE_SUCCEEDED, blixardpb.TaskState_TASK_STATE_FAILED,
		blixardpb.TaskState_TASK_STATE_CANCELLED, blixardpb.TaskState_TASK_STATE_TIMED_OUT,
		blixardpb.TaskState_TASK_STATE_LOST:
		return true
	}
	return false
}

// sortedAttempts returns t's attempts by number.
func sortedAttempts(t *blixardpb.Task) []*blixardpb.Attempt {
	as := slices.Clone(t.GetAttempts())
	slices.SortFunc(as, func(x, y *blixardpb.Attempt) int { return cmp.Compare(x.GetNumber(), y.GetNumber()) })
	return as
}

// latestAttempt returns t's attempt with the highest number, or nil.
func latestAttempt(t *blixardpb.Task) *blixardpb.Attempt {
	var latest *blixardpb.Attempt
	for _, a := range t.GetAttempts() {
		if latest == nil || a.GetNumber() > latest.GetNumber() {
			latest = a
		}
	}
	return latest
}

func findAttempt(t *blixardpb.Task, n uint32) *blixardpb.Attempt {
	for _, a := range t.GetAttempts() {
		if a.GetNumber() == n {
			return a
		}
	}
	return nil
}

// attemptExitCode is the exit code of a finished attempt, or nil while it
// runs or when it has no result (lost).
func attemptExitCode(a *blixardpb.Attempt) *int32 {
	if a == nil || a.GetResult() == nil || !isFinalState(a.GetState()) ||
		a.GetState() == blixardpb.TaskState_TASK_STATE_LOST {
		return nil
	}
	c := a.GetResult().GetExitCode()
	return &c
}

// taskExitCode is the exit code of a finished task: its latest attempt's.
func taskExitCode(t *blixardpb.Task) *int32 {
	if !isFinalState(t.GetState()) {
		return nil
	}
	return attemptExitCode(latestAttempt(t))
}

// taskStartedAt is when the task's first attempt started, or 0.
func taskStartedAt(t *blixardpb.Task) int64 {
	for _, a := range sortedAttempts(t) {
		if a.GetStartedAtUnixNano() != 0 {
			return a.GetStartedAtUnixNano()
		}
	}
	return 0
}

// taskJSON is the JSON form of a task ('task status', 'task list', ...).
type taskJSON struct {
	ID          string        `json:"id"`
	Name        string        `json:"name"`
	State       string        `json:"state"`
	ExitCode    *int32        `json:"exit_code"`
	Worker      *uint64       `json:"worker"`
	Attempt     uint32        `json:"attempt"`
	Attempts    []attemptJSON `json:"attempts"`
	CreatedAt   *string       `json:"created_at"`
	StartedAt   *string       `json:"started_at"`
	FinishedAt  *string       `json:"finished_at"`
	Command     string        `json:"command"`
	Args        []string      `json:"args"`
	Priority    int32         `json:"priority"`
	CPU         float64       `json:"cpu"`
	MemoryMiB   int64         `json:"memory_mib"`
	RetriesUsed uint32        `json:"retries_used"`
	MaxRetries  int32         `json:"max_retries"`
	// PendingReason says why a pending task waits ("" when unknown).
	PendingReason string `json:"pending_reason,omitempty"`
}

type attemptJSON struct {
	Number     uint32  `json:"number"`
	Worker     uint64  `json:"worker"`
	State      string  `json:"state"`
	ExitCode   *int32  `json:"exit_code"`
	Signal     *string `json:"signal"`
	AssignedAt *string `json:"assigned_at"`
	StartedAt  *string `json:"started_at"`
	FinishedAt *string `json:"finished_at"`
	OOMKilled  bool    `json:"oom_killed"`
	TimedOut   bool    `json:"timed_out"`
	Error      *string `json:"error"`
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func toTaskJSON(t *blixardpb.Task) taskJSON {
	spec := t.GetSpec()
	out := taskJSON{
		ID:            t.GetId(),
		Name:          spec.GetName(),
		State:         taskStateName(t.GetState()),
		ExitCode:      taskExitCode(t),
		Attempts:      []attemptJSON{},
		CreatedAt:     timeJSON(t.GetCreatedAtUnixNano()),
		StartedAt:     timeJSON(taskStartedAt(t)),
		FinishedAt:    timeJSON(t.GetFinishedAtUnixNano()),
		Command:       spec.GetCommand(),
		Args:          append([]string{}, spec.GetArgs()...),
		Priority:      spec.GetPriority(),
		CPU:           cores(spec.GetResources().GetCpuMillis()),
		MemoryMiB:     spec.GetResources().GetMemoryMib(),
		RetriesUsed:   t.GetRetriesUsed(),
		MaxRetries:    spec.GetMaxRetries(),
		PendingReason: t.GetPendingReason(),
	}
	if latest := latestAttempt(t); latest != nil {
		w := latest.GetWorkerId()
		out.Worker = &w
		out.Attempt = latest.GetNumber()
	}
	for _, a := range sortedAttempts(t) {
		r := a.GetResult()
		out.Attempts = append(out.Attempts, attemptJSON{
			Number:     a.GetNumber(),
			Worker:     a.GetWorkerId(),
			State:      taskStateName(a.GetState()),
			ExitCode:   attemptExitCode(a),
			Signal:     nullString(r.GetSignal()),
			AssignedAt: timeJSON(a.GetAssignedAtUnixNano()),
			StartedAt:  timeJSON(a.GetStartedAtUnixNano()),
			FinishedAt: timeJSON(a.GetFinishedAtUnixNano()),
			OOMKilled:  r.GetOomKilled(),
			TimedOut:   r.GetTimedOut(),
			Error:      nullString(r.GetError()),
		})
	}
	return out
}

func tasksJSON(ts []*blixardpb.Task) []taskJSON {
	out := []taskJSON{}
	for _, t := range ts {
		out = append(out, toTaskJSON(t))
	}
	return out
}

// sortTasks orders tasks by submission: raft sequence, then creation time,
// then ID.
func sortTasks(ts []*blixardpb.Task) []*blixardpb.Task {
	ts = slices.Clone(ts)
	slices.SortFunc(ts, func(x, y *blixardpb.Task) int {
		return cmp.Or(
			cmp.Compare(x.GetSeq(), y.GetSeq()),
			cmp.Compare(x.GetCreatedAtUnixNano(), y.GetCreatedAtUnixNano()),
			cmp.Compare(x.GetId(), y.GetId()))
	})
	return ts
}

// age renders how long before now t was, compactly: 45s, 3m20s, 12m,
// 5h3m, 2d4h.
func age(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", s)
	case d < 10*time.Minute:
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	case d < time.Hour:
		return fmt.Sprintf("%dm", s/60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
	}
}

func exitCell(c *int32) string {
	if c == nil {
		return "-"
	}
	return strconv.Itoa(int(*c))
}

// printTaskTable writes the 'task list' table.
func (a *app) printTaskTable(w io.Writer, ts []*blixardpb.Task) error {
	now := a.now()
	tw := newTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tWORKER\tATTEMPT\tEXIT\tAGE")
	for _, t := range ts {
		worker, attempt := "-", "-"
		if l := latestAttempt(t); l != nil {
			worker = strconv.FormatUint(l.GetWorkerId(), 10)
			attempt = strconv.FormatUint(uint64(l.GetNumber()), 10)
		}
		created := "-"
		if c := t.GetCreatedAtUnixNano(); c != 0 {
			created = age(now, time.Unix(0, c))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			dash(t.GetId()), dash(t.GetSpec().GetName()), taskStateName(t.GetState()),
			worker, attempt, exitCell(taskExitCode(t)), created)
	}
	return flushTable(tw)
}

// printTaskDetail writes the 'task status' key/value block and attempts
// table.
func (a *app) printTaskDetail(w io.Writer, t *blixardpb.Task) error {
	now := a.now()
	spec := t.GetSpec()
	when := func(unixNano int64) string {
		if unixNano == 0 {
			return "-"
		}
		tm := time.Unix(0, unixNano)
		return tm.UTC().Format(time.RFC3339) + " (" + age(now, tm) + " ago)"
	}
	state := taskStateName(t.GetState())
	if t.GetCancelRequested() && !isFinalState(t.GetState()) {
		state += " (cancel requested)"
	}
	worker, attempt := "-", "-"
	if l := latestAttempt(t); l != nil {
		worker = strconv.FormatUint(l.GetWorkerId(), 10)
		attempt = strconv.FormatUint(uint64(l.GetNumber()), 10)
	}
	cpu := "-"
	if m := spec.GetResources().GetCpuMillis(); m != 0 {
		cpu = formatCores(m)
	}
	memory := "-"
	if m := spec.GetResources().GetMemoryMib(); m != 0 {
		memory = fmt.Sprintf("%dMiB", m)
	}
	tw := newTable(w)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", dash(t.GetId()))
	row("Name", dash(spec.GetName()))
	row("State", state)
	if r := t.GetPendingReason(); r != "" {
		row("Waiting", r)
	}
	row("Exit code", exitCell(taskExitCode(t)))
	row("Worker", worker)
	row("Attempt", attempt)
	row("Retries", fmt.Sprintf("%d of %d used", t.GetRetriesUsed(), spec.GetMaxRetries()))
	row("Command", dash(shellJoin(append([]string{spec.GetCommand()}, spec.GetArgs()...))))
	row("Priority", strconv.Itoa(int(spec.GetPriority())))
	row("CPU", cpu)
	row("Memory", memory)
	row("Created", when(t.GetCreatedAtUnixNano()))
	row("Started", when(taskStartedAt(t)))
	row("Finished", when(t.GetFinishedAtUnixNano()))
	if err := flushTable(tw); err != nil {
		return err
	}
	attempts := sortedAttempts(t)
	if len(attempts) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintln(tw, "ATTEMPT\tWORKER\tSTATE\tEXIT\tSIGNAL\tSTARTED\tDURATION\tNOTE")
	for _, at := range attempts {
		r := at.GetResult()
		started, duration := "-", "-"
		if s := at.GetStartedAtUnixNano(); s != 0 {
			started = age(now, time.Unix(0, s)) + " ago"
			end := now
			if f := at.GetFinishedAtUnixNano(); f != 0 {
				end = time.Unix(0, f)
			}
			duration = end.Sub(time.Unix(0, s)).Round(time.Millisecond).String()
		}
		var notes []string
		if r.GetOomKilled() {
			notes = append(notes, "out of memory")
		}
		if r.GetTimedOut() {
			notes = append(notes, "timed out")
		}
		if e := r.GetError(); e != "" {
			notes = append(notes, oneLine.Replace(e))
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n",
			at.GetNumber(), at.GetWorkerId(), taskStateName(at.GetState()), exitCell(attemptExitCode(at)),
			dash(r.GetSignal()), started, duration, dash(strings.Join(notes, "; ")))
	}
	return flushTable(tw)
}

// shellJoin renders a command line, quoting words a POSIX shell would
// split or expand.
func shellJoin(words []string) string {
	if len(words) == 1 && words[0] == "" {
		return ""
	}
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = shellQuote(w)
	}
	return strings.Join(out, " ")
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("_@%+=:,./-", r):
		default:
			safe = false
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
