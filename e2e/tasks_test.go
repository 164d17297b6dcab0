package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

func client(t testing.TB, addr string) rpcpb.ClusterClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return rpcpb.NewClusterClient(cc)
}

// submitRetrying submits with a fixed idempotency key, retrying through
// every node until one acknowledges, as a careful client does.
func submitRetrying(ctx context.Context, clients []rpcpb.ClusterClient, spec *pb.TaskSpec, key string) (*pb.Task, error) {
	var last error
	for i := 0; ctx.Err() == nil; i++ {
		c := clients[i%len(clients)]
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := c.SubmitTask(cctx, &pb.SubmitTaskRequest{Spec: spec, IdempotencyKey: key})
		cancel()
		if err == nil {
			return resp.Task, nil
		}
		last = err
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // retry pacing
		}
	}
	return nil, fmt.Errorf("submit %s: %v (last error %v)", key, ctx.Err(), last)
}

func waitFinal(t testing.TB, c rpcpb.ClusterClient, id string, d time.Duration) *pb.Task {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.WaitTask(ctx, &pb.WaitTaskRequest{Id: id})
		cancel()
		if err == nil {
			return resp.Task
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s not final after %v: %v", id, d, err)
		}
	}
}

func clients(t testing.TB, c *cluster) []rpcpb.ClusterClient {
	var out []rpcpb.ClusterClient
	for id := uint64(1); id <= uint64(len(c.nodes)); id++ {
		if n, ok := c.nodes[id]; ok {
			out = append(out, c.client(t, n.addr))
		}
	}
	return out
}

func TestTwoHundredTasksCompleteWithCorrectOutput(t *testing.T) {
	c := threeNodes(t)
	cls := clients(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ids := make([]string, 200)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			spec := &pb.TaskSpec{Command: "/bin/sh", Args: []string{"-c", fmt.Sprintf("echo out-%d; echo err-%d >&2", i, i)}}
			task, err := submitRetrying(ctx, cls, spec, fmt.Sprint("two-hundred-", i))
			if err != nil {
				errs <- err
				return
			}
			ids[i] = task.Id
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	workers := map[uint64]int{}
	for i, id := range ids {
		task := waitFinal(t, cls[i%3], id, time.Minute)
		if task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("task %s: %v", id, task)
		}
		a := task.Attempts[len(task.Attempts)-1]
		if got, want := string(a.Result.StdoutTail), fmt.Sprintf("out-%d\n", i); got != want {
			t.Fatalf("task %s stdout %q, want %q", id, got, want)
		}
		if got, want := string(a.Result.StderrTail), fmt.Sprintf("err-%d\n", i); got != want {
			t.Fatalf("task %s stderr %q, want %q", id, got, want)
		}
		workers[a.WorkerId]++
	}
	t.Logf("tasks per worker: %v", workers)
	// Logs are served from the worker that ran the task, through any node.
	out, errOut, err := cli(c.nodes[1].addr, "task", "logs", ids[7])
	if err != nil || out != "out-7\n" {
		t.Fatalf("task logs via node 1: %q %v %s", out, err, errOut)
	}
}

func TestFailingTaskRetriedExactlyN(t *testing.T) {
	c := threeNodes(t)
	out, errOut, err := cli(c.nodes[2].addr, "--output", "json", "task", "submit", "--retries", "2", "--backoff-base", "200ms", "--", "/bin/sh", "-c", "exit 3")
	if err != nil {
		t.Fatalf("submit: %v %s", err, errOut)
	}
	id := jsonField(t, out, "id")
	task := waitFinal(t, client(t, c.nodes[1].addr), id, time.Minute)
	if task.State != pb.TaskState_TASK_STATE_FAILED || len(task.Attempts) != 3 || task.RetriesUsed != 2 {
		t.Fatalf("want failed after exactly 3 attempts, got %v with %d attempts", task.State, len(task.Attempts))
	}
	for i, a := range task.Attempts {
		if a.Result.GetExitCode() != 3 {
			t.Fatalf("attempt %d exit %d, want 3", a.Number, a.Result.GetExitCode())
		}
		// Each retry waits out its backoff (200 ms, then 400 ms) and is
		// placed when it ends, with no applied entry to wake the
		// scheduler: the pass's own wake-up does.
		if i > 0 {
			prev := task.Attempts[i-1]
			gap := time.Duration(a.AssignedAtUnixNano - prev.FinishedAtUnixNano)
			if want := time.Duration(100<<i) * time.Millisecond; gap < want {
				t.Errorf("attempt %d placed %v after attempt %d finished, before its %v backoff ended", a.Number, gap, prev.Number, want)
			}
		}
	}
	// --wait exits with the task's exit code.
	_, _, err = cli(c.nodes[3].addr, "task", "submit", "--wait", "--", "/bin/sh", "-c", "exit 5")
	if code := exitCode(err); code != 5 {
		t.Fatalf("submit --wait exit code %d (%v), want 5", code, err)
	}
}

