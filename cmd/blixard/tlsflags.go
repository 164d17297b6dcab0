package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/blixard/blixard/internal/pki"
	"github.com/blixard/blixard/internal/server"
)

const (
	envTLSDir = "BLIXARD_TLS_DIR"
	envToken  = "BLIXARD_TOKEN"
)

// tlsOptions are the global certificate flags. A client finds ca.crt and
// its client certificate in --tls-dir; a node ca.crt and node-<id>.crt;
// --ca, --cert and --key name the files one by one instead.
type tlsOptions struct {
	dir, ca, cert, key string
	token              string
}

func (t *tlsOptions) addFlags(fs *pflag.FlagSet, lookupEnv func(string) (string, bool)) {
	dir, _ := lookupEnv(envTLSDir)
	tok, _ := lookupEnv(envToken)
	fs.StringVar(&t.dir, "tls-dir", dir, "`DIR` with the cluster's certificates (see 'blixard tls'): ca.crt and, for clients, client.crt or the one client-NAME.crt, for nodes node-ID.crt; env "+envTLSDir)
	fs.StringVar(&t.ca, "ca", "", "the cluster CA certificate `FILE` (instead of --tls-dir)")
	fs.StringVar(&t.cert, "cert", "", "this client's or node's certificate `FILE` (instead of --tls-dir)")
	fs.StringVar(&t.key, "key", "", "the private key `FILE` of --cert (instead of --tls-dir)")
	fs.StringVar(&t.token, "token", tok, "bearer `TOKEN` for the cluster's access policies; env "+envToken)
}

// files resolves the CA, certificate and key: node 0 is a client. set is
// false when no certificate flag was given.
func (t *tlsOptions) files(node uint64) (ca, cert, key string, set bool, err error) {
	one := t.ca != "" || t.cert != "" || t.key != ""
	switch {
	case one && t.dir != "":
		return "", "", "", false, usageError("--tls-dir and --ca/--cert/--key: give one, not both", "pass --tls-dir DIR, or all of --ca, --cert and --key")
	case one && (t.ca == "" || t.cert == "" || t.key == ""):
		return "", "", "", false, usageError("--ca, --cert and --key go together", "pass all three, or --tls-dir DIR")
	case one:
		return t.ca, t.cert, t.key, true, nil
	case t.dir == "":
		return "", "", "", false, nil
	}
	if node != 0 {
		ca, cert, key, err = pki.ResolveNodeFiles(t.dir, node)
	} else {
		ca, cert, key, err = pki.ResolveClientFiles(t.dir)
	}
	if err != nil {
		return "", "", "", false, usageError("--tls-dir: "+err.Error(), "make the certificates with 'blixard tls init' and 'blixard tls cert'")
	}
	return ca, cert, key, true, nil
}

// nodeSecurity fills cfg's security settings for 'blixard node' with
// --id id: mutual TLS from the certificate flags, or --insecure.
func (t *tlsOptions) nodeSecurity(cfg *server.Config, id uint64, insecureFlag bool, warn func(error)) error {
	ca, cert, key, set, err := t.files(id)
	if err != nil {
		return err
	}
	switch {
	case insecureFlag && set:
		return usageError("--insecure and TLS certificates: give one, not both", "drop --insecure to use the certificates")
	case insecureFlag:
		cfg.Insecure = true
		return nil
	case !set:
		return usageError("a node needs TLS certificates, or --insecure on a trusted network",
			fmt.Sprintf("make them with 'blixard tls init --dir D' and 'blixard tls cert --dir D --node %d', then pass --tls-dir D", id))
	}
	if t.token != "" {
		// A node authenticates with its certificate, never a token.
		t.token = ""
	}
	src, err := pki.NewSource(ca, cert, key, warn)
	if err != nil {
		return usageError("TLS: "+err.Error(), "check the files, or make new ones with 'blixard tls cert --node ID'")
	}
	if got := src.Identity(); got.Kind != pki.KindNode || got.NodeID != id {
		return usageError(fmt.Sprintf("TLS: %s is a certificate for %s, not for node %d (--id)", cert, got, id),
			fmt.Sprintf("make node %d's certificate with 'blixard tls cert --node %d'", id, id))
	}
	cfg.TLS = src
	cfg.Identify = server.IdentifyPKI
	return nil
}

// clientDialOptions are the credentials of the CLI's connections: mutual
// TLS and the token when given, plaintext otherwise.
func (t *tlsOptions) clientDialOptions() ([]grpc.DialOption, bool, error) {
	ca, cert, key, set, err := t.files(0)
	if err != nil {
		return nil, false, err
	}
	if !set {
		if t.token != "" {
			return nil, false, usageError("--token needs TLS: a token sent in plaintext can be read on the network", "pass --tls-dir DIR (or --ca, --cert and --key), or set "+envTLSDir)
		}
		return nil, false, nil
	}
	src, err := pki.NewSource(ca, cert, key, nil)
	if err != nil {
		return nil, false, usageError("TLS: "+err.Error(), "check the files, or make new ones with 'blixard tls cert --client NAME'")
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig()))}
	if t.token != "" {
		tok := strings.TrimSpace(t.token)
		opts = append(opts,
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, o ...grpc.CallOption) error {
				return inv(withToken(ctx, tok), method, req, reply, cc, o...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, s grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
				return s(withToken(ctx, tok), desc, cc, method, o...)
			}))
	}
	return opts, true, nil
}

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// defaultTaskUser is the user tasks run as when they name none: nobody
// when the node runs as root (a task must not get the node's powers), the
// node's own user otherwise.
func defaultTaskUser() string {
	if os.Geteuid() == 0 {
		return "nobody"
	}
	return ""
}

// isLoopbackHost reports whether host is a loopback name or address.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
