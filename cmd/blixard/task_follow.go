package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

const (
	// waitCallTimeout is the deadline of each WaitTask call; the wait is
	// re-issued when it passes.
	waitCallTimeout = 30 * time.Second
	// exitInterrupted is the exit code when the command is interrupted
	// while waiting (128 + SIGINT).
	exitInterrupted = 130
)

// Retry pacing.
var (
	submitBackoff = pacer{base: 50 * time.Millisecond, max: time.Second}
	retryBackoff  = pacer{base: 50 * time.Millisecond, max: time.Second}
	pollBackoff   = pacer{base: 100 * time.Millisecond, max: time.Second}
)

// pacer yields doubling delays from base up to max.
type pacer struct {
	base, max, cur time.Duration
}

func (b *pacer) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.base
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *pacer) reset() { b.cur = 0 }

// sleepCtx waits for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// troubleClock measures how long a streak of failures has lasted.
type troubleClock struct{ since time.Time }

func (c *troubleClock) ok() { c.since = time.Time{} }

// failed records a failure and reports whether the streak has lasted
// longer than limit.
func (c *troubleClock) failed(limit time.Duration) bool {
	if c.since.IsZero() {
		c.since = time.Now()
		return false
	}
	return time.Since(c.since) > limit
}

// taskConn is a connection to the cluster for the task commands, which
// make several, sometimes long, calls.
type taskConn struct {
	a       *app
	conn    *grpc.ClientConn
	c       rpcpb.ClusterClient
	reached *atomic.Bool
	// created is the ID of the task this command submitted: NotFound for
	// it can only be a node that has not caught up yet, so it is retried.
	created string
}

func (a *app) dialTasks(cmd *cobra.Command) (*taskConn, error) {
	conn, reached, err := a.dial(cmd)
	if err != nil {
		return nil, err
	}
	return &taskConn{a: a, conn: conn, c: rpcpb.NewClusterClient(conn), reached: reached}, nil
}

func (tc *taskConn) close() { _ = tc.conn.Close() }

// taskNotFound is the error for an unknown task ID.
func taskNotFound(id string) error {
	return failure(fmt.Sprintf("task %q not found", id), "list tasks with 'blixard task list'")
}

// mapErr turns an RPC error into its one-line form; id, if set, names the
// task the call was about.
func (tc *taskConn) mapErr(err error, id string) error {
	var ce *cliError
	if errors.As(err, &ce) {
		return err
	}
	if id != "" && status.Code(err) == codes.NotFound {
		return taskNotFound(id)
	}
	return rpcError(err, tc.a.addr, tc.a.timeout, tc.reached.Load())
}

