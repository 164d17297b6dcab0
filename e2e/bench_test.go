package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

// BenchmarkLeaderFailover measures the time from kill -9 of the leader
// until a write through a surviving node succeeds, with default raft
// timers (100 ms tick, 10-tick election timeout). Run it on a non-race
// binary: BLIXARD_E2E_NORACE=1 go test -run x -bench Failover -benchtime 20x ./e2e/
func BenchmarkLeaderFailover(b *testing.B) {
	c := newCluster(b)
	c.timers = nil // production defaults
	n1 := c.add(1, "--bootstrap")
	c.add(2, "--join", n1.addr)
	c.add(3, "--join", n1.addr)
	c.waitVoters(n1, 1, 2, 3)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lead := leaderOf(b, c)
		var survivor *node
		for _, n := range c.nodes {
			if n != lead {
				survivor = n
				break
			}
		}
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
