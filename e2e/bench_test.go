package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

// BenchmarkLeaderFailover measures the time from kill -9 of the leader
// until a write through a surviving node succeeds, with default raft
// timers (50 ms tick, 10-tick election timeout). Run it on a non-race
// binary: BLIXARD_E2E_NORACE=1 go test -run '^$' -bench Failover -benchtime 20x ./e2e/
func BenchmarkLeaderFailover(b *testing.B) {
	c := newCluster(b)
	if os.Getenv("BLIXARD_BENCH_TLS") != "" {
		b.Skip("the failover benchmark runs --insecure (its CLI writes carry no certificates)")
	}
	c.timers = nil // production defaults
	n1 := c.add(1, "--bootstrap")
	c.add(2, "--join", n1.addr)
	c.add(3, "--join", n1.addr)
	c.waitVoters(n1, 1, 2, 3)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lead := leaderOf(b, c)
		survivor := c.other(lead)
		lead.kill9()
		start := time.Now()
		for {
			// The CLI call itself waits for a leader (up to --timeout).
			if err := put(survivor.addr, "failover", fmt.Sprint(i)); err == nil {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("no successful write within 30s of killing leader %d", lead.id)
			}
		}
		lat = append(lat, time.Since(start))
		lead.restart()
		waitFor(b, 30*time.Second, "restarted node to catch up", func() (bool, string) {
			v, err := get(lead.addr, "failover", true)
			return err == nil && v == fmt.Sprint(i), fmt.Sprintf("%q %v", v, err)
		})
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
}

// benchTaskCluster starts 3 nodes with production timers: with mutual TLS
// and the management token when BLIXARD_BENCH_TLS=1, else --insecure.
func benchTaskCluster(b *testing.B) (*cluster, []rpcpb.ClusterClient) {
	var c *cluster
	if os.Getenv("BLIXARD_BENCH_TLS") != "" {
		c = newCluster(b)
		c.timers = nil
		c, _ = secureClusterOf(b, c)
	} else {
		c = newCluster(b)
		c.timers = nil
		n1 := c.add(1, "--bootstrap")
		c.add(2, "--join", n1.addr)
		c.add(3, "--join", n1.addr)
		c.waitVoters(n1, 1, 2, 3)
	}
	cls := clients(b, c)
	// Wait until the three workers are ready so placement is immediate.
	waitFor(b, 30*time.Second, "3 ready workers", func() (bool, string) {
		r, err := cls[0].ListWorkers(context.Background(), &pb.ListWorkersRequest{})
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, w := range r.Workers {
			if w.Worker.State == pb.WorkerState_WORKER_STATE_READY {
				ready++
			}
		}
		return ready == 3, fmt.Sprint(ready)
	})
	return c, cls
}

// BenchmarkTaskLatency measures, for /bin/true on a 3-node loopback
// cluster of real processes, submit→running (first seen running by the
// client is not measured: the attempt's recorded start time is used) and
// submit→finished as the client sees it (SubmitTask then WaitTask).
//
//	BLIXARD_E2E_NORACE=1 go test -run '^$' -bench TaskLatency -benchtime 300x ./e2e/
func BenchmarkTaskLatency(b *testing.B) {
	_, cls := benchTaskCluster(b)
	ctx := context.Background()
	var toRun, toDone, toPlace, placeToStart, startToEnd []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := cls[i%len(cls)]
		start := time.Now()
		r, err := c.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: &pb.TaskSpec{Command: "/bin/true"}, IdempotencyKey: fmt.Sprint("lat-", i, "-", start.UnixNano())})
		if err != nil {
			b.Fatal(err)
		}
		w, err := c.WaitTask(ctx, &pb.WaitTaskRequest{Id: r.Task.Id})
		if err != nil {
			b.Fatal(err)
		}
		toDone = append(toDone, time.Since(start))
		a := w.Task.Attempts[len(w.Task.Attempts)-1]
		toRun = append(toRun, time.Duration(a.StartedAtUnixNano-w.Task.CreatedAtUnixNano))
		toPlace = append(toPlace, time.Duration(a.AssignedAtUnixNano-w.Task.CreatedAtUnixNano))
		placeToStart = append(placeToStart, time.Duration(a.StartedAtUnixNano-a.AssignedAtUnixNano))
		startToEnd = append(startToEnd, time.Duration(a.FinishedAtUnixNano-a.StartedAtUnixNano))
	}
	b.StopTimer()
	report(b, "run", toRun)
	report(b, "done", toDone)
	// Where the time goes (stage boundaries are proposal times on the
	// proposing node's clock; all nodes share this machine's clock).
	report(b, "place", toPlace)
	report(b, "place-start", placeToStart)
	report(b, "start-end", startToEnd)
}

