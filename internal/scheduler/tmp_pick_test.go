package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func BenchmarkTmpPick(b *testing.B) {
	for _, n := range []int{1000, 4000, 10000, 40000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			in := benchInput(n, 1, false)
			p := newPass(in, rand.New(rand.NewPCG(1, 1)))
			r := rand.New(rand.NewPCG(3, 3))
			for b.Loop() {
				p.pick(p.all.members, 100+r.Int64N(1000), 128+r.Int64N(2000), r.IntN(2) == 0)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/worker")
		})
	}
}
