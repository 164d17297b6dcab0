package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// fakeVMs is a Cluster service that records VM requests and plays a
// scripted sequence of VM states to WaitVM.
type fakeVMs struct {
	rpcpb.UnimplementedClusterServer

	mu        sync.Mutex
	creates   []*blixardpb.CreateVMRequest
	desires   []*blixardpb.SetVMDesiredRequest
	createErr error
	vm        *blixardpb.VM           // what GetVM returns (nil: NotFound)
	script    []*blixardpb.VMResponse // what WaitVM streams, then it blocks
	waitErr   error                   // if set, WaitVM fails with it at once
	logs      string
}

func (f *fakeVMs) CreateVM(_ context.Context, req *blixardpb.CreateVMRequest) (*blixardpb.VMResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, req)
	if f.createErr != nil {
		return nil, f.createErr
	}
	return &blixardpb.VMResponse{Vm: &blixardpb.VM{Spec: req.Spec, State: blixardpb.VMState_VM_STATE_PENDING, Desired: blixardpb.VMDesired_VM_DESIRED_RUNNING}}, nil
}

func (f *fakeVMs) GetVM(_ context.Context, req *blixardpb.GetVMRequest) (*blixardpb.VMResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.vm == nil || f.vm.Spec.Name != req.Name {
		return nil, status.Errorf(codes.NotFound, "vm %q not found", req.Name)
	}
	return &blixardpb.VMResponse{Vm: f.vm}, nil
}

func (f *fakeVMs) ListVMs(context.Context, *blixardpb.ListVMsRequest) (*blixardpb.ListVMsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.vm == nil {
		return &blixardpb.ListVMsResponse{}, nil
	}
	return &blixardpb.ListVMsResponse{Vms: []*blixardpb.VM{f.vm}}, nil
}

func (f *fakeVMs) SetVMDesired(_ context.Context, req *blixardpb.SetVMDesiredRequest) (*blixardpb.VMResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.desires = append(f.desires, req)
	if f.vm == nil {
		return nil, status.Errorf(codes.NotFound, "vm %q not found", req.Name)
	}
	vm := proto.Clone(f.vm).(*blixardpb.VM)
	vm.Desired = req.Desired
	return &blixardpb.VMResponse{Vm: vm}, nil
}

func (f *fakeVMs) WaitVM(_ *blixardpb.WaitVMRequest, stream rpcpb.Cluster_WaitVMServer) error {
	f.mu.Lock()
	script, waitErr := f.script, f.waitErr
	f.mu.Unlock()
	if waitErr != nil {
		return waitErr
	}
	for _, m := range script {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

func (f *fakeVMs) VMLogs(req *blixardpb.VMLogsRequest, stream rpcpb.Cluster_VMLogsServer) error {
	f.mu.Lock()
	logs := f.logs
	f.mu.Unlock()
	if req.Name != "web" {
		return status.Errorf(codes.NotFound, "vm %q not found", req.Name)
	}
	return stream.Send(&blixardpb.LogChunk{Data: []byte(logs)})
}

func vmAt(name string, st blixardpb.VMState, worker uint64, reason string) *blixardpb.VMResponse {
	return &blixardpb.VMResponse{Vm: &blixardpb.VM{
		Spec: &blixardpb.VMSpec{Name: name, Vcpus: 1, MemoryMib: 128}, State: st, WorkerId: worker, Reason: reason,
		Desired: blixardpb.VMDesired_VM_DESIRED_RUNNING, StartedAtUnixNano: int64(st) * 1000,
	}}
}

func TestVMUsageErrors(t *testing.T) {
	create := func(args ...string) []string { return append([]string{"vm", "create"}, args...) }
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"no name", create(), []string{"missing NAME", "usage: blixard vm create NAME"}},
		{"bad name", create("Web_1"), []string{`NAME "Web_1" is not a valid VM name`, "a-z, 0-9 and '-'"}},
		{"vcpus zero", create("web", "--vcpus", "0"), []string{"--vcpus must be between 1 and 64 (got 0)"}},
		{"vcpus too many", create("web", "--vcpus", "65"), []string{"--vcpus must be between 1 and 64 (got 65)"}},
		{"vcpus not a number", create("web", "--vcpus", "two"), []string{`--vcpus must be a number of vCPUs between 1 and 64 (got "two")`}},
		{"memory too small", create("web", "--memory", "8"), []string{"--memory must be between 16 and"}},
		{"memory negative", create("web", "--memory", "-1"), []string{`--memory must be a number of MiB (got "-1")`}},
		{"relative kernel", create("web", "--kernel", "vmlinux"), []string{`--kernel must be an absolute path on the worker (got "vmlinux")`}},
		{"readonly without disk", create("web", "--disk-readonly"), []string{"--disk-readonly needs a disk"}},
		{"restart policy", create("web", "--restart", "sometimes"), []string{`--restart must be "always", "on-failure" or "never" (got "sometimes")`}},
		{"network", create("web", "--network", "bridge"), []string{`--network must be "user", "none" or "tap" (got "bridge")`}},
		{"port no colon", create("web", "--port", "8080"), []string{`--port "8080" is not HOST:GUEST`}},
		{"port host zero", create("web", "--port", "0:80"), []string{`--port "0:80": host port must be a number between 1 and 65535 (got "0")`}},
		{"port guest big", create("web", "--port", "80:70000"), []string{`guest port must be a number between 1 and 65535 (got "70000")`}},
		{"port protocol", create("web", "--port", "80:80/sctp"), []string{`--port "80:80/sctp": protocol must be tcp or udp`}},
		{"port twice", create("web", "--port", "80:80", "--port", "80:81"), []string{"--port host port 80/tcp is forwarded twice"}},
		{"ports without user net", create("web", "--network", "none", "--port", "80:80"), []string{"--port port forwards need network user"}},
		{"constraint", create("web", "--constraint", "zone"), []string{`--constraint "zone" is not KEY=VALUE`}},
		{"timeout", create("web", "--timeout", "0s"), []string{`--timeout must be a positive duration (got "0s")`}},
		{"unknown flag", create("web", "--cpus", "2"), []string{"unknown flag: --cpus"}},
		{"status no name", []string{"vm", "status"}, []string{"missing NAME"}},
		{"stop bad name", []string{"vm", "stop", "-x"}, []string{"unknown shorthand flag"}},
		{"delete bad name", []string{"vm", "delete", "UPPER"}, []string{`NAME "UPPER" is not a valid VM name`}},
		{"logs two names", []string{"vm", "logs", "a", "b"}, []string{"too many arguments"}},
		{"unknown subcommand", []string{"vm", "craete"}, []string{`unknown command "craete" for "blixard vm"`, `did you mean "create"?`}},
	}
	// Nothing listens there: a request would fail with exit code 1, not 2.
	addr := closedAddr(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(append([]string{"--addr", addr}, tc.args...)...); code != exitUsage {
				t.Errorf("exit code = %d, want %d", code, exitUsage)
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Errorf("stdout = %q, want nothing", h.stdout.String())
			}
		})
	}
}

