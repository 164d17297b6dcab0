package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

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
BLIXARD_TOKEN. These commands need a management token.`,
		Args: noSubcommand,
		RunE: showHelp,
	}
	cmd.AddCommand(a.newTokenCreateCmd(), a.newTokenListCmd(), a.newTokenRevokeCmd(), a.newTokenPoliciesCmd())
	return cmd
}

// tokenJSON is the JSON form of a token record (never its secret, which
// only 'token create' and 'cluster bootstrap-token' print, as "token").
type tokenJSON struct {
	Token     string  `json:"token,omitempty"`
	Accessor  string  `json:"accessor"`
	Policy    string  `json:"policy"`
	Name      string  `json:"name"`
	CreatedAt *string `json:"created_at"`
	ExpiresAt *string `json:"expires_at"`
	RevokedAt *string `json:"revoked_at"`
	CreatedBy string  `json:"created_by"`
	State     string  `json:"state"`
}

func tokenState(t *blixardpb.Token, now time.Time) string {
	switch {
	case t.GetRevokedAtUnixNano() != 0:
		return "revoked"
	case t.GetExpiresAtUnixNano() != 0 && now.UnixNano() >= t.GetExpiresAtUnixNano():
		return "expired"
	}
	return "active"
}

func toTokenJSON(t *blixardpb.Token, secret string, now time.Time) tokenJSON {
	return tokenJSON{
		Token: secret, Accessor: t.GetAccessor(), Policy: t.GetPolicy(), Name: t.GetName(),
		CreatedAt: timeJSON(t.GetCreatedAtUnixNano()), ExpiresAt: timeJSON(t.GetExpiresAtUnixNano()),
		RevokedAt: timeJSON(t.GetRevokedAtUnixNano()), CreatedBy: t.GetCreatedBy(), State: tokenState(t, now),
	}
}

func orDash(p *string) string {
	if p == nil {
		return "-"
	}
	return *p
}

// printSecret shows a new token's secret, once.
func (a *app) printSecret(cmd *cobra.Command, resp *blixardpb.TokenResponse) error {
	now := a.now()
	if a.jsonOutput() {
		return writeJSON(cmd.OutOrStdout(), toTokenJSON(resp.GetToken(), resp.GetSecret(), now))
	}
	t := resp.GetToken()
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "token:    %s\n", resp.GetSecret())
	fmt.Fprintf(w, "accessor: %s\npolicy:   %s\n", t.GetAccessor(), t.GetPolicy())
	if t.GetName() != "" {
		fmt.Fprintf(w, "name:     %s\n", t.GetName())
	}
	fmt.Fprintf(w, "expires:  %s\n", orDash(timeJSON(t.GetExpiresAtUnixNano())))
	fmt.Fprintf(w, "\nThis is the only time the token is shown; the cluster keeps only its hash.\nUse it with: export %s=%s\n", envToken, resp.GetSecret())
	return nil
}

func checkPolicy(p string) error {
	if _, ok := acl.PolicyNamed(p); !ok {
		return usageError(fmt.Sprintf("--policy must be one of %s (got %q)", strings.Join(acl.PolicyNames(), ", "), p),
			"see 'blixard token policies' for what each allows")
	}
	return nil
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
				return usageError(fmt.Sprintf("--ttl must not be negative (got %s)", ttl), "leave it out for a token that never expires, or pass e.g. --ttl 720h")
			}
			if len(name) > 128 {
				return usageError(fmt.Sprintf("--name must be at most 128 bytes (got %d)", len(name)), "pass a shorter label")
			}
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.TokenResponse, error) {
				return c.CreateToken(ctx, &blixardpb.CreateTokenRequest{Policy: policy, Name: name, TtlMs: ttl.Milliseconds()})
			})
			if err != nil {
				return err
			}
			return a.printSecret(cmd, resp)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&policy, "policy", "", "the token's `POLICY`: "+strings.Join(acl.PolicyNames(), ", ")+" (required)")
	fs.StringVar(&name, "name", "", "a label for the token, shown by 'token list'")
	fs.DurationVar(&ttl, "ttl", 0, "how long the token is valid, e.g. 720h (default 0: never expires)")
	return cmd
}

func (a *app) newTokenListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every token (accessors, never secrets)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.ListTokensResponse, error) {
				return c.ListTokens(ctx, &blixardpb.ListTokensRequest{})
			})
			if err != nil {
				return err
			}
			now := a.now()
			out := make([]tokenJSON, 0, len(resp.GetTokens()))
			for _, t := range resp.GetTokens() {
				out = append(out, toTokenJSON(t, "", now))
			}
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ACCESSOR\tPOLICY\tNAME\tSTATE\tCREATED\tEXPIRES\tCREATED-BY")
			for _, t := range out {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Accessor, t.Policy, dashIfEmpty(t.Name), t.State, orDash(t.CreatedAt), orDash(t.ExpiresAt), dashIfEmpty(t.CreatedBy))
			}
			return flushTable(tw)
		},
	}
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) newTokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ACCESSOR",
		Short: "Revoke a token: every node refuses it from the next commit on",
		Args:  exactArgs("ACCESSOR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			acc := args[0]
			if !acl.ValidAccessor(acc) {
				return usageError(fmt.Sprintf("ACCESSOR must be 16 hex digits (got %q)", acc), "see 'blixard token list' (the token itself reads bxt_ACCESSOR_SECRET)")
			}
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.TokenResponse, error) {
				return c.RevokeToken(ctx, &blixardpb.RevokeTokenRequest{Accessor: acc})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), toTokenJSON(resp.GetToken(), "", a.now()))
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
				Allows       string   `json:"allows"`
			}
			var out []policyJSON
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
				fmt.Fprintf(tw, "%s\t%s\n", p.Name, p.Allows)
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
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.TokenResponse, error) {
				return c.BootstrapToken(ctx, &blixardpb.BootstrapTokenRequest{})
			})
			if err != nil {
				return err
			}
			return a.printSecret(cmd, resp)
		},
	}
}
