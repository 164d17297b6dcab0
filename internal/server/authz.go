package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/internal/acl"
	"github.com/blixard/blixard/internal/clock"
	"github.com/blixard/blixard/internal/state"
)

// authorizationKey is the gRPC metadata key of the bearer token.
const authorizationKey = "authorization"

// Identify returns who a verified TLS peer certificate speaks for: a node
// ID, or a client name (internal/pki.PeerIdentity in production).
type Identify func(tls.ConnectionState) (nodeID uint64, client string, err error)

// authz decides every gRPC call: who the caller is (certificate and bearer
// token), whether the method's capability is among the principal's, and
// it writes mutating calls to the audit log. One per server.
type authz struct {
	secure   bool // false: --insecure, every caller is acl.Anonymous
	sm       *state.Machine
	clock    clock.Clock
	identify Identify
	audit    *slog.Logger
}

// principal authenticates the caller of ctx.
func (z *authz) principal(ctx context.Context) (acl.Principal, error) {
	if !z.secure {
		return acl.Anonymous(), nil
	}
	var node uint64
	var client string
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return acl.Principal{}, status.Error(codes.Unauthenticated, "no peer information; connect with TLS and a client certificate")
	}
	ti, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return acl.Principal{}, status.Error(codes.Unauthenticated, "no client certificate; pass --tls-dir DIR (or --ca, --cert, --key) with a certificate from 'blixard tls cert --client NAME'")
	}
	node, client, err := z.identify(ti.State)
	if err != nil {
		return acl.Principal{}, status.Errorf(codes.Unauthenticated, "client certificate: %v", err)
	}
	return z.tokenPrincipal(bearer(ctx), node, client)
}

// tokenPrincipal is the principal of a bearer token (empty: none) from a
// caller whose certificate names node (0: not a node) or client.
func (z *authz) tokenPrincipal(tok string, node uint64, client string) (acl.Principal, error) {
	if tok == "" {
		if node != 0 {
			return acl.Node(node), nil
		}
		return acl.CertOnly(client), nil
	}
	accessor, secret, err := acl.ParseToken(tok)
	if err != nil {
		return acl.Principal{}, status.Error(codes.Unauthenticated, err.Error())
	}
	rec, ok := z.sm.Token(accessor)
	if !ok {
		return acl.Principal{}, status.Error(codes.Unauthenticated, acl.ErrUnknownToken.Error())
	}
	if err := acl.Check(rec, secret, z.clock.Now().UnixNano()); err != nil {
		return acl.Principal{}, status.Error(codes.Unauthenticated, err.Error())
	}
	p := acl.ForToken(accessor, rec.Policy, client)
	p.NodeID = node
	return p, nil
}

// bearer returns the token of ctx's "authorization: Bearer X" metadata.
func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(authorizationKey) {
		if t, ok := cutBearer(v); ok {
			return t
		}
	}
	return ""
}

func cutBearer(v string) (string, bool) {
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:]), true
	}
	return "", false
}

// authorize authenticates and authorizes a call of method and returns ctx
// carrying the principal.
func (z *authz) authorize(ctx context.Context, method string) (context.Context, acl.Principal, error) {
	rule, ok := acl.RuleFor(method)
	if !ok {
		return ctx, acl.Principal{}, status.Errorf(codes.PermissionDenied, "%s is not in the access table; no one may call it", method)
	}
	p, err := z.principal(ctx)
	if err != nil {
		return ctx, p, err
	}
	if !p.Has(rule.Cap) {
		return ctx, p, denied(p, method, rule.Cap)
	}
	return acl.NewContext(ctx, p), p, nil
}

// denied is the error for p lacking c: Unauthenticated without a token
// (the fix is to present one), PermissionDenied with one.
func denied(p acl.Principal, method string, c acl.Capability) error {
	name := method[strings.LastIndex(method, "/")+1:]
	switch p.Kind {
	case acl.KindNone:
		return status.Errorf(codes.Unauthenticated, "%s needs a token: set BLIXARD_TOKEN or pass --token (an operator makes one with 'blixard token create')", name)
	case acl.KindNode:
		if c == acl.CapNode {
			break
		}
		return status.Errorf(codes.Unauthenticated, "%s needs a token; node certificates only carry peer traffic", name)
	}
	return status.Errorf(codes.PermissionDenied, "%s may not call %s (it needs the %q capability: %s); ask an operator for a token with a policy that allows it", p, name, c, policiesWith(c))
}