func TestVMCreateRequestAndProgress(t *testing.T) {
	f := &fakeVMs{script: []*blixardpb.VMResponse{
		vmAt("web", blixardpb.VMState_VM_STATE_PENDING, 0, ""),
		vmAt("web", blixardpb.VMState_VM_STATE_SCHEDULED, 2, ""),
		vmAt("web", blixardpb.VMState_VM_STATE_STARTING, 2, ""),
		vmAt("web", blixardpb.VMState_VM_STATE_RUNNING, 2, ""),
	}}
	addr := startFake(t, f)
	h := newHarness(t)
	code := h.run("--addr", addr, "vm", "create", "web", "--vcpus", "2", "--memory", "256", "--kernel", "/k", "--initrd", "/i",
		"--disk", "/d.img", "--disk-readonly", "--cmdline", "quiet", "--port", "8080:80", "--port", "5353:53/udp",
		"--restart", "on-failure", "--constraint", "zone=a", "--node", "3")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	want := &blixardpb.VMSpec{
		Name: "web", Vcpus: 2, MemoryMib: 256, Kernel: "/k", Initrd: "/i", Disk: "/d.img", DiskReadonly: true, Cmdline: "quiet",
		Network: "user", Restart: blixardpb.RestartPolicy_RESTART_POLICY_ON_FAILURE, Constraints: map[string]string{"zone": "a"}, Node: 3,
		Ports: []*blixardpb.PortForward{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}, {HostPort: 5353, GuestPort: 53, Protocol: "udp"}},
	}
	if len(f.creates) != 1 || !proto.Equal(f.creates[0].Spec, want) {
		t.Fatalf("creates = %v\nwant %v", f.creates, want)
	}
	wantOut := "vm web created\nvm web pending\nvm web scheduled on worker 2\nvm web starting on worker 2\nvm web running on worker 2\n"
	if got := h.stdout.String(); got != wantOut {
		t.Fatalf("stdout = %q\nwant %q", got, wantOut)
	}
}

func TestVMCreateDefaultsAndDetach(t *testing.T) {
	f := &fakeVMs{}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "vm", "create", "web", "--detach"); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	want := &blixardpb.VMSpec{Name: "web", Vcpus: 1, MemoryMib: 128, Network: "user", Restart: blixardpb.RestartPolicy_RESTART_POLICY_ALWAYS}
	if len(f.creates) != 1 || !proto.Equal(f.creates[0].Spec, want) {
		t.Fatalf("creates = %v", f.creates)
	}
	if got := h.stdout.String(); got != "vm web created (pending)\n" {
		t.Fatalf("stdout = %q", got)
	}
}

