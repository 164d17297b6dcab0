// Package server assembles one Blixard node: storage, the raft node, the
// peer transport, the gRPC API, the worker agent and the leader's duties.
// It owns every goroutine it starts and stops them all in Stop.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/clock"
	"github.com/blixard/blixard/internal/executor"
	"github.com/blixard/blixard/internal/raftnode"
	"github.com/blixard/blixard/internal/state"
	"github.com/blixard/blixard/internal/storage"
	"github.com/blixard/blixard/internal/transport"
	"github.com/blixard/blixard/internal/vm/guard"
	"github.com/blixard/blixard/internal/worker"
)

func (c *Config) setDefaults() {
	if c.Advertise == "" {
		c.Advertise = c.Listen
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.TickInterval, 50*time.Millisecond)
	def(&c.CheckpointEvery, 100*time.Millisecond)
	def(&c.HeartbeatInterval, time.Second)
	def(&c.WorkerTTL, 5*time.Second)
	def(&c.UsageInterval, 10*time.Second)
	def(&c.TaskRetention, 24*time.Hour)
	def(&c.VMReplaceAfter, 2*c.WorkerTTL)
	if c.ElectionTicks == 0 {
		c.ElectionTicks = raftnode.DefaultElectionTicks
	}
	// Heartbeat ticks and snapshot settings default inside raftnode.
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports the first thing wrong with cfg, naming the field.
func (c *Config) Validate() error {
	switch {
	case c.ID == 0:
		return errors.New("id: must be a positive integer")
	case c.DataDir == "":
		return errors.New("data-dir: is required")
	case c.Listen == "":
		return errors.New("listen: is required (host:port)")
	case c.Bootstrap && c.Join != "":
		return errors.New("bootstrap and join: give one, not both")
	case !c.Insecure && c.TLS == nil:
		return errors.New("tls: a node needs the cluster's certificates (make them with 'blixard tls init' and 'blixard tls cert --node ID', then pass --tls-dir DIR), or --insecure on a trusted network")
	case !c.Insecure && c.Identify == nil:
		return errors.New("tls: no way to read peer certificates (Identify is nil)")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %q is not host:port: %w", c.Listen, err)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return fmt.Errorf("http-addr: %q is not host:port: %w", c.HTTPAddr, err)
		}
	}
	if c.VMReplaceAfter > 0 {
		if err := CheckVMFencing(c.WorkerTTL, c.VMReplaceAfter, time.Duration(c.ElectionTicks)*c.TickInterval); err != nil {
			return err
		}
	}
	return nil
}

// VMFencing is the timing of VM self-fencing for a worker TTL W (see
// docs/VMS.md, "Self-fencing").
type VMFencing struct {
	Gate     time.Duration // G: the lease is renewed only this long after the last successful heartbeat's send
	LeaseTTL time.Duration // L: the guard stops QEMU after the lease went unrenewed this long
	Kill     time.Duration // two guard check periods and the kill grace (guard.MaxLifetime(L) - L)
}

// VMFencingFor returns the fencing timing for worker TTL W: G = W, L = W/2.
func VMFencingFor(workerTTL time.Duration) VMFencing {
	l := workerTTL / 2
	return VMFencing{Gate: workerTTL, LeaseTTL: l, Kill: guard.MaxLifetime(l) - l}
}

// CheckVMFencing says whether a cut-off worker's VMs are dead before the
// leader releases them to other workers: G + L + 2c + g + 2E < W + D,
// with E the raft election timeout (a deposed leader may answer
// heartbeats for up to about 2E after a new one was elected). The
// defaults (D = 2W) always pass.
func CheckVMFencing(workerTTL, replaceAfter, election time.Duration) error {
	f := VMFencingFor(workerTTL)
	if lhs, rhs := f.Gate+f.LeaseTTL+f.Kill+2*election, workerTTL+replaceAfter; lhs >= rhs {
		return fmt.Errorf("vm-replace-after: %s is too short for worker-ttl %s: a VM of a worker cut off from the leader could still run when it is re-placed (gate %s + lease %s + guard %s + 2×%s election timeout = %s must be less than worker-ttl + vm-replace-after = %s); raise --vm-replace-after to more than %s",
			replaceAfter, workerTTL, f.Gate, f.LeaseTTL, f.Kill, election, lhs, rhs, lhs-workerTTL)
	}
	return nil
}

