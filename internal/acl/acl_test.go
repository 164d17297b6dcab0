package acl

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	pb "github.com/blixard/blixard/api/blixardpb"
)

func TestTokenRoundTripAndChecks(t *testing.T) {
	secret, rec, err := NewToken(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	acc, sec, err := ParseToken(secret)
	if err != nil || acc != rec.Accessor {
		t.Fatalf("parse %q: %q %v", secret, acc, err)
	}
	rec.Policy = PolicyRead
	if err := ValidateRecord(rec); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rec.String(), sec) {
		t.Fatal("the record holds the secret")
	}
	for _, c := range []struct {
		name string
		mut  func(*pb.Token)
		sec  string
		want error
	}{
		{"valid", func(*pb.Token) {}, sec, nil},
		{"wrong secret", func(*pb.Token) {}, strings.Repeat("0", 64), ErrUnknownToken},
		{"revoked", func(r *pb.Token) { r.RevokedAtUnixNano = 5 }, sec, ErrRevokedToken},
		{"expired", func(r *pb.Token) { r.ExpiresAtUnixNano = 10 }, sec, ErrExpiredToken},
		{"not yet expired", func(r *pb.Token) { r.ExpiresAtUnixNano = 11 }, sec, nil},
	} {
		r := &pb.Token{Accessor: rec.Accessor, SecretSha256: bytes.Clone(rec.SecretSha256), Policy: rec.Policy}
		c.mut(r)
		if err := Check(r, c.sec, 10); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	for _, bad := range []string{"", "bxt_", "bxt_" + rec.Accessor, "xyz_" + rec.Accessor + "_" + sec, "bxt_" + rec.Accessor + "_" + sec[:63], "bxt_" + strings.ToUpper(rec.Accessor) + "_" + sec, "bxt_" + rec.Accessor + "_" + sec + "0"} {
		if _, _, err := ParseToken(bad); !errors.Is(err, ErrMalformedToken) {
			t.Errorf("ParseToken(%q) = %v", bad, err)
		}
	}
}

func TestPoliciesGrantWhatTheyName(t *testing.T) {
	cases := map[string]struct{ has, lacks []Capability }{
		PolicyManagement: {[]Capability{CapManage, CapOperate, CapRunAs, CapRead}, []Capability{CapNode}},
		PolicyOperator:   {[]Capability{CapOperate, CapRunAs, CapRead, CapSubmit}, []Capability{CapManage, CapNode}},
		PolicySubmit:     {[]Capability{CapSubmit, CapReadOwn}, []Capability{CapRead, CapOperate, CapRunAs, CapManage, CapNode}},
		PolicyRead:       {[]Capability{CapRead, CapReadOwn}, []Capability{CapSubmit, CapOperate, CapManage, CapNode}},
	}
	for policy, c := range cases {
		p := ForToken("0123456789abcdef", policy, "")
		for _, cp := range c.has {
			if !p.Has(cp) {
				t.Errorf("%s lacks %s", policy, cp)
			}
		}
		for _, cp := range c.lacks {
			if p.Has(cp) {
				t.Errorf("%s has %s", policy, cp)
			}
		}
	}
	if ForToken("0123456789abcdef", "root", "").Has(CapRead) {
		t.Error("an unknown policy grants something")
	}
	sub := ForToken("aaaaaaaaaaaaaaaa", PolicySubmit, "")
	if !sub.CanRead("aaaaaaaaaaaaaaaa") || sub.CanRead("bbbbbbbbbbbbbbbb") || sub.CanRead("") || !sub.CanChange("aaaaaaaaaaaaaaaa") || sub.CanChange("") {
		t.Error("a submit token's ownership rules are wrong")
	}
	if Node(3).Has(CapSubmit) || !Node(3).Has(CapNode) || CertOnly("x").Has(CapRead) || !Anonymous().Has(CapManage) {
		t.Error("node, certificate-only or anonymous principals are wrong")
	}
}