// BenchmarkTaskThroughput: 64 concurrent submitters each submit /bin/true
// and wait for it; completed tasks per second end to end.
//
//	BLIXARD_E2E_NORACE=1 go test -run '^$' -bench TaskThroughput -benchtime 2000x ./e2e/
func BenchmarkTaskThroughput(b *testing.B) {
	c, cls := benchTaskCluster(b)
	ctx := context.Background()
	const submitters = 64
	var wg sync.WaitGroup
	var next atomic.Int64
	cpu0 := clusterCPU(c)
	term0 := maxTerm(b, cls)
	b.ResetTimer()
	start := time.Now()
	for s := 0; s < submitters; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			c := cls[s%len(cls)]
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				r, err := c.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: &pb.TaskSpec{Command: "/bin/true"}, IdempotencyKey: fmt.Sprint("tp-", i, "-", start.UnixNano())})
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := c.WaitTask(ctx, &pb.WaitTaskRequest{Id: r.Task.Id}); err != nil {
					b.Error(err)
					return
				}
			}
		}(s)
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tasks/s")
	// CPU per task is steadier than the rate on a shared VM: it does not
	// move when another tenant takes the cores, so it shows what a change
	// costs or saves even in a noisy hour.
	// Every election raises the term: under load there must be none.
	b.ReportMetric(float64(maxTerm(b, cls)-term0), "elections")
	cpu1 := clusterCPU(c)
	b.ReportMetric(float64((cpu1.nodes-cpu0.nodes).Microseconds())/1000/float64(b.N), "node-cpu-ms/task")
	b.ReportMetric(float64((cpu1.tasks-cpu0.tasks).Microseconds())/1000/float64(b.N), "task-cpu-ms/task")
	var maxRSS int64
	for _, n := range c.nodes {
		if kb := rssKiB(n.cmd.Process.Pid); kb > maxRSS {
			maxRSS = kb
		}
	}
	b.ReportMetric(float64(maxRSS)/1024, "max-node-RSS-MiB")
}

// maxTerm is the highest raft term any node reports.
func maxTerm(b *testing.B, cls []rpcpb.ClusterClient) uint64 {
	var term uint64
	for _, c := range cls {
		st, err := c.Status(context.Background(), &pb.StatusRequest{})
		if err != nil {
			b.Fatalf("status: %v", err)
		}
		term = max(term, st.Term)
	}
	return term
}

type cpuTimes struct{ nodes, tasks time.Duration }

// clusterCPU sums the CPU time of the cluster's node processes (user and
// system) and of the task processes they have reaped (their children's).
func clusterCPU(c *cluster) cpuTimes {
	var t cpuTimes
	for _, n := range c.nodes {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n.cmd.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and
		// may hold spaces: utime is field 14, stime 15, cutime 16, cstime 17.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 15 {
			continue
		}
		var v [4]int64
		for i := range v {
			fmt.Sscan(f[11+i], &v[i])
		}
		const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
		t.nodes += time.Duration(v[0]+v[1]) * tick
		t.tasks += time.Duration(v[2]+v[3]) * tick
	}
	return t
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%d", &kb)
			return kb
		}
	}
	return 0
}

func report(b *testing.B, name string, d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	if len(d) == 0 {
		return
	}
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"-p50-ms")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, name+"-p99-ms")
}

// BenchmarkExecCeiling is the machine's own limit for the task benchmarks:
// 64 goroutines of this process fork/exec /bin/true and wait for it, with
// no cluster, no raft and no cgroups. No orchestrator on this machine can
// complete /bin/true tasks faster than this.
//
//	go test -run '^$' -bench ExecCeiling -benchtime 4000x ./e2e/
func BenchmarkExecCeiling(b *testing.B) {
	const workers = 64
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := exec.Command("/bin/true").Run(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "execs/s")
}
