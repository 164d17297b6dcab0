package e2e

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// TestBadInputIsRefusedClearly feeds one real node bad input through the
// CLI and straight through gRPC. Every row must be refused with a message
// naming the field, the CLI must exit non-zero with one error line, and
// the node must stay up with its state unchanged.
func TestBadInputIsRefusedClearly(t *testing.T) {
	c := newCluster(t)
	images := sharedDir(t)
	n := c.add(1, "--bootstrap", "--vm-image-dir", images)
	c.waitVoters(n, 1)
	if err := syscall.Mkfifo(filepath.Join(images, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(images, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	snapshot := func() string {
		var b strings.Builder
		for _, args := range [][]string{{"task", "list"}, {"vm", "list"}, {"kv", "get", "big"}} {
			out, _, _ := cli(n.addr, append([]string{"--output", "json"}, args...)...)
			b.WriteString(out)
		}
		return b.String()
	}
	before := snapshot()

	cliRows := []struct {
		name string
		args []string
		want string // in the one error line
	}{
		{"empty command", []string{"task", "submit", "--", ""}, "command"},
		{"no command", []string{"task", "submit", "--"}, "command"},
		{"negative cpu", []string{"task", "submit", "--cpu", "-1", "--", "/bin/true"}, "--cpu"},
		{"NaN cpu", []string{"task", "submit", "--cpu", "NaN", "--", "/bin/true"}, "--cpu"},
		{"huge cpu", []string{"task", "submit", "--cpu", "4611686018427387904", "--", "/bin/true"}, "cpu"},
		{"negative memory", []string{"task", "submit", "--memory", "-5", "--", "/bin/true"}, "--memory"},
		{"huge memory", []string{"task", "submit", "--memory", "4611686018427387904", "--", "/bin/true"}, "memory"},
		{"negative retries", []string{"task", "submit", "--retries", "-1", "--", "/bin/true"}, "--retries"},
		{"huge retries", []string{"task", "submit", "--retries", "1000000", "--", "/bin/true"}, "retries"},
		{"negative timeout", []string{"task", "submit", "--timeout", "-1s", "--", "/bin/true"}, "--timeout"},
		{"huge timeout", []string{"task", "submit", "--timeout", "1000000h", "--", "/bin/true"}, "timeout"},
		{"env without a name", []string{"task", "submit", "--env", "=x", "--", "/bin/true"}, "--env"},
		{"vm name with a slash", []string{"vm", "create", "a/b"}, "NAME"},
		{"vm name ..", []string{"vm", "create", ".."}, "NAME"},
		{"vm name of 10 KiB", []string{"vm", "create", strings.Repeat("x", 10<<10)}, "NAME"},
		{"kernel is a directory", []string{"vm", "create", "k1", "--kernel", filepath.Join(images, "dir")}, "is not a regular file (it is a directory)"},
		{"kernel is a FIFO", []string{"vm", "create", "k2", "--kernel", filepath.Join(images, "fifo")}, "is not a regular file (it is a named pipe)"},
		{"kernel outside the image dirs", []string{"vm", "create", "k3", "--kernel", "/etc/shadow"}, "outside the directories"},
		{"port 0", []string{"vm", "create", "p1", "--port", "0:80"}, "--port"},
		{"port 65536", []string{"vm", "create", "p2", "--port", "65536:80"}, "--port"},
		{"port twice", []string{"vm", "create", "p3", "--port", "8080:80", "--port", "8080:81"}, "--port"},
		{"unknown policy", []string{"task", "submit", "--policy", "random", "--", "/bin/true"}, "--policy"},
	}
	for _, r := range cliRows {
		_, errOut, err := cli(n.addr, r.args...)
		line := strings.TrimSpace(errOut)
		if err == nil || strings.Count(line, "\n") != 0 || !strings.HasPrefix(line, "error: ") || !strings.Contains(line, r.want) {
			t.Errorf("%s: exit %v, stderr %q; want one error line naming %q", r.name, err, errOut, r.want)
		}
	}

	// The same classes straight through gRPC: the server's own checks.
	cl := client(t, n.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	task := func(mut func(*pb.TaskSpec)) func() error {
		return func() error {
			s := &pb.TaskSpec{Command: "/bin/true"}
			mut(s)
			_, err := cl.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: s})
			return err
		}
	}
	vmSpec := func(mut func(*pb.VMSpec)) func() error {
		return func() error {
			s := &pb.VMSpec{Name: "ok", Vcpus: 1, MemoryMib: 128}
			mut(s)
			_, err := cl.CreateVM(ctx, &pb.CreateVMRequest{Spec: s})
			return err
		}
	}
	grpcRows := []struct {
		name string
		call func() error
		code codes.Code
		want string
	}{
		{"empty command", task(func(s *pb.TaskSpec) { s.Command = "" }), codes.InvalidArgument, "command"},
		{"10 MiB command line", task(func(s *pb.TaskSpec) { s.Args = []string{strings.Repeat("a", 10<<20)} }), codes.ResourceExhausted, ""},
		{"negative cpu", task(func(s *pb.TaskSpec) { s.Resources = &pb.Resources{CpuMillis: -1} }), codes.InvalidArgument, "cpu"},
		{"cpu 1<<62", task(func(s *pb.TaskSpec) { s.Resources = &pb.Resources{CpuMillis: 1 << 62} }), codes.InvalidArgument, "cpu"},
		{"memory 1<<62", task(func(s *pb.TaskSpec) { s.Resources = &pb.Resources{MemoryMib: 1 << 62} }), codes.InvalidArgument, "memory"},
		{"negative timeout", task(func(s *pb.TaskSpec) { s.TimeoutMs = -1 }), codes.InvalidArgument, "timeout"},
		{"huge timeout", task(func(s *pb.TaskSpec) { s.TimeoutMs = math.MaxInt64 }), codes.InvalidArgument, "timeout"},
		{"negative retries", task(func(s *pb.TaskSpec) { s.MaxRetries = -1 }), codes.InvalidArgument, "retries"},
		{"unknown placement policy", task(func(s *pb.TaskSpec) { s.Policy = 99 }), codes.InvalidArgument, "policy"},
		{"env name with =", task(func(s *pb.TaskSpec) { s.Env = map[string]string{"A=B": "c"} }), codes.InvalidArgument, "env"},
		{"vm name with NUL", vmSpec(func(s *pb.VMSpec) { s.Name = "a\x00b" }), codes.InvalidArgument, "name"},
		{"vm name of 10 KiB", vmSpec(func(s *pb.VMSpec) { s.Name = strings.Repeat("x", 10<<10) }), codes.InvalidArgument, "name"},
		{"unknown restart policy", vmSpec(func(s *pb.VMSpec) { s.Restart = 99 }), codes.InvalidArgument, "restart"},
		{"host port 0", vmSpec(func(s *pb.VMSpec) { s.Ports = []*pb.PortForward{{HostPort: 0, GuestPort: 80}} }), codes.InvalidArgument, "port"},
		{"host port 65536", vmSpec(func(s *pb.VMSpec) { s.Ports = []*pb.PortForward{{HostPort: 65536, GuestPort: 80}} }), codes.InvalidArgument, "port"},
		{"kernel is a FIFO", vmSpec(func(s *pb.VMSpec) { s.Kernel = filepath.Join(images, "fifo") }), codes.InvalidArgument, "kernel"},
		{"unknown desired state", func() error {
			_, err := cl.SetVMDesired(ctx, &pb.SetVMDesiredRequest{Name: "nosuchvm", Desired: 99})
			return err
		}, codes.NotFound, "nosuchvm"},
		{"kv value of 100 MiB", func() error {
			_, err := cl.Put(ctx, &pb.PutRequest{Key: "big", Value: make([]byte, 100<<20)})
			return err
		}, codes.ResourceExhausted, ""},
		{"kv key of 5 MiB", func() error {
			_, err := cl.Put(ctx, &pb.PutRequest{Key: strings.Repeat("k", 5<<20), Value: []byte("v")})
			return err
		}, codes.ResourceExhausted, "request is"},
	}
	for _, r := range grpcRows {
		err := r.call()
		if grpcstatus.Code(err) != r.code || !strings.Contains(grpcstatus.Convert(err).Message(), r.want) {
			t.Errorf("gRPC %s: %v; want %v naming %q", r.name, err, r.code, r.want)
		}
	}

	// A user that does not exist on the worker: accepted (users are the
	// worker's), then the attempt fails with an error naming the user.
	out, errOut, err := cli(n.addr, "--output", "json", "task", "submit", "--wait", "--user", "no-such-user-e2e", "--", "/bin/true")
	if err == nil || !strings.Contains(out+errOut, "no-such-user-e2e") {
		t.Errorf("--user that does not exist: %v, %q %q; want a failure naming the user", err, out, errOut)
	}

	if !n.running() {
		t.Fatal("the node died on bad input")
	}
	st, raw := status(n.addr)
	if st.Leader == 0 {
		t.Fatalf("the node stopped answering after bad input: %s", raw)
	}
	// Only the one accepted-then-failed task above may have been added.
	var tasks []map[string]any
	outTasks, _, _ := cli(n.addr, "--output", "json", "task", "list")
	_ = json.Unmarshal([]byte(outTasks), &tasks)
	if len(tasks) != 1 {
		t.Errorf("tasks after the bad input: %s; want only the --user one", outTasks)
	}
	if after := snapshot(); strings.Count(after, `"id"`) > strings.Count(before, `"id"`)+1 || strings.Contains(after, `"name": "ok"`) {
		t.Errorf("state changed by bad input:\nbefore %s\nafter %s", before, after)
	}
}