// Server is one running node.
type Server struct {
	cfg    Config
	log    *slog.Logger
	clock  clock.Clock
	logs   *storage.LogStore
	db     *storage.StateDB
	sm     *state.Machine
	node   *raftnode.Node
	tr     *transport.Transport
	grpc   *grpc.Server
	lis    net.Listener
	mon    *worker.Monitor
	conns  *connPool
	obs    *observability // metrics, traces, HTTP; set in Start
	authz  *authz         // every gRPC call's authentication, authorization and audit
	limits *limiter       // request sizes and open waits
	audit  io.Closer      // the audit log file (nil: standard error)
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	nodeStarted bool // the raft node's goroutine runs (Stop must stop it)

	// contact is this worker's last successful heartbeat, which gates the
	// VM lease; set at start, before the agent and the lease renewer.
	contact *worker.Contact

	stopOnce sync.Once
	removedc chan struct{}      // closed when this node learns it was removed
	applied  *broadcast         // notified after every Ready that applied entries
	exec     *executor.Executor // nil unless this node is a worker
	vms      *vmWorker          // nil unless this node runs VMs

	waitMu    sync.Mutex
	waiting   map[string]string // leader only: task → why the last pass left it pending
	vmWaiting map[string]string // leader only: VM name → why the last pass left it pending

	// vmConsole finds a VM's console log on this worker; set by the VM
	// reconciler when this node runs VMs (see setVMConsole).
	vmConsoleMu sync.Mutex
	vmConsole   func(name string) (path string, ok bool)

	remOnce sync.Once
}

// Run starts a node from cfg and blocks until ctx is cancelled, then shuts
// down gracefully (a leader first hands leadership to another voter).
func Run(ctx context.Context, cfg Config) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	if err := s.Start(ctx); err != nil {
		s.Stop()
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
	case <-s.node.Done():
		runErr = s.node.Err()
		if runErr == nil {
			runErr = errors.New("raft node stopped unexpectedly")
		}
	case <-s.removedc:
		runErr = fmt.Errorf("node %d was removed from the cluster; its data dir can no longer be used: start a new node with a new --id and an empty --data-dir", cfg.ID)
	}
	s.Stop()
	return runErr
}

// New opens storage and builds the node without starting it.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data-dir: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("node", cfg.ID), clock: clock.Real{}, removedc: make(chan struct{}), applied: newBroadcast()}
	var err error
	if s.logs, err = storage.OpenLogStore(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("open raft log in %s: %w", cfg.DataDir, err)
	}
	for _, w := range s.logs.Warnings() {
		s.log.Warn("raft log repaired at open", "detail", w)
	}
	if s.db, err = storage.OpenStateDB(filepath.Join(cfg.DataDir, "state.db")); err != nil {
		s.logs.Close()
		return nil, fmt.Errorf("open state database in %s: %w", cfg.DataDir, err)
	}
	s.sm = state.New()
	s.mon = worker.NewMonitor(cfg.WorkerTTL)
	if err = s.openAudit(); err != nil {
		s.closeStorage()
		return nil, err
	}
	s.limits = newLimiter(cfg.MaxWaits)
	s.conns = newConnPool(s.peerDialOptions()...)

	var peers []raft.Peer
	fresh, err := isFresh(s.logs)
	if err != nil {
		s.closeStorage()
		return nil, err
	}
	if fresh && cfg.Bootstrap {
		peers = []raft.Peer{{ID: cfg.ID, Context: state.EncodeMemberContext(cfg.ID, cfg.Advertise, pb.MemberRole_MEMBER_ROLE_VOTER)}}
	}
	if fresh && !cfg.Bootstrap && cfg.Join == "" {
		s.closeStorage()
		return nil, fmt.Errorf("data-dir %s holds no node: pass --bootstrap to start a new cluster or --join HOST:PORT to join one", cfg.DataDir)
	}
	if !fresh && (cfg.Bootstrap || cfg.Join != "") {
		s.log.Info("data dir already holds a node; restarting it and ignoring --bootstrap/--join")
	}
	s.tr = transport.New(transport.Config{
		ID:       cfg.ID,
		Handler:  transport.HandlerFunc(func(ctx context.Context, m *raftpb.Message) error { return s.node.Process(ctx, m) }),
		Reporter: reporter{s},
		Logger:   s.log.With("component", "transport"),
		// Peers dial with the node's certificate and check the server's.
		DialOptions: []grpc.DialOption{s.transportCredentials(), CallLimits()},
		Authorize:   s.raftSenderCheck(),
	})
	core, err := raftnode.NewCore(raftnode.Config{
		ID:             cfg.ID,
		ElectionTicks:  cfg.ElectionTicks,
		HeartbeatTicks: cfg.HeartbeatTicks,
		SnapshotEvery:  cfg.SnapshotEvery,
		SnapshotKeep:   cfg.SnapshotKeep,
		Logger:         s.log.With("component", "raft"),
	}, s.logs, s.db, s.sm, s.tr, peers)
	if err != nil {
		s.tr.Stop()
		s.closeStorage()
		s.closeAudit()
		return nil, err
	}
	s.node = raftnode.NewNode(core, raftnode.NodeConfig{
		Clock:           s.clock,
		TickInterval:    cfg.TickInterval,
		CheckpointEvery: cfg.CheckpointEvery,
		OnChange:        s.onChange,
		OnApply:         func(raftnode.Output) { s.applied.Notify() },
	})
	if !fresh || cfg.Join == "" {
		cfg.Join = ""
	}
	s.cfg = cfg
	return s, nil
}

