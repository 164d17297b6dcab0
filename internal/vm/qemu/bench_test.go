package qemu

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkBoot measures Start → readiness marker (QEMU start, kernel
// boot, init, module loads) for one 128 MiB guest at a time, and reports
// the median and the QEMU process's RSS at readiness. Run it with
//
//	go test -run '^$' -bench Boot -benchtime 10x ./internal/vm/qemu/
func BenchmarkBoot(b *testing.B) {
	root := b.TempDir()
	d, err := New(Config{StateRoot: root})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	var boots []time.Duration
	var rss []int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		spec := testSpec(fmt.Sprintf("bench%d", i))
		ctx, cancel := context.WithTimeout(context.Background(), bootDeadline)
		start := time.Now()
		if _, err := d.Start(ctx, spec); err != nil {
			cancel()
			b.Fatal(err)
		}
		if err := d.WaitReady(ctx, spec.ID); err != nil {
			cancel()
			b.Fatal(err)
		}
		boots = append(boots, time.Since(start))
		b.StopTimer()
		st, err := d.Status(ctx, spec.ID)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		rss = append(rss, rssKiB(st.PID))
		if err := d.Kill(spec.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(boots)
	slices.Sort(rss)
	b.ReportMetric(float64(boots[len(boots)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(boots[len(boots)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(rss[len(rss)/2])/1024, "rss-MiB")
	accel, _ := d.Accel()
	b.Logf("accel %s, %d boots", accel, len(boots))
}

// rssKiB reads VmRSS from /proc/<pid>/status; 0 if unknown.
func rssKiB(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}
