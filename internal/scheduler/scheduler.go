// Package scheduler decides where pending tasks and VMs run.
//
// It is pure, in the shape of Nomad's scheduler: Schedule reads a snapshot
// (the ready workers, what they already hold, the pending tasks) and returns
// a Plan. It does no I/O, reads no clock, starts no goroutines and keeps no
// state between calls. The time and a seeded random source are inputs, so a
// deterministic simulation can drive it: the same Input and the same seed
// give the same Plan. One call places as many tasks as fit, because upstream
// one pass becomes one raft proposal.
//
// # Tasks and VMs
//
// A pending VM is a Task of Kind KindVM whose request is its vCPUs (1000m
// each) and memory: tasks and VMs share the workers' capacity and one pass
// places both, in the same order (VMs have priority 0 and their creation
// index as Seq, so they queue FIFO with tasks of priority 0). IDs are
// unique per kind; a VM's ID is its name, and reasons name it "vm NAME".
//
// # Order
//
// Tasks are considered by priority (higher first), then Seq (lower first, so
// equal priorities are FIFO), then ID, then position in Input.Pending, which
// makes the order total and independent of how the caller built the slice.
// A task whose NotBefore is after Now is in retry backoff: it is reported as
// Unplaced and otherwise ignored for this pass (it holds no workers, see
// below).
//
// # Fit
//
// A worker can take a task when the task's constraints all equal the
// worker's labels (a constraint "zone=" needs the label present with an empty
// value), the task is pinned to no node or to that worker, and the request
// fits the worker's free capacity (Capacity - Used - everything placed
// there earlier in this pass) in both CPU and memory. Placements never
// over-commit a worker. A zero request counts as zero, so a task asking for
// nothing fits any matching worker that is not already over-committed.
//
// A VM that forwards host ports (user-mode networking) also needs each of
// them free on the worker: not forwarded by a VM already placed there,
// nor by one placed earlier in this pass. (What else on the host may hold
// the port is not known here; QEMU fails to start and says so.)
//
// # Choice among workers
//
// Every candidate is scored by its dominant resource share after the
// placement, max(usedCPU/capCPU, usedMem/capMem), so a worker short of
// memory counts as full even with idle CPU. BinPack takes the highest
// score (the worker left with the least free room, so big holes stay open
// for big tasks); Spread takes the lowest (the emptiest worker). A
// resource a worker offers none of counts as fully used. Workers are
// visited in ID order and exact ties are broken uniformly by the seeded
// rng, so plans from two seeds first differ at a tie (and then in whatever
// follows from that choice). A nil rng breaks ties by lowest worker ID.
//
// # Backfill: waiting tasks hold their workers
//
// A task that could run on some worker's total capacity but finds no room
// now is Unplaced "waiting for room". It then holds every worker it could
// ever use (matching constraints/node and with enough total capacity): no
// task after it in the order is placed on those workers in this pass. Later
// tasks may still backfill onto workers the waiting task cannot use, such
// as workers with other labels, or workers too small for it.
//
// Why: with free backfill a stream of small tasks keeps refilling the room a
// large task is waiting for, and the large task starves even at the highest
// priority. Holding its workers means they only drain while it waits, so it
// is placed as soon as one of them has room, and priority order is strict.
// The cost is utilisation: while a big task waits, smaller lower-priority
// work that would fit on its workers waits too ("room held for ..."), and
// if the tasks on those workers never finish the big task blocks them until
// an operator acts (there is no preemption). The Unplaced reasons name the
// holding task so this is visible. A task that can never fit (too big for
// every worker, or no worker with its labels) holds nothing and blocks
// nobody; it waits until a suitable worker joins.
//
// # Cost
//
// Schedule sorts the pending tasks once (O(T log T)), groups tasks by
// constraint set and pinned node into classes whose candidate workers are
// found once through a label index, and then scans each task's candidates
// in flat per-worker arrays: O(T·W) in the worst case, linear in workers.
// docs/BENCHMARKS.md (## Scheduler) has the measured rates.
package scheduler

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Resources is an amount of CPU and memory.
type Resources struct {
	CPUMillis int64
	MemoryMiB int64
}

