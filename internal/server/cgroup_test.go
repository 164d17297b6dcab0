package server

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// TestNodeWithoutCgroupHierarchyRunsTasks starts a worker node whose cgroup
// root holds no hierarchy (as inside `ip netns exec`): it must start and run
// a task, without limits. Before, the executor panicked at start.
func TestNodeWithoutCgroupHierarchyRunsTasks(t *testing.T) {
	root := t.TempDir()
	servers := startCluster(t, 1, func(c *Config) { c.CgroupRoot = root })
	s := servers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := s.propose(ctx, &pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{
		Spec: &pb.TaskSpec{
			Command: "/bin/sh", Args: []string{"-c", "echo ok"},
			Resources: &pb.Resources{CpuMillis: 100, MemoryMib: 16},
		},
		IdempotencyKey: "no-cgroups", NowUnixNano: time.Now().UnixNano(),
	}}})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	id := res.(*pb.Task).GetId()
	waitUntil(t, 20*time.Second, "the task to succeed", func() (bool, string) {
		task, ok := s.State().Task(id)
		if !ok {
			return false, "no task " + id
		}
		return task.GetState() == pb.TaskState_TASK_STATE_SUCCEEDED, fmt.Sprint(task)
	})
	task, _ := s.State().Task(id)
	att := task.GetAttempts()
	if got := string(att[len(att)-1].GetResult().GetStdoutTail()); got != "ok\n" {
		t.Fatalf("stdout %q, want \"ok\\n\"", got)
	}
}