// reporter forwards transport reports once the node exists.
type reporter struct{ s *Server }

func (r reporter) ReportUnreachable(id uint64) { r.s.node.ReportUnreachable(id) }
func (r reporter) ReportSnapshot(id uint64, st raft.SnapshotStatus) {
	r.s.node.ReportSnapshot(id, st)
}

func isFresh(ls *storage.LogStore) (bool, error) {
	hs, _, err := ls.InitialState()
	if err != nil {
		return false, fmt.Errorf("read raft state: %w", err)
	}
	last, err := ls.LastIndex()
	if err != nil {
		return false, fmt.Errorf("read raft log: %w", err)
	}
	snap, err := ls.Snapshot()
	if err != nil {
		return false, fmt.Errorf("read raft snapshot: %w", err)
	}
	return raft.IsEmptyHardState(hs) && last == 0 && raft.IsEmptySnap(snap), nil
}

// Addr is the address the node listens on (useful with port 0).
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Node exposes the raft node (tests and benchmarks).
func (s *Server) Node() *raftnode.Node { return s.node }

// State exposes the replicated state (tests).
func (s *Server) State() *state.Machine { return s.sm }

// Start listens, starts raft, joins if asked, and starts the worker.
func (s *Server) Start(ctx context.Context) error {
	lis, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another node using it? pick another --listen)", s.cfg.Listen, err)
	}
	s.lis = lis
	if err := s.startObserve(ctx); err != nil {
		lis.Close()
		return err
	}
	s.conns.setOptions(s.obs.tracing.DialOptions())
	if s.cfg.Advertise == s.cfg.Listen {
		// With port 0 the real port is only known now.
		if _, port, _ := net.SplitHostPort(s.cfg.Listen); port == "0" {
			s.cfg.Advertise = lis.Addr().String()
		}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.grpc = grpc.NewServer(append(append(transport.ServerOptions(), s.serverCredentials()), s.grpcServerOptions()...)...)
	s.tr.Register(s.grpc)
	rpcpb.RegisterClusterServer(s.grpc, &api{s: s})
	s.goRun(func() {
		if err := s.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("grpc server stopped", "err", err)
		}
	})
	s.syncPeers()
	s.node.Start()
	s.nodeStarted = true
	s.serveHTTP()
	if s.cfg.Join != "" {
		if err := s.join(ctx); err != nil {
			return err
		}
	}
	s.goRun(s.leaderDuties)
	s.goRun(s.schedulerLoop)
	if s.cfg.Worker {
		if err := s.startWorker(); err != nil {
			return err
		}
	}
	s.log.Info("node started", "listen", s.Addr(), "advertise", s.cfg.Advertise, "data_dir", s.cfg.DataDir)
	return nil
}

