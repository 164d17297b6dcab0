package server

import (
	"crypto/tls"
	"log/slog"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Config is everything one Blixard node needs to run.
type Config struct {
	ID        uint64 // raft node ID, non-zero, unique for the life of the cluster
	DataDir   string // holds wal/, snap/ and state.db
	Listen    string // host:port serving peers and clients
	Advertise string // address peers and workers use to reach this node; defaults to Listen

	Bootstrap bool   // start a new single-member cluster
	Join      string // address of any member to join through

	Worker       bool // register this node as a worker
	CPUMillis    int64
	MemoryMiB    int64
	DiskMiB      int64
	Labels       map[string]string
	Capabilities []string
	CgroupRoot   string // task cgroups; default /sys/fs/cgroup (executor.Config.CgroupRoot)

	// MicroVMs (workers only).
	VMs          bool   // run VMs placed on this worker
	VMImageDir   string // default guest image (vmlinux, initrd.img); empty: <DataDir>/vm-image, built on first use
	VMAccel      string // "auto" (default), "kvm" or "tcg"
	VMStopOnExit bool   // kill this node's VMs when it stops (its data goes with it); normally they outlive it
	// VMReplaceAfter is how long the leader waits, after it sees a worker
	// down, before it releases the worker's VMs for placement elsewhere;
	// default 2×WorkerTTL (see CheckVMFencing).
	VMReplaceAfter time.Duration

	TickInterval      time.Duration // raft tick; default 50ms (election timeout 0.5–1 s with 10 ticks)
	ElectionTicks     int           // default 10
	HeartbeatTicks    int           // default 1
	SnapshotEvery     uint64        // applied entries between snapshots; default 10000
	SnapshotKeep      uint64        // entries kept behind a snapshot; default 5000
	CheckpointEvery   time.Duration // state DB checkpoint interval; default 100ms
	HeartbeatInterval time.Duration // worker heartbeat period; default 1s
	WorkerTTL         time.Duration // missed-heartbeat limit before down; default 5s
	UsageInterval     time.Duration // worker usage report period; default 10s
	TaskRetention     time.Duration // final tasks older than this are purged; default 24h

	// Observability (internal/observe). Traces go where the standard
	// OTEL_EXPORTER_OTLP_* environment says, if it says anything.
	HTTPAddr string // host:port serving /metrics, /healthz, /readyz and the dashboard; "" serves none
	// TraceExporter, when set (tests), receives every span as it ends and
	// the OTEL_* environment is ignored.
	TraceExporter sdktrace.SpanExporter

	// Security (docs/SECURITY.md).
	//
	// Insecure serves without TLS and checks no token: every caller may do
	// everything. Only for `blixard dev` (loopback) and trusted networks.
	Insecure bool
	// TLS is the cluster's certificates (internal/pki.Source): mutual TLS
	// on every gRPC connection, HTTPS on the HTTP endpoint. Required unless
	// Insecure.
	TLS TLSConfigs
	// Identify reads who a verified peer certificate speaks for
	// (internal/pki.PeerIdentity). Required with TLS.
	Identify Identify
	// TaskUser is the user tasks that name none run as ("": the node's
	// own user). The CLI defaults it to "nobody" when the node runs as root.
	TaskUser string
	// VMImageDirs are more directories a VM's kernel, initrd and disk may
	// be in, besides the guest image directory (see vmImageDir).
	VMImageDirs []string
	// AuditLog receives every mutating call as a JSON line: a path, "-"
	// for standard error; "" is <DataDir>/audit.log.
	AuditLog string
	// MaxWaits bounds the waits and log streams open on this node at once
	// (WaitTask, WaitVM, TaskLogs, VMLogs); 0: DefaultMaxWaits.
	MaxWaits int

	Logger *slog.Logger
}

// TLSConfigs makes the TLS configurations of a node; they may change
// between handshakes (certificates are reloaded without a restart).
type TLSConfigs interface {
	ServerConfig() *tls.Config     // gRPC: client certificates required
	HTTPServerConfig() *tls.Config // HTTP: client certificates optional (tokens)
	ClientConfig() *tls.Config     // calls to peers
}
