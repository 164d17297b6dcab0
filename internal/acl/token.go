package acl

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// A token reads "bxt_<accessor>_<secret>": the accessor (16 hex digits) is
// its public name, in logs, lists and the audit log; the secret (64 hex
// digits, 256 random bits) is shown once, when the token is made, and
// stored only as its SHA-256.
const (
	tokenPrefix    = "bxt_"
	accessorBytes  = 8
	secretBytes    = 32
	BootstrapActor = "bootstrap" // Token.created_by of the first management token
)

// Errors of token checks. Their text is safe to show the caller.
var (
	ErrMalformedToken = errors.New(`token is malformed: a Blixard token reads "bxt_<16 hex>_<64 hex>"; check BLIXARD_TOKEN or --token`)
	ErrUnknownToken   = errors.New("token is not known to this cluster (or was made by another cluster); ask an operator for a token: 'blixard token create'")
	ErrRevokedToken   = errors.New("token was revoked; ask an operator for a new one")
	ErrExpiredToken   = errors.New("token has expired; ask an operator for a new one")
)

// NewToken makes a token from rnd (crypto/rand.Reader in production): the
// string to give the user, and the record to replicate (accessor and hash
// set; the caller fills in the rest).
func NewToken(rnd io.Reader) (secret string, rec *pb.Token, err error) {
	var b [accessorBytes + secretBytes]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", nil, fmt.Errorf("make token: %w", err)
	}
	accessor := hex.EncodeToString(b[:accessorBytes])
	sec := hex.EncodeToString(b[accessorBytes:])
	sum := sha256.Sum256([]byte(sec))
	return tokenPrefix + accessor + "_" + sec, &pb.Token{Accessor: accessor, SecretSha256: sum[:]}, nil
}

// ParseToken splits a token into its accessor and secret.
func ParseToken(s string) (accessor, secret string, err error) {
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	if !ok {
		return "", "", ErrMalformedToken
	}
	accessor, secret, ok = strings.Cut(rest, "_")
	if !ok || !ValidAccessor(accessor) || len(secret) != 2*secretBytes || !isHex(secret) {
		return "", "", ErrMalformedToken
	}
	return accessor, secret, nil
}

// ValidAccessor reports whether s has the accessor's form.
func ValidAccessor(s string) bool { return len(s) == 2*accessorBytes && isHex(s) }

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Check verifies secret against rec (in constant time) and rec's validity
// at now (unix nanoseconds).
func Check(rec *pb.Token, secret string, now int64) error {
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], rec.GetSecretSha256()) != 1 {
		return ErrUnknownToken
	}
	switch {
	case rec.GetRevokedAtUnixNano() != 0:
		return ErrRevokedToken
	case rec.GetExpiresAtUnixNano() != 0 && now >= rec.GetExpiresAtUnixNano():
		return ErrExpiredToken
	}
	return nil
}

// ValidateRecord checks a token record before it is replicated or applied.
func ValidateRecord(rec *pb.Token) error {
	switch {
	case !ValidAccessor(rec.GetAccessor()):
		return fmt.Errorf("accessor: %q is not 16 hex digits", rec.GetAccessor())
	case len(rec.GetSecretSha256()) != sha256.Size:
		return fmt.Errorf("secret_sha256: %d bytes, want %d", len(rec.GetSecretSha256()), sha256.Size)
	case len(rec.GetName()) > 128:
		return fmt.Errorf("name: at most 128 bytes (got %d)", len(rec.GetName()))
	case rec.GetExpiresAtUnixNano() < 0:
		return errors.New("expires_at: must not be negative")
	}
	if _, ok := PolicyNamed(rec.GetPolicy()); !ok {
		return fmt.Errorf("policy: %q is not a policy; use one of %s", rec.GetPolicy(), strings.Join(PolicyNames(), ", "))
	}
	return nil
}
