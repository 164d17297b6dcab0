package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
)

func (a *app) newClusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect and change cluster membership",
		Args:  noSubcommand,
		RunE:  showHelp,
	}
	cmd.AddCommand(a.newClusterStatusCmd(), a.newClusterRemoveCmd(), a.newClusterTransferCmd(), a.newClusterBootstrapTokenCmd())
	return cmd
}

// statusJSON is the JSON form of 'cluster status'.
type statusJSON struct {
	NodeID       uint64       `json:"node_id"`
	Leader       uint64       `json:"leader"`
	Term         uint64       `json:"term"`
	CommitIndex  uint64       `json:"commit_index"`
	AppliedIndex uint64       `json:"applied_index"`
	Members      []memberJSON `json:"members"`
}

type memberJSON struct {
	ID           uint64 `json:"id"`
	Addr         string `json:"addr"`
	Role         string `json:"role"`
	State        string `json:"state"`
	AppliedIndex uint64 `json:"applied_index"`
}

func roleName(r blixardpb.MemberRole) string {
	switch r {
	case blixardpb.MemberRole_MEMBER_ROLE_VOTER:
		return "voter"
	case blixardpb.MemberRole_MEMBER_ROLE_LEARNER:
		return "learner"
	}
	return "unknown"
}

func (a *app) newClusterStatusCmd() *cobra.Command {
	var local bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the leader, term and members of the cluster",
		Long: `Show the leader, term, commit index and members of the cluster.

By default the answer is the leader's view, which knows each member's
replication state. With --local the node at --addr answers from its own
view; member states are then "unknown" unless it is the leader.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.StatusResponse, error) {
				return c.Status(ctx, &blixardpb.StatusRequest{Local: local})
			})
			if err != nil {
				return err
			}
			return a.printStatus(cmd, resp)
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "ask the node at --addr for its own view instead of the leader's")
	return cmd
}

func (a *app) printStatus(cmd *cobra.Command, resp *blixardpb.StatusResponse) error {
	members := slices.Clone(resp.GetMembers())
	slices.SortFunc(members, func(x, y *blixardpb.MemberStatus) int {
		switch {
		case x.GetId() < y.GetId():
			return -1
		case x.GetId() > y.GetId():
			return 1
		}
		return 0
	})
	out := cmd.OutOrStdout()
	if a.jsonOutput() {
		s := statusJSON{
			NodeID:       resp.GetNodeId(),
			Leader:       resp.GetLeader(),
			Term:         resp.GetTerm(),
			CommitIndex:  resp.GetCommitIndex(),
			AppliedIndex: resp.GetAppliedIndex(),
			Members:      []memberJSON{},
		}
		for _, m := range members {
			s.Members = append(s.Members, memberJSON{
				ID:           m.GetId(),
				Addr:         m.GetAddr(),
				Role:         roleName(m.GetRole()),
				State:        m.GetState(),
				AppliedIndex: m.GetAppliedIndex(),
			})
		}
		return writeJSON(out, s)
	}
	tw := newTable(out)
	fmt.Fprintln(tw, "LEADER\tID\tADDR\tROLE\tSTATE\tAPPLIED")
	for _, m := range members {
		mark := ""
		if m.GetId() != 0 && m.GetId() == resp.GetLeader() {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\n",
			mark, m.GetId(), dash(m.GetAddr()), roleName(m.GetRole()), dash(m.GetState()), m.GetAppliedIndex())
	}
	return flushTable(tw)
}

// parseMemberID parses a member ID argument.
func parseMemberID(cmd *cobra.Command, s string) (uint64, error) {
	return parseID(cmd, s, "list members with 'blixard cluster status'")
}

// parseID parses a node ID argument (members and workers share IDs); hint
// says where to find one.
func parseID(cmd *cobra.Command, s, hint string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, usageError(fmt.Sprintf("ID must be a positive integer (got %q)", s),
			fmt.Sprintf("usage: %s ID; %s", cmd.CommandPath(), hint))
	}
	return id, nil
}

func (a *app) newClusterRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a member from the cluster",
		Long: `Remove a member from the cluster for good. Its ID cannot be reused. The
removed node stops taking part in raft; stop its process and delete its data dir.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseMemberID(cmd, args[0])
			if err != nil {
				return err
			}
			if _, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.RemoveMemberResponse, error) {
				return c.RemoveMember(ctx, &blixardpb.RemoveMemberRequest{Id: id})
			}); err != nil {
				return err
			}
			if a.jsonOutput() {
				return writeJSON(cmd.OutOrStdout(), map[string]uint64{"removed": id})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed member %d\n", id)
			return nil
		},
	}
}

func (a *app) newClusterTransferCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "transfer-leader ID",
		Short: "Hand raft leadership to another voter",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseMemberID(cmd, args[0])
			if err != nil {
				return err
			}
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.TransferLeaderResponse, error) {
				return c.TransferLeader(ctx, &blixardpb.TransferLeaderRequest{Id: id})
			})
			if err != nil {
				return err
			}
			leader := resp.GetLeader()
			if a.jsonOutput() {
				// Always print the leader, even when it is not the one asked for.
				if err := writeJSON(cmd.OutOrStdout(), map[string]uint64{"leader": leader}); err != nil {
					return err
				}
			}
			if leader != id {
				return failure(fmt.Sprintf("leadership did not move to %d (leader is %d)", id, leader),
					fmt.Sprintf("check that member %d is a caught-up voter with 'blixard cluster status' and retry", id))
			}
			if !a.jsonOutput() {
				fmt.Fprintf(cmd.OutOrStdout(), "leader is now %d\n", leader)
			}
			return nil
		},
	}
}

// dash stands in for an empty table cell.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