func TestTooBigTaskWaitsForRoom(t *testing.T) {
	c := newCluster(t)
	n1 := c.add(1, "--bootstrap", "--cpu", "1")
	c.add(2, "--join", n1.addr, "--cpu", "1")
	c.add(3, "--join", n1.addr, "--cpu", "1")
	c.waitVoters(n1, 1, 2, 3)
	cl := client(t, n1.addr)
	gate := filepath.Join(sharedDir(t), "gate")
	hold := &pb.TaskSpec{Command: "/bin/sh", Args: []string{"-c", fmt.Sprintf("while [ ! -f %s ]; do sleep 0.02; done", gate)}, Resources: &pb.Resources{CpuMillis: 1000}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var holders []string
	for i := 0; i < 3; i++ {
		task, err := submitRetrying(ctx, []rpcpb.ClusterClient{cl}, hold, fmt.Sprint("hold-", i))
		if err != nil {
			t.Fatal(err)
		}
		holders = append(holders, task.Id)
	}
	for _, id := range holders {
		waitFor(t, 30*time.Second, id+" running", func() (bool, string) {
			r, err := cl.GetTask(ctx, &pb.GetTaskRequest{Id: id})
			return err == nil && r.Task.State == pb.TaskState_TASK_STATE_RUNNING, fmt.Sprint(r, err)
		})
	}
	big, err := submitRetrying(ctx, []rpcpb.ClusterClient{cl}, &pb.TaskSpec{Command: "/bin/true", Resources: &pb.Resources{CpuMillis: 1000}}, "big")
	if err != nil {
		t.Fatal(err)
	}
	// Every worker is full: it waits.
	r, err := cl.GetTask(ctx, &pb.GetTaskRequest{Id: big.Id})
	if err != nil || r.Task.State != pb.TaskState_TASK_STATE_PENDING {
		t.Fatalf("big task while all workers are full: %v %v", r, err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if task := waitFinal(t, cl, big.Id, time.Minute); task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("big task after room appeared: %v", task)
	}
}

func TestWorkerKilledMidTaskTaskCompletesElsewhere(t *testing.T) {
	c := threeNodes(t)
	cl := clients(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	task, err := submitRetrying(ctx, cl, &pb.TaskSpec{Command: "/bin/sh", Args: []string{"-c", "sleep 2; echo finished"}}, "long")
	if err != nil {
		t.Fatal(err)
	}
	var runner uint64
	waitFor(t, 30*time.Second, "task running", func() (bool, string) {
		r, err := cl[0].GetTask(ctx, &pb.GetTaskRequest{Id: task.Id})
		if err != nil || r.Task.State != pb.TaskState_TASK_STATE_RUNNING {
			return false, fmt.Sprint(r, err)
		}
		runner = r.Task.Attempts[len(r.Task.Attempts)-1].WorkerId
		return true, ""
	})
	// Whichever node runs it (leader or not), kill it.
	c.nodes[runner].kill9()
	var survivor rpcpb.ClusterClient
	for id, n := range c.nodes {
		if id != runner {
			survivor = client(t, n.addr)
			break
		}
	}
	final := waitFinal(t, survivor, task.Id, time.Minute)
	if final.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("task after its worker died: %v", final)
	}
	last := final.Attempts[len(final.Attempts)-1]
	if last.WorkerId == runner || len(final.Attempts) < 2 || final.Attempts[0].State != pb.TaskState_TASK_STATE_LOST {
		t.Fatalf("want a lost first attempt on %d and success elsewhere, got %v", runner, final)
	}
}

func TestLeaderKilledDuringSubmissionsNothingLostNothingDuplicated(t *testing.T) {
	c := threeNodes(t)
	cls := clients(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lead := leaderOf(t, c)
	const n = 500
	acked := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	started := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i == n/4 {
				close(started)
			}
			task, err := submitRetrying(ctx, cls, &pb.TaskSpec{Command: "/bin/true"}, fmt.Sprint("storm-", i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if task != nil {
				acked[i] = task.Id
			}
		}(i)
	}
	<-started
	lead.kill9()
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	var live rpcpb.ClusterClient
	for id, nd := range c.nodes {
		if nd != lead {
			live = cls[id-1]
			break
		}
	}
	seen := map[string]int{}
	for i, id := range acked {
		if id == "" {
			t.Fatalf("submission %d never acknowledged", i)
		}
		seen[id]++
	}
	if len(seen) != n {
		t.Fatalf("%d distinct tasks for %d keys: a retry created a duplicate or two keys shared a task", len(seen), n)
	}
	list, err := live.ListTasks(ctx, &pb.ListTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Tasks) != n {
		t.Fatalf("cluster holds %d tasks, want exactly %d", len(list.Tasks), n)
	}
	for _, id := range acked {
		task := waitFinal(t, live, id, 2*time.Minute)
		succeeded := 0
		for _, a := range task.Attempts {
			if a.State == pb.TaskState_TASK_STATE_SUCCEEDED {
				succeeded++
			}
		}
		if task.State != pb.TaskState_TASK_STATE_SUCCEEDED || succeeded != 1 {
			t.Fatalf("task %s: state %v with %d recorded successes", id, task.State, succeeded)
		}
	}
}

func jsonField(t testing.TB, js, field string) string {
	t.Helper()
	i := strings.Index(js, `"`+field+`"`)
	if i < 0 {
		t.Fatalf("no %q in %s", field, js)
	}
	rest := js[i+len(field)+2:]
	rest = strings.TrimLeft(rest, ": ")
	rest = strings.TrimPrefix(rest, `"`)
	end := strings.IndexAny(rest, `",}`)
	return rest[:end]
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	type coder interface{ ExitCode() int }
	if e, ok := err.(coder); ok {
		return e.ExitCode()
	}
	return -1
}

func TestPendingTaskSaysWhyItWaits(t *testing.T) {
	c := threeNodes(t)
	out, errOut, err := cli(c.nodes[2].addr, "--output", "json", "task", "submit", "--constraint", "zone=nowhere", "--", "/bin/true")
	if err != nil {
		t.Fatalf("submit: %v %s", err, errOut)
	}
	id := jsonField(t, out, "id")
	// Asked through a follower: it fetches the reason from the leader.
	waitFor(t, 30*time.Second, "a pending reason naming the label", func() (bool, string) {
		out, _, err := cli(c.nodes[3].addr, "--output", "json", "task", "status", id)
		return err == nil && strings.Contains(out, `"pending_reason": "no worker has label zone=nowhere"`), out
	})
}
