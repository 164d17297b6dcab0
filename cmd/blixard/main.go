// Command blixard is both the Blixard node daemon ('blixard node',
// 'blixard dev') and the client for a running cluster. See docs/CLI.md.
package main

import (
	"context"
	"os"
)

func main() {
	d := defaultDeps()
	// No global OpenTelemetry state: the tracer provider and propagator
	// are passed to the gRPC handlers explicitly.
	tracing := &clientTracing{lookupEnv: d.lookupEnv, stderr: d.stderr}
	d.dialOptions = tracing.dialOptions
	code := execute(context.Background(), newRootCmd(d), os.Args[1:])
	tracing.shutdown()
	os.Exit(code)
}
