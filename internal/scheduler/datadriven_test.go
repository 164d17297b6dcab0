package scheduler

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestDataDriven runs the scenarios in testdata/. Each file drives a small
// cluster model through a language of one command per directive:
//
//	worker id=1 cpu=2000 mem=1024 [labels=zone=a | labels=(zone=a,disk=ssd)] [novm]
//	    adds (or replaces) a ready worker; novm: it cannot run VMs
//	used worker=1 cpu=500 mem=128
//	    sets load on the worker that the model does not track as tasks
//	task id=t1 cpu=500 mem=128 [prio=1] [seq=7] [policy=spread]
//	     [constraint=zone=a | constraint=(zone=a,disk=ssd)] [node=2] [notbefore=5s]
//	    submits a pending task; seq defaults to submission order
//	vm id=web cpu=1000 mem=512 [seq=7] [constraint=...] [node=2]
//	    creates a pending VM (a Task of KindVM, bin-packed, priority 0)
//	schedule [now=10s] [seed=1]
//	    runs one pass, applies its placements, prints the plan
//	release task=t1 | release vm=web
//	    the task finished (the VM was deleted): its resources are freed
//	lose worker=1
//	    the worker is gone: its tasks return to pending
//	workers
//	    prints each worker's load and tasks
//	reset
//	    starts again with an empty cluster
//
// Times are offsets from 2025-01-01T00:00:00Z. Rewrite the expected output
// with: go test ./internal/scheduler -run DataDriven -rewrite
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		c := newModel()
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return c.run(t, d)
		})
	})
}

// model is the cluster as the rest of Blixard would keep it: workers, the
// pending queue and the running attempts that make up each worker's Used.
type model struct {
	workers map[uint64]*Worker
	extra   map[uint64]Resources // from `used`
	pending []Task
	running map[string]running
	seq     uint64
}

type running struct {
	task   Task
	worker uint64
}

func newModel() *model {
	return &model{
		workers: map[uint64]*Worker{},
		extra:   map[uint64]Resources{},
		running: map[string]running{},
	}
}

func (m *model) run(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "worker":
		var w Worker
		d.ScanArgs(t, "id", &w.ID)
		d.ScanArgs(t, "cpu", &w.Capacity.CPUMillis)
		d.ScanArgs(t, "mem", &w.Capacity.MemoryMiB)
		w.Labels = pairsArg(t, d, "labels")
		w.VMs = !d.HasArg("novm")
		m.workers[w.ID] = &w
		return ""

	case "used":
		var id uint64
		var r Resources
		d.ScanArgs(t, "worker", &id)
		d.ScanArgs(t, "cpu", &r.CPUMillis)
		d.ScanArgs(t, "mem", &r.MemoryMiB)
		m.extra[id] = r
		return ""

	case "vm":
		vm := Task{Kind: KindVM}
		d.ScanArgs(t, "id", &vm.ID)
		d.ScanArgs(t, "cpu", &vm.Resources.CPUMillis)
		d.ScanArgs(t, "mem", &vm.Resources.MemoryMiB)
		m.seq++
		vm.Seq = m.seq
		d.MaybeScanArgs(t, "seq", &vm.Seq)
		d.MaybeScanArgs(t, "node", &vm.Node)
		vm.Constraints = pairsArg(t, d, "constraint")
		m.pending = append(m.pending, vm)
		return ""

	case "task":
		var task Task
		d.ScanArgs(t, "id", &task.ID)
		d.ScanArgs(t, "cpu", &task.Resources.CPUMillis)
		d.ScanArgs(t, "mem", &task.Resources.MemoryMiB)
		d.MaybeScanArgs(t, "prio", &task.Priority)
		m.seq++
		task.Seq = m.seq
		d.MaybeScanArgs(t, "seq", &task.Seq)
		d.MaybeScanArgs(t, "node", &task.Node)
		var pol string
		if d.MaybeScanArgs(t, "policy", &pol) {
			switch pol {
			case "binpack":
				task.Policy = BinPack
			case "spread":
				task.Policy = Spread
			default:
				d.Fatalf(t, "unknown policy %q", pol)
			}
		}
		task.Constraints = pairsArg(t, d, "constraint")
		task.NotBefore = timeArg(t, d, "notbefore")
		m.pending = append(m.pending, task)
		return ""

	case "schedule":
		var seed uint64
		d.MaybeScanArgs(t, "seed", &seed)
		in := m.input(timeArg(t, d, "now"))
		plan := Schedule(in, rand.New(rand.NewPCG(seed, seed)))
		checkInvariants(t, in, plan)
		return m.apply(plan)

	case "release":
		var id string
		if d.HasArg("vm") {
			d.ScanArgs(t, "vm", &id)
			id = "vm " + id
		} else {
			d.ScanArgs(t, "task", &id)
		}
		if _, ok := m.running[id]; !ok {
			d.Fatalf(t, "%s is not running", id)
		}
		delete(m.running, id)
		return ""

	case "lose":
		var id uint64
		d.ScanArgs(t, "worker", &id)
		delete(m.workers, id)
		delete(m.extra, id)
		var out strings.Builder
		for _, r := range m.sortedRunning() {
			if r.worker == id {
				delete(m.running, r.task.label())
				m.pending = append(m.pending, r.task)
				fmt.Fprintf(&out, "%s returns to pending\n", r.task.label())
			}
		}
		return out.String()

	case "workers":
		return m.describe()

	case "reset":
		*m = *newModel()
		return ""
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return ""
}

