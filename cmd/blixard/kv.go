package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

func (a *app) newKVCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kv",
		Short: "Read and write the replicated key-value table",
		Long: `Read and write the small replicated key-value table used for cluster
metadata, tests and benchmarks.`,
		Args: noSubcommand,
		RunE: showHelp,
	}
	cmd.AddCommand(a.newKVPutCmd(), a.newKVGetCmd())
	return cmd
}

func checkKey(cmd *cobra.Command, key string) error {
	if key == "" {
		return usageError("KEY must not be empty", fmt.Sprintf("usage: %s KEY ...", cmd.CommandPath()))
	}
	return nil
}

func (a *app) newKVPutCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "put KEY VALUE",
		Short: "Set KEY to VALUE and print the raft index of the write",
		Args:  exactArgs("KEY", "VALUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, value := args[0], args[1]
			if err := checkKey(cmd, key); err != nil {
				return err
			}
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.PutResponse, error) {
				return c.Put(ctx, &blixardpb.PutRequest{Key: key, Value: []byte(value)})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), struct {
					Key   string `json:"key"`
					Index uint64 `json:"index"`
				}{key, resp.GetIndex()})
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetIndex())
			return nil
		},
	}
}

// kvJSON is the JSON form of 'kv get'.
type kvJSON struct {
	Key      string  `json:"key"`
	Value    *string `json:"value"`
	ModIndex uint64  `json:"mod_index"`
	Found    bool    `json:"found"`
}

func (a *app) newKVGetCmd() *cobra.Command {
	var serializable bool
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print the value of KEY",
		Long: `Print the value of KEY. Exits with status 1 if KEY is not set.

By default the read is linearizable (it goes through the leader's
ReadIndex). --serializable reads the answering node's local state instead:
faster and works without a leader, but may be stale.`,
		Args: exactArgs("KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := args[0]
			if err := checkKey(cmd, key); err != nil {
				return err
			}
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.GetResponse, error) {
				return c.Get(ctx, &blixardpb.GetRequest{Key: key, Serializable: serializable})
			})
			if err != nil {
				return err
			}
			notFound := failure(fmt.Sprintf("key %q not found", key), fmt.Sprintf("set it with 'blixard kv put %s VALUE'", key))
			if a.jsonOutput() {
				out := kvJSON{Key: key, Found: resp.GetFound()}
				if resp.GetFound() {
					v := string(resp.GetValue())
					out.Value = &v
					out.ModIndex = resp.GetModIndex()
				}
				if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
					return err
				}
				if !resp.GetFound() {
					return notFound
				}
				return nil
			}
			if !resp.GetFound() {
				return notFound
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(resp.GetValue()))
			return nil
		},
	}
	cmd.Flags().BoolVar(&serializable, "serializable", false, "read the answering node's local state; may be stale")
	return cmd
}
