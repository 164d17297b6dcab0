package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP trace endpoint that keeps what it receives.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	var msg coltracepb.ExportTraceServiceRequest
	if err != nil || req.URL.Path != "/v1/traces" || proto.Unmarshal(body, &msg) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	for _, rs := range msg.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			r.spans = append(r.spans, ss.Spans...)
		}
	}
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(b)
}

func TestCLIExportsASpanPerCallWhenOTLPIsConfigured(t *testing.T) {
	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	defer collector.Close()
	addr := startFake(t, &fakeCluster{})

	h := newHarness(t)
	// The exporter reads the process environment itself.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	ct := &clientTracing{lookupEnv: os.LookupEnv, stderr: h.stderr}
	h.deps.dialOptions = ct.dialOptions
	if code := h.run("--addr", addr, "kv", "put", "k", "v"); code != exitOK {
		t.Fatalf("kv put: exit %d, stderr %q", code, h.stderr.String())
	}
	ct.shutdown() // as main does: flushes the batch

	recv.mu.Lock()
	defer recv.mu.Unlock()
	var names []string
	for _, s := range recv.spans {
		names = append(names, s.Name)
		if s.Name == "blixard.rpc.v1.Cluster/Put" && s.Kind == tracepb.Span_SPAN_KIND_CLIENT {
			return
		}
	}
	t.Fatalf("collector got spans %v, want a client span blixard.rpc.v1.Cluster/Put", names)
}

func TestCLITracingIsOffWithoutTheEnvironment(t *testing.T) {
	ct := &clientTracing{lookupEnv: func(string) (string, bool) { return "", false }, stderr: io.Discard}
	if opts := ct.dialOptions(); len(opts) != 0 {
		t.Errorf("dial options without OTEL_* = %d, want none", len(opts))
	}
	ct.shutdown()
	(&clientTracing{lookupEnv: func(string) (string, bool) { return "", false }, stderr: io.Discard}).shutdown() // never dialed
}
