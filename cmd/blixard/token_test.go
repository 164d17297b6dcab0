package main

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

const testSecret = "bxt_0123456789abcdef_" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// tokenFake answers the token calls.
type tokenFake struct {
	rpcpb.UnimplementedClusterServer
	mu       sync.Mutex
	creates  []*blixardpb.CreateTokenRequest
	revoked  []string
	boots    int
	bootErr  error
	listResp []*blixardpb.Token
}

func (f *tokenFake) record(policy, name string, ttl int64) *blixardpb.Token {
	t := &blixardpb.Token{Accessor: "0123456789abcdef", Policy: policy, Name: name, CreatedAtUnixNano: testNow.UnixNano(), CreatedBy: "bootstrap"}
	if ttl > 0 {
		t.ExpiresAtUnixNano = testNow.Add(time.Duration(ttl) * time.Millisecond).UnixNano()
	}
	return t
}

func (f *tokenFake) CreateToken(_ context.Context, r *blixardpb.CreateTokenRequest) (*blixardpb.TokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, r)
	return &blixardpb.TokenResponse{Token: f.record(r.Policy, r.Name, r.TtlMs), Secret: testSecret}, nil
}

func (f *tokenFake) BootstrapToken(context.Context, *blixardpb.BootstrapTokenRequest) (*blixardpb.TokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boots++
	if f.bootErr != nil {
		return nil, f.bootErr
	}
	return &blixardpb.TokenResponse{Token: f.record("management", "bootstrap", 0), Secret: testSecret}, nil
}

func (f *tokenFake) ListTokens(context.Context, *blixardpb.ListTokensRequest) (*blixardpb.ListTokensResponse, error) {
	return &blixardpb.ListTokensResponse{Tokens: f.listResp}, nil
}

func (f *tokenFake) RevokeToken(_ context.Context, r *blixardpb.RevokeTokenRequest) (*blixardpb.TokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, r.Accessor)
	t := f.record("read", "", 0)
	t.RevokedAtUnixNano = testNow.UnixNano()
	return &blixardpb.TokenResponse{Token: t}, nil
}

func TestTokenCommandsRefuseBadInputWithoutCalling(t *testing.T) {
	f := &tokenFake{}
	addr := startFake(t, f)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no policy", []string{"token", "create"}, []string{"--policy is required", "management, operator, submit, read"}},
		{"bad policy", []string{"token", "create", "--policy", "root"}, []string{`--policy must be one of management, operator, submit, read (got "root")`}},
		{"negative ttl", []string{"token", "create", "--policy", "read", "--ttl", "-1h"}, []string{"--ttl must not be negative"}},
		{"long name", []string{"token", "create", "--policy", "read", "--name", strings.Repeat("n", 129)}, []string{"--name must be at most 128 bytes"}},
		{"revoke without accessor", []string{"token", "revoke"}, []string{"ACCESSOR"}},
		{"revoke two", []string{"token", "revoke", "0123456789abcdef", "x"}, []string{"too many arguments"}},
		{"revoke a secret", []string{"token", "revoke", testSecret}, []string{"ACCESSOR must be 16 hex digits"}},
		{"bootstrap with an argument", []string{"cluster", "bootstrap-token", "x"}, []string{"too many arguments"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(append([]string{"--addr", addr}, tc.args...)...); code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			h.wantErrorLine(tc.want...)
		})
	}
	if len(f.creates)+len(f.revoked)+f.boots != 0 {
		t.Fatalf("bad input reached the cluster: %d creates, %d revokes, %d bootstraps", len(f.creates), len(f.revoked), f.boots)
	}
}

func TestTokenCreateListRevokeAndBootstrap(t *testing.T) {
	f := &tokenFake{}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "token", "create", "--policy", "submit", "--name", "ci", "--ttl", "720h"); code != exitOK {
		t.Fatalf("create: exit %d: %s", code, h.stderr.String())
	}
	out := h.stdout.String()
	if strings.Count(out, testSecret) != 2 || !strings.Contains(out, "only time the token is shown") || !strings.Contains(out, "export BLIXARD_TOKEN=") {
		t.Errorf("create output:\n%s", out)
	}
	if r := f.creates[0]; r.Policy != "submit" || r.Name != "ci" || r.TtlMs != (720*time.Hour).Milliseconds() {
		t.Errorf("request %v", r)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "--output", "json", "cluster", "bootstrap-token"); code != exitOK {
		t.Fatalf("bootstrap: exit %d: %s", code, h.stderr.String())
	}
	var boot tokenJSON
	if err := json.Unmarshal([]byte(h.stdout.String()), &boot); err != nil || boot.Token != testSecret || boot.Policy != "management" || boot.ExpiresAt != nil || boot.State != "active" {
		t.Errorf("bootstrap JSON %q: %+v %v", h.stdout.String(), boot, err)
	}
	f.bootErr = status.Error(codes.FailedPrecondition, "the cluster was bootstrapped already: its first management token exists")
	h = newHarness(t)
	if code := h.run("--addr", addr, "cluster", "bootstrap-token"); code != exitFailure {
		t.Errorf("second bootstrap: exit %d", code)
	}
	h.wantErrorLine("bootstrapped already")

	f.listResp = []*blixardpb.Token{
		{Accessor: "00000000000000aa", Policy: "read", Name: "grafana", CreatedAtUnixNano: testNow.UnixNano()},
		{Accessor: "00000000000000bb", Policy: "submit", ExpiresAtUnixNano: testNow.Add(-time.Hour).UnixNano()},
		{Accessor: "00000000000000cc", Policy: "operator", RevokedAtUnixNano: testNow.UnixNano()},
	}
	h = newHarness(t)
	if code := h.run("--addr", addr, "token", "list"); code != exitOK {
		t.Fatalf("list: %d %s", code, h.stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(h.stdout.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ACCESSOR") || !strings.Contains(lines[1], "active") || !strings.Contains(lines[2], "expired") || !strings.Contains(lines[3], "revoked") {
		t.Errorf("list table:\n%s", h.stdout.String())
	}
	if strings.Contains(h.stdout.String(), "bxt_") {
		t.Error("the list shows a secret")
	}
	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "token", "list"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &list); err != nil || len(list) != 3 || list[2]["state"] != "revoked" || list[0]["name"] != "grafana" {
		t.Errorf("list JSON %s: %v", h.stdout.String(), err)
	}
	if _, ok := list[0]["token"]; ok {
		t.Error("list JSON carries a token field")
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "token", "revoke", "0123456789abcdef"); code != exitOK || strings.TrimSpace(h.stdout.String()) != "revoked token 0123456789abcdef" {
		t.Errorf("revoke: %d %q %q", code, h.stdout.String(), h.stderr.String())
	}
	if len(f.revoked) != 1 || f.revoked[0] != "0123456789abcdef" {
		t.Errorf("revoked %v", f.revoked)
	}

	h = newHarness(t)
	if code := h.run("token", "policies"); code != exitOK || !strings.Contains(h.stdout.String(), "management") || !strings.Contains(h.stdout.String(), "its own") {
		t.Errorf("policies: %d\n%s", code, h.stdout.String())
	}
}

func TestTokenNeedsTLS(t *testing.T) {
	h := newHarness(t)
	h.env["BLIXARD_TOKEN"] = testSecret
	if code := h.run("--addr", closedAddr(t), "cluster", "status"); code != exitUsage {
		t.Errorf("exit %d, want %d", code, exitUsage)
	}
	h.wantErrorLine("--token needs TLS", "--tls-dir")
}