// startWorker registers this node as a worker and starts running what the
// cluster assigns it.
func (s *Server) startWorker() error {
	s.contact = worker.NewContact(s.clock.Now())
	ex, err := executor.New(executor.Config{DataDir: s.cfg.DataDir, CgroupRoot: s.cfg.CgroupRoot, Logger: s.log.With("component", "executor")})
	if err != nil {
		return fmt.Errorf("start the task executor: %w", err)
	}
	// Processes left by a previous run of this node (killed with -9) are
	// no longer tracked by anyone: kill them; reconciliation below makes
	// the cluster re-place their tasks.
	if err := ex.KillOrphans(); err != nil {
		s.log.Warn("killing orphaned task processes", "err", err)
	}
	s.exec = ex
	if u := s.cfg.TaskUser; u != "" {
		if _, err := user.Lookup(u); err != nil {
			s.log.Warn("the task user does not exist on this host; tasks that name no user will fail until it does (create it, or start the node with --task-user USER)", "task_user", u, "err", err)
		} else {
			s.log.Info("tasks that name no user run as the task user", "task_user", u)
		}
	}
	runner := worker.NewRunner(worker.RunnerConfig{Clock: s.clock, Logger: s.log.With("component", "runner"), Stale: isStale}, taskCluster{s}, execLauncher{e: ex, taskUser: s.cfg.TaskUser})
	caps := slices.Clone(s.cfg.Capabilities)
	if s.cfg.VMs {
		// Before registering: the registration says whether VMs can run
		// here.
		ok, err := s.startVMWorker()
		if err != nil {
			return err
		}
		if ok && !slices.Contains(caps, state.CapabilityVMs) {
			caps = append(caps, state.CapabilityVMs)
		}
	}
	w := &pb.Worker{
		Id:           s.cfg.ID,
		Addr:         s.cfg.Advertise,
		Capacity:     &pb.Resources{CpuMillis: s.cfg.CPUMillis, MemoryMib: s.cfg.MemoryMiB, DiskMib: s.cfg.DiskMiB},
		Labels:       s.cfg.Labels,
		Capabilities: caps,
	}
	sampler := &worker.ProcSampler{RunningTasks: runner.RunningCount}
	agent := worker.NewAgent(worker.AgentConfig{
		Worker:            w,
		Clock:             s.clock,
		HeartbeatInterval: s.cfg.HeartbeatInterval,
		UsageInterval:     s.cfg.UsageInterval,
		Usage:             sampler.Sample,
		Contact:           s.contact,
		Logger:            s.log.With("component", "worker"),
	}, localCluster{s})
	s.goRun(func() { agent.Run(s.ctx) })
	s.goRun(func() { runner.Run(s.ctx) })
	s.goRun(func() {
		t := s.clock.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-s.ctx.Done():
				return
			case now := <-t.C():
				if err := ex.Prune(now); err != nil {
					s.log.Warn("pruning old task logs", "err", err)
				}
			}
		}
	})
	return nil
}