func TestVMCreateFailures(t *testing.T) {
	t.Run("failed to start", func(t *testing.T) {
		f := &fakeVMs{script: []*blixardpb.VMResponse{
			vmAt("web", blixardpb.VMState_VM_STATE_SCHEDULED, 1, ""),
			vmAt("web", blixardpb.VMState_VM_STATE_FAILED, 1, "kernel: /k: no such file"),
		}}
		h := newHarness(t)
		if code := h.run("--addr", startFake(t, f), "vm", "create", "web"); code != exitFailure {
			t.Fatalf("exit %d", code)
		}
		h.wantErrorLine("vm web failed on worker 1: kernel: /k: no such file", "blixard vm logs web")
	})
	t.Run("timeout", func(t *testing.T) {
		f := &fakeVMs{script: []*blixardpb.VMResponse{vmAt("web", blixardpb.VMState_VM_STATE_PENDING, 0, "no worker has room")}}
		h := newHarness(t)
		if code := h.run("--addr", startFake(t, f), "vm", "create", "web", "--timeout", "200ms"); code != exitFailure {
			t.Fatalf("exit %d", code)
		}
		h.wantErrorLine("vm web did not get there within 200ms (pending: no worker has room)", "blixard vm status web")
	})
	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{"duplicate", status.Error(codes.AlreadyExists, `name: vm already exists: "web"; pick another name or delete it first`), []string{`vm already exists: "web"`, "blixard vm delete web"}},
		{"too big", status.Error(codes.InvalidArgument, "memory_mib: 8192 MiB is more than any worker offers (the largest, worker 2, has 4096 MiB); ask for at most 4096"), []string{"--memory: 8192 MiB is more than any worker offers", "nothing was created"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeVMs{createErr: tc.err}
			h := newHarness(t)
			if code := h.run("--addr", startFake(t, f), "vm", "create", "web"); code != exitFailure {
				t.Fatalf("exit %d", code)
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Fatalf("stdout = %q", h.stdout.String())
			}
		})
	}
}

func TestVMStatusJSON(t *testing.T) {
	vm := vmAt("web", blixardpb.VMState_VM_STATE_RUNNING, 2, "").Vm
	vm.Restarts = 3
	vm.Spec.Ports = []*blixardpb.PortForward{{HostPort: 8080, GuestPort: 80, Protocol: "tcp"}}
	f := &fakeVMs{vm: vm}
	h := newHarness(t)
	if code := h.run("--addr", startFake(t, f), "vm", "status", "web", "--output", "json"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "state", "desired", "worker", "vcpus", "memory_mib", "restarts", "started_at", "reason"} {
		if _, ok := got[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, h.stdout.String())
		}
	}
	if got["name"] != "web" || got["state"] != "running" || got["desired"] != "running" || got["worker"] != float64(2) ||
		got["vcpus"] != float64(1) || got["memory_mib"] != float64(128) || got["restarts"] != float64(3) || got["reason"] != nil {
		t.Fatalf("JSON = %s", h.stdout.String())
	}
	if p := got["ports"].([]any)[0].(map[string]any); p["host"] != float64(8080) || p["guest"] != float64(80) || p["protocol"] != "tcp" {
		t.Fatalf("ports = %v", got["ports"])
	}

	h = newHarness(t)
	if code := h.run("--addr", startFake(t, f), "vm", "status", "nope"); code != exitFailure {
		t.Fatalf("exit %d", code)
	}
	h.wantErrorLine(`vm "nope" not found`, "blixard vm list")
}

func TestVMListAndLogs(t *testing.T) {
	f := &fakeVMs{vm: vmAt("web", blixardpb.VMState_VM_STATE_PENDING, 0, "no worker has room").Vm, logs: "booted\n"}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "vm", "list"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(h.stdout.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[1], "web") || !strings.Contains(lines[1], "pending") || !strings.Contains(lines[1], "no worker has room") {
		t.Fatalf("list = %q", h.stdout.String())
	}
	h = newHarness(t)
	if code := h.run("--addr", addr, "vm", "list", "-o", "json"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &list); err != nil || len(list) != 1 || list[0]["reason"] != "no worker has room" {
		t.Fatalf("list json = %s (%v)", h.stdout.String(), err)
	}
	h = newHarness(t)
	if code := h.run("--addr", addr, "vm", "logs", "web"); code != exitOK || h.stdout.String() != "booted\n" {
		t.Fatalf("logs exit %d out %q err %q", code, h.stdout.String(), h.stderr.String())
	}
}

