package e2e

import (
	"bytes"
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

// buildImage builds the guest image once per benchmark with the CLI, so
// nodes start with --vm-image and no VM pays for building it.
func buildImage(b *testing.B) string {
	b.Helper()
	dir := filepath.Join(b.TempDir(), "image")
	cmd := exec.Command(blixardBin, "image", "build", "--output", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("blixard image build: %v\n%s", err, out)
	}
	return dir
}

// qemuArgsOf returns the command line of a running QEMU.
func qemuArgsOf(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// bootByHand runs the driver's QEMU command line itself, with the VM's
// directory swapped for dir and without -S (nobody resumes it over QMP),
// and measures the time to the readiness marker on the console, polled
// every 5 ms (the driver polls every 20 ms, so this errs in the
// hand-launched QEMU's favour).
func bootByHand(b *testing.B, args []string, vmDir, dir string) time.Duration {
	b.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	var a []string
	for _, s := range args[1:] {
		if s == "-S" {
			continue
		}
		a = append(a, strings.ReplaceAll(s, vmDir, dir))
	}
	cmd := exec.Command(args[0], a...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	console := filepath.Join(dir, "console.log")
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	}()
	for {
		if c, _ := os.ReadFile(console); bytes.Contains(c, []byte("BLIXARD-READY")) {
			return time.Since(start)
		}
		if time.Since(start) > vmWait {
			b.Fatalf("QEMU by hand: no readiness marker within %s", vmWait)
		}
		<-time.After(5 * time.Millisecond) // poll pacing
	}
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// BenchmarkVMCreate measures `blixard vm create NAME` (the CLI returns once
// the worker reported the VM running, i.e. once the guest printed its
// readiness marker) on a 3-node cluster, interleaved with the same QEMU
// command launched by hand and timed to the same marker. It reports p50
// and p99 of both, and splits the orchestrated time into the part before
// QEMU starts (CLI, raft, scheduling, the worker's start) and the part
// after the marker (the driver seeing it, the report through raft, the
// CLI's wait). Run it on a non-race binary:
//
//	BLIXARD_E2E_NORACE=1 go test -run '^$' -bench VMCreate -benchtime 10x ./e2e/
func BenchmarkVMCreate(b *testing.B) {
	image := buildImage(b)
	c := newCluster(b)
	c.timers = nil // production defaults
	n1 := c.add(1, "--bootstrap", "--vm-image", image)
	c.add(2, "--join", n1.addr, "--vm-image", image)
	c.add(3, "--join", n1.addr, "--vm-image", image)
	for _, n := range c.nodes {
		killQEMUsAtCleanup(b, n.dir)
	}
	c.waitVoters(n1, 1, 2, 3)
	hand := b.TempDir()
	killQEMUsAtCleanup(b, hand)

	var create, byHand, before, boot, after []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		if out, errOut, err := vmCLI(n1.addr, "vm", "create", name); err != nil {
			b.Fatalf("vm create: %v: %s%s", err, out, errOut)
		}
		t1 := time.Now()
		create = append(create, t1.Sub(t0))
		b.StopTimer()
		v, _, raw := vmStatus(n1.addr, name)
		w := c.nodes[v.Worker]
		if w == nil {
			b.Fatalf("vm status: %s", raw)
		}
		pids := qemuPIDs(w.dir, name)
		if len(pids) != 1 {
			b.Fatalf("QEMU processes for %s: %v", name, pids)
		}
		vmDir := filepath.Join(w.dir, "vms", name)
		// QEMU writes its pid file as it starts; the guest writes nothing
		// after the marker (quiet kernel, idle init), so the console's
		// mtime is when the marker came.
		pf, err1 := os.Stat(filepath.Join(vmDir, "qemu.pid"))
		cl, err2 := os.Stat(filepath.Join(vmDir, "console.log"))
		if err1 == nil && err2 == nil {
			before = append(before, pf.ModTime().Sub(t0))
			boot = append(boot, cl.ModTime().Sub(pf.ModTime()))
			after = append(after, t1.Sub(cl.ModTime()))
		}
		args, err := qemuArgsOf(pids[0])
		if err != nil {
			b.Fatal(err)
		}
		if out, errOut, err := vmCLI(n1.addr, "vm", "delete", name); err != nil {
			b.Fatalf("vm delete: %v: %s%s", err, out, errOut)
		}
		byHand = append(byHand, bootByHand(b, args, vmDir, filepath.Join(hand, name)))
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(pct(create, 50).Milliseconds()), "create-p50-ms")
	b.ReportMetric(float64(pct(create, 99).Milliseconds()), "create-p99-ms")
	b.ReportMetric(float64(pct(byHand, 50).Milliseconds()), "hand-p50-ms")
	b.ReportMetric(float64(pct(byHand, 99).Milliseconds()), "hand-p99-ms")
	b.ReportMetric(float64((pct(create, 50) - pct(byHand, 50)).Milliseconds()), "overhead-p50-ms")
	if len(before) > 0 {
		b.ReportMetric(float64(pct(before, 50).Milliseconds()), "to-qemu-p50-ms")
		b.ReportMetric(float64(pct(boot, 50).Milliseconds()), "qemu-to-marker-p50-ms")
		b.ReportMetric(float64(pct(after, 50).Milliseconds()), "marker-to-cli-p50-ms")
	}
	b.Logf("create %v\nby hand %v\nbefore QEMU %v\nQEMU to marker %v\nafter the marker %v", create, byHand, before, boot, after)
}

// memInfoKiB reads one field of /proc/meminfo.
func memInfoKiB(field string) int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

// procKiB reads a "Name: N kB" field of /proc/<pid>/<file>.
func procKiB(pid int, file, field string) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

// cpuTicks is a process's user+system time in clock ticks.
func cpuTicks(pid int) int64 {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// BenchmarkVMDensity creates BLIXARD_VM_DENSITY (default 10) idle VMs of
// BLIXARD_VM_MEMORY MiB (default 74, the smallest the Debian cloud kernel
// boots in) on one worker, waits until all run, then reports per VM: RSS,
// PSS (shared pages split between the VMs), the drop of MemAvailable, and
// the host CPU an idle VM burns over 10 s. How many VMs a worker holds
// follows from its memory (see docs/BENCHMARKS.md). Run it once:
//
//	BLIXARD_E2E_NORACE=1 go test -run '^$' -bench VMDensity -benchtime 1x ./e2e/
func BenchmarkVMDensity(b *testing.B) {
	count, memory := 10, 74
	if v, err := strconv.Atoi(os.Getenv("BLIXARD_VM_DENSITY")); err == nil && v > 0 {
		count = v
	}
	if v, err := strconv.Atoi(os.Getenv("BLIXARD_VM_MEMORY")); err == nil && v > 0 {
		memory = v
	}
	image := buildImage(b)
	c := newCluster(b)
	c.timers = nil
	n := c.add(1, "--bootstrap", "--vm-image", image, "--cpu", strconv.Itoa(count))
	killQEMUsAtCleanup(b, n.dir)
	c.waitVoters(n, 1)
	availBefore := memInfoKiB("MemAvailable")
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < count; i++ {
		name := fmt.Sprintf("idle-%d", i)
		if out, errOut, err := vmCLI(n.addr, "vm", "create", "--detach", "--memory", strconv.Itoa(memory), name); err != nil {
			b.Fatalf("vm create %s: %v: %s%s", name, err, out, errOut)
		}
	}
	for i := 0; i < count; i++ {
		waitVM(b, n.addr, fmt.Sprintf("idle-%d", i), "running", func(v vmJSON) bool { return v.State == "running" })
	}
	allUp := time.Since(start)
	b.StopTimer()
	pids := qemuPIDs(n.dir, "")
	if len(pids) != count {
		b.Fatalf("%d QEMU processes, want %d", len(pids), count)
	}
	var rss, pss, ticks0 int64
	for _, p := range pids {
		rss += procKiB(p, "status", "VmRSS")
		pss += procKiB(p, "smaps_rollup", "Pss")
		ticks0 += cpuTicks(p)
	}
	availAfter := memInfoKiB("MemAvailable")
	const window = 10 * time.Second
	<-time.After(window) // the idle CPU measurement window
	var ticks1 int64
	for _, p := range pids {
		ticks1 += cpuTicks(p)
	}
	perVM := func(kib int64) float64 { return float64(kib) / 1024 / float64(count) }
	b.ReportMetric(float64(count), "vms")
	b.ReportMetric(perVM(rss), "rss-MiB/vm")
	b.ReportMetric(perVM(pss), "pss-MiB/vm")
	b.ReportMetric(perVM(availBefore-availAfter), "memavail-drop-MiB/vm")
	b.ReportMetric(float64(ticks1-ticks0)/float64(count)/window.Seconds(), "idle-cpu-%/vm")
	b.ReportMetric(allUp.Seconds(), "all-running-s")
	b.Logf("%d VMs of %d MiB: all running after %s; MemAvailable %d → %d MiB", count, memory, allUp.Round(time.Millisecond), availBefore/1024, availAfter/1024)
}