func (s *Server) goRun(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// join asks the cluster at cfg.Join to add this node as a learner,
// retrying while the cluster is unreachable or busy, and failing at once
// when it refuses (duplicate or removed ID).
func (s *Server) join(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	backoff := 100 * time.Millisecond
	via, redirects := s.cfg.Join, 0
	for {
		cc, err := s.conns.get(via)
		if err != nil {
			return fmt.Errorf("join %s: %w", via, err)
		}
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := rpcpb.NewClusterClient(cc).Join(rctx, &pb.JoinRequest{Id: s.cfg.ID, Addr: s.cfg.Advertise})
		rcancel()
		if err == nil && resp.LeaderAddr != "" && redirects < 5 {
			// A follower named the leader: ask it (a few hops at most,
			// while leadership moves).
			s.log.Info("join: asking the leader", "via", via, "leader", resp.LeaderAddr)
			via = resp.LeaderAddr
			redirects++
			continue
		}
		via, redirects = s.cfg.Join, 0
		if err == nil && resp.LeaderAddr != "" {
			err = status.Error(codes.Unavailable, "leadership kept moving")
		}
		if err == nil {
			for _, m := range resp.Members {
				if m.Id != s.cfg.ID {
					s.tr.AddPeer(m.Id, m.Addr)
				}
			}
			s.log.Info("joined cluster", "via", s.cfg.Join, "members", len(resp.Members))
			return nil
		}
		switch msg := status.Convert(err).Message(); status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
			if badCertificate(msg) {
				// Retrying cannot help: the certificates do not match.
				return fmt.Errorf("join %s: TLS handshake failed: %s (both nodes' certificates must come from the same cluster CA; see 'blixard tls cert')", via, msg)
			}
			s.log.Info("join not possible yet; retrying", "via", s.cfg.Join, "err", err)
		default:
			return fmt.Errorf("join refused by %s: %s", s.cfg.Join, status.Convert(err).Message())
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("join %s: gave up: %w (last error: %v)", s.cfg.Join, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// badCertificate reports whether a failed call's message says the TLS
// handshake refused a certificate (as opposed to a timeout or a reset,
// which a retry may cure).
func badCertificate(msg string) bool {
	if !strings.Contains(msg, "handshake") {
		return false
	}
	for _, s := range []string{"x509:", "certificate", "remote error: tls"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// onChange runs on the raft goroutine after leader or membership changes.
func (s *Server) onChange(out raftnode.Output) {
	if out.MembershipChanged {
		s.syncPeers()
	}
	if out.Removed {
		s.remOnce.Do(func() { close(s.removedc) })
	}
}

// syncPeers points the transport at every current member. Peers are only
// dropped when removed, so addresses learned from a join response survive
// until the state catches up.
func (s *Server) syncPeers() {
	for _, m := range s.sm.Members() {
		if m.Id != s.cfg.ID && m.Addr != "" {
			s.tr.AddPeer(m.Id, m.Addr)
		}
	}
	for _, id := range s.sm.Removed() {
		if id != s.cfg.ID {
			s.tr.RemovePeer(id)
		}
	}
}

// Stop shuts the node down: leadership handed over, worker stopped, API
// closed, raft checkpointed and stopped, storage closed. Safe to call twice.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.ctx != nil {
			s.transferLeadershipAway()
			s.cancel()
		}
		s.stopHTTP()
		if s.grpc != nil {
			done := make(chan struct{})
			go func() { s.grpc.GracefulStop(); close(done) }()
			t := time.NewTimer(2 * time.Second)
			select {
			case <-done:
			case <-t.C:
				s.grpc.Stop()
				<-done
			}
			t.Stop()
		}
		s.wg.Wait() // the runner has cancelled its attempts
		if s.exec != nil {
			s.exec.Stop()
		}
		if err := s.vms.close(); err != nil {
			s.log.Warn("closing the VM driver", "err", err)
		}
		if s.nodeStarted {
			s.node.Stop()
		}
		s.tr.Stop()
		s.conns.close()
		s.closeStorage()
		s.stopTracing()
		s.closeAudit()
		s.log.Info("node stopped")
	})
}

func (s *Server) closeStorage() {
	if s.db != nil {
		if err := s.db.Close(); err != nil {
			s.log.Error("closing state database", "err", err)
		}
	}
	if s.logs != nil {
		if err := s.logs.Close(); err != nil {
			s.log.Error("closing raft log", "err", err)
		}
	}
}

// transferLeadershipAway hands leadership to the most caught-up voter
// before a leader shuts down, so the cluster does not wait out an
// election timeout.
func (s *Server) transferLeadershipAway() {
	if !s.node.IsLeader() || s.node.IsRemoved() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, _, err := s.node.Status(ctx)
	if err != nil {
		return
	}
	var best uint64
	var bestMatch uint64
	for id, pr := range st.Progress {
		if id == s.cfg.ID || pr.IsLearner || !pr.RecentActive {
			continue
		}
		if best == 0 || pr.Match > bestMatch {
			best, bestMatch = id, pr.Match
		}
	}
	if best == 0 {
		return
	}
	s.log.Info("transferring leadership before shutdown", "to", best)
	if err := s.node.TransferLeader(ctx, best); err != nil {
		s.log.Warn("leadership transfer before shutdown failed", "to", best, "err", err)
	}
}

// leaderDuties runs the leader's periodic work: worker liveness and the
// purge of old tasks, as worker.LeaderDuties decides them. It also
// notices, on any node, that the node was removed while cut off.
func (s *Server) leaderDuties() {
	t := s.clock.NewTicker(s.cfg.HeartbeatInterval / 2)
	defer t.Stop()
	duties := worker.NewLeaderDuties(s.mon, s.cfg.TaskRetention, s.cfg.VMReplaceAfter)
	var leaderless time.Time
	purgeDone := make(chan struct{}, 1)
	var relMu sync.Mutex
	var released []uint64 // releases ended since the last tick
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C():
		}
		select {
		case <-purgeDone:
			duties.PurgeDone()
		default:
		}
		relMu.Lock()
		for _, id := range released {
			duties.ReleaseDone(id)
		}
		released = released[:0]
		relMu.Unlock()
		now := s.clock.Now()
		leader := s.node.IsLeader()
		in := worker.DutyInput{Now: now, Leader: leader}
		if leader {
			leaderless = time.Time{}
			in.Term, in.Workers, in.OldestFinished = s.node.Term(), s.sm.Workers(), s.sm.OldestFinished()
			in.DownVMHolders = s.sm.VMsHeldByDownWorkers()
		} else if s.node.Leader() == 0 {
			if leaderless.IsZero() {
				leaderless = now
			} else if now.Sub(leaderless) > 3*time.Duration(s.cfg.ElectionTicks)*s.cfg.TickInterval {
				s.checkRemoved()
				leaderless = now
			}
		} else {
			leaderless = time.Time{}
		}
		plan := duties.Tick(in)
		for _, tr := range plan.Transitions {
			s.goRun(func() { s.proposeWorkerState(tr) })
		}
		for _, id := range plan.ReleaseVMs {
			s.goRun(func() {
				s.releaseVMs(id)
				relMu.Lock()
				released = append(released, id)
				relMu.Unlock()
			})
		}
		if cutoff := plan.PurgeBefore; cutoff != 0 {
			s.goRun(func() {
				s.purgeTasks(cutoff)
				purgeDone <- struct{}{}
			})
		}
	}
}