// retryable reports whether code is worth another try of the same call:
// the node is reachable but between leaders, busy, or the connection broke.
func (tc *taskConn) retryable(code codes.Code) bool {
	switch code {
	case codes.Unavailable:
		// Nothing ever answered at --addr: fail fast rather than retry.
		return tc.reached.Load()
	case codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

// transient reports whether err, from a call about task id, is worth
// retrying.
func (tc *taskConn) transient(err error, id string) bool {
	code := status.Code(err)
	return tc.retryable(code) || (code == codes.NotFound && id != "" && id == tc.created)
}

// get fetches one task under --timeout.
func (tc *taskConn) get(ctx context.Context, id string) (*blixardpb.Task, error) {
	ctx, cancel := context.WithTimeout(ctx, tc.a.timeout)
	defer cancel()
	resp, err := tc.c.GetTask(ctx, &blixardpb.GetTaskRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return resp.GetTask(), nil
}

// getRetrying fetches one task, retrying transient failures for up to
// --timeout.
func (tc *taskConn) getRetrying(ctx context.Context, id string) (*blixardpb.Task, error) {
	bo := retryBackoff
	var trouble troubleClock
	for {
		t, err := tc.get(ctx, id)
		if err == nil {
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !(tc.transient(err, id) || status.Code(err) == codes.DeadlineExceeded) || trouble.failed(tc.a.timeout) {
			return nil, tc.mapErr(err, id)
		}
		if err := sleepCtx(ctx, bo.next()); err != nil {
			return nil, err
		}
	}
}

// submit calls SubmitTask, retrying with the same request (and so the same
// idempotency key) on Unavailable and DeadlineExceeded until --timeout has
// passed. The key makes a retried submit return the task the first call
// may already have created, e.g. just before a leader change.
func (tc *taskConn) submit(ctx context.Context, req *blixardpb.SubmitTaskRequest) (*blixardpb.Task, error) {
	overall := tc.a.timeout
	ctx, cancel := context.WithTimeout(ctx, overall)
	defer cancel()
	perCall := max(overall/3, time.Second)
	bo := submitBackoff
	for {
		callCtx, callCancel := context.WithTimeout(ctx, perCall)
		resp, err := tc.c.SubmitTask(callCtx, req)
		callCancel()
		if err == nil {
			return resp.GetTask(), nil
		}
		code := status.Code(err)
		retry := code == codes.DeadlineExceeded || (code == codes.Unavailable && tc.reached.Load())
		if !retry || ctx.Err() != nil {
			return nil, tc.mapErr(err, "")
		}
		if sleepCtx(ctx, bo.next()) != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, tc.mapErr(err, "") // the last reason it did not work
			}
			return nil, tc.mapErr(ctx.Err(), "")
		}
	}
}

// interruptedWaiting is the error when the user stops a wait.
func interruptedWaiting(ids ...string) error {
	what := "the tasks keep running; see 'blixard task list'"
	if len(ids) == 1 {
		what = fmt.Sprintf("task %s keeps running; see 'blixard task status %s'", ids[0], ids[0])
	}
	return &cliError{code: exitInterrupted, what: "interrupted", hint: what}
}

// waitFinal blocks until task id is in a final state. Each WaitTask call
// has its own deadline and is re-issued when it passes; transient errors
// are retried for up to --timeout in a row.
func (tc *taskConn) waitFinal(ctx context.Context, id string) (*blixardpb.Task, error) {
	bo := retryBackoff
	var trouble troubleClock
	for {
		start := time.Now()
		callCtx, cancel := context.WithTimeout(ctx, waitCallTimeout)
		resp, err := tc.c.WaitTask(callCtx, &blixardpb.WaitTaskRequest{Id: id})
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var pause bool
		switch code := status.Code(err); {
		case err == nil:
			trouble.ok()
			if t := resp.GetTask(); isFinalState(t.GetState()) {
				return t, nil
			}
			// Answered without a final state: ask again, without spinning.
			pause = true
		case code == codes.DeadlineExceeded:
			// The task is not final yet; a quick answer means the server's
			// own limit is short, so pace the calls.
			trouble.ok()
			pause = time.Since(start) < time.Second
			if !pause {
				bo.reset()
			}
		case tc.transient(err, id):
			if trouble.failed(tc.a.timeout) {
				return nil, tc.mapErr(err, id)
			}
			pause = true
		default:
			return nil, tc.mapErr(err, id)
		}
		if pause {
			if err := sleepCtx(ctx, bo.next()); err != nil {
				return nil, err
			}
		}
	}
}

// errWrite marks a failure to write output (not the cluster's fault).
type errWrite struct{ err error }

func (e errWrite) Error() string { return e.err.Error() }

// errIncomplete is a log stream that broke after its attempt ended, so
// what was printed may be missing its end.
type errIncomplete struct {
	attempt uint32
	err     error
}

func (e errIncomplete) Error() string {
	return fmt.Sprintf("output of attempt %d may be incomplete: %v", e.attempt, e.err)
}

// copyLogs opens one TaskLogs stream at offset and copies it to w. It
// returns the number of bytes written and nil at the end of the stream.
func (tc *taskConn) copyLogs(ctx context.Context, req *blixardpb.TaskLogsRequest, w io.Writer) (int64, error) {
	if !req.GetFollow() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, tc.a.timeout)
		defer cancel()
	}
	stream, err := tc.c.TaskLogs(ctx, req)
	if err != nil {
		return 0, err
	}
	var n int64
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		m, werr := w.Write(chunk.GetData())
		n += int64(m)
		if werr != nil {
			return n, errWrite{werr}
		}
	}
}

// attemptOver reports whether attempt n of task id has finished: it is in
// a final state, a later attempt exists, or the task is final.
func (tc *taskConn) attemptOver(ctx context.Context, id string, n uint32) (bool, error) {
	t, err := tc.get(ctx, id)
	if err != nil {
		return false, err
	}
	at := findAttempt(t, n)
	return at == nil || isFinalState(t.GetState()) || isFinalState(at.GetState()) ||
		latestAttempt(t).GetNumber() > n, nil
}

