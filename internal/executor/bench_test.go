package executor

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkStartWait runs /bin/true to completion, one attempt at a time:
// the executor's share of a short task's latency. The limits case sets a
// CPU quota and a memory limit, which on a pooled cgroup slot costs writes
// only when they differ from the slot's.
//
//	go test -run '^$' -bench StartWait ./internal/executor/
func BenchmarkStartWait(b *testing.B) {
	for _, tc := range []struct {
		name    string
		cgroups bool
		output  bool
		limits  bool
	}{
		{"cgroups/silent", true, false, false},
		{"cgroups/output", true, true, false},
		{"cgroups/limits", true, false, true},
		{"no-cgroups/silent", false, false, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e, err := New(Config{DataDir: b.TempDir(), DisableCgroups: !tc.cgroups})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Stop()
			if tc.cgroups && e.cg == nil {
				b.Skip("cgroups unavailable")
			}
			spec := Spec{Command: "/bin/true"}
			if tc.output {
				spec = Spec{Command: "/bin/echo", Args: []string{"hello"}}
			}
			if tc.limits {
				spec.CPUMillis, spec.MemoryMiB = 500, 256
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				spec.AttemptID = fmt.Sprintf("b%d.1", i)
				h, err := e.Start(context.Background(), spec)
				if err != nil {
					b.Fatal(err)
				}
				if r := h.Wait(); r.ExitCode != 0 {
					b.Fatalf("result %+v", r)
				}
			}
		})
	}
}

// BenchmarkStartWaitParallel runs /bin/true from 4 goroutines per CPU at
// once, as a worker running many attempts does: ns/op is wall time per
// attempt at that concurrency.
func BenchmarkStartWaitParallel(b *testing.B) {
	for _, tc := range []struct {
		name    string
		cgroups bool
		limits  bool
	}{
		{"cgroups/silent", true, false},
		{"cgroups/limits", true, true},
		{"no-cgroups/silent", false, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e, err := New(Config{DataDir: b.TempDir(), DisableCgroups: !tc.cgroups})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Stop()
			if tc.cgroups && e.cg == nil {
				b.Skip("cgroups unavailable")
			}
			var n atomic.Int64
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					spec := Spec{AttemptID: fmt.Sprintf("p%d.1", n.Add(1)), Command: "/bin/true"}
					if tc.limits {
						spec.CPUMillis, spec.MemoryMiB = 500, 256
					}
					h, err := e.Start(context.Background(), spec)
					if err != nil {
						b.Error(err)
						return
					}
					if r := h.Wait(); r.ExitCode != 0 {
						b.Errorf("result %+v", r)
						return
					}
				}
			})
		})
	}
}
