package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// VM tests boot real QEMU microVMs (under TCG on CI: 3-4 s a boot, far
// more on a loaded 2-core machine), so waits are generous and one cluster
// serves every step.
const vmWait = 3 * time.Minute

// vmCLI runs the CLI without the harness's short global --timeout (the vm
// commands wait for the cluster with their own --timeout).
func vmCLI(addr string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), vmWait+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, blixardBin, append([]string{"--addr", addr}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

type vmJSON struct {
	Name       string  `json:"name"`
	State      string  `json:"state"`
	Desired    string  `json:"desired"`
	Worker     uint64  `json:"worker"`
	VCPUs      uint32  `json:"vcpus"`
	MemoryMiB  uint32  `json:"memory_mib"`
	Restarts   uint32  `json:"restarts"`
	StartedAt  *string `json:"started_at"`
	Reason     *string `json:"reason"`
	Generation uint32  `json:"generation"`
	UpdatedAt  *string `json:"updated_at"`
}

func (v vmJSON) reason() string {
	if v.Reason == nil {
		return ""
	}
	return *v.Reason
}

// vmStatus returns the VM's status as `vm status` prints it; found is
// false when the VM does not exist.
func vmStatus(addr, name string) (v vmJSON, found bool, raw string) {
	out, errOut, err := cli(addr, "--output", "json", "vm", "status", name)
	if err != nil {
		return v, !strings.Contains(errOut, "not found"), fmt.Sprintf("vm status %s via %s: %v: %s", name, addr, err, strings.TrimSpace(errOut))
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return v, true, fmt.Sprintf("bad vm status JSON %q: %v", out, err)
	}
	return v, true, strings.TrimSpace(out)
}

func waitVM(t testing.TB, addr, name, what string, cond func(v vmJSON) bool) vmJSON {
	t.Helper()
	var last vmJSON
	waitFor(t, vmWait, "vm "+name+" "+what, func() (bool, string) {
		v, found, raw := vmStatus(addr, name)
		last = v
		return found && cond(v), raw
	})
	return last
}

// qemuPIDs lists the live QEMU processes whose command line mentions
// under (a node's data dir or a test's temp dir) and, if name is not
// empty, that VM's directory.
func qemuPIDs(under, name string) []int {
	want := under + "/"
	if name != "" {
		want = "/vms/" + name + "/"
	}
	return pidsMentioning(under, func(args []string) bool {
		return strings.Contains(filepath.Base(args[0]), "qemu") &&
			slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, want) })
	})
}

// pidsMentioning lists the live (not zombie) processes with an argument
// under dir whose command line also satisfies match (nil: any).
func pidsMentioning(dir string, match func(args []string) bool) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, dir+"/") }) {
			continue
		}
		if match != nil && !match(args) {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			continue // a zombie is gone already
		}
		pids = append(pids, pid)
	}
	return pids
}

