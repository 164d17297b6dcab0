package server

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Resource bounds of one node's gRPC server.
const (
	// MaxMessageBytes is the gRPC message limit on both sides of every
	// connection (servers, peers, the CLI): large enough for a raft batch
	// holding one maximal client request, small enough that a peer or
	// client cannot make a node buffer gigabytes.
	MaxMessageBytes = 16 << 20
	// MaxRequestBytes bounds one client request (a task spec, a kv
	// value): it becomes a raft entry every node stores.
	MaxRequestBytes = 4 << 20
	// DefaultMaxWaits bounds the calls that stay open on a node (WaitTask,
	// WaitVM, TaskLogs, VMLogs): each holds a goroutine and a stream.
	DefaultMaxWaits = 1024
)

// waitMethods are the calls that may stay open indefinitely.
var waitMethods = map[string]bool{
	clusterMethod("WaitTask"): true,
	clusterMethod("WaitVM"):   true,
	clusterMethod("TaskLogs"): true,
	clusterMethod("VMLogs"):   true,
}

func clusterMethod(name string) string { return "/blixard.rpc.v1.Cluster/" + name }

// limiter refuses oversized client requests and more open waits than the
// node allows.
type limiter struct {
	waits chan struct{} // one token per open wait
}

func newLimiter(maxWaits int) *limiter {
	if maxWaits <= 0 {
		maxWaits = DefaultMaxWaits
	}
	return &limiter{waits: make(chan struct{}, maxWaits)}
}

func (l *limiter) acquire(method string) (func(), error) {
	if !waitMethods[method] {
		return func() {}, nil
	}
	select {
	case l.waits <- struct{}{}:
		return func() { <-l.waits }, nil
	default:
		return nil, status.Errorf(codes.ResourceExhausted, "this node has %d waits and log streams open, its limit; retry later, or through another node", cap(l.waits))
	}
}

func (l *limiter) unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if m, ok := req.(proto.Message); ok && strings.HasPrefix(info.FullMethod, "/blixard.rpc.v1.Cluster/") {
			if n := proto.Size(m); n > MaxRequestBytes {
				return nil, status.Errorf(codes.ResourceExhausted, "request is %d bytes; a request may have at most %d (%d MiB): keep task commands, environments and kv values small", n, MaxRequestBytes, MaxRequestBytes>>20)
			}
		}
		release, err := l.acquire(info.FullMethod)
		if err != nil {
			return nil, err
		}
		defer release()
		return h(ctx, req)
	}
}

func (l *limiter) stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		release, err := l.acquire(info.FullMethod)
		if err != nil {
			return err
		}
		defer release()
		return h(srv, ss)
	}
}

// messageLimits are the server's message size limits.
func messageLimits() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes)}
}

// CallLimits are the message size limits of a client connection.
func CallLimits() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes))
}
