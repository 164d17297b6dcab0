package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// gRPC's client connections close asynchronously.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("google.golang.org/grpc.(*addrConn).resetTransportAndUnlock"),
	)
}

type tb interface {
	Helper()
	Fatalf(string, ...any)
	TempDir() string
	Cleanup(func())
}

func freePort(t tb) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func logger() *slog.Logger {
	if os.Getenv("BLIXARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startCluster runs n in-process nodes on loopback with real storage and
// real gRPC, and waits until all are voters.
func startCluster(t tb, n int, tweak func(*Config)) []*Server {
	t.Helper()
	var servers []*Server
	t.Cleanup(func() {
		for i := len(servers) - 1; i >= 0; i-- {
			servers[i].Stop()
		}
	})
	var first string
	for i := 1; i <= n; i++ {
		cfg := Config{
			Insecure: true,
			ID:       uint64(i), DataDir: filepath.Join(t.TempDir(), fmt.Sprint(i)), Listen: freePort(t),
			Worker: true, CPUMillis: 1000, MemoryMiB: 1024,
			// VMs are placed only on workers with this capability; these
			// nodes run no VM worker (the tests report for it).
			Capabilities: []string{state.CapabilityVMs},
			TickInterval: 20 * time.Millisecond, HeartbeatInterval: 100 * time.Millisecond, WorkerTTL: time.Second,
			Logger: logger().With("test_node", i),
		}
		if i == 1 {
			cfg.Bootstrap = true
			first = cfg.Listen
		} else {
			cfg.Join = first
		}
		if tweak != nil {
			tweak(&cfg)
		}
		s, err := New(cfg)
		if err != nil {
			t.Fatalf("new node %d: %v", i, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = s.Start(ctx)
		cancel()
		if err != nil {
			s.Stop()
			t.Fatalf("start node %d: %v", i, err)
		}
		servers = append(servers, s)
	}
	waitUntil(t, 30*time.Second, "all nodes voters with a leader", func() (bool, string) {
		lead := leaderOf(servers)
		if lead == nil {
			return false, "no leader"
		}
		voters := 0
		for _, m := range lead.State().Members() {
			if m.Role == pb.MemberRole_MEMBER_ROLE_VOTER {
				voters++
			}
		}
		return voters == n, fmt.Sprintf("%d voters", voters)
	})
	return servers
}

func leaderOf(servers []*Server) *Server {
	for _, s := range servers {
		if s.Node().IsLeader() {
			return s
		}
	}
	return nil
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t tb, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last saw %s", d, what, seen)
		}
		<-time.After(10 * time.Millisecond) // poll pacing; the condition is what is awaited
	}
}

func putCmd(k string, v []byte) *pb.Command {
	return &pb.Command{Op: &pb.Command_Put{Put: &pb.Put{Key: k, Value: v}}}
}

func TestInProcessClusterReplicatesAndRegistersWorkers(t *testing.T) {
	servers := startCluster(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Propose on every node, including followers.
	for i, s := range servers {
		if _, err := s.propose(ctx, putCmd(fmt.Sprint("k", i), []byte("v"))); err != nil {
			t.Fatalf("propose on node %d: %v", i+1, err)
		}
	}
	for _, s := range servers {
		if err := s.Node().ReadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		for i := range servers {
			if _, ok := s.State().Get(fmt.Sprint("k", i)); !ok {
				t.Fatalf("node %d missing k%d after linearizable read", s.cfg.ID, i)
			}
		}
	}
	waitUntil(t, 10*time.Second, "3 ready workers", func() (bool, string) {
		ws := servers[0].State().Workers()
		ready := 0
		for _, w := range ws {
			if w.State == pb.WorkerState_WORKER_STATE_READY {
				ready++
			}
		}
		return ready == 3, fmt.Sprint(ws)
	})
}

// BenchmarkPropose measures committed-and-applied proposals (256-byte
// kv puts) on a 3-node loopback cluster with real WAL fsyncs, with 1 and
// 64 concurrent proposers on the leader.
func BenchmarkPropose(b *testing.B) {
	for _, bc := range []struct {
		conc int
		tls  bool
	}{{1, false}, {64, false}, {1, true}, {64, true}} {
		name := fmt.Sprintf("proposers=%d", bc.conc)
		if bc.tls {
			name += "/tls"
		}
		conc := bc.conc
		b.Run(name, func(b *testing.B) {
			// Production raft timers (the worker TTL must then be the
			// production one too, for the VM fencing check).
			base := func(c *Config) {
				c.Worker = false
				c.TickInterval = 100 * time.Millisecond
				c.WorkerTTL = 5 * time.Second
			}
			tweak := base
			if bc.tls {
				// Mutual TLS between the peers (raft traffic).
				sec := secure(b, securePKI(b, 3))
				tweak = func(c *Config) { base(c); sec(c) }
			}
			servers := startCluster(b, 3, tweak)
			lead := leaderOf(servers)
			val := make([]byte, 256)
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			var wg sync.WaitGroup
			per := (b.N + conc - 1) / conc
			b.ResetTimer()
			for w := 0; w < conc; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					mine := make([]time.Duration, 0, per)
					for i := 0; i < per; i++ {
						start := time.Now()
						if _, err := lead.propose(context.Background(), putCmd(fmt.Sprintf("w%d-%d", w, i%1000), val)); err != nil {
							b.Errorf("propose: %v", err)
							return
						}
						mine = append(mine, time.Since(start))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				}(w)
			}
			wg.Wait()
			b.StopTimer()
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
				b.ReportMetric(float64(len(lat))/b.Elapsed().Seconds(), "proposals/s")
			}
		})
	}
}