func TestVMStopAndDeleteWait(t *testing.T) {
	running := vmAt("web", blixardpb.VMState_VM_STATE_RUNNING, 2, "").Vm
	stopped := proto.Clone(running).(*blixardpb.VM)
	stopped.State, stopped.Desired = blixardpb.VMState_VM_STATE_STOPPED, blixardpb.VMDesired_VM_DESIRED_STOPPED
	stopping := proto.Clone(stopped).(*blixardpb.VM)
	stopping.State = blixardpb.VMState_VM_STATE_STOPPING
	f := &fakeVMs{vm: running, script: []*blixardpb.VMResponse{{Vm: stopping}, {Vm: stopped}}}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "vm", "stop", "web"); code != exitOK {
		t.Fatalf("stop exit %d: %s", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "vm web: stop requested\nvm web stopping on worker 2\nvm web stopped on worker 2\n" {
		t.Fatalf("stop output %q", got)
	}
	if d := f.desires[0]; d.Desired != blixardpb.VMDesired_VM_DESIRED_STOPPED || d.Restart {
		t.Fatalf("desired = %v", d)
	}

	f.mu.Lock()
	f.script = []*blixardpb.VMResponse{{Vm: stopping}, {Vm: stopped, Removed: true}}
	f.mu.Unlock()
	h = newHarness(t)
	if code := h.run("--addr", addr, "vm", "delete", "web"); code != exitOK {
		t.Fatalf("delete exit %d: %s", code, h.stderr.String())
	}
	if got := h.stdout.String(); !strings.HasSuffix(got, "vm web deleted\n") {
		t.Fatalf("delete output %q", got)
	}

	// restart sends restart=true and waits for a new run: the running
	// state from before the command does not count.
	newRun := proto.Clone(running).(*blixardpb.VM)
	newRun.StartedAtUnixNano += 5
	f.mu.Lock()
	f.script = []*blixardpb.VMResponse{{Vm: running}, {Vm: newRun}}
	f.mu.Unlock()
	h = newHarness(t)
	if code := h.run("--addr", addr, "vm", "restart", "web", "-o", "json"); code != exitOK {
		t.Fatalf("restart exit %d: %s", code, h.stderr.String())
	}
	if d := f.desires[len(f.desires)-1]; d.Desired != blixardpb.VMDesired_VM_DESIRED_RUNNING || !d.Restart {
		t.Fatalf("desired = %v", d)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &got); err != nil || got["state"] != "running" {
		t.Fatalf("restart json %q (%v)", h.stdout.String(), err)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "vm", "start", "nope"); code != exitFailure {
		t.Fatalf("exit %d", code)
	}
	h.wantErrorLine(`vm "nope" not found`)
}

// A delete the worker finishes before the CLI's wait stream opens is a
// success, not "not found".
func TestVMDeleteGoneBeforeWait(t *testing.T) {
	running := vmAt("web", blixardpb.VMState_VM_STATE_RUNNING, 2, "").Vm
	f := &fakeVMs{vm: running, waitErr: status.Error(codes.NotFound, `vm "web" not found`)}
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "vm", "delete", "web"); code != exitOK {
		t.Fatalf("delete exit %d: %s", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "vm web: delete requested\nvm web deleted\n" {
		t.Fatalf("delete output %q", got)
	}
	// A stop that finds the VM gone says so.
	h = newHarness(t)
	if code := h.run("--addr", addr, "vm", "stop", "web"); code != exitFailure {
		t.Fatalf("stop exit %d", code)
	}
	h.wantErrorLine("vm web was deleted")
}

// Starting a VM that already runs returns at once; starting a failed one
// waits for a new run (the failure from before does not count).
func TestVMStartRunningAndFailed(t *testing.T) {
	running := vmAt("web", blixardpb.VMState_VM_STATE_RUNNING, 2, "").Vm
	f := &fakeVMs{vm: running} // WaitVM would block: start must not wait
	addr := startFake(t, f)
	h := newHarness(t)
	if code := h.run("--addr", addr, "vm", "start", "web"); code != exitOK {
		t.Fatalf("start exit %d: %s", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "vm web is already running on worker 2\n" {
		t.Fatalf("start output %q", got)
	}

	failed := vmAt("web", blixardpb.VMState_VM_STATE_FAILED, 2, "kernel panic").Vm
	starting := vmAt("web", blixardpb.VMState_VM_STATE_STARTING, 2, "").Vm
	f.mu.Lock()
	f.vm = failed
	f.script = []*blixardpb.VMResponse{{Vm: failed}, {Vm: starting}, vmAt("web", blixardpb.VMState_VM_STATE_RUNNING, 2, "")}
	f.mu.Unlock()
	h = newHarness(t)
	if code := h.run("--addr", addr, "vm", "start", "web"); code != exitOK {
		t.Fatalf("start of failed vm exit %d: %s", code, h.stderr.String())
	}
	if got := h.stdout.String(); !strings.HasSuffix(got, "vm web running on worker 2\n") {
		t.Fatalf("start of failed vm output %q", got)
	}
}
