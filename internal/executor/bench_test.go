package executor

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkStartWait runs /bin/true to completion, one attempt at a time:
// the executor's share of a short task's latency.
//
//	go test -run '^$' -bench StartWait ./internal/executor/
func BenchmarkStartWait(b *testing.B) {
	for _, tc := range []struct {
		name    string
		cgroups bool
		output  bool
	}{
		{"cgroups/silent", true, false},
		{"cgroups/output", true, true},
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
			spec := Spec{Command: "/bin/true"}
			if tc.output {
				spec = Spec{Command: "/bin/echo", Args: []string{"hello"}}
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
