package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/acl"
)

func (a *app) newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke the cluster's access tokens",
		Long: `Create, list and revoke bearer tokens. A token carries one policy
(see 'blixard token policies'); clients present it with --token or
` + envToken + `. Creating, listing and revoking need a management token;
the cluster's first one comes from 'blixard cluster bootstrap-token'.`,
		Args: noSubcommand,
		RunE: showHelp,
	}
	cmd.AddCommand(a.newTokenCreateCmd(), a.newTokenListCmd(), a.newTokenRevokeCmd(), a.newTokenPoliciesCmd())
	return cmd
}

// tokenJSON is the JSON form of a token record in 'token list' and
// 'token revoke': the columns of the table. It never carries a secret.
type tokenJSON struct {
	Accessor  string  `json:"accessor"`
	Policy    string  `json:"policy"`
	Name      string  `json:"name"`
	CreatedAt *string `json:"created_at"`
	ExpiresAt *string `json:"expires_at"`
	State     string  `json:"state"`
	CreatedBy string  `json:"created_by"`
}

// newTokenJSON is what 'token create --output json' prints.
type newTokenJSON struct {
	Token     string  `json:"token"`
	Accessor  string  `json:"accessor"`
	Policy    string  `json:"policy"`
	Name      string  `json:"name"`
	ExpiresAt *string `json:"expires_at"`
}

// bootstrapTokenJSON is what 'cluster bootstrap-token --output json'
// prints.
type bootstrapTokenJSON struct {
	Token    string `json:"token"`
	Accessor string `json:"accessor"`
	Policy   string `json:"policy"`
}

// tokenState is a token's STATE column: revoked, expired or active.
func tokenState(t *blixardpb.Token, now time.Time) string {
	switch {
	case t.GetRevokedAtUnixNano() != 0:
		return "revoked"
	case t.GetExpiresAtUnixNano() != 0 && now.UnixNano() >= t.GetExpiresAtUnixNano():
		return "expired"
	}
	return "active"
}

func toTokenJSON(t *blixardpb.Token, now time.Time) tokenJSON {
	return tokenJSON{
		Accessor: t.GetAccessor(), Policy: t.GetPolicy(), Name: t.GetName(),
		CreatedAt: timeJSON(t.GetCreatedAtUnixNano()), ExpiresAt: timeJSON(t.GetExpiresAtUnixNano()),
		State: tokenState(t, now), CreatedBy: t.GetCreatedBy(),
	}
}

// tokenTime renders a Unix-nanosecond time for a table cell (RFC 3339,
// UTC), or zero if it is 0.
func tokenTime(unixNano int64, zero string) string {
	if unixNano == 0 {
		return zero
	}
	return formatTime(time.Unix(0, unixNano))
}

const secretWarning = "shown only once: store it now; the cluster keeps only its hash"

// checkPolicy refuses a policy name the cluster would refuse.
func checkPolicy(p string) error {
	if _, ok := acl.PolicyNamed(p); !ok {
		return usageError(fmt.Sprintf("--policy must be one of %s (got %q)", strings.Join(acl.PolicyNames(), ", "), p),
			"see 'blixard token policies' for what each allows")
	}
	return nil
}

// tokenCall is call for the token RPCs: it keeps the two refusals that
// are worth their own hint, the cluster bootstrapped already and a node
// run with --insecure (both FailedPrecondition), apart from the rest.
func tokenCall[T any](a *app, cmd *cobra.Command, rpc func(context.Context, rpcpb.ClusterClient) (T, error)) (T, error) {
	var rpcErr error
	resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (T, error) {
		r, err := rpc(ctx, c)
		rpcErr = err
		return r, err
	})
	if err == nil {
		return resp, nil
	}
	if st, ok := status.FromError(rpcErr); ok && st.Code() == codes.FailedPrecondition {
		switch msg := st.Message(); {
		case strings.Contains(msg, "bootstrapped already"):
			return resp, failure("the cluster was bootstrapped already: its first management token exists",
				"use that token ("+envToken+") and make more with 'blixard token create'; if it is lost, see docs/LIMITATIONS.md")
		case strings.Contains(msg, "--insecure"):
			return resp, failure(fmt.Sprintf("blixard at %s runs with --insecure and checks no token", a.addr),
				"tokens work on a TLS cluster: start the nodes with --tls-dir (see docs/SECURITY.md)")
		}
	}
	return resp, err
}

