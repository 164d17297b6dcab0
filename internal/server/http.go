package server

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/observe"
	"github.com/blixard/blixard/internal/state"
)

// observability is a node's metrics, traces and HTTP endpoint (see
// internal/observe). The Server owns it: startObserve in Start,
// stopHTTP and stopTracing in Stop.
type observability struct {
	metrics *observe.Metrics
	tracing *observe.Tracing
	tracer  trace.Tracer
	http    *observe.HTTPServer // nil when Config.HTTPAddr is empty
}

// startObserve builds metrics and tracing and binds the HTTP address
// (served later by serveHTTP), so that a port in use fails start-up.
func (s *Server) startObserve(ctx context.Context) error {
	o := &observability{metrics: observe.NewMetrics(source{s}, s.log.With("component", "grpc"))}
	attrs := []attribute.KeyValue{attribute.Int64("blixard.node_id", int64(s.cfg.ID))}
	if s.cfg.TraceExporter != nil {
		o.tracing = observe.NewTracingTo(s.cfg.TraceExporter, attrs...)
	} else {
		t, err := observe.NewTracing(ctx, os.LookupEnv, attrs...)
		if err != nil {
			return err
		}
		o.tracing = t
	}
	o.tracer = o.tracing.Tracer()
	s.obs = o
	if s.cfg.HTTPAddr == "" {
		return nil
	}
	handler := observe.Handler(source{s}, o.metrics, s.log.With("component", "http"))
	if !s.cfg.Insecure {
		handler = s.httpAuth(handler)
	}
	h, err := observe.Listen(s.cfg.HTTPAddr, handler, s.log.With("component", "http"))
	if err != nil {
		return fmt.Errorf("--http-addr %s: %w (is another node using it? pick another --http-addr, or --http-addr off)", s.cfg.HTTPAddr, err)
	}
	if !s.cfg.Insecure {
		h.ServeTLS(s.cfg.TLS.HTTPServerConfig())
	}
	o.http = h
	return nil
}

// grpcServerOptions are the metrics interceptors and, when tracing is on,
// the OpenTelemetry stats handler.
func (s *Server) grpcServerOptions() []grpc.ServerOption {
	opts := append(messageLimits(),
		// Metrics first, so refused calls are counted too.
		grpc.ChainUnaryInterceptor(s.obs.metrics.UnaryServerInterceptor(), s.authz.unary(), s.limits.unary()),
		grpc.ChainStreamInterceptor(s.obs.metrics.StreamServerInterceptor(), s.authz.stream(), s.limits.stream()),
	)
	return append(opts, s.obs.tracing.ServerOptions()...)
}

// serveHTTP serves the bound HTTP address on a goroutine of the server's
// group; stopHTTP ends it.
func (s *Server) serveHTTP() {
	if s.obs == nil || s.obs.http == nil {
		return
	}
	h := s.obs.http
	s.goRun(func() {
		if err := h.Serve(); err != nil {
			s.log.Error("http server stopped", "err", err)
		}
	})
	scheme := "https://"
	if s.cfg.Insecure {
		scheme = "http://"
	}
	s.log.Info("serving metrics, health and the dashboard", "http", scheme+h.Addr()+"/")
}

// HTTPAddr is the address the HTTP endpoint listens on ("" when off).
func (s *Server) HTTPAddr() string {
	if s.obs == nil || s.obs.http == nil {
		return ""
	}
	return s.obs.http.Addr()
}

func (s *Server) stopHTTP() {
	if s.obs != nil && s.obs.http != nil {
		s.obs.http.Shutdown(2 * time.Second)
	}
}

// stopTracing flushes the spans not yet exported.
func (s *Server) stopTracing() {
	if s.obs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.obs.tracing.Shutdown(ctx); err != nil {
		s.log.Warn("flushing traces at shutdown", "err", err)
	}
}

// commandName is the name of cmd's operation, e.g. "submit_task".
func commandName(cmd *pb.Command) string {
	m := cmd.ProtoReflect()
	if od := m.Descriptor().Oneofs().ByName("op"); od != nil {
		if f := m.WhichOneof(od); f != nil {
			return string(f.Name())
		}
	}
	return "unknown"
}

// observedPropose proposes cmd under a span and records its latency.
func (s *Server) observedPropose(ctx context.Context, cmd *pb.Command, propose func(context.Context) (proto.Message, error)) (proto.Message, error) {
	if s.obs == nil { // not started: nothing to observe with yet
		return propose(ctx)
	}
	name := commandName(cmd)
	ctx, span := s.obs.tracer.Start(ctx, "raft.propose", trace.WithAttributes(attribute.String("blixard.command", name)))
	start := time.Now()
	res, err := propose(ctx)
	s.obs.metrics.ObserveProposal(name, time.Since(start), err)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	return res, err
}

// source is the node as internal/observe reads it.
type source struct{ s *Server }

func (src source) NodeID() uint64 { return src.s.cfg.ID }

func (src source) Raft(ctx context.Context) (observe.RaftStatus, error) {
	n := src.s.node
	st, applied, err := n.Status(ctx)
	if err != nil {
		// The loop did not answer: what it last published.
		return observe.RaftStatus{Term: n.Term(), Leader: n.Leader(), Applied: n.AppliedIndex()}, err
	}
	return observe.RaftStatus{
		Term: st.HardState.GetTerm(), Leader: st.Lead, Commit: st.HardState.GetCommit(), Applied: applied,
		Role: stateName(st.RaftState),
	}, nil
}

func (src source) Removed() bool         { return src.s.node.IsRemoved() }
func (src source) Members() []*pb.Member { return src.s.sm.Members() }
func (src source) Workers() []*pb.Worker { return src.s.sm.Workers() }
func (src source) WorkerStatus(id uint64) (*pb.WorkerStatus, bool) {
	return src.s.sm.WorkerStatus(id)
}
func (src source) PendingTasks() int { return src.s.sm.PendingCount() }

func (src source) TaskSummary(recent int) state.TaskSummary {
	sum := src.s.sm.SummarizeTasks(recent)
	for _, t := range sum.Recent {
		src.s.withReason(t) // pending tasks, on the leader
	}
	return sum
}

func (src source) Reservations() map[uint64]state.Usage { return src.s.sm.Reservations() }

func (src source) VMs() []*pb.VM {
	vms := src.s.sm.VMs()
	for _, vm := range vms {
		src.s.withVMReason(vm) // pending VMs, on the leader
	}
	return vms
}
