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
	"github.com/blixard/blixard/internal/acl"
)

const (
	testAccessor = "0123456789abcdef"
	testSecret   = "bxt_" + testAccessor + "_" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)

// tokenFake answers the token calls.
type tokenFake struct {
	rpcpb.UnimplementedClusterServer
	mu       sync.Mutex
	creates  []*blixardpb.CreateTokenRequest
	revoked  []string
	boots    int
	lists    int
	err      error // if set, every token call fails with it
	listResp []*blixardpb.Token
}

func (f *tokenFake) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.creates) + len(f.revoked) + f.boots + f.lists
}

func (f *tokenFake) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func record(policy, name string, ttl time.Duration) *blixardpb.Token {
	t := &blixardpb.Token{Accessor: testAccessor, Policy: policy, Name: name, CreatedAtUnixNano: testNow.UnixNano(), CreatedBy: "bootstrap"}
	if ttl > 0 {
		t.ExpiresAtUnixNano = testNow.Add(ttl).UnixNano()
	}
	return t
}

func (f *tokenFake) CreateToken(_ context.Context, r *blixardpb.CreateTokenRequest) (*blixardpb.TokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates = append(f.creates, r)
	if f.err != nil {
		return nil, f.err
	}
	return &blixardpb.TokenResponse{Token: record(r.Policy, r.Name, time.Duration(r.TtlMs)*time.Millisecond), Secret: testSecret}, nil
}

func (f *tokenFake) BootstrapToken(context.Context, *blixardpb.BootstrapTokenRequest) (*blixardpb.TokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boots++
	if f.err != nil {
		return nil, f.err
	}
	t := record(acl.PolicyManagement, "bootstrap", 0)
	t.CreatedBy = acl.BootstrapActor
	return &blixardpb.TokenResponse{Token: t, Secret: testSecret}, nil
}

func (f *tokenFake) ListTokens(context.Context, *blixardpb.ListTokensRequest) (*blixardpb.ListTokensResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	if f.err != nil {
		return nil, f.err
	}
	return &blixardpb.ListTokensResponse{Tokens: f.listResp}, nil
}

func (f *tokenFake) RevokeToken(_ context.Context, r *blixardpb.RevokeTokenRequest) (*blixardpb.TokenResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, r.Accessor)
	if f.err != nil {
		return nil, f.err
	}
	t := record("read", "grafana", 0)
	t.Accessor = r.Accessor
	t.RevokedAtUnixNano = testNow.UnixNano()
	return &blixardpb.TokenResponse{Token: t}, nil
}

// jsonKeys decodes one JSON object and returns its keys, sorted.
func jsonKeys(t *testing.T, s string) (map[string]any, []string) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, s)
	}
	return m, sortedKeys(m)
}

func TestTokenCommandsRefuseBadInputWithoutCalling(t *testing.T) {
	f := &tokenFake{}
	addr := startFake(t, f)
	policies := strings.Join(acl.PolicyNames(), ", ")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no policy", []string{"token", "create"}, []string{"--policy is required", policies}},
		{"empty policy", []string{"token", "create", "--policy", ""}, []string{"--policy must be one of " + policies}},
		{"bad policy", []string{"token", "create", "--policy", "root"}, []string{`--policy must be one of ` + policies + ` (got "root")`, "blixard token policies"}},
		{"negative ttl", []string{"token", "create", "--policy", "read", "--ttl", "-1h"}, []string{"--ttl must not be negative"}},
		{"unparsable ttl", []string{"token", "create", "--policy", "read", "--ttl", "forever"}, []string{"--ttl must be a duration"}},
		{"long name", []string{"token", "create", "--policy", "read", "--name", strings.Repeat("n", 129)}, []string{"--name must be at most 128 bytes"}},
		{"create with an argument", []string{"token", "create", "--policy", "read", "x"}, []string{"too many arguments"}},
		{"list with an argument", []string{"token", "list", "x"}, []string{"too many arguments"}},
		{"revoke without accessor", []string{"token", "revoke"}, []string{"missing ACCESSOR", "usage: blixard token revoke ACCESSOR"}},
		{"revoke two", []string{"token", "revoke", testAccessor, "x"}, []string{"too many arguments"}},
		{"revoke a secret", []string{"token", "revoke", testSecret}, []string{"ACCESSOR must be 16 lowercase hex digits", "blixard token list"}},
		{"revoke short", []string{"token", "revoke", "abc"}, []string{"ACCESSOR must be 16"}},
		{"revoke upper case", []string{"token", "revoke", strings.ToUpper(testAccessor)}, []string{"ACCESSOR must be 16"}},
		{"unknown subcommand", []string{"token", "delete"}, []string{`unknown command "delete"`}},
		{"bootstrap with an argument", []string{"cluster", "bootstrap-token", "x"}, []string{"too many arguments"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(append([]string{"--addr", addr}, tc.args...)...); code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Errorf("stdout %q", h.stdout.String())
			}
		})
	}
	if n := f.calls(); n != 0 {
		t.Fatalf("bad input reached the cluster: %d calls", n)
	}
}