// streamAttempt writes attempt n's stdout (or stderr) to w from the start.
// Without follow it copies what there is; with follow it keeps going
// until the attempt has finished. Broken streams are re-opened at the
// byte offset reached. If the stream keeps failing after the attempt has
// finished, it returns errIncomplete.
func (tc *taskConn) streamAttempt(ctx context.Context, id string, n uint32, stderr, follow bool, w io.Writer) error {
	var offset int64
	bo := retryBackoff
	var trouble troubleClock
	for {
		req := &blixardpb.TaskLogsRequest{Id: id, Attempt: n, Stderr: stderr, Follow: follow, Offset: offset}
		opened := time.Now()
		got, err := tc.copyLogs(ctx, req, w)
		offset += got
		// Output, or a stream that stayed open a good while, ends a
		// streak of failures.
		if got > 0 || time.Since(opened) > tc.a.timeout {
			trouble.ok()
			bo.reset()
		}
		if err == nil && !follow {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var we errWrite
		if errors.As(err, &we) {
			return failure("cannot write output: "+we.err.Error(), "check where the output goes")
		}
		code := status.Code(err)
		if err != nil && !follow {
			if !(tc.retryable(code) || code == codes.DeadlineExceeded || code == codes.Internal) || trouble.failed(tc.a.timeout) {
				return tc.logsErr(err, id, n)
			}
		}
		if follow {
			over, gerr := tc.attemptOver(ctx, id, n)
			switch {
			case gerr != nil:
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if !(tc.transient(gerr, id) || status.Code(gerr) == codes.DeadlineExceeded) || trouble.failed(tc.a.timeout) {
					return tc.mapErr(gerr, id)
				}
			case over && err == nil:
				return nil // the normal end
			case over:
				return errIncomplete{attempt: n, err: tc.logsErr(err, id, n)}
			case err == nil:
				// The stream ended cleanly but the attempt goes on (the
				// server closed it early): open it again, paced, for as
				// long as the attempt lasts.
			case code == codes.NotFound || code == codes.FailedPrecondition:
				// The attempt has not produced its log yet (not started):
				// keep trying for as long as it lasts.
			case tc.retryable(code) || code == codes.DeadlineExceeded || code == codes.Internal || code == codes.Unknown:
				if trouble.failed(tc.a.timeout) {
					return tc.logsErr(err, id, n)
				}
			default:
				return tc.logsErr(err, id, n)
			}
		}
		if err := sleepCtx(ctx, bo.next()); err != nil {
			return err
		}
	}
}

// logsErr maps a TaskLogs error: NotFound there is about the attempt's
// log, the task itself having been found.
func (tc *taskConn) logsErr(err error, id string, n uint32) error {
	if st, ok := status.FromError(err); ok && st.Code() == codes.NotFound {
		return failure(fmt.Sprintf("no output for attempt %d of task %s: %s", n, id, st.Message()),
			fmt.Sprintf("see 'blixard task status %s'", id))
	}
	return tc.mapErr(err, "")
}

// followAttempts writes task id's output as it is produced, from its
// latest attempt and then from every later one, until the task is final.
// Attempts whose output could not be streamed completely are reported to
// warn. final, once closed, says the task is known to be final.
func (tc *taskConn) followAttempts(ctx context.Context, id string, stderr bool, w io.Writer,
	final <-chan struct{}, warn func(error)) error {
	var done uint32 // attempts up to this number have been streamed
	poll := pollBackoff
	for {
		t, err := tc.getRetrying(ctx, id)
		if err != nil {
			return err
		}
		if latest := latestAttempt(t); latest != nil && latest.GetNumber() > done {
			n := latest.GetNumber()
			err := tc.streamAttempt(ctx, id, n, stderr, true, w)
			var inc errIncomplete
			switch {
			case errors.As(err, &inc):
				warn(inc)
			case err != nil:
				return err
			}
			done = n
			poll.reset()
			continue
		}
		if isFinalState(t.GetState()) {
			return nil
		}
		// Pending (not placed yet, or waiting to retry): look again soon.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-final:
			final = nil
		case <-time.After(poll.next()):
		}
	}
}

// lockedWriter serializes writes from several goroutines.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// followTask streams task id's stdout to stdout and its stderr to stderr
// while waiting for it to be final, and returns the final task. Problems
// with the output alone are reported as warnings on stderr; they do not
// stop the wait.
func (tc *taskConn) followTask(ctx context.Context, id string, stdout, stderr io.Writer) (*blixardpb.Task, error) {
	var mu sync.Mutex
	stderr = lockedWriter{&mu, stderr}
	warn := func(err error) {
		fmt.Fprintf(stderr, "warning: task %s: %s\n", id, oneLine.Replace(err.Error()))
	}

	streamCtx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	final := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range []struct {
		stderr bool
		w      io.Writer
	}{{false, stdout}, {true, stderr}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tc.followAttempts(streamCtx, id, s.stderr, s.w, final, warn); err != nil && streamCtx.Err() == nil {
				warn(err)
			}
		}()
	}

	t, err := tc.waitFinal(ctx, id)
	if err != nil {
		stopStreams()
		wg.Wait()
		return nil, err
	}
	close(final)
	// The streams end by themselves once the last attempt's output is
	// written; do not hang on one that does not.
	grace := time.AfterFunc(max(tc.a.timeout, 5*time.Second), stopStreams)
	wg.Wait()
	grace.Stop()
	return t, nil
}
