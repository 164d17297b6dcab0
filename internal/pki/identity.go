package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Identity is who a certificate speaks for.
type Identity struct {
	Kind   string // "node" or "client"
	NodeID uint64 // Kind == "node"
	Name   string // Kind == "client"; "node-<id>" for nodes
}

// Identity kinds.
const (
	KindNode   = "node"
	KindClient = "client"
)

// String is "node 3" or "client alice".
func (i Identity) String() string {
	switch i.Kind {
	case KindNode:
		return "node " + strconv.FormatUint(i.NodeID, 10)
	case KindClient:
		return "client " + i.Name
	}
	return "unknown identity"
}

func nodeURI(id uint64) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: KindNode, Path: "/" + strconv.FormatUint(id, 10)}
}

func clientURI(name string) *url.URL {
	return &url.URL{Scheme: uriScheme, Host: KindClient, Path: "/" + name}
}

// IdentityOf reads the blixard:// URI SAN of cert; exactly one must be
// present and well formed.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("no certificate")
	}
	var found []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme {
			found = append(found, u)
		}
	}
	subject := fmt.Sprintf("certificate %q (serial %x)", cert.Subject.CommonName, cert.SerialNumber)
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("%s has no %s:// URI SAN; it was not issued by 'blixard tls cert'", subject, uriScheme)
	case 1:
	default:
		return Identity{}, fmt.Errorf("%s has %d %s:// URI SANs, want exactly one; issue it again with 'blixard tls cert'", subject, len(found), uriScheme)
	}
	u := found[0]
	bad := fmt.Errorf("%s has a malformed identity %q, want %s://node/<id> or %s://client/<name>", subject, u.String(), uriScheme, uriScheme)
	rest, ok := strings.CutPrefix(u.Path, "/")
	if !ok || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.Port() != "" {
		return Identity{}, bad
	}
	switch u.Host {
	case KindNode:
		id, err := strconv.ParseUint(rest, 10, 64)
		if err != nil || id == 0 || strconv.FormatUint(id, 10) != rest {
			return Identity{}, bad
		}
		return Identity{Kind: KindNode, NodeID: id, Name: "node-" + rest}, nil
	case KindClient:
		if checkClientName(rest) != nil {
			return Identity{}, bad
		}
		return Identity{Kind: KindClient, Name: rest}, nil
	}
	return Identity{}, bad
}

// PeerIdentity is the identity of the first peer certificate of cs. It
// does not verify anything itself: call it on connections made with a
// Source's configs, whose handshakes fail unless the peer's chain was
// verified against the CA. (On the dialing side cs.VerifiedChains is empty:
// ClientConfig verifies in VerifyConnection.)
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, errors.New("the peer presented no certificate")
	}
	return IdentityOf(cs.PeerCertificates[0])
}