// policiesWith names the policies that grant c.
func policiesWith(c acl.Capability) string {
	var names []string
	for _, p := range acl.Policies() {
		for _, pc := range p.Caps {
			if pc == c {
				names = append(names, p.Name)
			}
		}
	}
	if len(names) == 0 {
		return "granted only to node certificates"
	}
	return "granted by " + strings.Join(names, ", ")
}

// record writes one mutating call's outcome to the audit log. The token's
// secret never appears: only its accessor.
func (z *authz) record(ctx context.Context, method string, p acl.Principal, start time.Time, err error) {
	// Refused reads are audited too (who probes what), without the noise
	// of every successful read.
	rule, _ := acl.RuleFor(method)
	code := status.Code(err)
	if !rule.Mutating && code != codes.PermissionDenied && code != codes.Unauthenticated {
		return
	}
	attrs := []any{
		"method", method,
		"principal", principalKind(p),
		"outcome", code.String(),
		"duration_ms", float64(z.clock.Now().Sub(start).Microseconds()) / 1000,
	}
	if p.Accessor != "" {
		attrs = append(attrs, "accessor", p.Accessor, "policy", p.Policy)
	}
	if p.NodeID != 0 {
		attrs = append(attrs, "node", p.NodeID)
	}
	if p.Client != "" {
		attrs = append(attrs, "client", p.Client)
	}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		attrs = append(attrs, "peer", pr.Addr.String())
	}
	if err != nil {
		attrs = append(attrs, "error", status.Convert(err).Message())
	}
	z.audit.Info("audit", attrs...)
}

func principalKind(p acl.Principal) string {
	if p.Kind == "" {
		return "unauthenticated"
	}
	return p.Kind
}

func (z *authz) unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := z.clock.Now()
		actx, p, err := z.authorize(ctx, info.FullMethod)
		var resp any
		if err == nil {
			resp, err = h(actx, req)
		}
		z.record(ctx, info.FullMethod, p, start, err)
		return resp, err
	}
}

func (z *authz) stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := z.clock.Now()
		actx, p, err := z.authorize(ss.Context(), info.FullMethod)
		if err == nil {
			err = h(srv, &principalStream{ServerStream: ss, ctx: actx})
		}
		z.record(ss.Context(), info.FullMethod, p, start, err)
		return err
	}
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }

// forwardToken passes the caller's bearer token on when a node calls
// another for a client (a follower asking the leader, a node fetching logs
// from the worker that has them), so the other node decides on the same
// principal. Calls the node makes for itself carry none.
func forwardToken(ctx context.Context) context.Context {
	if t := bearer(ctx); t != "" {
		return metadata.AppendToOutgoingContext(ctx, authorizationKey, "Bearer "+t)
	}
	return ctx
}

func forwardTokenUnary() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(forwardToken(ctx), method, req, reply, cc, opts...)
	}
}

func forwardTokenStream() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(forwardToken(ctx), desc, cc, method, opts...)
	}
}

// checkRaftSender is the transport's check of every incoming raft message
// on a TLS cluster: the sender's certificate must be the node the message
// claims to come from.
func checkRaftSender(ctx context.Context, from uint64) error {
	p := acl.FromContext(ctx)
	if p.Kind == acl.KindAnonymous {
		return nil
	}
	if p.Kind != acl.KindNode || p.NodeID != from {
		return status.Errorf(codes.PermissionDenied, "raft message from node %d sent by %s: a node speaks only with its own certificate", from, p)
	}
	return nil
}

// sameNode refuses a node certificate speaking for another node (joins,
// heartbeats). Tokens and the anonymous principal pass: the interceptor
// already refused tokens, which lack the node capability.
func sameNode(ctx context.Context, field string, id uint64) error {
	p := acl.FromContext(ctx)
	if p.Kind == acl.KindNode && p.NodeID != id {
		return status.Errorf(codes.PermissionDenied, "%s: %d, but this certificate is node %d's: a node speaks only as itself; make its certificate with 'blixard tls cert --node %d'", field, id, p.NodeID, id)
	}
	return nil
}

// ownerCheck refuses a principal that may not read (or change) a record
// owned by owner.
func ownerCheck(ctx context.Context, kind, name, owner string, change bool) error {
	p := acl.FromContext(ctx)
	ok := p.CanRead(owner)
	verb := "read"
	if change {
		ok, verb = p.CanChange(owner), "change"
	}
	if !ok {
		return status.Errorf(codes.PermissionDenied, "%s %s belongs to another token; %s may %s only its own (an operator token may %s any)", kind, name, p, verb, verb)
	}
	return nil
}
