package state

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/acl"
	"github.com/blixard/blixard/internal/storage"
)

// Errors of the token commands.
var (
	ErrBootstrapped = errors.New("the cluster was bootstrapped already: its first management token exists; ask its holder for a token ('blixard token create')")
	ErrTokenExists  = errors.New("a token with this accessor exists")
	ErrUnknownToken = errors.New("no token has this accessor")
)

func (m *Machine) createToken(c *pb.CreateToken) (proto.Message, error) {
	t := c.GetToken()
	if err := acl.ValidateRecord(t); err != nil {
		return nil, fmt.Errorf("%w: create token: %v", ErrInvalidCommand, err)
	}
	if c.Bootstrap && len(m.tokens) > 0 {
		return nil, ErrBootstrapped
	}
	if _, ok := m.tokens[t.Accessor]; ok {
		return nil, fmt.Errorf("%w: %s", ErrTokenExists, t.Accessor)
	}
	nt := proto.Clone(t).(*pb.Token)
	nt.RevokedAtUnixNano = 0
	m.tokens[nt.Accessor] = nt
	m.touch(storage.TableTokens, nt.Accessor)
	return publicToken(nt), nil
}

func (m *Machine) revokeToken(c *pb.RevokeToken) (proto.Message, error) {
	t, ok := m.tokens[c.GetAccessor()]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownToken, c.GetAccessor())
	}
	if t.RevokedAtUnixNano == 0 {
		t.RevokedAtUnixNano = max(c.NowUnixNano, 1)
		m.touch(storage.TableTokens, t.Accessor)
	}
	return publicToken(t), nil
}

// publicToken is a copy of t without its hash, for API answers.
func publicToken(t *pb.Token) *pb.Token {
	c := proto.Clone(t).(*pb.Token)
	c.SecretSha256 = nil
	return c
}

// Token returns the token record with the accessor, hash included (for
// checking a presented secret).
func (m *Machine) Token(accessor string) (*pb.Token, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	t, ok := m.tokens[accessor]
	if !ok {
		return nil, false
	}
	return proto.Clone(t).(*pb.Token), true
}

// Tokens lists every token record, without hashes, by accessor.
func (m *Machine) Tokens() []*pb.Token {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*pb.Token, 0, len(m.tokens))
	for _, a := range sortedStrings(m.tokens) {
		out = append(out, publicToken(m.tokens[a]))
	}
	return out
}

// Bootstrapped reports whether the first management token was made.
func (m *Machine) Bootstrapped() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.tokens) > 0
}
