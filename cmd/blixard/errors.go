package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command was well formed but failed
	exitUsage   = 2 // bad flags or arguments
)

// cliError is a failure as the user sees it: one line, "what went wrong —
// what to do about it", and the process exit code.
type cliError struct {
	code int
	what string
	hint string
}

func (e *cliError) Error() string {
	if e.hint == "" {
		return e.what
	}
	return e.what + " — " + e.hint
}

// usageError reports bad flags or arguments (exit code 2).
func usageError(what, hint string) error {
	return &cliError{code: exitUsage, what: what, hint: hint}
}

// failure reports an operational error (exit code 1).
func failure(what, hint string) error {
	return &cliError{code: exitFailure, what: what, hint: hint}
}

// helpHint is the usual hint for usage errors.
func helpHint(cmd *cobra.Command) string {
	return fmt.Sprintf("see '%s --help'", cmd.CommandPath())
}

var oneLine = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ")

// exitCodeAndLine turns any error returned by the command tree into its exit
// code and the single line printed after "error: ".
func exitCodeAndLine(err error) (int, string) {
	var ce *cliError
	if errors.As(err, &ce) {
		return ce.code, oneLine.Replace(ce.Error())
	}
	// Anything else comes from cobra itself (unknown command and the
	// like): a usage error. Cobra appends suggestions on extra lines.
	msg := strings.TrimSpace(err.Error())
	first, rest, _ := strings.Cut(msg, "\n")
	hint := "see 'blixard --help'"
	if _, sugg, ok := strings.Cut(rest, "Did you mean this?"); ok {
		var names []string
		for _, s := range strings.Fields(sugg) {
			names = append(names, fmt.Sprintf("%q", s))
		}
		if len(names) > 0 {
			hint = "did you mean " + strings.Join(names, " or ") + "? " + hint
		}
	}
	return exitUsage, oneLine.Replace(first) + " — " + hint
}

// flagExpectation describes what a flag accepts, for error messages.
// Flags may override it with the annotation below.
const annoExpect = "blixard_expect"

func flagExpectation(f *pflag.Flag) string {
	if v := f.Annotations[annoExpect]; len(v) > 0 {
		return v[0]
	}
	switch f.Value.Type() {
	case "uint", "uint64", "uint32":
		return "a non-negative integer"
	case "int", "int64", "int32":
		return "an integer"
	case "float64", "float32":
		return "a number"
	case "duration":
		return "a duration like 500ms, 2s or 1m"
	case "bool":
		return "true or false"
	default:
		return "a valid " + f.Value.Type()
	}
}

// expect sets the description used when a flag's value does not parse.
func expect(fs *pflag.FlagSet, name, what string) {
	if err := fs.SetAnnotation(name, annoExpect, []string{what}); err != nil {
		panic(err) // programming error: flag not defined
	}
}

// flagError rewrites pflag's parse errors into the one-line form.
func flagError(cmd *cobra.Command, err error) error {
	var inv *pflag.InvalidValueError
	var req *pflag.ValueRequiredError
	switch {
	case errors.As(err, &inv):
		f := inv.GetFlag()
		return usageError(fmt.Sprintf("--%s must be %s (got %q)", f.Name, flagExpectation(f), inv.GetValue()), helpHint(cmd))
	case errors.As(err, &req):
		return usageError(fmt.Sprintf("--%s needs a value", req.GetSpecifiedName()), helpHint(cmd))
	default:
		return usageError(err.Error(), helpHint(cmd))
	}
}

// rpcError maps an error from a Cluster RPC to what the user sees.
// reached says whether a connection to addr was ever established.
func rpcError(err error, addr string, timeout time.Duration, reached bool) error {
	if err == nil {
		return nil
	}
	unreachable := failure(
		fmt.Sprintf("cannot reach blixard at %s", addr),
		"is a node running? start one with 'blixard dev' or pass --addr")
	timedOut := failure(
		fmt.Sprintf("blixard at %s did not answer within %s", addr, timeout),
		"the cluster may be busy or without a leader; check 'blixard cluster status' or retry with a larger --timeout")

	st, ok := status.FromError(err)
	if !ok {
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			return timedOut
		case errors.Is(err, context.Canceled):
			return failure("interrupted", "run the command again")
		}
		return failure(err.Error(), "see the node's log for details")
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		if !reached {
			return unreachable
		}
		if strings.Contains(msg, "handshake") || strings.Contains(msg, "tls:") || strings.Contains(msg, "x509") {
			return failure(fmt.Sprintf("TLS with blixard at %s failed: %s", addr, msg),
				"pass --tls-dir DIR (or --ca, --cert, --key) with a client certificate and ca.crt from the cluster's CA ('blixard tls cert --client NAME')")
		}
		if strings.Contains(msg, "preface") || strings.Contains(msg, "EOF") {
			return failure(fmt.Sprintf("blixard at %s closed the connection: %s", addr, msg),
				"if the cluster uses TLS, pass --tls-dir DIR (or set "+envTLSDir+")")
		}
		// The node was reached: it has no leader yet, the leader changed,
		// the connection broke mid-call, or the like.
		return failure(fmt.Sprintf("blixard at %s is unavailable: %s", addr, msg),
			"retry in a moment; if it persists check 'blixard cluster status' and the node's log")
	case codes.DeadlineExceeded:
		return timedOut
	case codes.Canceled:
		return failure("interrupted", "run the command again")
	case codes.Unimplemented:
		return failure(fmt.Sprintf("blixard at %s does not support this request: %s", addr, msg),
			"use a blixard binary of the same version as the cluster")
	case codes.InvalidArgument, codes.OutOfRange:
		return failure(msg, "check the arguments; see --help")
	case codes.NotFound:
		return failure(msg, "list what exists with 'blixard cluster status' or 'blixard worker list'")
	case codes.AlreadyExists:
		return failure(msg, "nothing to do, or pick another ID")
	case codes.FailedPrecondition:
		return failure(msg, "check 'blixard cluster status' and try again")
	case codes.Aborted, codes.ResourceExhausted:
		return failure(msg, "retry the command")
	case codes.Unauthenticated:
		return failure(msg, "set "+envToken+" or pass --token with a token from 'blixard token create'")
	case codes.PermissionDenied:
		return failure(msg, "'blixard token policies' lists what each policy allows")
	default:
		return failure(msg, "see the node's log for details")
	}
}
