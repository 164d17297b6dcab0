package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/server"
)

const (
	devNodeID           = 1
	defaultReadyTimeout = 30 * time.Second
	readyPollInterval   = 100 * time.Millisecond
	fallbackMemoryMiB   = 1024
)

type devOptions struct {
	dataDir      string
	listen       string
	httpAddr     string
	readyTimeout time.Duration
	log          logOptions
}

func (a *app) newDevCmd() *cobra.Command {
	o := &devOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a single-node cluster for development",
		Long: `Run a single-node cluster in the foreground: node ID 1, bootstrapped,
also a worker offering this machine's cores and memory.

Without --data-dir the data goes to a fresh temporary directory that is
removed on exit. With --data-dir the data is kept, and running dev again
on the same directory restarts the same node.

Once the node is serving, dev prints what to try next.`,
		Example: `  blixard dev
  blixard dev --data-dir ./blixard-data --listen 127.0.0.1:7100`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runDev(cmd, o)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.dataDir, "data-dir", "", "directory `DIR` for the node's data, kept on exit (default: a new temporary directory, removed on exit)")
	fs.StringVar(&o.listen, "listen", defaultAddr, "`HOST:PORT` to serve on")
	fs.StringVar(&o.httpAddr, "http-addr", "", httpAddrUsage)
	fs.DurationVar(&o.readyTimeout, "ready-timeout", defaultReadyTimeout, "how long to wait for the node to start serving before giving up")
	o.log.addFlags(fs)
	return cmd
}

func (a *app) runDev(cmd *cobra.Command, o *devOptions) error {
	// Validate everything before creating anything.
	if p := hostPortProblem(o.listen, false, false); p != "" {
		return usageError(fmt.Sprintf("--listen %s (got %q)", p, o.listen), "pass e.g. --listen 127.0.0.1:7000")
	}
	if host, _, _ := net.SplitHostPort(o.listen); !isLoopbackHost(host) {
		return usageError(fmt.Sprintf("--listen must be a loopback address for blixard dev, which runs without TLS or tokens (got %q)", o.listen),
			"pass e.g. --listen 127.0.0.1:7100, or run 'blixard node' with --tls-dir to serve a network")
	}
	httpAddr, err := resolveHTTPAddr(cmd.Flags(), o.httpAddr, o.listen)
	if err != nil {
		return err
	}
	if o.readyTimeout <= 0 {
		return usageError(fmt.Sprintf("--ready-timeout must be a positive duration (got %q)", o.readyTimeout.String()), "pass e.g. --ready-timeout 30s")
	}
	if logErr := o.log.validate(); logErr != nil {
		return logErr
	}
	restart := false
	if o.dataDir != "" {
		if restart, err = holdsNode(o.dataDir); err != nil {
			return err
		}
	}
	// The address clients (and the readiness check) dial.
	host, port, _ := net.SplitHostPort(o.listen)
	addr := o.listen
	if isUnspecifiedHost(host) {
		addr = net.JoinHostPort("127.0.0.1", port)
	}

	logger := o.log.logger(a.stderr)

	dir, temp := o.dataDir, false
	if dir == "" {
		if dir, err = os.MkdirTemp("", "blixard-dev-"); err != nil {
			return failure(fmt.Sprintf("cannot create a temporary data dir: %v", err), "pass --data-dir DIR")
		}
		temp = true
		logger.Info("using a temporary data dir; it is removed on exit", "data_dir", dir)
		defer func() {
			if rmErr := os.RemoveAll(dir); rmErr != nil {
				logger.Warn("cannot remove the temporary data dir", "data_dir", dir, "err", rmErr)
				return
			}
			logger.Info("removed the temporary data dir", "data_dir", dir)
		}()
	} else if mkdirErr := os.MkdirAll(dir, 0o700); mkdirErr != nil {
		return failure(fmt.Sprintf("cannot create --data-dir %q: %v", dir, mkdirErr), "pick a directory blixard can write to")
	}

	mem, err := a.memTotalMiB()
	if err != nil {
		logger.Warn("cannot detect this machine's memory; offering a default", "err", err, "memory_mib", fallbackMemoryMiB)
		mem = fallbackMemoryMiB
	}
	cfg := server.Config{
		ID:        devNodeID,
		DataDir:   dir,
		Listen:    o.listen,
		Advertise: addr,
		Bootstrap: !restart,
		Worker:    true,
		CPUMillis: int64(a.numCPU()) * 1000,
		MemoryMiB: mem,
		Labels:    map[string]string{},
		HTTPAddr:  httpAddr,
		Logger:    logger,
		// VMs run here; a temporary data dir takes them with it on exit.
		VMs:          true,
		VMStopOnExit: temp,
		// dev listens on loopback only (checked above): no TLS, no tokens.
		Insecure: true,
		TaskUser: defaultTaskUser(),
	}
	tn := defaultTuning()
	tn.apply(&cfg)

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore default signal handling: a second Ctrl-C kills
	}()
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()

	logger.Info("starting dev node", "id", cfg.ID, "listen", cfg.Listen, "data_dir", dir, "restart", restart)
	runDone := make(chan error, 1)
	go func() { runDone <- a.runServer(runCtx, cfg) }()
	readyDone := make(chan error, 1)
	go func() { readyDone <- waitServing(runCtx, addr, o.readyTimeout) }()

	// interrupted reports whether err is just the result of Ctrl-C.
	interrupted := func(err error) bool {
		return ctx.Err() != nil && (err == nil || errors.Is(err, ctx.Err()))
	}

	select {
	case runErr := <-runDone:
		cancelRun()
		<-readyDone
		if interrupted(runErr) {
			return nil
		}
		if runErr == nil {
			runErr = errors.New("it returned without an error")
		}
		return failure(fmt.Sprintf("dev node stopped before it was serving: %v", runErr), "see the log above for details")
	case readyErr := <-readyDone:
		if readyErr != nil {
			cancelRun()
			<-runDone
			if ctx.Err() != nil {
				return nil
			}
			return failure(fmt.Sprintf("dev node did not start serving on %s within %s (%v)", addr, o.readyTimeout, readyErr),
				"see the log above; pass --listen to use another port or --ready-timeout to wait longer")
		}
	}

	clientDefault := defaultAddr
	if f := cmd.Flags().Lookup("addr"); f != nil {
		clientDefault = f.DefValue
	}
	printDevReady(a.stdout, cfg, addr, clientDefault, temp)

	err = <-runDone
	if err != nil && !interrupted(err) {
		return failure(fmt.Sprintf("dev node stopped: %v", err), "see the log above for details")
	}
	return nil
}

