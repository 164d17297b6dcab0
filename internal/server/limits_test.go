package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/blixard/blixard/api/blixardpb"
)

func TestOpenWaitsAreBoundedPerNode(t *testing.T) {
	servers := startCluster(t, 1, func(c *Config) { c.Worker = false; c.MaxWaits = 2 })
	s := servers[0]
	cl := clientOf(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// No worker: the task stays pending, so every WaitTask stays open.
	r, err := cl.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: &pb.TaskSpec{Command: "/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, stopWaits := context.WithCancel(ctx)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, werr := cl.WaitTask(waitCtx, &pb.WaitTaskRequest{Id: r.Task.Id})
			errs <- werr
		}()
	}
	waitUntil(t, 10*time.Second, "two waits open", func() (bool, string) {
		return len(s.limits.waits) == 2, fmt.Sprint(len(s.limits.waits), " open")
	})
	_, err = cl.WaitTask(ctx, &pb.WaitTaskRequest{Id: r.Task.Id})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("third wait: %v, want ResourceExhausted", err)
	}
	logs, err := cl.TaskLogs(ctx, &pb.TaskLogsRequest{Id: r.Task.Id})
	if err == nil {
		_, err = logs.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a log stream past the limit: %v, want ResourceExhausted", err)
	}
	// Other calls are not limited, and closed waits free their places.
	if _, err := cl.GetTask(ctx, &pb.GetTaskRequest{Id: r.Task.Id}); err != nil {
		t.Fatalf("GetTask with the waits full: %v", err)
	}
	stopWaits()
	for range 2 {
		<-errs
	}
	waitUntil(t, 10*time.Second, "the waits released", func() (bool, string) {
		return len(s.limits.waits) == 0, fmt.Sprint(len(s.limits.waits), " open")
	})
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := cl.WaitTask(short, &pb.WaitTaskRequest{Id: r.Task.Id}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a wait after the others closed: %v, want it admitted (and to time out)", err)
	}
}

func TestOversizedRequestsAreRefused(t *testing.T) {
	servers := startCluster(t, 1, func(c *Config) { c.Worker = false })
	cl := clientOf(t, servers[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range []int{MaxRequestBytes + 1, MaxMessageBytes + 1} {
		_, err := cl.Put(ctx, &pb.PutRequest{Key: "big", Value: make([]byte, n)})
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("a %d-byte put: %v, want ResourceExhausted", n, err)
		}
	}
	if _, err := cl.Put(ctx, &pb.PutRequest{Key: "ok", Value: make([]byte, MaxRequestBytes-1024)}); err != nil {
		t.Fatalf("a put just under the limit: %v", err)
	}
	if kv, ok := servers[0].State().Get("big"); ok {
		t.Fatalf("an oversized put was applied (%d bytes)", len(kv.Value))
	}
}
