package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkSchedule times one pass over 100,000 pending tasks at three
// cluster sizes, with two worker sizes:
//
//   - size=fit: workers are sized so the cluster can hold the whole
//     backlog (a backlog meeting a mostly idle cluster); nearly every task
//     is placed, so this measures the cost per placement.
//   - size=32core: 32-core, 128 GiB workers. With 100 and 1,000 workers
//     they hold only part of the backlog and the rest is decided "waiting
//     for room", which also costs a scan; 10,000 hold it all.
//
// Workers start 0–25% used. The task mix: 100–2000m CPU, 128–4096 MiB,
// priorities 0–9, half bin-pack and half spread, 10% constrained to a
// zone, 1% pinned to a node, 1% in backoff.
//
//	go test -run '^$' -bench BenchmarkSchedule -benchtime 3x -count 3 ./internal/scheduler/
func BenchmarkSchedule(b *testing.B) {
	const tasks = 100_000
	for _, load := range []string{"fit", "32core"} {
		for _, workers := range []int{100, 1000, 10000} {
			b.Run(fmt.Sprintf("size=%s/workers=%d/tasks=%d", load, workers, tasks), func(b *testing.B) {
				in := benchInput(workers, tasks, load == "fit")
				var placed int
				for b.Loop() {
					placed = len(Schedule(in, rand.New(rand.NewPCG(1, 2))).Placements)
				}
				secs := b.Elapsed().Seconds()
				b.ReportMetric(float64(placed), "placed/op")
				b.ReportMetric(float64(placed)*float64(b.N)/secs, "placements/s")
				b.ReportMetric(float64(tasks)*float64(b.N)/secs, "tasks/s")
			})
		}
	}
}

func benchInput(workers, tasks int, fit bool) Input {
	r := rand.New(rand.NewPCG(uint64(workers), uint64(tasks)))
	in := Input{Now: epoch.Add(1e9)}
	zones := []string{"a", "b", "c"}
	var demandCPU int64
	for i := range tasks {
		t := Task{
			ID:        fmt.Sprintf("task-%06d", i),
			Priority:  int32(r.IntN(10)),
			Seq:       uint64(i),
			Resources: Resources{CPUMillis: 100 + r.Int64N(1901), MemoryMiB: 128 + r.Int64N(3969)},
			Policy:    Policy(r.IntN(2)),
		}
		switch n := r.IntN(100); {
		case n < 10:
			t.Constraints = map[string]string{"zone": zones[r.IntN(len(zones))]}
		case n < 11:
			t.Node = uint64(1 + r.IntN(workers))
		case n < 12:
			t.NotBefore = in.Now.Add(1e9)
		}
		demandCPU += t.Resources.CPUMillis
		in.Pending = append(in.Pending, t)
	}
	// fit: 25% over total demand, which covers the initial load and
	// leaves little unplaced to fragmentation. Memory is 4 GiB per core
	// either way, more than the tasks' average of about 2 GiB per core, so
	// CPU is what runs out.
	cores := int64(32)
	if fit {
		cores = demandCPU * 5 / 4 / int64(workers) / 1000
	}
	for i := range workers {
		w := Worker{
			ID:       uint64(i + 1),
			Labels:   map[string]string{"zone": zones[i%len(zones)]},
			Capacity: Resources{CPUMillis: cores * 1000, MemoryMiB: cores * 4096},
		}
		// Some load already, different per worker so scores are not all
		// tied.
		w.Used = Resources{CPUMillis: r.Int64N(w.Capacity.CPUMillis / 4), MemoryMiB: r.Int64N(w.Capacity.MemoryMiB / 4)}
		in.Workers = append(in.Workers, w)
	}
	return in
}
