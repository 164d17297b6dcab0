package observe

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/state"
)

// latencyBuckets cover a local fsync (sub-millisecond) to a request that
// waited out a leader election or a long wait (30 s).
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// scrapeTimeout bounds the raft status read of one scrape or probe.
const scrapeTimeout = time.Second

// Metrics is a node's Prometheus registry: the state collector (read at
// scrape time), Go runtime and process collectors, and the few events
// counted as they happen (gRPC requests, raft proposals).
type Metrics struct {
	Registry *prometheus.Registry

	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	proposals *prometheus.HistogramVec
	log       *slog.Logger
	tables    *tableCache // shared by the state collector and the overview
}

// NewMetrics builds a registry for one node; nothing is registered
// globally, so several nodes can live in one process.
func NewMetrics(src Source, log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blixard_grpc_requests_total",
			Help: "gRPC requests served by this node, by service, method and status code.",
		}, []string{"service", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "blixard_grpc_request_duration_seconds",
			Help:    "Time to serve a gRPC request (a stream: its whole life), by service and method.",
			Buckets: latencyBuckets,
		}, []string{"service", "method"}),
		proposals: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "blixard_raft_proposal_duration_seconds",
			Help:    "Time from proposing a command on this node until it was applied here or failed, by command and result (ok or error).",
			Buckets: latencyBuckets,
		}, []string{"command", "result"}),
		log:    log,
		tables: &tableCache{src: src},
	}
	m.Registry.MustRegister(
		m.requests, m.latency, m.proposals,
		newStateCollector(src, m.tables),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// ObserveProposal records one proposal of command (e.g. "submit_task").
func (m *Metrics) ObserveProposal(command string, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.proposals.WithLabelValues(command, result).Observe(d.Seconds())
}

// splitMethod turns "/blixard.rpc.v1.Cluster/Put" into ("Cluster", "Put").
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	service, method, ok := strings.Cut(full, "/")
	if !ok {
		return "unknown", full
	}
	if i := strings.LastIndexByte(service, '.'); i >= 0 {
		service = service[i+1:]
	}
	return service, method
}

func (m *Metrics) record(ctx context.Context, full string, start time.Time, err error) {
	d := time.Since(start)
	service, method := splitMethod(full)
	code := status.Code(err)
	m.requests.WithLabelValues(service, method, code.String()).Inc()
	m.latency.WithLabelValues(service, method).Observe(d.Seconds())
	// One line per request only at debug level: requests are counted above.
	if m.log.Enabled(ctx, slog.LevelDebug) {
		m.log.LogAttrs(ctx, slog.LevelDebug, "grpc request", slog.String("method", full), slog.String("code", code.String()), slog.Duration("took", d))
	}
}

// UnaryServerInterceptor counts and times unary requests.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.record(ctx, info.FullMethod, start, err)
		return resp, err
	}
}

// StreamServerInterceptor counts and times streams.
func (m *Metrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		m.record(ss.Context(), info.FullMethod, start, err)
		return err
	}
}

// EnumWord is the lower-case name of a protobuf enum value without its
// prefix: TASK_STATE_TIMED_OUT → timed_out (the words the CLI prints).
func EnumWord(s interface{ String() string }, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), prefix))
}

// Enum values reported even when zero, so a dashboard sees 0 rather
// than a missing series.
var (
	taskStates = []pb.TaskState{
		pb.TaskState_TASK_STATE_PENDING, pb.TaskState_TASK_STATE_ASSIGNED, pb.TaskState_TASK_STATE_RUNNING,
		pb.TaskState_TASK_STATE_SUCCEEDED, pb.TaskState_TASK_STATE_FAILED, pb.TaskState_TASK_STATE_CANCELLED,
		pb.TaskState_TASK_STATE_TIMED_OUT, pb.TaskState_TASK_STATE_LOST,
	}
	vmStates = []pb.VMState{
		pb.VMState_VM_STATE_PENDING, pb.VMState_VM_STATE_SCHEDULED, pb.VMState_VM_STATE_STARTING,
		pb.VMState_VM_STATE_RUNNING, pb.VMState_VM_STATE_STOPPING, pb.VMState_VM_STATE_STOPPED, pb.VMState_VM_STATE_FAILED,
	}
	vmDesired   = []pb.VMDesired{pb.VMDesired_VM_DESIRED_RUNNING, pb.VMDesired_VM_DESIRED_STOPPED, pb.VMDesired_VM_DESIRED_DELETED}
	workerState = []pb.WorkerState{pb.WorkerState_WORKER_STATE_READY, pb.WorkerState_WORKER_STATE_DOWN}
	memberRoles = []pb.MemberRole{pb.MemberRole_MEMBER_ROLE_VOTER, pb.MemberRole_MEMBER_ROLE_LEARNER}
)

func taskWord(s pb.TaskState) string     { return EnumWord(s, "TASK_STATE_") }
func vmWord(s pb.VMState) string         { return EnumWord(s, "VM_STATE_") }
func desiredWord(d pb.VMDesired) string  { return EnumWord(d, "VM_DESIRED_") }
func workerWord(s pb.WorkerState) string { return EnumWord(s, "WORKER_STATE_") }
func roleWord(r pb.MemberRole) string    { return EnumWord(r, "MEMBER_ROLE_") }

// Reserved is what a worker has reserved: active task attempts and the
// VMs placed on it (the same rule as the state machine's reservations).
type Reserved struct {
	CPUMillis int64 `json:"cpu_millis"`
	MemoryMiB int64 `json:"memory_mib"`
}

