package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// lockedBuffer is a bytes.Buffer safe to read while a process writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCordonAndDrainAWorker: a drain waits for the task running on the
// worker, the cordon keeps new work (even work pinned there) off it and
// survives the worker's restart, and uncordon lets the pinned work run.
func TestCordonAndDrainAWorker(t *testing.T) {
	c := threeNodes(t)
	n1, n2 := c.nodes[1], c.nodes[2]
	cl := client(t, n1.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	gate := filepath.Join(sharedDir(t), "gate")
	hold := &pb.TaskSpec{Command: "/bin/sh", Args: []string{"-c", fmt.Sprintf("while [ ! -f %s ]; do sleep 0.02; done", gate)}, Node: 2}
	held, err := submitRetrying(ctx, []rpcpb.ClusterClient{cl}, hold, "hold")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, held.Id+" running on worker 2", func() (bool, string) {
		r, getErr := cl.GetTask(ctx, &pb.GetTaskRequest{Id: held.Id})
		return getErr == nil && r.Task.State == pb.TaskState_TASK_STATE_RUNNING, fmt.Sprint(r, getErr)
	})

	// Bad input: a clear error, exit 2, nothing cordoned.
	if _, errOut, cliErr := cli(n1.addr, "worker", "drain", "two"); exitCode(cliErr) != 2 || !strings.Contains(errOut, "positive integer") {
		t.Fatalf("drain two: exit %d, stderr %q", exitCode(cliErr), errOut)
	}
	if _, errOut, cliErr := cli(n1.addr, "worker", "cordon", "99"); exitCode(cliErr) != 1 || !strings.Contains(errOut, "worker 99 is not registered") {
		t.Fatalf("cordon 99: exit %d, stderr %q", exitCode(cliErr), errOut)
	}

	var stdout, stderr lockedBuffer
	drain := exec.Command(blixardBin, "--addr", n1.addr, "--timeout", "3s", "--output", "json", "worker", "drain", "2", "--reason", "kernel upgrade", "--within", "90s")
	drain.Stdout, drain.Stderr = &stdout, &stderr
	if startErr := drain.Start(); startErr != nil {
		t.Fatal(startErr)
	}
	done := make(chan error, 1)
	go func() { done <- drain.Wait() }()
	t.Cleanup(func() {
		if drain.ProcessState == nil {
			_ = drain.Process.Kill()
			<-done
		}
	})
	waitFor(t, 30*time.Second, "drain to report the running task", func() (bool, string) {
		return strings.Contains(stderr.String(), "draining worker 2: 1 task(s) still there ("+held.Id+")"), stderr.String()
	})

	// Cordoned: a task pinned to worker 2 waits, and says why.
	pinned, err := submitRetrying(ctx, []rpcpb.ClusterClient{cl}, &pb.TaskSpec{Command: "/bin/true", Node: 2}, "pinned")
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := cli(n1.addr, "worker", "list")
	if err != nil || !strings.Contains(out, "cordoned (kernel upgrade)") {
		t.Fatalf("worker list during the drain: %v\n%s", err, out)
	}
	waitFor(t, 10*time.Second, "the pinned task to wait with a reason", func() (bool, string) {
		r, err := cl.GetTask(ctx, &pb.GetTaskRequest{Id: pinned.Id})
		return err == nil && r.Task.State == pb.TaskState_TASK_STATE_PENDING && r.Task.PendingReason != "", fmt.Sprint(r, err)
	})

	// The running task ends: the drain finishes, naming it.
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("drain: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("drain still waiting a minute after the task was released; stderr: %s", stderr.String())
	}
	var res struct {
		Worker struct {
			ID       uint64 `json:"id"`
			Cordoned bool   `json:"cordoned"`
		} `json:"worker"`
		WaitedFor []string `json:"waited_for"`
	}
	if err := json.Unmarshal([]byte(stdout.String()), &res); err != nil {
		t.Fatalf("drain JSON: %v: %s", err, stdout.String())
	}
	if res.Worker.ID != 2 || !res.Worker.Cordoned || len(res.WaitedFor) != 1 || res.WaitedFor[0] != held.Id {
		t.Fatalf("drain JSON = %+v, want worker 2 cordoned, waited for %s", res, held.Id)
	}

	// The cordon survives the worker's restart (re-registration).
	n2.kill9()
	n2.start()
	waitFor(t, 30*time.Second, "worker 2 ready again and still cordoned", func() (bool, string) {
		out, _, err := cli(n1.addr, "worker", "list")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "2 ") {
				return err == nil && strings.Contains(l, "ready") && strings.Contains(l, "cordoned (kernel upgrade)"), l
			}
		}
		return false, fmt.Sprint(out, err)
	})
	if r, err := cl.GetTask(ctx, &pb.GetTaskRequest{Id: pinned.Id}); err != nil || r.Task.State != pb.TaskState_TASK_STATE_PENDING {
		t.Fatalf("pinned task while worker 2 is cordoned: %v %v", r, err)
	}

	if out, errOut, err := cli(n1.addr, "worker", "uncordon", "2"); err != nil || !strings.Contains(out, "worker 2 uncordoned") {
		t.Fatalf("uncordon: %v %s%s", err, out, errOut)
	}
	if task := waitFinal(t, cl, pinned.Id, time.Minute); task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("pinned task after uncordon: %v", task)
	}
}