// killQEMUsAtCleanup kills every QEMU started under dir when the test
// ends: VMs outlive the nodes by design, but not the test.
func killQEMUsAtCleanup(t testing.TB, dir string) {
	t.Cleanup(func() {
		for _, pid := range qemuPIDs(dir, "") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// vmNodes starts a 3-node cluster whose workers each offer 2 CPUs and
// 1024 MiB, so "more memory than any worker" is easy to ask for.
// The worker TTL is long enough for a killed worker to restart and adopt
// its VMs before the leader gives up on it; the VM grace is short (the
// fencing condition in docs/VMS.md needs more than 6.3 s with these
// timers) so a moved VM runs elsewhere about 15 s after its worker died.
func vmNodes(t *testing.T) *cluster {
	c := newCluster(t)
	c.timers = []string{"--tick", "50ms", "--heartbeat-interval", "200ms", "--worker-ttl", "8s", "--vm-replace-after", "7s"}
	extra := []string{"--cpu", "2", "--memory", "1024", "--vm-image-dir", filepath.Join(c.root, "images")}
	n1 := c.add(1, append([]string{"--bootstrap"}, extra...)...)
	c.add(2, append([]string{"--join", n1.addr}, extra...)...)
	c.add(3, append([]string{"--join", n1.addr}, extra...)...)
	c.waitVoters(n1, 1, 2, 3)
	for _, n := range c.nodes {
		killQEMUsAtCleanup(t, n.dir)
	}
	return c
}

// vmFiles lists what is left in a VM's directory on node n.
func vmFiles(n *node, name string) []string {
	entries, err := os.ReadDir(filepath.Join(n.dir, "vms", name))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// deleteAndWait deletes a VM that runs nowhere (--detach: the blocking
// form's own wait is the CLI's business) and waits until it is gone.
func deleteAndWait(t testing.TB, addr, name string) {
	t.Helper()
	if out, errOut, err := vmCLI(addr, "vm", "delete", "--detach", name); err != nil {
		t.Fatalf("vm delete %s: %v: %s%s", name, err, out, errOut)
	}
	waitFor(t, vmWait, "vm "+name+" to be gone", func() (bool, string) {
		_, found, raw := vmStatus(addr, name)
		return !found, raw
	})
}

func TestVMLifecycleOnThreeNodes(t *testing.T) {
	c := vmNodes(t)
	n1 := c.nodes[1]

	// create → running, reported by the CLI itself.
	out, errOut, err := vmCLI(n1.addr, "vm", "create", "web", "--memory", "128")
	if err != nil {
		t.Fatalf("vm create: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	v := waitVM(t, n1.addr, "web", "running", func(v vmJSON) bool { return v.State == "running" })
	if v.StartedAt == nil || v.Worker == 0 || v.MemoryMiB != 128 || v.VCPUs != 1 || v.Desired != "running" {
		t.Fatalf("vm status after create: %+v", v)
	}
	worker := c.nodes[v.Worker]
	pids := qemuPIDs(worker.dir, "web")
	if len(pids) != 1 {
		t.Fatalf("worker %d runs %d QEMU processes for web, want 1", v.Worker, len(pids))
	}

	t.Run("console through another node", func(t *testing.T) {
		via := c.other(worker)
		waitFor(t, 30*time.Second, "the readiness marker in vm logs", func() (bool, string) {
			out, errOut, err := cli(via.addr, "vm", "logs", "web")
			if err != nil {
				return false, errOut
			}
			return strings.Contains(out, "BLIXARD-READY"), out
		})
		// A first run has no previous console.
		if _, errOut, err := cli(via.addr, "vm", "logs", "web", "--previous"); exitCode(err) != 1 || !strings.Contains(errOut, "no previous console log") {
			t.Errorf("vm logs --previous before any restart: exit %d, stderr %q", exitCode(err), errOut)
		}
	})

	t.Run("killed QEMU is restarted", func(t *testing.T) {
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		v := waitVM(t, n1.addr, "web", "restarted and running", func(v vmJSON) bool {
			return v.Restarts == 1 && v.State == "running"
		})
		if !strings.Contains(v.reason(), "SIGKILL") {
			t.Errorf("reason %q does not say why it restarted", v.reason())
		}
		now := qemuPIDs(worker.dir, "web")
		if len(now) != 1 || now[0] == pids[0] {
			t.Fatalf("QEMU processes for web after the restart: %v (killed %d)", now, pids[0])
		}
		pids = now
		// The killed run's console is kept, and served from any node.
		out, errOut, err := cli(c.other(worker).addr, "vm", "logs", "web", "--previous")
		if err != nil || !strings.Contains(out, "BLIXARD-READY") {
			t.Errorf("vm logs --previous after the restart: %v %s; got %d bytes without the first run's readiness marker", err, errOut, len(out))
		}
		if _, errOut, err := cli(n1.addr, "vm", "logs", "web", "--previous", "-f"); exitCode(err) != 2 || !strings.Contains(errOut, "--follow and --previous") {
			t.Errorf("vm logs --previous -f: exit %d, stderr %q", exitCode(err), errOut)
		}
	})

	t.Run("stop and start", func(t *testing.T) {
		if out, errOut, err := vmCLI(n1.addr, "vm", "stop", "web"); err != nil {
			t.Fatalf("vm stop: %v: %s%s", err, out, errOut)
		}
		waitVM(t, n1.addr, "web", "stopped", func(v vmJSON) bool { return v.State == "stopped" })
		if p := qemuPIDs(worker.dir, "web"); len(p) != 0 {
			t.Fatalf("QEMU still runs after stop: %v", p)
		}
		for _, f := range vmFiles(worker, "web") {
			if f != "console.log" && f != "console.log.1" && f != "blixard.generation" {
				t.Errorf("%s left in the VM's directory after stop", f)
			}
		}
		if out, errOut, err := vmCLI(n1.addr, "vm", "start", "web"); err != nil {
			t.Fatalf("vm start: %v: %s%s", err, out, errOut)
		}
		waitVM(t, n1.addr, "web", "running again", func(v vmJSON) bool { return v.State == "running" })
		if p := qemuPIDs(worker.dir, "web"); len(p) != 1 {
			t.Fatalf("QEMU processes after start: %v", p)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		// A kernel outside the allowed directories is refused at create:
		// QEMU would read any file of the worker into a guest.
		_, errOut, err := vmCLI(n1.addr, "vm", "create", "shadow", "--kernel", "/etc/shadow", "--timeout", "10s")
		if err == nil || !strings.Contains(errOut, "kernel: /etc/shadow is outside the directories") {
			t.Fatalf("vm create --kernel /etc/shadow: %v, stderr %q; want a refusal naming the field and the file", err, errOut)
		}
		if _, found, raw := vmStatus(n1.addr, "shadow"); found {
			t.Fatalf("a refused VM was created: %s", raw)
		}

		// Unknown kernel path: the worker refuses it, naming the file.
		missing := filepath.Join(c.root, "images", "nonexistent", "vmlinux")
		_, errOut, err = vmCLI(n1.addr, "vm", "create", "nokernel", "--kernel", missing, "--timeout", "2m")
		if err == nil {
			t.Fatal("vm create with an unknown kernel succeeded")
		}
		v := waitVM(t, n1.addr, "nokernel", "failed", func(v vmJSON) bool { return v.State == "failed" })
		t.Logf("unknown kernel: %s", strings.TrimSpace(errOut))
		if !strings.Contains(v.reason(), missing) || !strings.Contains(errOut+v.reason(), "does not exist") {
			t.Errorf("unknown kernel: stderr %q, reason %q; want both to name the file", errOut, v.reason())
		}
		deleteAndWait(t, n1.addr, "nokernel")

		// More memory than any worker has.
		out, errOut, err := vmCLI(n1.addr, "vm", "create", "huge", "--memory", "4096", "--timeout", "10s")
		if err == nil {
			t.Fatalf("vm create --memory 4096 on 1024 MiB workers succeeded: %s", out)
		}
		t.Logf("memory larger than any worker: %s", strings.TrimSpace(errOut))
		if !strings.Contains(errOut, "4096") {
			t.Errorf("memory larger than any worker: stderr %q does not say how much was asked", errOut)
		}
		if _, found, raw := vmStatus(n1.addr, "huge"); found {
			t.Errorf("a VM that fits no worker was created (half-created): %s", raw)
			deleteAndWait(t, n1.addr, "huge")
		}

		// A duplicate name changes nothing.
		before, _, _ := vmStatus(n1.addr, "web")
		_, errOut, err = vmCLI(n1.addr, "vm", "create", "web", "--memory", "256")
		t.Logf("duplicate name: %s", strings.TrimSpace(errOut))
		if err == nil || !strings.Contains(errOut, "web") || !strings.Contains(errOut, "exists") {
			t.Fatalf("duplicate create: err %v, stderr %q", err, errOut)
		}
		after, _, _ := vmStatus(n1.addr, "web")
		if after.MemoryMiB != 128 || after.Generation != before.Generation || after.Restarts != before.Restarts {
			t.Fatalf("duplicate create changed the VM: before %+v after %+v", before, after)
		}
		if p := qemuPIDs(worker.dir, "web"); len(p) != 1 {
			t.Fatalf("QEMU processes for web after a duplicate create: %v", p)
		}
	})

	t.Run("host port clash keeps the second VM off the worker", func(t *testing.T) {
		_, port, _ := strings.Cut(freeAddr(t), ":")
		pin := strconv.FormatUint(c.other(worker).id, 10)
		for _, name := range []string{"port1", "port2"} {
			if out, errOut, err := vmCLI(n1.addr, "vm", "create", name, "--memory", "64", "--port", port+":80", "--node", pin, "--detach"); err != nil {
				t.Fatalf("vm create %s: %v: %s%s", name, err, out, errOut)
			}
		}
		waitVM(t, n1.addr, "port1", "placed", func(v vmJSON) bool { return v.Worker != 0 })
		want := "host port " + port + "/tcp is forwarded by vm port1 on worker " + pin
		v := waitVM(t, n1.addr, "port2", "pending, naming the clash", func(v vmJSON) bool {
			return v.State == "pending" && strings.Contains(v.reason(), want)
		})
		if v.Worker != 0 {
			t.Fatalf("port2 placed on worker %d beside port1", v.Worker)
		}
		deleteAndWait(t, n1.addr, "port2")
		deleteAndWait(t, n1.addr, "port1")
	})

	t.Run("worker restarted: the VM is adopted", func(t *testing.T) {
		via := c.other(worker)
		before, _, _ := vmStatus(via.addr, "web")
		pids = qemuPIDs(worker.dir, "web")
		worker.kill9()
		worker.restart()
		waitFor(t, vmWait, "the restarted worker to adopt web", func() (bool, string) {
			return strings.Contains(worker.logs(), "adopted a VM that was still running"), "no adoption logged yet"
		})
		// Adopted means: the same QEMU process, the same generation, no
		// restart counted, still running — once the restarted worker has
		// converged (its first report after adopting it).
		after := waitVM(t, via.addr, "web", "reported running by the restarted worker", func(v vmJSON) bool {
			return v.State == "running" && v.UpdatedAt != nil && before.UpdatedAt != nil && *v.UpdatedAt != *before.UpdatedAt
		})
		if after.Generation != before.Generation || after.Restarts != before.Restarts || after.Worker != before.Worker {
			t.Fatalf("not adopted in place: before %+v after %+v", before, after)
		}
		if now := qemuPIDs(worker.dir, "web"); !slices.Equal(now, pids) {
			t.Fatalf("QEMU processes for web: %v, before the worker restart %v", now, pids)
		}
	})

	t.Run("worker killed: the VM moves", func(t *testing.T) {
		old := worker
		via := c.other(old)
		before, _, _ := vmStatus(via.addr, "web")
		stale := qemuPIDs(old.dir, "web")
		old.kill9()
		killed := time.Now()
		// The killed worker's QEMU outlives the worker process, but its
		// guard stops it once the worker's lease (half the worker TTL) is
		// not renewed: before the leader can mark the worker down and
		// re-place the VM. So the moment the VM runs elsewhere, the old
		// copy must already be gone.
		goneAfter := time.Duration(-1)
		v := waitVM(t, via.addr, "web", "running on another worker", func(v vmJSON) bool {
			if goneAfter < 0 && len(qemuPIDs(old.dir, "web")) == 0 {
				goneAfter = time.Since(killed)
			}
			return v.State == "running" && v.Worker != old.id && v.Worker != 0
		})
		movedAfter := time.Since(killed)
		if p := qemuPIDs(old.dir, "web"); len(p) != 0 {
			t.Fatalf("two copies: web runs on worker %d while the killed worker %d's QEMU %v (was %v) still runs", v.Worker, old.id, p, stale)
		}
		t.Logf("after the worker's kill -9: its QEMU gone within %s, the VM running elsewhere after %s", goneAfter.Round(100*time.Millisecond), movedAfter.Round(100*time.Millisecond))
		if b, err := os.ReadFile(filepath.Join(old.dir, "vms", "web", "console.log")); err != nil || !strings.Contains(string(b), "blixard vm-guard: lease") {
			t.Errorf("the killed worker's console log of web does not say its guard stopped it (%v):\n%s", err, b)
		}
		if v.Generation <= before.Generation || v.Restarts <= before.Restarts {
			t.Errorf("re-placement not counted: before %+v after %+v", before, v)
		}
		worker = c.nodes[v.Worker]
		if p := qemuPIDs(worker.dir, "web"); len(p) != 1 {
			t.Fatalf("new worker %d runs %v for web", v.Worker, p)
		}
		// When the worker returns it cleans up what it no longer owns and
		// the current copy stays the only one.
		old.restart()
		waitFor(t, vmWait, "the stale directory to be removed", func() (bool, string) {
			f := vmFiles(old, "web")
			return len(f) == 0, fmt.Sprint(f)
		})
		if p := qemuPIDs(worker.dir, "web"); len(p) != 1 {
			t.Fatalf("the current copy is gone too: %v", p)
		}
	})

	t.Run("delete leaves nothing", func(t *testing.T) {
		via := c.other(worker)
		if out, errOut, err := vmCLI(via.addr, "vm", "delete", "web"); err != nil {
			t.Fatalf("vm delete: %v: %s%s", err, out, errOut)
		}
		waitFor(t, vmWait, "web to be gone", func() (bool, string) {
			_, found, raw := vmStatus(via.addr, "web")
			return !found, raw
		})
		for _, n := range c.nodes {
			if p := qemuPIDs(n.dir, ""); len(p) != 0 {
				t.Errorf("node %d still runs QEMU %v", n.id, p)
			}
			if f := vmFiles(n, "web"); len(f) != 0 {
				t.Errorf("node %d keeps %v of web", n.id, f)
			}
		}
	})
}