// printDevReady tells the user the node is up and what to type next.
func printDevReady(w io.Writer, cfg server.Config, addr, clientDefault string, temp bool) {
	blixard := "blixard"
	if addr != clientDefault {
		blixard = "blixard --addr " + addr
	}
	keep := "kept on exit"
	if temp {
		keep = "temporary, removed on exit"
	}
	fmt.Fprintf(w, "blixard dev: node %d is serving on %s\n", cfg.ID, addr)
	fmt.Fprintf(w, "data dir: %s (%s)\n", cfg.DataDir, keep)
	fmt.Fprintf(w, "worker: %s CPU, %d MiB memory\n", strconv.FormatFloat(float64(cfg.CPUMillis)/1000, 'f', -1, 64), cfg.MemoryMiB)
	if cfg.HTTPAddr != "" {
		u := dashboardURL(cfg.HTTPAddr)
		fmt.Fprintf(w, "dashboard: %s (metrics: %smetrics)\n", u, u)
	}
	fmt.Fprintf(w, "\ntry, in another terminal:\n")
	for _, c := range []string{"cluster status", "worker list", "kv put hello world", "kv get hello", "vm create hello", "vm logs hello"} {
		fmt.Fprintf(w, "  %s %s\n", blixard, c)
	}
	fmt.Fprintf(w, "\nstop with Ctrl-C\n")
}

// waitServing polls Cluster.Status at addr until the node answers and
// knows a leader, ctx ends, or timeout passes. It returns nil once the node
// is serving, else the last reason it was not.
func waitServing(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: readyPollInterval, Multiplier: 1.5, Jitter: 0.1, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := rpcpb.NewClusterClient(conn)

	tick := time.NewTicker(readyPollInterval)
	defer tick.Stop()
	last := errors.New("no answer yet")
	for {
		actx, acancel := context.WithTimeout(ctx, time.Second)
		resp, err := client.Status(actx, &blixardpb.StatusRequest{Local: true})
		acancel()
		switch {
		case err == nil && resp.GetLeader() != 0:
			return nil
		case err == nil:
			last = errors.New("no leader elected yet")
		case ctx.Err() == nil:
			if st, ok := status.FromError(err); ok {
				last = errors.New(st.Message())
			} else {
				last = err
			}
		}
		select {
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
	}
}