func TestTokenCreate(t *testing.T) {
	f := &tokenFake{}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "token", "create", "--policy", "submit", "--name", "ci", "--ttl", "720h"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	out := h.stdout.String()
	if n := strings.Count(out, testSecret); n != 1 {
		t.Errorf("the secret is printed %d times, want once:\n%s", n, out)
	}
	lines := strings.Split(out, "\n")
	if lines[0] != "token:    "+testSecret || !strings.Contains(lines[1], "shown only once") {
		t.Errorf("the secret and its warning do not come first:\n%s", out)
	}
	for _, want := range []string{"accessor: " + testAccessor, "policy:   submit", "name:     ci", "expires:  2026-03-31T12:00:00Z"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if h.stderr.String() != "" {
		t.Errorf("stderr %q", h.stderr.String())
	}
	if r := f.creates[0]; r.Policy != "submit" || r.Name != "ci" || r.TtlMs != (720*time.Hour).Milliseconds() {
		t.Errorf("request %v", r)
	}

	// No --ttl: never expires (ttl_ms 0).
	h = newHarness(t)
	if code := h.run("--addr", addr, "token", "create", "--policy", "read"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	if !strings.Contains(h.stdout.String(), "expires:  never") || strings.Contains(h.stdout.String(), "name:") {
		t.Errorf("output:\n%s", h.stdout.String())
	}
	if r := f.creates[1]; r.TtlMs != 0 || r.Name != "" {
		t.Errorf("request %v", r)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "token", "create", "--policy", "operator", "--ttl", "1h"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	m, keys := jsonKeys(t, h.stdout.String())
	if got, want := strings.Join(keys, ","), "accessor,expires_at,name,policy,token"; got != want {
		t.Errorf("JSON keys %s, want %s", got, want)
	}
	if m["token"] != testSecret || m["accessor"] != testAccessor || m["policy"] != "operator" || m["expires_at"] != "2026-03-01T13:00:00Z" {
		t.Errorf("JSON %s", h.stdout.String())
	}
	if strings.Count(h.stdout.String(), testSecret) != 1 {
		t.Errorf("the secret is not printed once: %s", h.stdout.String())
	}
	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "token", "create", "--policy", "read"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	if m, _ := jsonKeys(t, h.stdout.String()); m["expires_at"] != nil {
		t.Errorf("expires_at %v, want null", m["expires_at"])
	}
}

func TestTokenBootstrap(t *testing.T) {
	f := &tokenFake{}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "cluster", "bootstrap-token"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	out := h.stdout.String()
	if strings.Count(out, testSecret) != 1 || !strings.Contains(out, "  export BLIXARD_TOKEN="+testSecret+"\n") {
		t.Errorf("want the secret once, in an export line:\n%s", out)
	}
	if !strings.Contains(out, "shown only once") || !strings.Contains(out, "policy:   management") || !strings.Contains(out, "blixard token create") {
		t.Errorf("output:\n%s", out)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "--output", "json", "cluster", "bootstrap-token"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	m, keys := jsonKeys(t, h.stdout.String())
	if got, want := strings.Join(keys, ","), "accessor,policy,token"; got != want {
		t.Errorf("JSON keys %s, want %s", got, want)
	}
	if m["token"] != testSecret || m["accessor"] != testAccessor || m["policy"] != "management" {
		t.Errorf("JSON %s", h.stdout.String())
	}

	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{"bootstrapped already", status.Error(codes.FailedPrecondition, "the cluster was bootstrapped already: its first management token exists; ask its holder for a token ('blixard token create')"),
			[]string{"bootstrapped already", "blixard token create", "BLIXARD_TOKEN"}},
		{"insecure node", status.Error(codes.FailedPrecondition, "this node runs with --insecure and checks no token; tokens work on a TLS cluster (see docs/SECURITY.md)"),
			[]string{"runs with --insecure", "--tls-dir"}},
		{"no leader", status.Error(codes.Unavailable, "no leader"), []string{"unavailable: no leader"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.fail(tc.err)
			h := newHarness(t)
			if code := h.run("--addr", addr, "cluster", "bootstrap-token"); code != exitFailure {
				t.Errorf("exit %d, want %d", code, exitFailure)
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Errorf("stdout %q", h.stdout.String())
			}
		})
	}
}

func TestTokenList(t *testing.T) {
	f := &tokenFake{listResp: []*blixardpb.Token{
		{Accessor: "00000000000000aa", Policy: "read", Name: "grafana", CreatedAtUnixNano: testNow.Add(-time.Hour).UnixNano(), CreatedBy: "client/ops"},
		{Accessor: "00000000000000bb", Policy: "submit", CreatedAtUnixNano: testNow.Add(-2 * time.Hour).UnixNano(), ExpiresAtUnixNano: testNow.Add(-time.Hour).UnixNano()},
		{Accessor: "00000000000000cc", Policy: "operator", ExpiresAtUnixNano: testNow.Add(time.Hour).UnixNano(), RevokedAtUnixNano: testNow.UnixNano()},
	}}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "token", "list"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(h.stdout.String(), "\n"), "\n")
	want := [][]string{
		{"ACCESSOR", "POLICY", "NAME", "CREATED", "EXPIRES", "STATE", "CREATED-BY"},
		{"00000000000000aa", "read", "grafana", "2026-03-01T11:00:00Z", "never", "active", "client/ops"},
		{"00000000000000bb", "submit", "-", "2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z", "expired", "-"},
		{"00000000000000cc", "operator", "-", "-", "2026-03-01T13:00:00Z", "revoked", "-"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", h.stdout.String())
	}
	for i, l := range lines {
		if got := strings.Fields(l); strings.Join(got, " ") != strings.Join(want[i], " ") {
			t.Errorf("row %d: %q, want %q", i, got, want[i])
		}
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "token", "list"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(h.stdout.String()), &list); err != nil || len(list) != 3 {
		t.Fatalf("JSON %s: %v", h.stdout.String(), err)
	}
	if got, want := strings.Join(sortedKeys(list[0]), ","), "accessor,created_at,created_by,expires_at,name,policy,state"; got != want {
		t.Errorf("JSON keys %s, want %s", got, want)
	}
	if list[0]["name"] != "grafana" || list[0]["expires_at"] != nil || list[0]["created_at"] != "2026-03-01T11:00:00Z" || list[0]["state"] != "active" ||
		list[1]["state"] != "expired" || list[2]["state"] != "revoked" || list[2]["created_at"] != nil {
		t.Errorf("JSON %s", h.stdout.String())
	}

	// An empty list: the header alone, or [].
	f.mu.Lock()
	f.listResp = nil
	f.mu.Unlock()
	h = newHarness(t)
	if code := h.run("--addr", addr, "-o", "json", "token", "list"); code != exitOK || strings.TrimSpace(h.stdout.String()) != "[]" {
		t.Errorf("empty JSON list: exit %d, %q", code, h.stdout.String())
	}

	f.fail(status.Error(codes.PermissionDenied, "token 00000000000000aa (policy read) may not list tokens"))
	h = newHarness(t)
	if code := h.run("--addr", addr, "token", "list"); code != exitFailure {
		t.Errorf("exit %d", code)
	}
	h.wantErrorLine("may not list tokens", "blixard token policies")
}

func TestTokenRevoke(t *testing.T) {
	f := &tokenFake{}
	addr := startFake(t, f)

	h := newHarness(t)
	if code := h.run("--addr", addr, "token", "revoke", testAccessor); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "revoked token "+testAccessor+"\n" {
		t.Errorf("stdout %q", got)
	}
	if len(f.revoked) != 1 || f.revoked[0] != testAccessor {
		t.Errorf("revoked %v", f.revoked)
	}

	h = newHarness(t)
	if code := h.run("--addr", addr, "--output", "json", "token", "revoke", testAccessor); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	m, keys := jsonKeys(t, h.stdout.String())
	if got, want := strings.Join(keys, ","), "accessor,created_at,created_by,expires_at,name,policy,state"; got != want {
		t.Errorf("JSON keys %s, want %s", got, want)
	}
	if m["accessor"] != testAccessor || m["state"] != "revoked" || m["name"] != "grafana" {
		t.Errorf("JSON %s", h.stdout.String())
	}

	f.fail(status.Errorf(codes.NotFound, "no token has accessor %s; see 'blixard token list'", testAccessor))
	h = newHarness(t)
	if code := h.run("--addr", addr, "token", "revoke", testAccessor); code != exitFailure {
		t.Errorf("exit %d", code)
	}
	h.wantErrorLine("no token has accessor " + testAccessor)
}

func TestTokenPolicies(t *testing.T) {
	// No cluster call: nothing listens at --addr.
	h := newHarness(t)
	if code := h.run("--addr", closedAddr(t), "token", "policies"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(h.stdout.String(), "\n"), "\n")
	policies := acl.Policies()
	if len(lines) != len(policies)+1 || strings.Join(strings.Fields(lines[0]), " ") != "POLICY ALLOWS" {
		t.Fatalf("table:\n%s", h.stdout.String())
	}
	for i, p := range policies {
		if f := strings.Fields(lines[i+1]); len(f) == 0 || f[0] != p.Name || !strings.Contains(lines[i+1], p.Doc) {
			t.Errorf("row %q, want %s and %q", lines[i+1], p.Name, p.Doc)
		}
	}

	h = newHarness(t)
	if code := h.run("-o", "json", "token", "policies"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	var out []struct {
		Name         string   `json:"name"`
		Capabilities []string `json:"capabilities"`
		Doc          string   `json:"doc"`
	}
	if err := json.Unmarshal([]byte(h.stdout.String()), &out); err != nil || len(out) != len(policies) {
		t.Fatalf("JSON %s: %v", h.stdout.String(), err)
	}
	for i, p := range policies {
		if out[i].Name != p.Name || out[i].Doc != p.Doc || len(out[i].Capabilities) != len(p.Caps) {
			t.Errorf("policy %d: %+v, want %+v", i, out[i], p)
		}
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