// purgeTasks forgets final tasks that finished before cutoff.
func (s *Server) purgeTasks(cutoff int64) {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	res, err := s.propose(ctx, &pb.Command{Op: &pb.Command_PurgeTasks{PurgeTasks: &pb.PurgeTasks{FinishedBeforeUnixNano: cutoff}}})
	if err != nil {
		s.log.Warn("purging old tasks failed; will retry", "err", err)
		return
	}
	if r, ok := res.(*pb.PutResponse); ok {
		s.log.Info("purged old tasks", "count", r.Index, "retention", s.cfg.TaskRetention)
	}
}

// releaseVMs proposes the release of a down worker's VMs (applied only if
// the worker is still down).
func (s *Server) releaseVMs(id uint64) {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	cmd := &pb.Command{Op: &pb.Command_ReleaseVms{ReleaseVms: &pb.ReleaseVMs{WorkerId: id, NowUnixNano: s.clock.Now().UnixNano()}}}
	res, err := s.propose(ctx, cmd)
	if err != nil {
		s.log.Warn("releasing a down worker's VMs failed; will retry", "worker", id, "err", err)
		return
	}
	if r, ok := res.(*pb.PutResponse); ok && r.Index > 0 {
		s.log.Info("released a down worker's VMs for placement elsewhere", "worker", id, "vms", r.Index, "after", s.cfg.VMReplaceAfter)
	}
}

func (s *Server) proposeWorkerState(tr worker.Transition) {
	defer s.mon.Done(tr.WorkerID)
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	cmd := &pb.Command{Op: &pb.Command_SetWorkerState{SetWorkerState: &pb.SetWorkerState{WorkerId: tr.WorkerID, State: tr.To, NowUnixNano: s.clock.Now().UnixNano()}}}
	if _, err := s.propose(ctx, cmd); err != nil {
		s.log.Warn("proposing worker state failed", "worker", tr.WorkerID, "to", tr.To, "err", err)
		return
	}
	s.log.Info("worker state changed", "worker", tr.WorkerID, "to", tr.To)
}

