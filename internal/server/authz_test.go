package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	pb "github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/acl"
	"github.com/blixard/blixard/internal/pki"
)

// securePKI makes a CA with certificates for nodes 1..n and clients.
func securePKI(t testing.TB, nodes int, clients ...string) string {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	if err := pki.InitCA(dir, 0, now); err != nil {
		t.Fatal(err)
	}
	for id := 1; id <= nodes; id++ {
		if _, _, err := pki.IssueNode(dir, uint64(id), []string{"127.0.0.1"}, 0, now); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clients {
		if _, _, err := pki.IssueClient(dir, c, 0, now); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func tlsSource(t testing.TB, dir, cert, key string) *pki.Source {
	t.Helper()
	src, err := pki.NewSource(filepath.Join(dir, pki.CACertFile), filepath.Join(dir, cert), filepath.Join(dir, key), nil)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// secure makes a startCluster tweak that turns on mutual TLS.
func secure(t testing.TB, dir string) func(*Config) {
	return func(c *Config) {
		c.Insecure = false
		c.TLS = tlsSource(t, dir, pki.NodeCertFile(c.ID), pki.NodeKeyFile(c.ID))
		c.Identify = IdentifyPKI
		c.HTTPAddr = freePort(t)
		c.AuditLog = filepath.Join(t.TempDir(), "audit.log")
	}
}

// dialAs connects to s with a certificate (empty cert: none) and, for
// every call, the token (empty: none).
func dialAs(t *testing.T, s *Server, cfg *tls.Config, token string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if token != "" {
		opts = append(opts, grpc.WithChainUnaryInterceptor(func(ctx context.Context, m string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return inv(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), m, req, reply, cc, o...)
		}), grpc.WithChainStreamInterceptor(func(ctx context.Context, d *grpc.StreamDesc, cc *grpc.ClientConn, m string, st grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
			return st(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), d, cc, m, o...)
		}))
	}
	cc, err := grpc.NewClient(s.Addr(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// invoke calls any method with an empty request and returns its error.
func invoke(ctx context.Context, cc *grpc.ClientConn, svc grpc.ServiceDesc, name string, stream *grpc.StreamDesc) error {
	method := "/" + svc.ServiceName + "/" + name
	if stream == nil {
		return cc.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
	}
	cs, err := cc.NewStream(ctx, stream, method)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(&emptypb.Empty{}); err != nil && err.Error() != "EOF" {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	return cs.RecvMsg(&emptypb.Empty{})
}

type method struct {
	full   string
	svc    grpc.ServiceDesc
	name   string
	stream *grpc.StreamDesc
}

// allMethods walks the service descriptors: every method a client or a
// peer can call.
func allMethods() []method {
	var out []method
	for _, svc := range []grpc.ServiceDesc{rpcpb.Cluster_ServiceDesc, rpcpb.Raft_ServiceDesc} {
		for _, m := range svc.Methods {
			out = append(out, method{"/" + svc.ServiceName + "/" + m.MethodName, svc, m.MethodName, nil})
		}
		for i := range svc.Streams {
			sd := svc.Streams[i]
			out = append(out, method{"/" + svc.ServiceName + "/" + sd.StreamName, svc, sd.StreamName, &sd})
		}
	}
	return out
}

func TestAccessTableCoversEveryMethod(t *testing.T) {
	seen := map[string]bool{}
	for _, m := range allMethods() {
		seen[m.full] = true
		if _, ok := acl.RuleFor(m.full); !ok {
			t.Errorf("%s has no entry in the access table (internal/acl): add one", m.full)
		}
	}
	for _, m := range acl.Methods() {
		if !seen[m] {
			t.Errorf("the access table names %s, which no service has", m)
		}
	}
}

func TestSecureNodeChecksEveryMethod(t *testing.T) {
	dir := securePKI(t, 2, "alice")
	servers := startCluster(t, 1, secure(t, dir))
	s := servers[0]
	alice := tlsSource(t, dir, pki.ClientCertFile("alice"), pki.ClientKeyFile("alice")).ClientConfig()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The first management token, once.
	anon := rpcpb.NewClusterClient(dialAs(t, s, alice, ""))
	boot, err := anon.BootstrapToken(ctx, &pb.BootstrapTokenRequest{})
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	if _, err = anon.BootstrapToken(ctx, &pb.BootstrapTokenRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second bootstrap: %v, want FailedPrecondition", err)
	}
	mgmt := rpcpb.NewClusterClient(dialAs(t, s, alice, boot.Secret))
	mk := func(policy string) string {
		r, cerr := mgmt.CreateToken(ctx, &pb.CreateTokenRequest{Policy: policy, Name: policy})
		if cerr != nil {
			t.Fatalf("create %s token: %v", policy, cerr)
		}
		if r.Token.Policy != policy || len(r.Token.SecretSha256) != 0 {
			t.Fatalf("create %s token answered %v", policy, r.Token)
		}
		return r.Secret
	}
	readTok, submitTok, opTok := mk(acl.PolicyRead), mk(acl.PolicySubmit), mk(acl.PolicyOperator)

	// Without a token every method is Unauthenticated, but bootstrap
	// (which the cluster has used up).
	noToken := dialAs(t, s, alice, "")
	readConn := dialAs(t, s, alice, readTok)
	for _, m := range allMethods() {
		err = invoke(ctx, noToken, m.svc, m.name, m.stream)
		want := codes.Unauthenticated
		if strings.HasSuffix(m.full, "/BootstrapToken") {
			want = codes.FailedPrecondition
		}
		if status.Code(err) != want {
			t.Errorf("%s without a token: %v, want %v", m.full, err, want)
		}
		rule, _ := acl.RuleFor(m.full)
		err = invoke(ctx, readConn, m.svc, m.name, m.stream)
		switch {
		case rule.Mutating || rule.Cap == acl.CapNode || rule.Cap == acl.CapManage:
			if status.Code(err) != codes.PermissionDenied && !(strings.HasSuffix(m.full, "/BootstrapToken") && status.Code(err) == codes.FailedPrecondition) {
				t.Errorf("%s with a read token: %v, want PermissionDenied", m.full, err)
			}
		case status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.Unauthenticated:
			t.Errorf("%s with a read token: %v, want it allowed", m.full, err)
		}
	}

	// A submit token: its own work only; no cordon, no member removal, no
	// choice of user.
	sub := rpcpb.NewClusterClient(dialAs(t, s, alice, submitTok))
	op := rpcpb.NewClusterClient(dialAs(t, s, alice, opTok))
	if _, err = sub.CordonWorker(ctx, &pb.CordonWorkerRequest{WorkerId: 1, Cordon: true}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("submit token cordons: %v", err)
	}
	if _, err = sub.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: 1}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("submit token removes a member: %v", err)
	}
	if _, err = sub.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: &pb.TaskSpec{Command: "/bin/true", User: "root"}}); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "user") {
		t.Errorf("submit token picks the user: %v", err)
	}
	mine, err := sub.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: &pb.TaskSpec{Command: "/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := op.SubmitTask(ctx, &pb.SubmitTaskRequest{Spec: &pb.TaskSpec{Command: "/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err = sub.GetTask(ctx, &pb.GetTaskRequest{Id: mine.Task.Id}); err != nil {
		t.Errorf("submit token reads its own task: %v", err)
	}
	for name, call := range map[string]func() error{
		"get":    func() error { _, e := sub.GetTask(ctx, &pb.GetTaskRequest{Id: theirs.Task.Id}); return e },
		"wait":   func() error { _, e := sub.WaitTask(ctx, &pb.WaitTaskRequest{Id: theirs.Task.Id}); return e },
		"cancel": func() error { _, e := sub.CancelTask(ctx, &pb.CancelTaskRequest{Id: theirs.Task.Id}); return e },
	} {
		if err = call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("submit token %ss another token's task: %v", name, err)
		}
	}
	list, err := sub.ListTasks(ctx, &pb.ListTasksRequest{})
	if err != nil || len(list.Tasks) != 1 || list.Tasks[0].Id != mine.Task.Id {
		t.Errorf("submit token's task list: %v %v, want only %s", list, err, mine.Task.Id)
	}
	if got, _ := s.State().Task(mine.Task.Id); got.Owner == "" || got.Owner == theirs.Task.Owner {
		t.Errorf("owners: %q and %q", got.Owner, theirs.Task.Owner)
	}

	// A node certificate speaks only as its node: node 2's cannot join as
	// 3, and its raft messages must come from 2.
	node2 := dialAs(t, s, tlsSource(t, dir, pki.NodeCertFile(2), pki.NodeKeyFile(2)).ClientConfig(), "")
	if _, err = rpcpb.NewClusterClient(node2).Join(ctx, &pb.JoinRequest{Id: 3, Addr: "127.0.0.1:1"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node 2's certificate joins as node 3: %v", err)
	}
	if _, err = rpcpb.NewClusterClient(node2).Heartbeat(ctx, &pb.HeartbeatRequest{WorkerId: 1}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node 2's certificate heartbeats for worker 1: %v", err)
	}
	send, err := rpcpb.NewRaftClient(node2).Send(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(&raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(3), To: proto.Uint64(1), Term: proto.Uint64(1 << 40)})
	_ = send.Send(&pb.RaftBatch{Messages: [][]byte{raw}})
	if _, err = send.CloseAndRecv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node 2's certificate sends raft messages as node 3: %v", err)
	}
	if st, _, _ := s.Node().Status(ctx); st.HardState.GetTerm() >= 1<<40 || len(s.State().Members()) != 1 {
		t.Errorf("the forged traffic changed the cluster: term %d, members %v", st.HardState.GetTerm(), s.State().Members())
	}

	// A client without a certificate, or from another CA, gets nothing.
	other := securePKI(t, 0, "mallory")
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(dir, pki.CACertFile))
	pool.AppendCertsFromPEM(caPEM)
	for name, cfg := range map[string]*tls.Config{
		"no certificate": {RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13},
		"another CA":     tlsSource(t, other, pki.ClientCertFile("mallory"), pki.ClientKeyFile("mallory")).ClientConfig(),
	} {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = rpcpb.NewClusterClient(dialAs(t, s, cfg, boot.Secret)).Status(cctx, &pb.StatusRequest{})
		ccancel()
		if err == nil {
			t.Errorf("client with %s was answered", name)
		}
	}

	// HTTP: health is open, metrics and the API need a read token.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	t.Cleanup(hc.CloseIdleConnections)
	get := func(path, tok string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+s.HTTPAddr()+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, derr := hc.Do(req)
		if derr != nil {
			t.Fatalf("GET %s: %v", path, derr)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, tok string
		want      int
	}{
		{"/healthz", "", 200}, {"/metrics", "", 401}, {"/api/overview", "", 401},
		{"/metrics", readTok, 200}, {"/api/overview", readTok, 200}, {"/api/overview", submitTok, 403},
		{"/", "", http.StatusSeeOther}, {"/login", "", 200},
	} {
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		if got := get(c.path, c.tok); got != c.want {
			t.Errorf("GET %s (token %v): %d, want %d", c.path, c.tok != "", got, c.want)
		}
	}

	// Revoked: refused from the next call on.
	if _, err = readConnClient(readConn).Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Fatalf("read token before revocation: %v", err)
	}
	accessor, _, _ := acl.ParseToken(readTok)
	if _, err = mgmt.RevokeToken(ctx, &pb.RevokeTokenRequest{Accessor: accessor}); err != nil {
		t.Fatal(err)
	}
	if _, err = readConnClient(readConn).Status(ctx, &pb.StatusRequest{}); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("revoked token: %v", err)
	}
	if get("/metrics", readTok) != 401 {
		t.Error("a revoked token reads /metrics")
	}

	// The audit log names accessors and never a secret.
	b, err := os.ReadFile(s.cfg.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	_, sec, _ := acl.ParseToken(boot.Secret)
	for _, want := range []string{`"method":"/blixard.rpc.v1.Cluster/CreateToken"`, `"outcome":"PermissionDenied"`, `"accessor":"` + accessor + `"`} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
	if strings.Contains(log, sec) {
		t.Error("the audit log holds a token secret")
	}
}

func readConnClient(cc *grpc.ClientConn) rpcpb.ClusterClient { return rpcpb.NewClusterClient(cc) }

func TestJoinGivesUpOnlyOnCertificateErrors(t *testing.T) {
	for msg, want := range map[string]bool{
		`connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`: true,
		`connection error: desc = "transport: authentication handshake failed: remote error: tls: unknown certificate authority"`:                                 true,
		`connection error: desc = "transport: authentication handshake failed: context deadline exceeded"`:                                                        false,
		`connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`:                                            false,
		`no leader`: false,
	} {
		if got := badCertificate(msg); got != want {
			t.Errorf("badCertificate(%q) = %v, want %v", msg, got, want)
		}
	}
}
