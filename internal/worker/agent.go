package worker

import (
	"context"
	"log/slog"
	"time"

	pb "github.com/blixard/blixard/api/blixardpb"
	"github.com/blixard/blixard/internal/clock"
)

// Cluster is what the agent needs from its node.
type Cluster interface {
	// Register proposes the worker's registration (idempotent).
	Register(ctx context.Context, w *pb.Worker) error
	// Heartbeat tells the leader this worker is alive.
	Heartbeat(ctx context.Context, id uint64) (*pb.HeartbeatResponse, error)
	// ReportUsage proposes a usage report.
	ReportUsage(ctx context.Context, st *pb.WorkerStatus) error
}

// AgentConfig configures an Agent.
type AgentConfig struct {
	Worker            *pb.Worker // id, addr, capacity, labels, capabilities
	Clock             clock.Clock
	HeartbeatInterval time.Duration
	UsageInterval     time.Duration
	Usage             func() *pb.WorkerStatus // sampled at UsageInterval; nil disables reports
	// Contact, if set, records every successful heartbeat (answered by
	// the leader, worker registered and not down) with its send time.
	Contact *Contact
	Logger  *slog.Logger
}

// Agent registers a worker and keeps it alive in the leader's eyes.
type Agent struct {
	cfg     AgentConfig
	cluster Cluster
}

// NewAgent returns an agent; Run drives it.
func NewAgent(cfg AgentConfig, c Cluster) *Agent {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = time.Second
	}
	if cfg.UsageInterval == 0 {
		cfg.UsageInterval = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Agent{cfg: cfg, cluster: c}
}

// AgentCall is a request the agent makes of its cluster. The numbers are
// not persisted.
type AgentCall int

// Agent calls.
const (
	CallNone      AgentCall = 0
	CallRegister  AgentCall = 1
	CallHeartbeat AgentCall = 2
	CallUsage     AgentCall = 3
)

// AgentCore decides which call the agent makes when: register first and
// whenever the leader says the worker is not registered, heartbeat once
// registered, report usage only while registered. It is deterministic and
// single-threaded (no clock, no I/O); Agent.Run and the simulation drive
// it, one call at a time.
type AgentCore struct {
	registered bool
}

// Start is the first call of a new process.
func (c *AgentCore) Start() AgentCall { return CallRegister }

// Beat is the call of a heartbeat tick.
func (c *AgentCore) Beat() AgentCall {
	if !c.registered {
		return CallRegister
	}
	return CallHeartbeat
}

// UsageTick is the call of a usage tick; reports need a registration.
func (c *AgentCore) UsageTick() AgentCall {
	if !c.registered {
		return CallNone
	}
	return CallUsage
}

// Done records a call's outcome (registered is the heartbeat response's
// answer) and returns the call to make at once, if any.
func (c *AgentCore) Done(call AgentCall, registered bool, err error) AgentCall {
	switch call {
	case CallRegister:
		c.registered = err == nil
	case CallHeartbeat:
		if err == nil && !registered {
			return CallRegister
		}
	}
	return CallNone
}

// Contacted says whether a heartbeat's answer counts as contact with the
// cluster for the VM lease: the leader knows the worker and does not have
// it down (a down worker's VMs may be released to others at any time).
func Contacted(resp *pb.HeartbeatResponse) bool {
	return resp.GetRegistered() && !resp.GetDown()
}

// Run registers the worker, then heartbeats and reports usage until ctx
// ends. Failures are logged and retried on the next beat: a worker never
// gives up on its cluster.
func (a *Agent) Run(ctx context.Context) {
	hb := a.cfg.Clock.NewTicker(a.cfg.HeartbeatInterval)
	defer hb.Stop()
	us := a.cfg.Clock.NewTicker(a.cfg.UsageInterval)
	defer us.Stop()
	var core AgentCore
	a.do(ctx, &core, core.Start())
	for {
		select {
		case <-ctx.Done():
			return
		case <-hb.C():
			a.do(ctx, &core, core.Beat())
		case <-us.C():
			if a.cfg.Usage != nil {
				a.do(ctx, &core, core.UsageTick())
			}
		}
	}
}

// do makes call and whatever the core asks for next.
func (a *Agent) do(ctx context.Context, core *AgentCore, call AgentCall) {
	for call != CallNone {
		var err error
		registered := false
		switch call {
		case CallRegister:
			err = a.register(ctx)
		case CallHeartbeat:
			var resp *pb.HeartbeatResponse
			sent := a.cfg.Clock.Now() // before sending: the contact is no later than this
			resp, err = a.call(ctx, func(c context.Context) (*pb.HeartbeatResponse, error) {
				return a.cluster.Heartbeat(c, a.cfg.Worker.GetId())
			})
			if err != nil {
				a.cfg.Logger.Debug("heartbeat failed", "err", err)
			}
			registered = resp.GetRegistered()
			if err == nil && Contacted(resp) && a.cfg.Contact != nil {
				a.cfg.Contact.Succeeded(sent)
			}
		case CallUsage:
			st := a.cfg.Usage()
			st.WorkerId = a.cfg.Worker.GetId()
			st.ReportedAtUnixNano = a.cfg.Clock.Now().UnixNano()
			if _, err = a.call(ctx, func(c context.Context) (*pb.HeartbeatResponse, error) {
				return nil, a.cluster.ReportUsage(c, st)
			}); err != nil {
				a.cfg.Logger.Debug("usage report failed", "err", err)
			}
		}
		call = core.Done(call, registered, err)
	}
}

func (a *Agent) register(ctx context.Context) error {
	_, err := a.call(ctx, func(c context.Context) (*pb.HeartbeatResponse, error) {
		return nil, a.cluster.Register(c, a.cfg.Worker)
	})
	if err != nil {
		a.cfg.Logger.Info("worker registration failed; will retry", "err", err)
		return err
	}
	a.cfg.Logger.Info("worker registered", "id", a.cfg.Worker.GetId())
	return nil
}

// call bounds one request by a few heartbeat periods so a dead leader
// cannot stall the agent.
func (a *Agent) call(ctx context.Context, f func(context.Context) (*pb.HeartbeatResponse, error)) (*pb.HeartbeatResponse, error) {
	c, cancel := context.WithTimeout(ctx, 3*a.cfg.HeartbeatInterval+time.Second)
	defer cancel()
	return f(c)
}