// Policy says how to choose among the workers a task fits on.
type Policy int

// Policies. The values are explicit because they are stored in replicated
// task records; BinPack is the zero value so an unset policy packs.
const (
	BinPack Policy = 0 // fill the fullest worker that fits
	Spread  Policy = 1 // use the emptiest worker
)

// String names the policy as the API and the tests spell it.
func (p Policy) String() string {
	switch p {
	case BinPack:
		return "binpack"
	case Spread:
		return "spread"
	}
	return "Policy(" + strconv.Itoa(int(p)) + ")"
}

// Kind says what a pending item is.
type Kind int

// Kinds. Explicit values; KindTask is the zero value.
const (
	KindTask Kind = 0
	KindVM   Kind = 1
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindTask:
		return "task"
	case KindVM:
		return "vm"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Worker is a ready, schedulable worker as of the snapshot.
type Worker struct {
	ID       uint64
	Labels   map[string]string
	Capacity Resources // total offered
	Used     Resources // reserved by attempts currently assigned or running there
	// VMs says whether the worker can run VMs (it registered
	// state.CapabilityVMs); VMs are placed only on such workers.
	VMs bool
	// HostPorts are the host ports that VMs placed here forward, each to
	// the VM's name: a VM forwarding one of them cannot go here.
	HostPorts map[string]string
}

// Task is a pending task, or a pending retry of one.
type Task struct {
	ID          string
	Priority    int32  // higher first
	Seq         uint64 // submission order: lower first among equal priority (FIFO)
	Resources   Resources
	Constraints map[string]string // every key must equal the worker's label
	Node        uint64            // if non-zero, only this worker
	Policy      Policy
	NotBefore   time.Time // retry backoff: not placeable before this
	Kind        Kind      // task (zero) or VM
	HostPorts   []string  // a VM's forwarded host ports ("8080/tcp"); none may be taken on its worker
}

// label names t in reasons: its ID, prefixed "vm " for a VM.
func (t *Task) label() string {
	if t.Kind == KindVM {
		return "vm " + t.ID
	}
	return t.ID
}

// Input is the snapshot one pass schedules against.
type Input struct {
	Now time.Time
	// Workers holds the ready, schedulable workers only. Order does not
	// matter; if an ID appears twice, the first occurrence is used.
	Workers []Worker
	// Pending holds the tasks to place. Order does not matter. IDs are
	// expected to be unique; the scheduler does not deduplicate them.
	Pending []Task
}

// Placement assigns a task to a worker.
type Placement struct {
	TaskID   string
	WorkerID uint64
	Kind     Kind
}

// Unplaced is a task left pending by this pass, with a human-readable reason.
type Unplaced struct {
	TaskID string
	Reason string
	Kind   Kind
}

// Plan is the outcome of one pass. Placements and Unplaced are both in the
// order the tasks were considered; every pending task is in exactly one.
type Plan struct {
	Placements []Placement
	Unplaced   []Unplaced
}

// ReasonWaiting is the reason, or the prefix of the reason, given to a task
// that fits some worker's total capacity but not anyone's free room now.
const ReasonWaiting = "waiting for room"

// Schedule places as many of in.Pending as fit on in.Workers. It does not
// modify in. rng breaks ties between equally scored workers; nil means the
// lowest worker ID wins.
func Schedule(in Input, rng *rand.Rand) Plan {
	p := newPass(in, rng)
	plan := Plan{Placements: make([]Placement, 0, len(in.Pending))}
	for _, ti := range p.order() {
		t := &in.Pending[ti]
		w, reason := p.placeOne(ti, t)
		if reason != "" {
			plan.Unplaced = append(plan.Unplaced, Unplaced{TaskID: t.ID, Reason: reason, Kind: t.Kind})
			continue
		}
		plan.Placements = append(plan.Placements, Placement{TaskID: t.ID, WorkerID: p.ids[w], Kind: t.Kind})
	}
	return plan
}

// noHolder marks a worker that no waiting task holds.
const noHolder = -1

// pass is the working state of one Schedule call. Per-worker data is kept
// in a flat slice indexed by the worker's position in ID order, so the hot
// loop reads one small struct per worker instead of chasing Worker structs
// and maps.
type pass struct {
	in  Input
	rng *rand.Rand

	src   []int32 // index into in.Workers
	ids   []uint64
	slots []slot
	caps  []Resources // clamped capacity by worker position; cold, so not in slot

	labels  map[label][]int32 // built on first use: constrained tasks are optional
	all     *class
	byNode  map[uint64]*class
	byConst map[string]*class
	vmOnly  map[*class]*class // a class narrowed to the workers that run VMs
	keys    []string          // scratch for sorting constraint keys
	// ports are the host ports taken on each worker position, including
	// by VMs placed earlier in this pass; built on the first VM that
	// forwards any (copies: Input is not modified).
	ports []map[string]string
}

// slot is one worker's capacity as the pass sees it.
type slot struct {
	freeCPU, freeMem int64 // capacity - used - placed this pass; negative if over-committed
	// 1/capacity (0 for none), so scoring multiplies: the scan is the hot
	// loop and a division costs several multiplications. Same inputs give
	// the same products, so determinism does not suffer.
	invCPU, invMem float64
	heldBy         int32 // index into in.Pending of the waiting task holding the worker, or noHolder
}

// label is one key=value pair, the key of the label index.
type label struct{ k, v string }

// class is a set of tasks with the same constraints and pinned node, and so
// the same candidate workers.
type class struct {
	members []int32 // worker positions, in ID order
	none    string  // why members is empty
	who     string  // how "too big" reasons name the largest candidate
	maxCPU  int64   // largest capacity among members, for those reasons
	maxMem  int64
}

func newPass(in Input, rng *rand.Rand) *pass {
	src := make([]int32, len(in.Workers))
	for i := range src {
		src[i] = int32(i)
	}
	// Stable, so that with duplicate IDs the first occurrence comes first
	// and is the one kept.
	slices.SortStableFunc(src, func(a, b int32) int {
		return cmp.Compare(in.Workers[a].ID, in.Workers[b].ID)
	})
	src = slices.CompactFunc(src, func(a, b int32) bool {
		return in.Workers[a].ID == in.Workers[b].ID
	})

	n := len(src)
	p := &pass{
		in:      in,
		rng:     rng,
		src:     src,
		ids:     make([]uint64, n),
		slots:   make([]slot, n),
		caps:    make([]Resources, n),
		byNode:  make(map[uint64]*class),
		byConst: make(map[string]*class),
		vmOnly:  make(map[*class]*class),
	}
	all := make([]int32, n)
	for i, wi := range src {
		w := &in.Workers[wi]
		p.ids[i] = w.ID
		// Negative figures are nonsense from upstream; clamping keeps them
		// from inventing free room (negative Used) or wrapping arithmetic.
		s := &p.slots[i]
		c := Resources{max(w.Capacity.CPUMillis, 0), max(w.Capacity.MemoryMiB, 0)}
		p.caps[i] = c
		s.freeCPU = c.CPUMillis - max(w.Used.CPUMillis, 0)
		s.freeMem = c.MemoryMiB - max(w.Used.MemoryMiB, 0)
		s.invCPU = inverse(c.CPUMillis)
		s.invMem = inverse(c.MemoryMiB)
		s.heldBy = noHolder
		all[i] = int32(i)
	}
	p.all = p.newClass(all, "largest worker", "no worker is available")
	return p
}

func (p *pass) newClass(members []int32, who, none string) *class {
	c := &class{members: members, who: who}
	if len(members) == 0 {
		c.none = none
	}
	for _, w := range members {
		c.maxCPU = max(c.maxCPU, p.caps[w].CPUMillis)
		c.maxMem = max(c.maxMem, p.caps[w].MemoryMiB)
	}
	return c
}

// sortKey is what the pending order compares, copied out of the Task so
// the sort does not drag whole Task structs through the cache.
type sortKey struct {
	prio int32
	idx  int32
	seq  uint64
}

// order returns indexes into in.Pending in scheduling order.
func (p *pass) order() []int32 {
	pending := p.in.Pending
	keys := make([]sortKey, len(pending))
	for i := range pending {
		keys[i] = sortKey{prio: pending[i].Priority, seq: pending[i].Seq, idx: int32(i)}
	}
	slices.SortFunc(keys, func(a, b sortKey) int {
		if c := cmp.Compare(b.prio, a.prio); c != 0 {
			return c
		}
		if c := cmp.Compare(a.seq, b.seq); c != 0 {
			return c
		}
		if c := strings.Compare(pending[a.idx].ID, pending[b.idx].ID); c != 0 {
			return c
		}
		if c := cmp.Compare(pending[a.idx].Kind, pending[b.idx].Kind); c != 0 {
			return c
		}
		return cmp.Compare(a.idx, b.idx)
	})
	out := make([]int32, len(keys))
	for i, k := range keys {
		out[i] = k.idx
	}
	return out
}

// placeOne places task t (in.Pending[ti]) and returns the worker position,
// or returns why it stays pending.
func (p *pass) placeOne(ti int32, t *Task) (int32, string) {
	if t.NotBefore.After(p.in.Now) {
		return 0, "backoff until " + t.NotBefore.UTC().Format(time.RFC3339Nano)
	}
	cpu, mem := t.Resources.CPUMillis, t.Resources.MemoryMiB
	if cpu < 0 || mem < 0 {
		return 0, fmt.Sprintf("invalid request: %dm CPU, %dMiB memory", cpu, mem)
	}
	if t.Policy != BinPack && t.Policy != Spread {
		return 0, fmt.Sprintf("unknown placement policy %d", int(t.Policy))
	}
	c := p.classOf(t)
	if c.none != "" {
		return 0, c.none
	}
	members := c.members
	if len(t.HostPorts) > 0 {
		var clash string
		if members, clash = p.portsFree(members, t.HostPorts); len(members) == 0 {
			return 0, clash
		}
	}

	if w := p.pick(members, cpu, mem, t.Policy == Spread); w >= 0 {
		p.slots[w].freeCPU -= cpu
		p.slots[w].freeMem -= mem
		if len(t.HostPorts) > 0 {
			for _, port := range t.HostPorts {
				p.ports[w][port] = t.ID
			}
		}
		return w, ""
	}

	// No room. Only now work out why, and hold every worker this task
	// could ever use, so that nothing later in the order takes the room it
	// is waiting for (see the package doc).
	fitsSomewhere := false
	holder := int32(noHolder)
	for _, w := range members {
		s := &p.slots[w]
		if p.caps[w].CPUMillis < cpu || p.caps[w].MemoryMiB < mem {
			continue
		}
		fitsSomewhere = true
		if s.heldBy == noHolder {
			s.heldBy = ti
		} else if holder == noHolder && s.freeCPU >= cpu && s.freeMem >= mem {
			holder = s.heldBy // the room was there, held for someone ahead
		}
	}
	if !fitsSomewhere {
		return 0, tooBig(c, cpu, mem)
	}
	if holder != noHolder {
		return 0, fmt.Sprintf("%s (room held for %s, ahead in queue)", ReasonWaiting, p.in.Pending[holder].label())
	}
	return 0, ReasonWaiting
}

// portsFree narrows members to the workers where none of ports is taken,
// or says why there is none.
func (p *pass) portsFree(members []int32, ports []string) ([]int32, string) {
	if p.ports == nil {
		p.ports = make([]map[string]string, len(p.slots))
		for i, wi := range p.src {
			m := make(map[string]string, len(p.in.Workers[wi].HostPorts))
			for port, vm := range p.in.Workers[wi].HostPorts {
				m[port] = vm
			}
			p.ports[i] = m
		}
	}
	var out []int32
	var clash string
	for _, w := range members {
		ok := true
		for _, port := range ports {
			if vm, taken := p.ports[w][port]; taken {
				ok = false
				if clash == "" {
					clash = fmt.Sprintf("host port %s is forwarded by vm %s on worker %d", port, vm, p.ids[w])
				}
				break
			}
		}
		if ok {
			out = append(out, w)
		}
	}
	if len(out) == 0 {
		if len(members) > 1 {
			clash += fmt.Sprintf(", and its host ports clash on all %d workers that could run it", len(members))
		}
		return nil, clash
	}
	return out, ""
}

// pick returns the best member with room for cpu/mem that no waiting task
// holds, or -1. Ties are broken by the rng.
//
// This is the hot loop (every pending task scans its candidates), so it
// does only what placing needs: free room implies enough total capacity,
// and the reasons for failing are worked out by the caller afterwards.
func (p *pass) pick(members []int32, cpu, mem int64, spread bool) int32 {
	slots := p.slots
	best := int32(-1)
	bestKey := math.Inf(-1)
	ties := 0
	for _, w := range members {
		s := &slots[w]
		if s.freeCPU < cpu || s.freeMem < mem || s.heldBy != noHolder {
			continue
		}
		key := score(s, cpu, mem, spread)
		if key > bestKey {
			best, bestKey, ties = w, key, 1
		} else if key == bestKey {
			ties++
		}
	}
	if ties <= 1 || p.rng == nil {
		return best
	}
	// Take the k-th of the tied workers, k uniform: one rng draw per
	// tied decision, none without. The rescan recomputes the same expression on the same
	// values, so it finds exactly the workers the first scan counted.
	k := p.rng.IntN(ties)
	for _, w := range members {
		s := &slots[w]
		if s.freeCPU < cpu || s.freeMem < mem || s.heldBy != noHolder {
			continue
		}
		if score(s, cpu, mem, spread) == bestKey {
			if k == 0 {
				return w
			}
			k--
		}
	}
	return best // unreachable: the rescan sees the same ties
}

// score is how much pick wants s for a cpu/mem request. Both policies
// look at the share left free after placing on the scarcer resource,
// min(leftCPU/capCPU, leftMem/capMem), which is 1 minus the dominant used
// share: bin-pack wants it small, spread wants it large. It is computed
// from free room and 1/capacity so that the scan reads little and never
// divides. A resource the worker offers none of has inverse 0, so it
// counts as full: only a task asking for none of it can land there.
func score(s *slot, cpu, mem int64, spread bool) float64 {
	// The min builtin compiles to branch-free code; an if on which
	// resource dominates was a coin flip the branch predictor missed,
	// which made the scan cost per worker grow with the number of workers.
	left := min(float64(s.freeCPU-cpu)*s.invCPU, float64(s.freeMem-mem)*s.invMem)
	if spread {
		return left
	}
	return -left
}

// inverse is 1/capacity, or 0 for no capacity.
func inverse(capacity int64) float64 {
	if capacity <= 0 {
		return 0
	}
	return 1 / float64(capacity)
}

// tooBig says why a request fits none of c's workers' total capacity.
func tooBig(c *class, cpu, mem int64) string {
	cpuBig, memBig := cpu > c.maxCPU, mem > c.maxMem
	switch {
	case cpuBig && memBig:
		return fmt.Sprintf("needs %dm CPU, %s offers %dm; needs %dMiB memory, %s offers %dMiB",
			cpu, c.who, c.maxCPU, mem, c.who, c.maxMem)
	case cpuBig:
		return fmt.Sprintf("needs %dm CPU, %s offers %dm", cpu, c.who, c.maxCPU)
	case memBig:
		return fmt.Sprintf("needs %dMiB memory, %s offers %dMiB", mem, c.who, c.maxMem)
	}
	// Enough CPU on one worker and enough memory on another, never both.
	return fmt.Sprintf("needs %dm CPU and %dMiB memory, no %s offers both",
		cpu, mem, strings.TrimPrefix(c.who, "largest "))
}

// classOf returns the candidate workers for t's constraints and node (and,
// for a VM, the workers that can run VMs), computing them on the first task
// of each class.
func (p *pass) classOf(t *Task) *class {
	c := p.constraintClass(t)
	if t.Kind != KindVM || c.none != "" {
		return c
	}
	if vc, ok := p.vmOnly[c]; ok {
		return vc
	}
	var members []int32
	for _, m := range c.members {
		if p.in.Workers[p.src[m]].VMs {
			members = append(members, m)
		}
	}
	vc := c
	if len(members) != len(c.members) {
		none := "no worker that can run VMs is available (none has QEMU)"
		if t.Node != 0 {
			none = fmt.Sprintf("worker %d cannot run VMs (no QEMU there)", t.Node)
		} else if len(t.Constraints) > 0 {
			none = "no worker with the constraint's labels can run VMs (none has QEMU)"
		}
		vc = p.newClass(members, c.who, none)
	}
	p.vmOnly[c] = vc
	return vc
}

// constraintClass is the class of t's constraints and pinned node.
func (p *pass) constraintClass(t *Task) *class {
	if len(t.Constraints) == 0 {
		if t.Node == 0 {
			return p.all
		}
		if c, ok := p.byNode[t.Node]; ok {
			return c
		}
		c := p.pinned(t.Node)
		p.byNode[t.Node] = c
		return c
	}

	// The key is canonical (sorted, length-prefixed) because map order is
	// random and labels may contain any byte.
	p.keys = p.keys[:0]
	for k := range t.Constraints {
		p.keys = append(p.keys, k)
	}
	slices.Sort(p.keys)
	var b strings.Builder
	b.WriteString(strconv.FormatUint(t.Node, 10))
	for _, k := range p.keys {
		v := t.Constraints[k]
		fmt.Fprintf(&b, "|%d:%s%d:%s", len(k), k, len(v), v)
	}
	key := b.String()
	if c, ok := p.byConst[key]; ok {
		return c
	}
	var c *class
	if t.Node != 0 {
		c = p.pinned(t.Node)
		if c.none == "" {
			for _, k := range p.keys {
				if !hasLabel(&p.in.Workers[p.src[c.members[0]]], k, t.Constraints[k]) {
					c = p.newClass(nil, "", fmt.Sprintf("worker %d lacks label %s=%s", t.Node, k, t.Constraints[k]))
					break
				}
			}
		}
	} else {
		c = p.matching(t.Constraints, p.keys)
	}
	p.byConst[key] = c
	return c
}

// pinned is the class of tasks pinned to node.
func (p *pass) pinned(node uint64) *class {
	i, ok := slices.BinarySearch(p.ids, node)
	if !ok {
		return p.newClass(nil, "", fmt.Sprintf("worker %d is not available", node))
	}
	return p.newClass([]int32{int32(i)}, "worker "+strconv.FormatUint(node, 10), "")
}

// matching is the class of unpinned tasks with these constraints; keys are
// the constraint keys, sorted, so reasons name labels deterministically.
func (p *pass) matching(constraints map[string]string, keys []string) *class {
	if p.labels == nil {
		p.indexLabels()
	}
	// Start from the rarest label's workers and check the rest directly:
	// the cost is bounded by the smallest posting list, not by all workers.
	var shortest []int32
	for i, k := range keys {
		l := p.labels[label{k, constraints[k]}]
		if len(l) == 0 {
			return p.newClass(nil, "", fmt.Sprintf("no worker has label %s=%s", k, constraints[k]))
		}
		if i == 0 || len(l) < len(shortest) {
			shortest = l
		}
	}
	var members []int32
	for _, w := range shortest {
		worker := &p.in.Workers[p.src[w]]
		ok := true
		for _, k := range keys {
			if !hasLabel(worker, k, constraints[k]) {
				ok = false
				break
			}
		}
		if ok {
			members = append(members, w)
		}
	}
	pairs := make([]string, len(keys))
	for i, k := range keys {
		pairs[i] = k + "=" + constraints[k]
	}
	all := strings.Join(pairs, ",")
	return p.newClass(members, "largest worker with "+all, "no worker has all of labels "+all)
}

// indexLabels builds the label → workers index. Posting lists come out in
// ID order because workers are visited in ID order; the map range only
// decides which list a worker is appended to first, which changes nothing.
func (p *pass) indexLabels() {
	p.labels = make(map[label][]int32)
	for i, wi := range p.src {
		for k, v := range p.in.Workers[wi].Labels {
			l := label{k, v}
			p.labels[l] = append(p.labels[l], int32(i))
		}
	}
}

func hasLabel(w *Worker, k, v string) bool {
	got, ok := w.Labels[k]
	return ok && got == v
}
