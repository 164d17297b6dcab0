package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/internal/pki"
)

// maxTLSDays bounds --days; internal/pki enforces the same.
const maxTLSDays = 36500

func (a *app) newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Make the cluster CA and the certificates of nodes and clients",
		Long: `Make the cluster's private certificate authority and sign certificates
for nodes and clients with it. Run these commands on an admin machine that
keeps the CA key (ca.key); copy ca.crt and a node's node-<id>.crt and
node-<id>.key to that node, and ca.crt and a client's certificate and key
to that client.`,
		Args: noSubcommand,
		RunE: showHelp,
	}
	cmd.AddCommand(a.newTLSInitCmd(), a.newTLSCertCmd())
	return cmd
}

// checkTLSFlags validates the flags every tls command has.
func checkTLSFlags(dir string, days, defDays int) error {
	if strings.TrimSpace(dir) == "" {
		return usageError("--dir is required", "pass the TLS directory that holds (or is to hold) the CA, e.g. --dir ./tls")
	}
	if days < 0 || days > maxTLSDays {
		return usageError(fmt.Sprintf("--days must be between 1 and %d (got \"%d\")", maxTLSDays, days),
			fmt.Sprintf("leave --days out for the default of %d days", defDays))
	}
	return nil
}

// tlsFailure turns an error of internal/pki, which says what to do, into
// the one error line.
func tlsFailure(err error) error {
	return failure(err.Error(), "")
}

func (a *app) newTLSInitCmd() *cobra.Command {
	var dir string
	var days int
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Make a new cluster CA in DIR",
		Long: `Make a new cluster certificate authority: an ECDSA P-256 key pair,
DIR/ca.crt (the certificate every node and client trusts) and DIR/ca.key
(the key that signs certificates; keep it secret and off the nodes if you
can). DIR is created with mode 0700. An existing CA is never overwritten.`,
		Example: `  blixard tls init --dir ./tls
  blixard tls cert --dir ./tls --node 1 --host node1.example.com --host 10.0.0.1`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkTLSFlags(dir, days, 3650); err != nil {
				return err
			}
			if err := pki.InitCA(dir, days, a.now()); err != nil {
				return tlsFailure(err)
			}
			certPath, keyPath := filepath.Join(dir, pki.CACertFile), filepath.Join(dir, pki.CAKeyFile)
			ca, err := readCertFile(certPath)
			if err != nil {
				return tlsFailure(err)
			}
			next := fmt.Sprintf("blixard tls cert --dir %s --node 1", shellQuote(dir))
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), struct {
					Cert     string    `json:"cert"`
					Key      string    `json:"key"`
					NotAfter time.Time `json:"not_after"`
					Next     string    `json:"next"`
				}{certPath, keyPath, ca.NotAfter.UTC(), next})
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "wrote %s (the CA certificate, valid until %s: copy it to every node and client)\n", certPath, formatTime(ca.NotAfter))
			fmt.Fprintf(out, "wrote %s (the CA key: keep it secret, it signs certificates)\n", keyPath)
			fmt.Fprintf(out, "next: %s\n", next)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&dir, "dir", "", "TLS directory `DIR` to create the CA in (required)")
	fs.IntVar(&days, "days", 0, "validity of the CA in `DAYS` (default 3650)")
	expect(fs, "days", "a number of days")
	return cmd
}

// tlsCertOptions are the flags of 'tls cert'.
type tlsCertOptions struct {
	dir    string
	node   uint64
	client string
	hosts  []string
	days   int
}

func (a *app) newTLSCertCmd() *cobra.Command {
	o := &tlsCertOptions{}
	cmd := &cobra.Command{
		Use:   "cert --dir DIR (--node ID [--host HOST ...] | --client NAME)",
		Short: "Sign a node or client certificate with the CA in DIR",
		Long: `Sign a certificate with the CA in DIR and write it and its new key there,
replacing earlier ones (this is how certificates are renewed; running nodes
pick up replaced files by themselves).

--node ID makes DIR/node-<ID>.crt and .key, for serving and for dialing other
nodes. Its host names and addresses are those peers and clients dial the
node by (--host, repeatable; default: localhost, 127.0.0.1, ::1 and this
machine's host name). --client NAME makes DIR/client-<NAME>.crt and .key, for
the CLI and other clients. Certificates are valid for 90 days by default.`,
		Example: `  blixard tls cert --dir ./tls --node 1 --host node1.example.com --host 10.0.0.1
  blixard tls cert --dir ./tls --client alice`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runTLSCert(cmd, o)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&o.dir, "dir", "", "TLS directory `DIR` that holds the CA (required)")
	fs.Uint64Var(&o.node, "node", 0, "make a node certificate for raft node `ID`")
	fs.StringVar(&o.client, "client", "", "make a client certificate for `NAME` (letters, digits, '.', '_', '-')")
	fs.StringSliceVar(&o.hosts, "host", nil, "DNS name or IP address `HOST` the node is dialed by (repeatable; node certificates only)")
	fs.IntVar(&o.days, "days", 0, "validity in `DAYS` (default 90)")
	expect(fs, "node", "a positive integer")
	expect(fs, "days", "a number of days")
	return cmd
}

