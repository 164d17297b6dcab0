package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc"

	"github.com/blixard/blixard/internal/observe"
)

// clientTracing traces the CLI's gRPC calls when the standard
// OTEL_EXPORTER_OTLP_* environment asks for it, so a trace runs from the
// command to the node (and on to the leader when the node forwards). It
// is built on the first dial, so commands that dial nothing ('node',
// 'dev') never build it.
type clientTracing struct {
	lookupEnv func(string) (string, bool)
	stderr    io.Writer

	once sync.Once
	t    *observe.Tracing
}

// dialOptions returns the options that trace a connection's calls (none
// when tracing is off or could not be set up, which is reported once).
func (c *clientTracing) dialOptions() []grpc.DialOption {
	c.once.Do(func() {
		t, err := observe.NewTracing(context.Background(), c.lookupEnv, attribute.String("blixard.role", "cli"))
		if err != nil {
			fmt.Fprintf(c.stderr, "warning: tracing is off: %v\n", err)
			t = observe.Disabled()
		}
		c.t = t
	})
	return c.t.DialOptions()
}

// shutdown flushes the spans of this command, waiting at most 5 s.
func (c *clientTracing) shutdown() {
	c.once.Do(func() {}) // never dialed: nothing to flush (and no race with a late first dial)
	if c.t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.t.Shutdown(ctx); err != nil {
		fmt.Fprintf(c.stderr, "warning: %v\n", err)
	}
}