func (a *app) newTokenCreateCmd() *cobra.Command {
	var policy, name string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "create --policy POLICY [--name NAME] [--ttl DURATION]",
		Short: "Make a token and print it (the only time it is shown)",
		Example: `  blixard token create --policy submit --name ci --ttl 720h
  blixard token create --policy read --name grafana`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("policy") {
				return usageError("--policy is required", "pass one of "+strings.Join(acl.PolicyNames(), ", "))
			}
			if err := checkPolicy(policy); err != nil {
				return err
			}
			if ttl < 0 {
				return usageError(fmt.Sprintf("--ttl must not be negative (got %s)", ttl),
					"leave it out (or pass 0) for a token that never expires, or pass e.g. --ttl 720h")
			}
			if len(name) > 128 {
				return usageError(fmt.Sprintf("--name must be at most 128 bytes (got %d)", len(name)), "pass a shorter label")
			}
			resp, err := tokenCall(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.TokenResponse, error) {
				return c.CreateToken(ctx, &blixardpb.CreateTokenRequest{Policy: policy, Name: name, TtlMs: ttl.Milliseconds()})
			})
			if err != nil {
				return err
			}
			t := resp.GetToken()
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), newTokenJSON{
					Token: resp.GetSecret(), Accessor: t.GetAccessor(), Policy: t.GetPolicy(),
					Name: t.GetName(), ExpiresAt: timeJSON(t.GetExpiresAtUnixNano()),
				})
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "token:    %s\n", resp.GetSecret())
			fmt.Fprintf(w, "          (%s)\n", secretWarning)
			fmt.Fprintf(w, "accessor: %s\n", t.GetAccessor())
			fmt.Fprintf(w, "policy:   %s\n", t.GetPolicy())
			if t.GetName() != "" {
				fmt.Fprintf(w, "name:     %s\n", t.GetName())
			}
			fmt.Fprintf(w, "expires:  %s\n", tokenTime(t.GetExpiresAtUnixNano(), "never"))
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&policy, "policy", "", "the token's `POLICY`: "+strings.Join(acl.PolicyNames(), ", ")+" (required)")
	fs.StringVar(&name, "name", "", "a `NAME` (label) for the token, shown by 'token list'; at most 128 bytes")
	fs.DurationVar(&ttl, "ttl", 0, "how long the token is valid (`DURATION`, e.g. 720h); 0 never expires")
	return cmd
}

func (a *app) newTokenListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every token (accessors, never secrets)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := tokenCall(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.ListTokensResponse, error) {
				return c.ListTokens(ctx, &blixardpb.ListTokensRequest{})
			})
			if err != nil {
				return err
			}
			now := a.now()
			if a.jsonOutput() {
				out := make([]tokenJSON, 0, len(resp.GetTokens()))
				for _, t := range resp.GetTokens() {
					out = append(out, toTokenJSON(t, now))
				}
				return writeJSON(cmd.OutOrStdout(), out)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ACCESSOR\tPOLICY\tNAME\tCREATED\tEXPIRES\tSTATE\tCREATED-BY")
			for _, t := range resp.GetTokens() {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
					t.GetAccessor(), t.GetPolicy(), dash(t.GetName()),
					tokenTime(t.GetCreatedAtUnixNano(), "-"), tokenTime(t.GetExpiresAtUnixNano(), "never"),
					tokenState(t, now), dash(t.GetCreatedBy()))
			}
			return flushTable(tw)
		},
	}
}

func (a *app) newTokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ACCESSOR",
		Short:   "Revoke a token: every node refuses it from then on",
		Example: `  blixard token revoke 3f9c0d1e2a4b5c6d`,
		Args:    exactArgs("ACCESSOR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			acc := args[0]
			if !acl.ValidAccessor(acc) {
				return usageError(fmt.Sprintf("ACCESSOR must be 16 lowercase hex digits (got %q)", acc),
					"see 'blixard token list' (a token reads bxt_ACCESSOR_SECRET)")
			}
			resp, err := tokenCall(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.TokenResponse, error) {
				return c.RevokeToken(ctx, &blixardpb.RevokeTokenRequest{Accessor: acc})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), toTokenJSON(resp.GetToken(), a.now()))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked token %s\n", acc)
			return nil
		},
	}
}

func (a *app) newTokenPoliciesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "policies",
		Short: "List the built-in policies and what each allows",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			type policyJSON struct {
				Name         string   `json:"name"`
				Capabilities []string `json:"capabilities"`
				Doc          string   `json:"doc"`
			}
			out := []policyJSON{}
			for _, p := range acl.Policies() {
				caps := make([]string, 0, len(p.Caps))
				for _, c := range p.Caps {
					caps = append(caps, string(c))
				}
				out = append(out, policyJSON{p.Name, caps, p.Doc})
			}
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "POLICY\tALLOWS")
			for _, p := range out {
				fmt.Fprintf(tw, "%s\t%s\n", p.Name, p.Doc)
			}
			return flushTable(tw)
		},
	}
}

func (a *app) newClusterBootstrapTokenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "bootstrap-token",
		Short: "Make the cluster's first management token (once per cluster)",
		Long: `Make the cluster's first management token and print it. It works once
per cluster and needs a client certificate (--tls-dir) but no token;
later calls fail. Keep the token: it is the key to make all the others.`,
		Example: `  export ` + envToken + `=$(blixard cluster bootstrap-token --output json | jq -r .token)`,
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := tokenCall(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.TokenResponse, error) {
				return c.BootstrapToken(ctx, &blixardpb.BootstrapTokenRequest{})
			})
			if err != nil {
				return err
			}
			t := resp.GetToken()
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), bootstrapTokenJSON{Token: resp.GetSecret(), Accessor: t.GetAccessor(), Policy: t.GetPolicy()})
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "The cluster's management token (%s). Use it with:\n\n", secretWarning)
			fmt.Fprintf(w, "  export %s=%s\n\n", envToken, resp.GetSecret())
			fmt.Fprintf(w, "accessor: %s\n", t.GetAccessor())
			fmt.Fprintf(w, "policy:   %s\n", t.GetPolicy())
			fmt.Fprintf(w, "\nThen make narrower tokens for everyone else with 'blixard token create --policy POLICY'.\n")
			return nil
		},
	}
}
