package observe

import (
	"context"
	"fmt"
)

// MaxApplyLag is how far a node's applied index may trail the commit
// index it knows while it still counts as ready.
const MaxApplyLag = 100

// Readiness is the answer of /readyz.
type Readiness struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason"` // one line; "ok" when ready
	RaftStatus
}

// CheckReady says whether the node can serve: it is a member, knows a
// leader, and has applied within MaxApplyLag of the commit index, so a
// linearizable read waits for at most that many entries.
func CheckReady(ctx context.Context, src Source) Readiness {
	st, err := src.Raft(ctx)
	r := Readiness{RaftStatus: st}
	switch {
	case err != nil:
		r.Reason = fmt.Sprintf("raft is not answering: %v", err)
	case src.Removed():
		r.Reason = "this node was removed from the cluster"
	case st.Leader == 0:
		r.Reason = fmt.Sprintf("no leader known at term %d (election in progress, or a quorum of voters is unreachable)", st.Term)
	case st.Commit > st.Applied+MaxApplyLag:
		r.Reason = fmt.Sprintf("catching up: applied index %d is %d entries behind commit index %d (at most %d allowed)", st.Applied, st.Commit-st.Applied, st.Commit, MaxApplyLag)
	default:
		r.Ready, r.Reason = true, "ok"
	}
	return r
}