// checkRemoved asks the other members whether this node was removed; a
// removed node stops instead of lingering leaderless forever.
func (s *Server) checkRemoved() {
	for _, m := range s.sm.Members() {
		if m.Id == s.cfg.ID {
			continue
		}
		cc, err := s.conns.get(m.Addr)
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(s.ctx, time.Second)
		st, err := rpcpb.NewClusterClient(cc).Status(ctx, &pb.StatusRequest{Local: true})
		cancel()
		if err != nil {
			continue
		}
		for _, id := range st.Removed {
			if id == s.cfg.ID {
				s.log.Warn("a peer reports this node was removed from the cluster", "peer", m.Id)
				s.remOnce.Do(func() { close(s.removedc) })
				return
			}
		}
	}
}

func (s *Server) propose(ctx context.Context, cmd *pb.Command) (proto.Message, error) {
	b, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	return s.observedPropose(ctx, cmd, func(ctx context.Context) (proto.Message, error) { return s.node.Propose(ctx, b) })
}

// leaderClient returns a client for the current leader, or an error
// saying why there is none.
func (s *Server) leaderClient() (rpcpb.ClusterClient, error) {
	lead := s.node.Leader()
	if lead == 0 {
		return nil, raftnode.ErrNoLeader
	}
	m, ok := s.sm.Member(lead)
	if !ok || m.Addr == "" {
		return nil, fmt.Errorf("leader %d has no known address yet: %w", lead, raftnode.ErrNoLeader)
	}
	cc, err := s.conns.get(m.Addr)
	if err != nil {
		return nil, err
	}
	return rpcpb.NewClusterClient(cc), nil
}

// localCluster is the worker agent's view of its own node.
type localCluster struct{ s *Server }

func (l localCluster) Register(ctx context.Context, w *pb.Worker) error {
	_, err := l.s.propose(ctx, &pb.Command{Op: &pb.Command_RegisterWorker{RegisterWorker: &pb.RegisterWorker{Worker: w, NowUnixNano: l.s.clock.Now().UnixNano()}}})
	return err
}

func (l localCluster) Heartbeat(ctx context.Context, id uint64) (*pb.HeartbeatResponse, error) {
	if l.s.node.IsLeader() {
		return l.s.heartbeat(ctx, id)
	}
	c, err := l.s.leaderClient()
	if err != nil {
		return nil, err
	}
	return c.Heartbeat(ctx, &pb.HeartbeatRequest{WorkerId: id})
}

func (l localCluster) ReportUsage(ctx context.Context, st *pb.WorkerStatus) error {
	_, err := l.s.propose(ctx, &pb.Command{Op: &pb.Command_ReportWorkerUsage{ReportWorkerUsage: &pb.ReportWorkerUsage{Status: st}}})
	return err
}

// heartbeat is the leader's handling of one worker heartbeat.
func (s *Server) heartbeat(_ context.Context, id uint64) (*pb.HeartbeatResponse, error) {
	if !s.node.IsLeader() {
		return nil, status.Error(codes.Unavailable, "not the leader; send heartbeats to the leader")
	}
	s.mon.Seen(id, s.clock.Now())
	w, registered := s.sm.Worker(id)
	resp := &pb.HeartbeatResponse{Leader: s.cfg.ID, LeaderAddr: s.cfg.Advertise, Registered: registered,
		Down: registered && w.GetState() == pb.WorkerState_WORKER_STATE_DOWN}
	return resp, nil
}

// connPool caches one client connection per address.
type connPool struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	base  []grpc.DialOption // credentials, token forwarding
	opts  []grpc.DialOption // e.g. tracing
}

func newConnPool(base ...grpc.DialOption) *connPool {
	return &connPool{conns: map[string]*grpc.ClientConn{}, base: base}
}

func (p *connPool) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cc, ok := p.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, append(slices.Clone(p.base), p.opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	p.conns[addr] = cc
	return cc, nil
}

// setOptions adds dial options to connections made from now on.
func (p *connPool) setOptions(opts []grpc.DialOption) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opts = opts
}

func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cc := range p.conns {
		cc.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
}
