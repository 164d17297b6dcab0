package server

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/acl"
	"github.com/blixard/blixard/internal/state"
)

// maxTokenTTL bounds --ttl: ten years is "forever" for a token; anything
// longer is a typo.
const maxTokenTTL = 10 * 365 * 24 * time.Hour

// errInsecureTokens answers token calls on an --insecure node, which
// checks none.
var errInsecureTokens = status.Error(codes.FailedPrecondition, "this node runs with --insecure and checks no token; tokens work on a TLS cluster (see docs/SECURITY.md)")

func (a *api) BootstrapToken(ctx context.Context, _ *pb.BootstrapTokenRequest) (*pb.TokenResponse, error) {
	if a.s.cfg.Insecure {
		return nil, errInsecureTokens
	}
	return a.makeToken(ctx, acl.PolicyManagement, "bootstrap", 0, acl.BootstrapActor, true)
}

func (a *api) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.TokenResponse, error) {
	if a.s.cfg.Insecure {
		return nil, errInsecureTokens
	}
	if _, ok := acl.PolicyNamed(req.GetPolicy()); !ok {
		return nil, status.Errorf(codes.InvalidArgument, "policy: %q is not a policy; use one of %s", req.GetPolicy(), strings.Join(acl.PolicyNames(), ", "))
	}
	if len(req.GetName()) > 128 {
		return nil, status.Errorf(codes.InvalidArgument, "name: at most 128 bytes (got %d)", len(req.GetName()))
	}
	ttl := time.Duration(req.GetTtlMs()) * time.Millisecond
	if req.GetTtlMs() < 0 || ttl > maxTokenTTL || req.GetTtlMs() > int64(maxTokenTTL/time.Millisecond) {
		return nil, status.Errorf(codes.InvalidArgument, "ttl: must be between 0 (never expires) and %s (got %d ms)", maxTokenTTL, req.GetTtlMs())
	}
	return a.makeToken(ctx, req.Policy, req.Name, ttl, acl.FromContext(ctx).Accessor, false)
}

// makeToken replicates a new token's record and returns its secret, which
// exists nowhere else.
func (a *api) makeToken(ctx context.Context, policy, name string, ttl time.Duration, by string, bootstrap bool) (*pb.TokenResponse, error) {
	secret, rec, err := acl.NewToken(rand.Reader)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := a.s.clock.Now()
	rec.Policy, rec.Name, rec.CreatedBy, rec.CreatedAtUnixNano = policy, name, by, now.UnixNano()
	if ttl > 0 {
		rec.ExpiresAtUnixNano = now.Add(ttl).UnixNano()
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_CreateToken{CreateToken: &pb.CreateToken{Token: rec, Bootstrap: bootstrap}}})
	if err != nil {
		if errors.Is(err, state.ErrBootstrapped) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, toStatus(err)
	}
	t, _ := res.(*pb.Token)
	return &pb.TokenResponse{Token: t, Secret: secret}, nil
}

func (a *api) ListTokens(ctx context.Context, _ *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	if err := a.s.node.ReadIndex(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &pb.ListTokensResponse{Tokens: a.s.sm.Tokens()}, nil
}

func (a *api) RevokeToken(ctx context.Context, req *pb.RevokeTokenRequest) (*pb.TokenResponse, error) {
	if a.s.cfg.Insecure {
		return nil, errInsecureTokens
	}
	acc := req.GetAccessor()
	if !acl.ValidAccessor(acc) {
		return nil, status.Errorf(codes.InvalidArgument, "accessor: %q is not 16 hex digits (see 'blixard token list')", acc)
	}
	res, err := a.s.propose(ctx, &pb.Command{Op: &pb.Command_RevokeToken{RevokeToken: &pb.RevokeToken{Accessor: acc, NowUnixNano: a.s.clock.Now().UnixNano()}}})
	if err != nil {
		if errors.Is(err, state.ErrUnknownToken) {
			return nil, status.Errorf(codes.NotFound, "no token has accessor %s; see 'blixard token list'", acc)
		}
		return nil, toStatus(err)
	}
	t, _ := res.(*pb.Token)
	return &pb.TokenResponse{Token: t}, nil
}
