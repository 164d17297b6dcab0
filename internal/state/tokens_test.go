package state

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/acl"
)

func newTokenRecord(t *testing.T, policy string) (string, *pb.Token) {
	t.Helper()
	secret, rec, err := acl.NewToken(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rec.Policy = policy
	return secret, rec
}

func TestTokensBootstrapOnceCreateRevokeAndPersist(t *testing.T) {
	h := newCmdHarness(t, 1000, 1024)
	create := func(rec *pb.Token, bootstrap bool) (*pb.Token, error) {
		r, err := h.apply(&pb.Command{Op: &pb.Command_CreateToken{CreateToken: &pb.CreateToken{Token: rec, Bootstrap: bootstrap}}})
		tok, _ := r.(*pb.Token)
		return tok, err
	}
	if h.m.Bootstrapped() {
		t.Fatal("a fresh machine says it was bootstrapped")
	}
	mgmtSecret, mgmt := newTokenRecord(t, acl.PolicyManagement)
	mgmt.CreatedBy = acl.BootstrapActor
	got, err := create(mgmt, true)
	if err != nil || got.Accessor != mgmt.Accessor || len(got.SecretSha256) != 0 {
		t.Fatalf("bootstrap: %v %v (the answer must not carry the hash)", got, err)
	}
	if !h.m.Bootstrapped() {
		t.Fatal("not bootstrapped after the bootstrap token")
	}
	_, again := newTokenRecord(t, acl.PolicyManagement)
	if _, err = create(again, true); !errors.Is(err, ErrBootstrapped) {
		t.Fatalf("second bootstrap: %v, want ErrBootstrapped", err)
	}
	if _, err = create(mgmt, false); !errors.Is(err, ErrTokenExists) {
		t.Fatalf("duplicate accessor: %v", err)
	}
	for _, bad := range []*pb.Token{
		{Accessor: "short", SecretSha256: make([]byte, 32), Policy: acl.PolicyRead},
		{Accessor: "0123456789abcdef", SecretSha256: make([]byte, 3), Policy: acl.PolicyRead},
		{Accessor: "0123456789abcdef", SecretSha256: make([]byte, 32), Policy: "root"},
	} {
		if _, err = create(bad, false); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("create %v: %v, want ErrInvalidCommand", bad, err)
		}
	}
	readSecret, read := newTokenRecord(t, acl.PolicyRead)
	if _, err = create(read, false); err != nil {
		t.Fatal(err)
	}
	stored, ok := h.m.Token(read.Accessor)
	_, sec, _ := acl.ParseToken(readSecret)
	if !ok || acl.Check(stored, sec, 1) != nil {
		t.Fatalf("stored read token does not check: %v %v", stored, ok)
	}
	// Revoke: refused from then on, idempotent, unknown accessor refused.
	r, err := h.apply(&pb.Command{Op: &pb.Command_RevokeToken{RevokeToken: &pb.RevokeToken{Accessor: read.Accessor, NowUnixNano: 42}}})
	if err != nil || r.(*pb.Token).RevokedAtUnixNano != 42 {
		t.Fatalf("revoke: %v %v", r, err)
	}
	if r, err = h.apply(&pb.Command{Op: &pb.Command_RevokeToken{RevokeToken: &pb.RevokeToken{Accessor: read.Accessor, NowUnixNano: 50}}}); err != nil || r.(*pb.Token).RevokedAtUnixNano != 42 {
		t.Fatalf("second revoke: %v %v (must keep the first time)", r, err)
	}
	stored, _ = h.m.Token(read.Accessor)
	if err = acl.Check(stored, sec, 100); !errors.Is(err, acl.ErrRevokedToken) {
		t.Fatalf("revoked token checks: %v", err)
	}
	if _, err = h.apply(&pb.Command{Op: &pb.Command_RevokeToken{RevokeToken: &pb.RevokeToken{Accessor: "ffffffffffffffff"}}}); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("revoke unknown: %v", err)
	}
	if ts := h.m.Tokens(); len(ts) != 2 || len(ts[0].SecretSha256)+len(ts[1].SecretSha256) != 0 {
		t.Fatalf("Tokens() = %v: want 2 records without hashes", ts)
	}

	// The table survives a snapshot and the state database.
	snap, err := h.m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	restored := New()
	if err := restored.Restore(snap); err != nil {
		t.Fatal(err)
	}
	loaded := New()
	for _, c := range h.m.AllRecords() {
		if err := loaded.LoadRecord(c.Table, c.Key, c.Value); err != nil {
			t.Fatal(err)
		}
	}
	for name, m := range map[string]*Machine{"snapshot": restored, "database": loaded} {
		b, _ := m.Snapshot()
		if !bytes.Equal(b, snap) {
			t.Errorf("%s: state differs after the round trip", name)
		}
		tok, ok := m.Token(mgmt.Accessor)
		_, msec, _ := acl.ParseToken(mgmtSecret)
		if !ok || acl.Check(tok, msec, 1) != nil || !m.Bootstrapped() {
			t.Errorf("%s: management token lost", name)
		}
	}
}

func TestIdempotencyKeysAreScopedToTheOwner(t *testing.T) {
	h := newCmdHarness(t, 1000, 1024)
	submit := func(owner string) *pb.Task {
		return h.ok(&pb.Command{Op: &pb.Command_SubmitTask{SubmitTask: &pb.SubmitTask{
			Spec: &pb.TaskSpec{Command: "/bin/true"}, IdempotencyKey: "k", Owner: owner}}}).(*pb.Task)
	}
	a, b, a2 := submit("aaaaaaaaaaaaaaaa"), submit("bbbbbbbbbbbbbbbb"), submit("aaaaaaaaaaaaaaaa")
	if a.Id == b.Id {
		t.Fatal("another owner's key returned the first owner's task")
	}
	if a2.Id != a.Id || a.Owner != "aaaaaaaaaaaaaaaa" || b.Owner != "bbbbbbbbbbbbbbbb" {
		t.Fatalf("same owner's retry: %s vs %s; owners %q %q", a2.Id, a.Id, a.Owner, b.Owner)
	}
}