func (a *app) runTLSCert(cmd *cobra.Command, o *tlsCertOptions) error {
	if err := checkTLSFlags(o.dir, o.days, 90); err != nil {
		return err
	}
	isNode, isClient := cmd.Flags().Changed("node"), cmd.Flags().Changed("client")
	switch {
	case isNode && isClient:
		return usageError("--node and --client are mutually exclusive", "pass --node ID for a node certificate or --client NAME for a client certificate")
	case !isNode && !isClient:
		return usageError("one of --node or --client is required", "pass --node ID for a node certificate or --client NAME for a client certificate")
	case isNode && o.node == 0:
		return usageError(`--node must be a positive integer (got "0")`, "pass the node's raft ID, e.g. --node 1")
	case isClient && cmd.Flags().Changed("host"):
		return usageError("--host only applies to node certificates", "drop --host; client certificates name no hosts")
	case isClient && !validClientName(o.client):
		return usageError(fmt.Sprintf("--client must be 1 to 64 letters, digits, '.', '_' or '-' (got %q)", o.client), "pass e.g. --client alice")
	}
	for _, h := range o.hosts {
		if !validHost(h) {
			return usageError(fmt.Sprintf("--host must be a DNS name or an IP address, without a port (got %q)", h),
				"pass the names and addresses peers dial this node by, e.g. --host node1.example.com --host 10.0.0.1")
		}
	}

	var certPath, keyPath string
	var err error
	if isNode {
		certPath, keyPath, err = pki.IssueNode(o.dir, o.node, o.hosts, o.days, a.now())
	} else {
		certPath, keyPath, err = pki.IssueClient(o.dir, o.client, o.days, a.now())
	}
	if err != nil {
		return tlsFailure(err)
	}
	cert, err := readCertFile(certPath)
	if err != nil {
		return tlsFailure(err)
	}
	id, err := pki.IdentityOf(cert)
	if err != nil {
		return tlsFailure(err)
	}
	if a.jsonOutput() {
		return writeJSON(cmd.OutOrStdout(), struct {
			Cert     string    `json:"cert"`
			Key      string    `json:"key"`
			Identity string    `json:"identity"`
			NotAfter time.Time `json:"not_after"`
		}{certPath, keyPath, id.String(), cert.NotAfter.UTC()})
	}
	tw := newTable(cmd.OutOrStdout())
	fmt.Fprintf(tw, "cert:\t%s\n", certPath)
	fmt.Fprintf(tw, "key:\t%s\n", keyPath)
	fmt.Fprintf(tw, "identity:\t%s\n", id)
	fmt.Fprintf(tw, "not after:\t%s\n", formatTime(cert.NotAfter))
	if isNode {
		var sans []string
		sans = append(sans, cert.DNSNames...)
		for _, ip := range cert.IPAddresses {
			sans = append(sans, ip.String())
		}
		fmt.Fprintf(tw, "hosts:\t%s\n", strings.Join(sans, ", "))
	}
	return flushTable(tw)
}

// readCertFile parses the first certificate of a PEM file.
func readCertFile(p string) (*x509.Certificate, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New(p + " holds no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %s: %w", p, err)
	}
	return c, nil
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// validClientName mirrors internal/pki's rule for client names.
func validClientName(name string) bool {
	if len(name) < 1 || len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// validHost is a cheap check for an obviously wrong --host (empty, with a
// port or a scheme); internal/pki checks DNS names in full.
func validHost(h string) bool {
	if net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")) != nil {
		return true
	}
	return h != "" && !strings.ContainsAny(h, ":/ \t@")
}