// input builds the snapshot: workers in ID order with Used summed from
// `used` plus the running tasks.
func (m *model) input(now time.Time) Input {
	in := Input{Now: now, Pending: slices.Clone(m.pending)}
	for _, id := range m.workerIDs() {
		w := *m.workers[id]
		w.Used = m.load(id)
		in.Workers = append(in.Workers, w)
	}
	return in
}

func (m *model) load(id uint64) Resources {
	l := m.extra[id]
	for _, r := range m.running {
		if r.worker == id {
			l.CPUMillis += r.task.Resources.CPUMillis
			l.MemoryMiB += r.task.Resources.MemoryMiB
		}
	}
	return l
}

// apply moves placed tasks from pending to running and renders the plan.
func (m *model) apply(plan Plan) string {
	var out strings.Builder
	where := map[string]uint64{}
	for _, p := range plan.Placements {
		l := (&Task{ID: p.TaskID, Kind: p.Kind}).label()
		where[l] = p.WorkerID
		fmt.Fprintf(&out, "place %s on worker %d\n", l, p.WorkerID)
	}
	for _, u := range plan.Unplaced {
		fmt.Fprintf(&out, "unplaced %s: %s\n", (&Task{ID: u.TaskID, Kind: u.Kind}).label(), u.Reason)
	}
	kept := m.pending[:0]
	for _, task := range m.pending {
		if w, ok := where[task.label()]; ok {
			m.running[task.label()] = running{task: task, worker: w}
			continue
		}
		kept = append(kept, task)
	}
	m.pending = kept
	if out.Len() == 0 {
		return "nothing pending\n"
	}
	return out.String()
}

func (m *model) describe() string {
	var out strings.Builder
	running := m.sortedRunning()
	for _, id := range m.workerIDs() {
		w := m.workers[id]
		l := m.load(id)
		fmt.Fprintf(&out, "worker %d: cpu %d/%d mem %d/%d", id, l.CPUMillis, w.Capacity.CPUMillis, l.MemoryMiB, w.Capacity.MemoryMiB)
		if len(w.Labels) > 0 {
			fmt.Fprintf(&out, " labels %s", formatPairs(w.Labels))
		}
		var tasks []string
		for _, r := range running {
			if r.worker == id {
				tasks = append(tasks, r.task.label())
			}
		}
		if len(tasks) > 0 {
			fmt.Fprintf(&out, " tasks %s", strings.Join(tasks, ","))
		}
		out.WriteString("\n")
	}
	return out.String()
}

func (m *model) workerIDs() []uint64 {
	ids := make([]uint64, 0, len(m.workers))
	for id := range m.workers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (m *model) sortedRunning() []running {
	out := make([]running, 0, len(m.running))
	for _, r := range m.running {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b running) int { return cmp.Compare(a.task.label(), b.task.label()) })
	return out
}

// pairsArg reads key=value pairs, as one value or a parenthesised list.
func pairsArg(t *testing.T, d *datadriven.TestData, key string) map[string]string {
	arg, ok := d.Arg(key)
	if !ok {
		return nil
	}
	out := map[string]string{}
	for _, v := range arg.Vals {
		k, val, found := strings.Cut(v, "=")
		if !found {
			d.Fatalf(t, "%s: %q is not key=value", key, v)
		}
		out[k] = val
	}
	return out
}

// timeArg reads an offset from the epoch, like "10s"; absent is the epoch.
func timeArg(t *testing.T, d *datadriven.TestData, key string) time.Time {
	var s string
	if !d.MaybeScanArgs(t, key, &s) {
		return epoch
	}
	off, err := time.ParseDuration(s)
	if err != nil {
		d.Fatalf(t, "%s: %v", key, err)
	}
	return epoch.Add(off)
}

func formatPairs(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}
