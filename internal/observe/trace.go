package observe

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// TracerName names the spans Blixard itself starts (around proposals).
const TracerName = "github.com/blixard/blixard"

// Tracing is one process's (a node's, or the CLI's) OpenTelemetry tracer
// provider. Disabled, it is a no-op provider and adds no gRPC handlers.
// The owner calls Shutdown, which flushes spans not yet exported.
type Tracing struct {
	provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider // nil when disabled
	prop     propagation.TextMapPropagator
}

// TracingEnabled says whether the standard OpenTelemetry environment asks
// for traces: OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, OTEL_SDK_DISABLED not true and
// OTEL_TRACES_EXPORTER not "none".
func TracingEnabled(lookupEnv func(string) (string, bool)) bool {
	get := func(k string) string { v, _ := lookupEnv(k); return strings.TrimSpace(v) }
	if strings.EqualFold(get("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(get("OTEL_TRACES_EXPORTER"), "none") {
		return false
	}
	return get("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// NewTracing builds the tracer provider the environment asks for (see
// TracingEnabled): spans go in batches to the OTLP endpoint over
// http/protobuf (the OpenTelemetry default) or grpc, as
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL say.
// lookupEnv decides whether to trace and over which protocol; the
// exporters read the endpoint and the other OTEL_EXPORTER_OTLP_* variables
// (headers, TLS, timeout) from the process environment themselves, so
// lookupEnv should be os.LookupEnv outside tests. The SDK reads
// OTEL_TRACES_SAMPLER and OTEL_BSP_*, the resource OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES. Nothing connects until the first export.
func NewTracing(ctx context.Context, lookupEnv func(string) (string, bool), attrs ...attribute.KeyValue) (*Tracing, error) {
	if !TracingEnabled(lookupEnv) {
		return Disabled(), nil
	}
	protocol := "http/protobuf"
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if v, ok := lookupEnv(k); ok && strings.TrimSpace(v) != "" {
			protocol = strings.TrimSpace(v)
			break
		}
	}
	var exp sdktrace.SpanExporter
	var err error
	switch protocol {
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q is not supported; use grpc or http/protobuf", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("OpenTelemetry trace exporter: %w", err)
	}
	t, err := newSDKTracing(ctx, sdktrace.WithBatcher(exp), attrs)
	if err != nil {
		_ = exp.Shutdown(ctx)
		return nil, err
	}
	return t, nil
}

// NewTracingTo sends every span synchronously to exp (tests, with
// go.opentelemetry.io/otel/sdk/trace/tracetest's in-memory exporter).
func NewTracingTo(exp sdktrace.SpanExporter, attrs ...attribute.KeyValue) *Tracing {
	t, err := newSDKTracing(context.Background(), sdktrace.WithSyncer(exp), attrs)
	if err != nil {
		// Only the environment's resource attributes can fail to parse.
		t, _ = newSDKTracing(context.Background(), sdktrace.WithSyncer(exp), nil)
	}
	return t
}

// Disabled is a no-op Tracing.
func Disabled() *Tracing {
	return &Tracing{provider: tracenoop.NewTracerProvider()}
}

func newSDKTracing(ctx context.Context, processor sdktrace.TracerProviderOption, attrs []attribute.KeyValue) (*Tracing, error) {
	// Later sources win: our defaults, then the environment.
	res, err := resource.New(ctx,
		resource.WithAttributes(append([]attribute.KeyValue{attribute.String("service.name", "blixard")}, attrs...)...),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(processor, sdktrace.WithResource(res))
	return &Tracing{
		provider: sdk,
		sdk:      sdk,
		// W3C trace context and baggage, passed explicitly to the gRPC
		// handlers: no global propagator is needed.
		prop: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}, nil
}

// Enabled says whether spans are recorded and exported.
func (t *Tracing) Enabled() bool { return t.sdk != nil }

// Tracer is Blixard's own tracer.
func (t *Tracing) Tracer() trace.Tracer { return t.provider.Tracer(TracerName) }

// skipPeerRaft leaves the raft peer streams (long-lived, one per peer)
// out of the traces.
func skipPeerRaft(info *stats.RPCTagInfo) bool {
	service, _ := splitMethod(info.FullMethodName)
	return service != "Raft"
}

func (t *Tracing) handlerOptions() []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(t.provider),
		otelgrpc.WithPropagators(t.prop),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()), // metrics are Prometheus's
		otelgrpc.WithFilter(skipPeerRaft),
	}
}

// ServerOptions trace every gRPC call a node serves (none when disabled).
func (t *Tracing) ServerOptions() []grpc.ServerOption {
	if !t.Enabled() {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(t.handlerOptions()...))}
}

// DialOptions trace every gRPC call a client makes, passing the trace
// context on to the node (none when disabled).
func (t *Tracing) DialOptions() []grpc.DialOption {
	if !t.Enabled() {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(t.handlerOptions()...))}
}

// Shutdown flushes spans not yet exported and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.sdk == nil {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("flushing traces: %w", err)
	}
	return nil
}
