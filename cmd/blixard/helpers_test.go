package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/server"
)

// syncBuffer is a bytes.Buffer safe for a command goroutine writing while
// the test reads. waitFor returns a channel closed once the contents
// contain s.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	waiters []waiter
}

type waiter struct {
	s  string
	ch chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if strings.Contains(b.buf.String(), w.s) {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	b.waiters = kept
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) waitFor(s string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(b.buf.String(), s) {
		close(ch)
	} else {
		b.waiters = append(b.waiters, waiter{s, ch})
	}
	return ch
}

// harness is a CLI with fake dependencies.
type harness struct {
	t      *testing.T
	stdout *syncBuffer
	stderr *syncBuffer
	env    map[string]string
	deps   deps

	mu      sync.Mutex
	started []server.Config
}

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, stdout: &syncBuffer{}, stderr: &syncBuffer{}, env: map[string]string{}}
	h.deps = deps{
		stdout: h.stdout,
		stderr: h.stderr,
		lookupEnv: func(k string) (string, bool) {
			v, ok := h.env[k]
			return v, ok
		},
		runServer: func(ctx context.Context, cfg server.Config) error {
			h.mu.Lock()
			h.started = append(h.started, cfg)
			h.mu.Unlock()
			return nil
		},
		numCPU:      func() int { return 4 },
		memTotalMiB: func() (int64, error) { return 8192, nil },
		now:         func() time.Time { return testNow },
	}
	return h
}

// run executes the CLI with args and returns the exit code.
func (h *harness) run(args ...string) int {
	return h.runCtx(context.Background(), args...)
}

func (h *harness) runCtx(ctx context.Context, args ...string) int {
	h.t.Helper()
	return execute(ctx, newRootCmd(h.deps), args)
}

func (h *harness) startedConfigs() []server.Config {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.started)
}

// wantErrorLine checks stderr is exactly one "error: ..." line containing
// every one of want.
func (h *harness) wantErrorLine(want ...string) {
	h.t.Helper()
	got := h.stderr.String()
	if !strings.HasPrefix(got, "error: ") || !strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 {
		h.t.Fatalf("stderr is not one error line: %q", got)
	}
	for _, w := range want {
		if !strings.Contains(got, w) {
			h.t.Errorf("stderr %q does not contain %q", got, w)
		}
	}
}

// fakeCluster is a Cluster service with canned answers.
type fakeCluster struct {
	rpcpb.UnimplementedClusterServer

	mu       sync.Mutex
	status   *blixardpb.StatusResponse
	workers  *blixardpb.ListWorkersResponse
	kv       map[string]*blixardpb.GetResponse
	leader   uint64
	err      error         // if set, every call fails with it
	block    bool          // if set, Status blocks until the call is cancelled
	onStatus chan struct{} // if set, gets a non-blocking send per Status call
	statuses []*blixardpb.StatusRequest
	puts     []*blixardpb.PutRequest
	gets     []*blixardpb.GetRequest
	removed  []uint64
}

func (f *fakeCluster) Status(ctx context.Context, req *blixardpb.StatusRequest) (*blixardpb.StatusResponse, error) {
	f.mu.Lock()
	f.statuses = append(f.statuses, req)
	block, err, resp := f.block, f.err, f.status
	f.mu.Unlock()
	if f.onStatus != nil {
		select {
		case f.onStatus <- struct{}{}:
		default:
		}
	}
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return resp, err
}

func (f *fakeCluster) ListWorkers(context.Context, *blixardpb.ListWorkersRequest) (*blixardpb.ListWorkersResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.workers, f.err
}

func (f *fakeCluster) Put(_ context.Context, req *blixardpb.PutRequest) (*blixardpb.PutResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.puts = append(f.puts, req)
	return &blixardpb.PutResponse{Index: 42}, nil
}

func (f *fakeCluster) Get(_ context.Context, req *blixardpb.GetRequest) (*blixardpb.GetResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.gets = append(f.gets, req)
	if r, ok := f.kv[req.GetKey()]; ok {
		return r, nil
	}
	return &blixardpb.GetResponse{}, nil
}

func (f *fakeCluster) RemoveMember(_ context.Context, req *blixardpb.RemoveMemberRequest) (*blixardpb.RemoveMemberResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	f.removed = append(f.removed, req.GetId())
	return &blixardpb.RemoveMemberResponse{}, nil
}

func (f *fakeCluster) TransferLeader(_ context.Context, req *blixardpb.TransferLeaderRequest) (*blixardpb.TransferLeaderResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return &blixardpb.TransferLeaderResponse{Leader: f.leader}, nil
}

// serveFake serves f on lis until the test ends.
func serveFake(t *testing.T, lis net.Listener, f rpcpb.ClusterServer) {
	t.Helper()
	s := grpc.NewServer()
	rpcpb.RegisterClusterServer(s, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("fake server: %v", err)
		}
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
}

// startFake serves f on a fresh local port and returns its address.
func startFake(t *testing.T, f rpcpb.ClusterServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveFake(t, lis, f)
	return lis.Addr().String()
}

// closedAddr returns a local address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
