package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/blixard/blixard/internal/pki"
)

// openAudit opens the audit log (Config.AuditLog) and builds the call
// authorizer that writes to it.
func (s *Server) openAudit() error {
	w := os.Stderr
	switch p := s.cfg.AuditLog; p {
	case "-":
	default:
		if p == "" {
			p = filepath.Join(s.cfg.DataDir, "audit.log")
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("audit-log: %w (pick a writable --audit-log path)", err)
		}
		w, s.audit = f, f
	}
	s.authz = &authz{
		secure:   !s.cfg.Insecure,
		sm:       s.sm,
		clock:    s.clock,
		identify: s.cfg.Identify,
		audit:    slog.New(slog.NewJSONHandler(w, nil)).With("node_id", s.cfg.ID),
	}
	return nil
}

func (s *Server) closeAudit() {
	if s.audit != nil {
		if err := s.audit.Close(); err != nil {
			s.log.Warn("closing the audit log", "err", err)
		}
		s.audit = nil
	}
}

// IdentifyPKI reads the identity of a certificate made by internal/pki:
// a node ID, or a client name (the production Config.Identify).
func IdentifyPKI(cs tls.ConnectionState) (uint64, string, error) {
	id, err := pki.PeerIdentity(cs)
	if err != nil {
		return 0, "", err
	}
	if id.Kind == pki.KindNode {
		return id.NodeID, "", nil
	}
	return 0, id.Name, nil
}

// serverCredentials is mutual TLS on a secure node, plaintext otherwise.
func (s *Server) serverCredentials() grpc.ServerOption {
	if s.cfg.Insecure {
		return grpc.Creds(insecure.NewCredentials())
	}
	return grpc.Creds(credentials.NewTLS(s.cfg.TLS.ServerConfig()))
}

// transportCredentials are the credentials of every call to a peer.
func (s *Server) transportCredentials() grpc.DialOption {
	if s.cfg.Insecure {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(s.cfg.TLS.ClientConfig()))
}

// peerDialOptions are the connection pool's: credentials, and the
// caller's token passed on with calls made for a client.
func (s *Server) peerDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		s.transportCredentials(),
		CallLimits(),
		grpc.WithChainUnaryInterceptor(forwardTokenUnary()),
		grpc.WithChainStreamInterceptor(forwardTokenStream()),
	}
}

// raftSenderCheck is the transport's per-message sender check on a secure
// node (nil: none).
func (s *Server) raftSenderCheck() func(context.Context, uint64) error {
	if s.cfg.Insecure {
		return nil
	}
	return checkRaftSender
}