// vmPending says whether a VM waits for placement.
func vmPending(vm *pb.VM) bool {
	return vm.WorkerId == 0 && vm.Desired == pb.VMDesired_VM_DESIRED_RUNNING
}

// stateCollector reads the node's state at scrape time.
type stateCollector struct {
	src    Source
	tables *tableCache

	term, commit, applied, isLeader, leaderID, members *prometheus.Desc
	workers, schedulable, cordoned                     *prometheus.Desc
	capCPU, capMem, resCPU, resMem                     *prometheus.Desc
	tasks, tasksPending                                *prometheus.Desc
	vms, vmsDesired, vmsPending                        *prometheus.Desc
	ready                                              *prometheus.Desc
}

func newStateCollector(src Source, tables *tableCache) *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &stateCollector{
		src:          src,
		tables:       tables,
		term:         d("blixard_raft_term", "Current raft term as this node sees it."),
		commit:       d("blixard_raft_commit_index", "Highest raft log index this node knows to be committed."),
		applied:      d("blixard_raft_applied_index", "Highest raft log index applied to this node's state."),
		isLeader:     d("blixard_raft_is_leader", "1 if this node is the raft leader, else 0."),
		leaderID:     d("blixard_raft_leader_id", "ID of the leader this node knows (0: none)."),
		members:      d("blixard_raft_members", "Cluster members by role.", "role"),
		ready:        d("blixard_ready", "1 if this node is ready (what /readyz answers with 200), else 0."),
		workers:      d("blixard_workers", "Registered workers by state.", "state"),
		schedulable:  d("blixard_workers_schedulable", "Workers that can take new work: ready, not cordoned, not marked unschedulable."),
		cordoned:     d("blixard_workers_cordoned", "Workers cordoned by an operator."),
		capCPU:       d("blixard_worker_capacity_cpu_cores", "CPU a worker offers, in cores.", "worker"),
		capMem:       d("blixard_worker_capacity_memory_bytes", "Memory a worker offers, in bytes.", "worker"),
		resCPU:       d("blixard_worker_reserved_cpu_cores", "CPU reserved on a worker by active task attempts and placed VMs, in cores.", "worker"),
		resMem:       d("blixard_worker_reserved_memory_bytes", "Memory reserved on a worker by active task attempts and placed VMs (with their QEMU overhead), in bytes.", "worker"),
		tasks:        d("blixard_tasks", "Tasks by state (final tasks count until they are purged).", "state"),
		tasksPending: d("blixard_tasks_pending", "Tasks waiting for placement (including retries in backoff)."),
		vms:          d("blixard_vms", "VMs by observed state.", "state"),
		vmsDesired:   d("blixard_vms_desired", "VMs by desired state.", "desired"),
		vmsPending:   d("blixard_vms_pending", "VMs that want to run and wait for a worker."),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.term, c.commit, c.applied, c.isLeader, c.leaderID, c.members, c.ready,
		c.workers, c.schedulable, c.cordoned, c.capCPU, c.capMem, c.resCPU, c.resMem,
		c.tasks, c.tasksPending, c.vms, c.vmsDesired, c.vmsPending,
	} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	r := CheckReady(ctx, c.src)
	gauge(c.term, float64(r.Term))
	if r.Commit != 0 {
		gauge(c.commit, float64(r.Commit))
	}
	gauge(c.applied, float64(r.Applied))
	gauge(c.isLeader, b2f(r.Leader != 0 && r.Leader == c.src.NodeID()))
	gauge(c.leaderID, float64(r.Leader))
	gauge(c.ready, b2f(r.Ready))

	t := c.tables.get()
	roles := map[pb.MemberRole]int{}
	for _, m := range t.members {
		roles[m.Role]++
	}
	for _, role := range memberRoles {
		gauge(c.members, float64(roles[role]), roleWord(role))
	}

	res := t.reserved
	byState := map[pb.WorkerState]int{}
	schedulable, cordoned := 0, 0
	for _, w := range t.workers {
		byState[w.State]++
		if state.Schedulable(w) {
			schedulable++
		}
		if w.Cordoned {
			cordoned++
		}
		id := strconv.FormatUint(w.Id, 10)
		gauge(c.capCPU, float64(w.GetCapacity().GetCpuMillis())/1000, id)
		gauge(c.capMem, float64(w.GetCapacity().GetMemoryMib())*(1<<20), id)
		gauge(c.resCPU, float64(res[w.Id].CPUMillis)/1000, id)
		gauge(c.resMem, float64(res[w.Id].MemoryMiB)*(1<<20), id)
	}
	for _, s := range workerState {
		gauge(c.workers, float64(byState[s]), workerWord(s))
	}
	gauge(c.schedulable, float64(schedulable))
	gauge(c.cordoned, float64(cordoned))

	for _, s := range taskStates {
		gauge(c.tasks, float64(t.taskCount[s]), taskWord(s))
	}
	gauge(c.tasksPending, float64(t.pendingTasks))

	vc, dc, pending := map[pb.VMState]int{}, map[pb.VMDesired]int{}, 0
	for _, vm := range t.vms {
		vc[vm.State]++
		dc[vm.Desired]++
		if vmPending(vm) {
			pending++
		}
	}
	for _, s := range vmStates {
		gauge(c.vms, float64(vc[s]), vmWord(s))
	}
	for _, d := range vmDesired {
		gauge(c.vmsDesired, float64(dc[d]), desiredWord(d))
	}
	gauge(c.vmsPending, float64(pending))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
