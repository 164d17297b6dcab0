package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/blixard/blixard/internal/server"
)

const (
	defaultAddr    = "127.0.0.1:7000"
	envAddr        = "BLIXARD_ADDR"
	defaultTimeout = 10 * time.Second
)

// deps is everything the commands take from the outside world, so tests
// can replace it.
type deps struct {
	stdout    io.Writer
	stderr    io.Writer
	lookupEnv func(string) (string, bool)
	// runServer runs a node until ctx is cancelled (server.Run).
	runServer func(context.Context, server.Config) error
	// numCPU and memTotalMiB describe this machine, for default worker
	// capacity.
	numCPU      func() int
	memTotalMiB func() (int64, error)
	now         func() time.Time
	// isTerminal reports whether w is a terminal (for redrawn progress
	// lines); nil means never.
	isTerminal func(io.Writer) bool
	// dialOptions are extra options for every client connection (e.g.
	// tracing); nil means none.
	dialOptions func() []grpc.DialOption
}

func defaultDeps() deps {
	return deps{
		stdout:      os.Stdout,
		stderr:      os.Stderr,
		lookupEnv:   os.LookupEnv,
		runServer:   server.Run,
		numCPU:      runtime.NumCPU,
		memTotalMiB: readMemTotalMiB,
		now:         time.Now,
		isTerminal:  isTerminal,
	}
}

// app holds the dependencies and the global flags.
type app struct {
	deps

	addr    string
	output  string
	timeout time.Duration

	envAddrSet bool

	tls tlsOptions // certificates and token (global flags)
}

// newRootCmd builds the whole command tree.
func newRootCmd(d deps) *cobra.Command {
	a := &app{deps: d}

	clientAddr := defaultAddr
	if v, ok := d.lookupEnv(envAddr); ok && v != "" {
		clientAddr = v
		a.envAddrSet = true
	}

	root := &cobra.Command{
		Use:   "blixard",
		Short: "Blixard: a Raft-based cluster orchestrator",
		Long: `Blixard is a Raft-based cluster orchestrator. This one binary is both the
node daemon ('blixard node', 'blixard dev') and the client that talks to a
running cluster (every other command).

Start a throwaway single-node cluster with 'blixard dev', then try
'blixard cluster status' in another terminal.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		Args:              noSubcommand,
		RunE:              showHelp,
		PersistentPreRunE: a.checkGlobalFlags,
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetOut(d.stdout)
	root.SetErr(d.stderr)
	root.SetFlagErrorFunc(flagError)

	pf := root.PersistentFlags()
	pf.StringVar(&a.addr, "addr", clientAddr,
		"`HOST:PORT` of any blixard node to talk to; env "+envAddr)
	pf.StringVarP(&a.output, "output", "o", "table", "output `FORMAT`: table or json")
	pf.DurationVar(&a.timeout, "timeout", defaultTimeout, "time limit for each request to the cluster")
	a.tls.addFlags(pf, d.lookupEnv)

	root.AddCommand(
		a.newNodeCmd(),
		a.newDevCmd(),
		a.newClusterCmd(),
		a.newWorkerCmd(),
		a.newKVCmd(),
		a.newTaskCmd(),
		a.newVMCmd(),
		a.newImageCmd(),
		a.newTLSCmd(),
		a.newTokenCmd(),
		a.newBenchCmd(),
		newVMGuardCmd(),
	)
	return root
}

// execute runs the command tree with args and returns the process exit
// code. Every failure prints exactly one "error: ..." line to stderr.
func execute(ctx context.Context, root *cobra.Command, args []string) int {
	if args == nil {
		args = []string{}
	}
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code, line := exitCodeAndLine(err)
	fmt.Fprintf(root.ErrOrStderr(), "error: %s\n", line)
	return code
}

func (a *app) checkGlobalFlags(cmd *cobra.Command, _ []string) error {
	switch a.output {
	case "table", "json":
	default:
		return usageError(fmt.Sprintf(`--output must be "table" or "json" (got %q)`, a.output),
			"pass --output table or --output json")
	}
	if a.timeout <= 0 {
		return usageError(fmt.Sprintf("--timeout must be positive (got %q)", a.timeout.String()),
			"pass a duration such as --timeout 30s")
	}
	return nil
}

func (a *app) jsonOutput() bool { return a.output == "json" }

// showHelp is the action of commands that only group subcommands.
func showHelp(cmd *cobra.Command, _ []string) error {
	return cmd.Help()
}

// noSubcommand rejects arguments to a command that only groups
// subcommands, i.e. an unknown subcommand.
func noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	hint := helpHint(cmd)
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		hint = fmt.Sprintf("did you mean %q? %s", s[0], hint)
	}
	return usageError(fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath()), hint)
}

// exactArgs requires one positional argument per name.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		usage := "usage: " + cmd.CommandPath()
		if len(names) > 0 {
			usage += " " + strings.Join(names, " ")
		}
		switch {
		case len(args) < len(names):
			return usageError("missing "+strings.Join(names[len(args):], " and "), usage)
		case len(args) > len(names):
			return usageError(fmt.Sprintf("too many arguments (got %d, want %d)", len(args), len(names)),
				usage+" (quote values that contain spaces)")
		}
		return nil
	}
}
