// Package acl says who may do what: the built-in policies and the
// capabilities they grant, the capability every gRPC method and HTTP path
// needs, the principal a request runs as, and the bearer-token format.
//
// It is pure (no I/O, no clock): the state machine uses it to validate
// token records, the server's interceptor and HTTP middleware to decide.
package acl

import (
	"context"
	"slices"
	"sort"
	"strconv"
)

// Capability is one thing a principal may do.
type Capability string

const (
	// CapNode is peer traffic: raft messages, joining, worker heartbeats.
	// Only node certificates carry it (and the unauthenticated principal
	// of an --insecure node).
	CapNode Capability = "node"
	// CapReadOwn reads the tasks and VMs the principal's token created,
	// their logs included.
	CapReadOwn Capability = "read-own"
	// CapRead reads everything: cluster, workers, kv, every task and VM
	// and their logs.
	CapRead Capability = "read"
	// CapSubmit submits tasks and creates VMs, and cancels, stops,
	// restarts and deletes its own.
	CapSubmit Capability = "submit"
	// CapOperate changes the cluster: members, leadership, worker cordon
	// and drain, kv writes, and any task or VM.
	CapOperate Capability = "operate"
	// CapRunAs lets a task choose the user it runs as.
	CapRunAs Capability = "run-as"
	// CapManage creates, lists and revokes tokens.
	CapManage Capability = "manage"
	// CapBootstrap is the one method callable without a token: it makes
	// the first management token, once per cluster.
	CapBootstrap Capability = "bootstrap"
)

// The built-in policies' names, as stored in token records.
const (
	PolicyManagement = "management"
	PolicyOperator   = "operator"
	PolicySubmit     = "submit"
	PolicyRead       = "read"
)

// Policy is a named set of capabilities.
type Policy struct {
	Name string
	Caps []Capability
	Doc  string
}

var policies = []Policy{
	{PolicyManagement, []Capability{CapReadOwn, CapRead, CapSubmit, CapOperate, CapRunAs, CapManage}, "everything, tokens included"},
	{PolicyOperator, []Capability{CapReadOwn, CapRead, CapSubmit, CapOperate, CapRunAs}, "the cluster, workers (cordon, drain), every task and VM, kv; not tokens"},
	{PolicySubmit, []Capability{CapReadOwn, CapSubmit}, "submit tasks and create VMs; read, cancel, stop and delete its own"},
	{PolicyRead, []Capability{CapReadOwn, CapRead}, "every read, logs included; no change"},
}

// Policies returns the built-in policies, management first.
func Policies() []Policy {
	out := make([]Policy, len(policies))
	copy(out, policies)
	return out
}

// PolicyNamed returns the policy called name.
func PolicyNamed(name string) (Policy, bool) {
	for _, p := range policies {
		if p.Name == name {
			return p, true
		}
	}
	return Policy{}, false
}

// PolicyNames lists the policies' names, for error messages.
func PolicyNames() []string {
	out := make([]string, 0, len(policies))
	for _, p := range policies {
		out = append(out, p.Name)
	}
	return out
}

// Principal kinds.
const (
	KindAnonymous = "anonymous" // an --insecure node: no authentication at all
	KindNode      = "node"      // a peer with a node certificate
	KindToken     = "token"     // a client with a bearer token
	KindNone      = "none"      // authenticated by certificate only (bootstrap)
)

// Principal is who a request runs as.
type Principal struct {
	Kind     string
	NodeID   uint64 // KindNode; for other kinds the node the certificate names, if any
	Client   string // the client certificate's name, if any
	Accessor string // KindToken
	Policy   string // KindToken
	caps     []Capability
}

// Anonymous is the principal of every request on an --insecure node: it
// may do everything.
func Anonymous() Principal {
	return Principal{Kind: KindAnonymous, caps: []Capability{CapNode, CapReadOwn, CapRead, CapSubmit, CapOperate, CapRunAs, CapManage, CapBootstrap}}
}

// Node is a peer speaking with its node certificate: raft, joins,
// heartbeats, and the reads a node makes of its peers (whether it was
// removed). Calls a node forwards for a client carry the client's token
// and run as that token.
func Node(id uint64) Principal {
	return Principal{Kind: KindNode, NodeID: id, caps: []Capability{CapNode, CapReadOwn, CapRead, CapBootstrap}}
}

// CertOnly is a client that presented a valid certificate and no token:
// it may only bootstrap.
func CertOnly(client string) Principal {
	return Principal{Kind: KindNone, Client: client, caps: []Capability{CapBootstrap}}
}

// ForToken is the principal of a valid token; policy must be a built-in
// policy name (an unknown one grants nothing).
func ForToken(accessor, policy, client string) Principal {
	p := Principal{Kind: KindToken, Accessor: accessor, Policy: policy, Client: client}
	if pol, ok := PolicyNamed(policy); ok {
		p.caps = append([]Capability{CapBootstrap}, pol.Caps...)
	}
	return p
}

