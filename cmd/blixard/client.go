package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/server"
)

// hostPortProblem says what is wrong with s as a host:port, or "" if
// nothing is. needHost rejects an empty host (":7000"); routable also
// rejects the unspecified addresses 0.0.0.0 and ::, which other machines
// cannot dial.
func hostPortProblem(s string, needHost, routable bool) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "must be HOST:PORT"
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "needs a port between 1 and 65535"
	}
	if host == "" && (needHost || routable) {
		return "needs a host"
	}
	if routable && isUnspecifiedHost(host) {
		return "must be an address other nodes can dial, not " + host
	}
	return ""
}

func isUnspecifiedHost(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// addrSource names where --addr came from, for error messages.
func (a *app) addrSource(cmd *cobra.Command) string {
	if f := cmd.Flags().Lookup("addr"); f != nil && f.Changed {
		return "--addr"
	}
	if a.envAddrSet {
		return envAddr
	}
	return "--addr"
}

// checkAddr reports a --addr (or $BLIXARD_ADDR) that is not HOST:PORT.
func (a *app) checkAddr(cmd *cobra.Command) error {
	if p := hostPortProblem(a.addr, false, false); p != "" {
		src := a.addrSource(cmd)
		hint := "pass --addr HOST:PORT of a running node, e.g. --addr 127.0.0.1:7000"
		if src == envAddr {
			hint = "fix " + envAddr + " or pass --addr HOST:PORT, e.g. --addr 127.0.0.1:7000"
		}
		return usageError(fmt.Sprintf("%s %s (got %q)", src, p, a.addr), hint)
	}
	return nil
}

// dial checks --addr and opens a client connection to it. reached
// records whether a TCP connection to the node was ever made, which tells
// "nothing there" from an Unavailable sent by the node. The caller closes
// the connection.
func (a *app) dial(cmd *cobra.Command) (*grpc.ClientConn, *atomic.Bool, error) {
	if err := a.checkAddr(cmd); err != nil {
		return nil, nil, err
	}
	return a.dialAddr(a.addr, "--addr")
}

// dialAddr opens a client connection to addr, a checked HOST:PORT, with
// the global TLS, token and dial options; flag names where addr came from,
// for the error message. reached is as for dial.
func (a *app) dialAddr(addr, flag string) (*grpc.ClientConn, *atomic.Bool, error) {
	reached := new(atomic.Bool)
	dialer := func(ctx context.Context, target string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
		if err == nil {
			reached.Store(true)
		}
		return c, err
	}
	opts, secure, err := a.tls.clientDialOptions()
	if err != nil {
		return nil, nil, err
	}
	if !secure {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	opts = append(opts, grpc.WithContextDialer(dialer), server.CallLimits())
	if a.dialOptions != nil {
		opts = append(opts, a.dialOptions()...)
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, nil, usageError(fmt.Sprintf("bad address %q: %v", addr, err), "pass "+flag+" HOST:PORT of a running node")
	}
	return conn, reached, nil
}

// call dials the node at --addr and runs one RPC under --timeout, mapping
// any error to its one-line form.
func call[T any](a *app, cmd *cobra.Command, rpc func(context.Context, rpcpb.ClusterClient) (T, error)) (T, error) {
	var zero T
	conn, reached, err := a.dial(cmd)
	if err != nil {
		return zero, err
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	defer cancel()
	resp, err := rpc(ctx, rpcpb.NewClusterClient(conn))
	if err != nil {
		return zero, rpcError(err, a.addr, a.timeout, reached.Load())
	}
	return resp, nil
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return failure("cannot write output: "+err.Error(), "check where stdout goes")
	}
	return nil
}

// newTable returns a writer that aligns tab-separated columns; Flush it.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

func flushTable(tw *tabwriter.Writer) error {
	if err := tw.Flush(); err != nil {
		return failure("cannot write output: "+err.Error(), "check where stdout goes")
	}
	return nil
}