// Has reports whether p holds c.
func (p Principal) Has(c Capability) bool { return slices.Contains(p.caps, c) }

// Owner is what records created by p are owned by: the token's accessor,
// or "" (nodes and the anonymous principal own nothing).
func (p Principal) Owner() string {
	if p.Kind == KindToken {
		return p.Accessor
	}
	return ""
}

// CanRead reports whether p may read a task or VM owned by owner.
func (p Principal) CanRead(owner string) bool {
	return p.Has(CapRead) || (p.Has(CapReadOwn) && p.Kind == KindToken && owner == p.Accessor)
}

// CanChange reports whether p may cancel, stop or delete a task or VM
// owned by owner.
func (p Principal) CanChange(owner string) bool {
	return p.Has(CapOperate) || (p.Has(CapSubmit) && p.Kind == KindToken && owner == p.Accessor)
}

// String names p for logs and errors: "token 1a2b… (submit)", "node 3".
func (p Principal) String() string {
	switch p.Kind {
	case KindNode:
		return "node " + strconv.FormatUint(p.NodeID, 10)
	case KindToken:
		return "token " + p.Accessor + " (" + p.Policy + ")"
	case KindNone:
		if p.Client != "" {
			return "client " + p.Client + " without a token"
		}
		return "a caller without a token"
	default:
		return "anonymous (insecure node)"
	}
}

type principalKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal of ctx. A context without one (a call
// made inside the node, not through the API) is the node itself and may
// do everything.
func FromContext(ctx context.Context) Principal {
	if p, ok := ctx.Value(principalKey{}).(Principal); ok {
		return p
	}
	return Anonymous()
}

// Rule is what a gRPC method needs.
type Rule struct {
	Cap Capability
	// Mutating methods are written to the audit log.
	Mutating bool
}

const (
	raftSvc    = "/blixard.rpc.v1.Raft/"
	clusterSvc = "/blixard.rpc.v1.Cluster/"
)

// methods is the table of every gRPC method. A method missing here is
// refused (and a test walks the service descriptors against it).
var methods = map[string]Rule{
	raftSvc + "Send":         {Cap: CapNode},
	raftSvc + "SendSnapshot": {Cap: CapNode},

	clusterSvc + "Status":         {Cap: CapRead},
	clusterSvc + "Join":           {Cap: CapNode, Mutating: true},
	clusterSvc + "RemoveMember":   {Cap: CapOperate, Mutating: true},
	clusterSvc + "TransferLeader": {Cap: CapOperate, Mutating: true},
	clusterSvc + "ListWorkers":    {Cap: CapRead},
	clusterSvc + "CordonWorker":   {Cap: CapOperate, Mutating: true},
	clusterSvc + "Heartbeat":      {Cap: CapNode},
	clusterSvc + "Put":            {Cap: CapOperate, Mutating: true},
	clusterSvc + "Get":            {Cap: CapRead},

	clusterSvc + "SubmitTask": {Cap: CapSubmit, Mutating: true},
	clusterSvc + "GetTask":    {Cap: CapReadOwn},
	clusterSvc + "ListTasks":  {Cap: CapReadOwn},
	clusterSvc + "CancelTask": {Cap: CapSubmit, Mutating: true},
	clusterSvc + "WaitTask":   {Cap: CapReadOwn},
	clusterSvc + "TaskLogs":   {Cap: CapReadOwn},

	clusterSvc + "CreateVM":     {Cap: CapSubmit, Mutating: true},
	clusterSvc + "GetVM":        {Cap: CapReadOwn},
	clusterSvc + "ListVMs":      {Cap: CapReadOwn},
	clusterSvc + "SetVMDesired": {Cap: CapSubmit, Mutating: true},
	clusterSvc + "WaitVM":       {Cap: CapReadOwn},
	clusterSvc + "VMLogs":       {Cap: CapReadOwn},

	clusterSvc + "BootstrapToken": {Cap: CapBootstrap, Mutating: true},
	clusterSvc + "CreateToken":    {Cap: CapManage, Mutating: true},
	clusterSvc + "ListTokens":     {Cap: CapManage},
	clusterSvc + "RevokeToken":    {Cap: CapManage, Mutating: true},
}

// RuleFor returns the rule of a full gRPC method name
// ("/blixard.rpc.v1.Cluster/Status").
func RuleFor(fullMethod string) (Rule, bool) {
	r, ok := methods[fullMethod]
	return r, ok
}

// Methods lists every method in the table, sorted (tests, docs).
func Methods() []string {
	out := make([]string, 0, len(methods))
	for m := range methods {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// HTTPOpen reports whether an HTTP path is served without a token: the
// health checks (load balancers and orchestrators probe them) and the
// dashboard's login page. Everything else needs CapRead.
func HTTPOpen(path string) bool {
	switch path {
	case "/healthz", "/readyz", "/login":
		return true
	}
	return false
}
