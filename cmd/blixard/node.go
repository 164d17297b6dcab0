package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/blixard/blixard/internal/pki"
	"github.com/blixard/blixard/internal/server"
)

// Tuning defaults; they match the comments on server.Config.
const (
	defaultTick              = 50 * time.Millisecond
	defaultElectionTicks     = 10
	defaultHeartbeatTicks    = 1
	defaultSnapshotEvery     = 10000
	defaultSnapshotKeep      = 5000
	defaultCheckpointEvery   = 100 * time.Millisecond
	defaultHeartbeatInterval = time.Second
	defaultWorkerTTL         = 5 * time.Second
	defaultUsageInterval     = 10 * time.Second
	defaultTaskRetention     = 24 * time.Hour
)

// tuning is the raft and worker timing knobs.
type tuning struct {
	tick              time.Duration
	electionTicks     int
	heartbeatTicks    int
	snapshotEvery     uint64
	snapshotKeep      uint64
	checkpointEvery   time.Duration
	heartbeatInterval time.Duration
	workerTTL         time.Duration
	usageInterval     time.Duration
	taskRetention     time.Duration
	vmReplaceAfter    time.Duration // 0: 2×workerTTL
}

func defaultTuning() tuning {
	return tuning{
		tick:              defaultTick,
		electionTicks:     defaultElectionTicks,
		heartbeatTicks:    defaultHeartbeatTicks,
		snapshotEvery:     defaultSnapshotEvery,
		snapshotKeep:      defaultSnapshotKeep,
		checkpointEvery:   defaultCheckpointEvery,
		heartbeatInterval: defaultHeartbeatInterval,
		workerTTL:         defaultWorkerTTL,
		usageInterval:     defaultUsageInterval,
		taskRetention:     defaultTaskRetention,
	}
}

func (t *tuning) addFlags(fs *pflag.FlagSet) {
	d := defaultTuning()
	fs.DurationVar(&t.tick, "tick", d.tick, "raft tick interval")
	fs.IntVar(&t.electionTicks, "election-ticks", d.electionTicks, "ticks without a leader before a follower starts an election")
	fs.IntVar(&t.heartbeatTicks, "heartbeat-ticks", d.heartbeatTicks, "ticks between leader heartbeats to followers")
	fs.Uint64Var(&t.snapshotEvery, "snapshot-every", d.snapshotEvery, "applied entries between raft snapshots")
	fs.Uint64Var(&t.snapshotKeep, "snapshot-keep", d.snapshotKeep, "raft log entries kept behind a snapshot for slow followers")
	fs.DurationVar(&t.checkpointEvery, "checkpoint-every", d.checkpointEvery, "state database checkpoint interval")
	fs.DurationVar(&t.heartbeatInterval, "heartbeat-interval", d.heartbeatInterval, "worker heartbeat period")
	fs.DurationVar(&t.workerTTL, "worker-ttl", d.workerTTL, "time without heartbeats before a worker is marked down")
	fs.DurationVar(&t.usageInterval, "usage-interval", d.usageInterval, "worker usage report period")
	fs.DurationVar(&t.taskRetention, "task-retention", d.taskRetention, "how long finished tasks (and their idempotency keys) are kept before they are purged")
	fs.DurationVar(&t.vmReplaceAfter, "vm-replace-after", 0, "how long the leader waits after marking a worker down before it re-places the worker's VMs elsewhere (default 2×--worker-ttl)")
}

func (t *tuning) validate() error {
	positive := func(name string, d time.Duration, def time.Duration) error {
		if d <= 0 {
			return usageError(fmt.Sprintf("--%s must be a positive duration (got %q)", name, d.String()),
				fmt.Sprintf("pass e.g. --%s %s (the default)", name, def))
		}
		return nil
	}
	if err := positive("tick", t.tick, defaultTick); err != nil {
		return err
	}
	if t.heartbeatTicks < 1 {
		return usageError(fmt.Sprintf("--heartbeat-ticks must be at least 1 (got \"%d\")", t.heartbeatTicks),
			fmt.Sprintf("pass e.g. --heartbeat-ticks %d (the default)", defaultHeartbeatTicks))
	}
	if t.electionTicks <= t.heartbeatTicks {
		return usageError(fmt.Sprintf("--election-ticks must be greater than --heartbeat-ticks (got %d and %d)", t.electionTicks, t.heartbeatTicks),
			fmt.Sprintf("raise --election-ticks; the defaults are %d and %d", defaultElectionTicks, defaultHeartbeatTicks))
	}
	if t.snapshotEvery < 1 {
		return usageError(fmt.Sprintf("--snapshot-every must be at least 1 (got \"%d\")", t.snapshotEvery),
			fmt.Sprintf("pass e.g. --snapshot-every %d (the default)", defaultSnapshotEvery))
	}
	if err := positive("checkpoint-every", t.checkpointEvery, defaultCheckpointEvery); err != nil {
		return err
	}
	if err := positive("heartbeat-interval", t.heartbeatInterval, defaultHeartbeatInterval); err != nil {
		return err
	}
	if err := positive("worker-ttl", t.workerTTL, defaultWorkerTTL); err != nil {
		return err
	}
	if t.workerTTL <= t.heartbeatInterval {
		return usageError(fmt.Sprintf("--worker-ttl must be longer than --heartbeat-interval (got %s and %s)", t.workerTTL, t.heartbeatInterval),
			fmt.Sprintf("raise --worker-ttl; the defaults are %s and %s", defaultWorkerTTL, defaultHeartbeatInterval))
	}
	if err := positive("usage-interval", t.usageInterval, defaultUsageInterval); err != nil {
		return err
	}
	if t.vmReplaceAfter < 0 {
		return usageError(fmt.Sprintf("--vm-replace-after must not be negative (got %s)", t.vmReplaceAfter),
			"leave it out for the default, 2×--worker-ttl")
	}
	d := t.vmReplaceAfter
	if d == 0 {
		d = 2 * t.workerTTL
	}
	if err := server.CheckVMFencing(t.workerTTL, d, time.Duration(t.electionTicks)*t.tick); err != nil {
		return usageError(fmt.Sprintf("--%s", err.Error()), "leave --vm-replace-after out (2×--worker-ttl) or raise it; see docs/VMS.md, \"Self-fencing\"")
	}
	return positive("task-retention", t.taskRetention, defaultTaskRetention)
}

func (t *tuning) apply(cfg *server.Config) {
	cfg.TickInterval = t.tick
	cfg.ElectionTicks = t.electionTicks
	cfg.HeartbeatTicks = t.heartbeatTicks
	cfg.SnapshotEvery = t.snapshotEvery
	cfg.SnapshotKeep = t.snapshotKeep
	cfg.CheckpointEvery = t.checkpointEvery
	cfg.HeartbeatInterval = t.heartbeatInterval
	cfg.WorkerTTL = t.workerTTL
	cfg.VMReplaceAfter = t.vmReplaceAfter
	cfg.UsageInterval = t.usageInterval
	cfg.TaskRetention = t.taskRetention
}

// nodeOptions are the flags of 'blixard node'.
type nodeOptions struct {
	id           uint64
	dataDir      string
	listen       string
	advertise    string
	bootstrap    bool
	join         string
	worker       bool
	cpu          float64
	memory       int64
	disk         int64
	labels       []string
	capabilities []string
	vmImage      string
	vmAccel      string
	httpAddr     string
	insecure     bool
	taskUser     string
	vmImageDirs  []string
	auditLog     string
	tuning       tuning
	log          logOptions
}

func (a *app) newNodeCmd() *cobra.Command {
	o := &nodeOptions{}
	cmd := &cobra.Command{
		Use:   "node --id N --data-dir DIR --listen HOST:PORT (--bootstrap | --join HOST:PORT)",
		Short: "Run a blixard node (the daemon)",
		Long: `Run a blixard node in the foreground until SIGINT or SIGTERM.

The first node of a cluster starts with --bootstrap; every other node joins
through any running member with --join. A node restarted on a --data-dir
that already holds its data needs neither.

By default (--worker) the node also offers its resources to run work. --cpu and
--memory default to this machine's cores and memory.`,
		Example: `  # first node
  blixard node --id 1 --data-dir /var/lib/blixard --listen 10.0.0.1:7000 --bootstrap

  # another node
  blixard node --id 2 --data-dir /var/lib/blixard --listen 10.0.0.2:7000 --join 10.0.0.1:7000 \
      --cpu 3.5 --memory 8192 --labels zone=eu-1,disk=ssd --capabilities docker

  # restart after a stop: the data dir already holds the node
  blixard node --id 2 --data-dir /var/lib/blixard --listen 10.0.0.2:7000`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, notes, err := o.config(cmd.Flags(), a.deps, &a.tls)
			if err != nil {
				return err
			}
			return a.runNode(cmd, cfg, o.log, notes)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.Uint64Var(&o.id, "id", 0, "raft node ID: a positive integer `N`, unique for the life of the cluster (required)")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory `DIR` for this node's raft log, snapshots and state (required)")
	fs.StringVar(&o.listen, "listen", "", "`HOST:PORT` to serve peers and clients on (required)")
	fs.StringVar(&o.advertise, "advertise", "", "`HOST:PORT` other nodes use to reach this node (default: --listen)")
	fs.BoolVar(&o.bootstrap, "bootstrap", false, "start a new single-member cluster")
	fs.StringVar(&o.join, "join", "", "`HOST:PORT` of any running member to join the cluster through")
	fs.BoolVar(&o.worker, "worker", true, "also register this node as a worker that runs work (--worker=false for a consensus-only node)")
	fs.Float64Var(&o.cpu, "cpu", 0, "CPU `CORES` offered as a worker, fractions allowed, e.g. 0.5 (default: all cores of this machine)")
	fs.Int64Var(&o.memory, "memory", 0, "memory offered as a worker, in `MiB` (default: all memory of this machine)")
	fs.Int64Var(&o.disk, "disk", 0, "disk offered as a worker, in `MiB` (default 0: none advertised)")
	fs.StringArrayVar(&o.labels, "labels", nil, "worker labels `KEY=VALUE,...`, e.g. zone=eu-1,disk=ssd (repeatable)")
	fs.StringSliceVar(&o.capabilities, "capabilities", nil, "worker capabilities `NAME,...`, e.g. docker,gpu (repeatable)")
	fs.StringVar(&o.vmImage, "vm-image", "", "directory `DIR` with the default micro-VM guest image (vmlinux, initrd.img; see 'blixard image build') (default: <data-dir>/vm-image, built on first use)")
	fs.StringVar(&o.vmAccel, "vm-accel", "auto", "micro-VM accelerator: `auto` (KVM when the CPU really has it, else TCG), kvm or tcg")
	fs.StringVar(&o.httpAddr, "http-addr", "", httpAddrUsage)
	fs.BoolVar(&o.insecure, "insecure", false, "serve without TLS and check no token: anyone who reaches --listen may do anything (only for a trusted network; the default needs --tls-dir)")
	fs.StringVar(&o.taskUser, "task-user", defaultTaskUser(), "`USER` that tasks naming no --user run as (default nobody when the node runs as root; empty: the node's own user)")
	fs.StringArrayVar(&o.vmImageDirs, "vm-image-dir", nil, "another `DIR` that VM kernels, initrds and disks may come from, besides the guest image directory (repeatable)")
	fs.StringVar(&o.auditLog, "audit-log", "", "`FILE` that receives every mutating call as a JSON line, or - for standard error (default <data-dir>/audit.log)")
	o.tuning.addFlags(fs)
	o.log.addFlags(fs)
	expect(fs, "id", "a positive integer")
	expect(fs, "cpu", "a positive number of cores, e.g. 2 or 0.5")
	expect(fs, "memory", "a positive number of MiB")
	expect(fs, "disk", "a non-negative number of MiB")
	return cmd
}

// config validates the flags and builds the server configuration without
// starting or creating anything. notes are warnings to log once logging
// is set up.
func (o *nodeOptions) config(fs *pflag.FlagSet, d deps, tlsOpts *tlsOptions) (server.Config, []string, error) {
	var cfg server.Config
	var notes []string
	changed := func(name string) bool { return fs.Changed(name) }

	// Identity and addresses.
	if !changed("id") {
		return cfg, nil, usageError("--id is required", "pass this node's raft ID, a positive integer unique in the cluster, e.g. --id 1")
	}
	if o.id == 0 {
		return cfg, nil, usageError(`--id must be a positive integer (got "0")`, "pass a positive integer unique in the cluster, e.g. --id 1")
	}
	if strings.TrimSpace(o.dataDir) == "" {
		return cfg, nil, usageError("--data-dir is required", "pass the directory that holds this node's data, e.g. --data-dir /var/lib/blixard")
	}
	restart, err := holdsNode(o.dataDir)
	if err != nil {
		return cfg, nil, err
	}
	if !changed("listen") {
		return cfg, nil, usageError("--listen is required", "pass the HOST:PORT to serve on, e.g. --listen 10.0.0.1:7000")
	}
	if p := hostPortProblem(o.listen, false, false); p != "" {
		return cfg, nil, usageError(fmt.Sprintf("--listen %s (got %q)", p, o.listen), "pass the address to serve on, e.g. --listen 10.0.0.1:7000")
	}
	advertise := o.listen
	if changed("advertise") {
		if p := hostPortProblem(o.advertise, true, true); p != "" {
			return cfg, nil, usageError(fmt.Sprintf("--advertise %s (got %q)", p, o.advertise), "pass the address other nodes should dial, e.g. --advertise 10.0.0.1:7000")
		}
		advertise = o.advertise
	} else if host, _, _ := net.SplitHostPort(o.listen); isUnspecifiedHost(host) {
		return cfg, nil, usageError(fmt.Sprintf("--advertise is required when --listen has no specific host (got --listen %q)", o.listen),
			"pass the address other nodes should dial, e.g. --advertise 10.0.0.1:7000")
	}

	httpAddr, err := resolveHTTPAddr(fs, o.httpAddr, o.listen)
	if err != nil {
		return cfg, nil, err
	}

	// How the node enters a cluster.
	joining := changed("join")
	switch {
	case o.bootstrap && joining:
		return cfg, nil, usageError("--bootstrap and --join are mutually exclusive",
			"pass --bootstrap to start a new cluster, or --join HOST:PORT to join an existing one")
	case !o.bootstrap && !joining && !restart:
		return cfg, nil, usageError("one of --bootstrap or --join is required",
			"pass --bootstrap to start a new cluster, or --join HOST:PORT of a running member (neither is needed to restart a node whose --data-dir holds its data)")
	}
	if joining {
		if p := hostPortProblem(o.join, true, false); p != "" {
			return cfg, nil, usageError(fmt.Sprintf("--join %s (got %q)", p, o.join), "pass the address of a running member, e.g. --join 10.0.0.1:7000")
		}
		if o.join == advertise || o.join == o.listen {
			return cfg, nil, usageError(fmt.Sprintf("--join points at this node itself (%s)", o.join), "pass the address of another, running member")
		}
	}

	// Worker resources.
	if !o.worker {
		for _, name := range []string{"cpu", "memory", "disk", "labels", "capabilities", "vm-image", "vm-accel"} {
			if changed(name) {
				return cfg, nil, usageError(fmt.Sprintf("--%s only applies to workers", name), fmt.Sprintf("drop --worker=false, or drop --%s", name))
			}
		}
	}
	var cpuMillis int64
	if changed("cpu") {
		m := math.Round(o.cpu * 1000)
		if math.IsNaN(o.cpu) || math.IsInf(o.cpu, 0) || m < 1 || m > 1e12 {
			return cfg, nil, usageError(fmt.Sprintf("--cpu must be a positive number of cores, e.g. 2 or 0.5 (got %q)", fs.Lookup("cpu").Value.String()),
				"pass the cores to offer, or leave --cpu out to offer all of this machine's")
		}
		cpuMillis = int64(m)
	}
	if changed("memory") && o.memory <= 0 {
		return cfg, nil, usageError(fmt.Sprintf("--memory must be a positive number of MiB (got \"%d\")", o.memory),
			"pass the MiB to offer, e.g. --memory 4096, or leave --memory out to offer all of this machine's")
	}
	if o.disk < 0 {
		return cfg, nil, usageError(fmt.Sprintf("--disk must be a non-negative number of MiB (got \"%d\")", o.disk), "pass the MiB to offer, e.g. --disk 102400")
	}
	labels, err := parseLabels(o.labels)
	if err != nil {
		return cfg, nil, err
	}
	caps, err := parseCapabilities(o.capabilities)
	if err != nil {
		return cfg, nil, err
	}

	if err := validateVMFlags(o.vmImage, o.vmAccel, changed("vm-image")); err != nil {
		return cfg, nil, err
	}
	if err := o.tuning.validate(); err != nil {
		return cfg, nil, err
	}
	if err := o.log.validate(); err != nil {
		return cfg, nil, err
	}
	for _, dir := range o.vmImageDirs {
		if !filepath.IsAbs(dir) {
			return cfg, nil, usageError(fmt.Sprintf("--vm-image-dir must be an absolute path (got %q)", dir), "pass e.g. --vm-image-dir /var/lib/blixard/images")
		}
	}
	if o.taskUser == "root" || o.taskUser == "0" {
		notes = append(notes, "--task-user root: tasks that name no user run with root's powers on this worker")
	}

	// Machine defaults, only once everything else is known to be fine.
	memory := o.memory
	if o.worker {
		if cpuMillis == 0 {
			cpuMillis = int64(d.numCPU()) * 1000
		}
		if memory == 0 {
			mib, err := d.memTotalMiB()
			if err != nil {
				return cfg, nil, failure(fmt.Sprintf("cannot detect this machine's memory: %v", err), "pass --memory MiB")
			}
			memory = mib
		}
	}

	if restart && o.bootstrap {
		notes = append(notes, "--data-dir already holds a node; ignoring --bootstrap")
	}
	if restart && joining {
		notes = append(notes, "--data-dir already holds a node; ignoring --join")
	}

	cfg = server.Config{
		ID:           o.id,
		DataDir:      o.dataDir,
		Listen:       o.listen,
		Advertise:    advertise,
		Bootstrap:    o.bootstrap && !restart,
		Worker:       o.worker,
		CPUMillis:    cpuMillis,
		MemoryMiB:    memory,
		DiskMiB:      o.disk,
		Labels:       labels,
		Capabilities: caps,
		VMs:          o.worker,
		VMImageDir:   o.vmImage,
		VMAccel:      o.vmAccel,
		HTTPAddr:     httpAddr,
	}
	if joining && !restart {
		cfg.Join = o.join
	}
	cfg.TaskUser, cfg.VMImageDirs, cfg.AuditLog = o.taskUser, o.vmImageDirs, o.auditLog
	warn := func(err error) {
		fmt.Fprintf(d.stderr, "warning: reloading the TLS certificates: %v (the previous ones stay in use)\n", err)
	}
	if err := tlsOpts.nodeSecurity(&cfg, o.id, o.insecure, warn); err != nil {
		return cfg, nil, err
	}
	if cfg.Insecure {
		notes = append(notes, "--insecure: no TLS and no token checks; anyone who reaches "+o.listen+" may run commands on the workers")
	}
	o.tuning.apply(&cfg)
	return cfg, notes, nil
}

// validateVMFlags checks --vm-image (a directory holding a guest image)
// and --vm-accel.
func validateVMFlags(image, accel string, imageSet bool) error {
	switch accel {
	case "auto", "kvm", "tcg":
	default:
		return usageError(fmt.Sprintf("--vm-accel must be auto, kvm or tcg (got %q)", accel), "leave --vm-accel out (auto) unless you must force one")
	}
	if !imageSet {
		return nil
	}
	hint := "build one with 'blixard image build --output DIR' and pass --vm-image DIR, or leave --vm-image out to build one on first use"
	if strings.TrimSpace(image) == "" {
		return usageError("--vm-image must name a directory (got \"\")", hint)
	}
	for _, f := range []string{"vmlinux", "initrd.img"} {
		p := filepath.Join(image, f)
		st, err := os.Stat(p)
		switch {
		case err != nil:
			return usageError(fmt.Sprintf("--vm-image %q holds no guest image: %v", image, err), hint)
		case !st.Mode().IsRegular():
			return usageError(fmt.Sprintf("--vm-image %q: %s is not a regular file", image, p), hint)
		}
	}
	return nil
}

// holdsNode reports whether dir already holds a node's data (a restart).
func holdsNode(dir string) (bool, error) {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	case err != nil:
		return false, usageError(fmt.Sprintf("--data-dir %q cannot be used: %v", dir, err), "pick a directory blixard can read and write")
	case !fi.IsDir():
		return false, usageError(fmt.Sprintf("--data-dir %q is not a directory", dir), "pass a directory path")
	}
	fi, err = os.Stat(filepath.Join(dir, "wal"))
	if err != nil {
		return false, nil
	}
	return fi.IsDir(), nil
}

// labelNameOK reports whether s is a valid label key or capability name.
func labelNameOK(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case r == '.', r == '_', r == '-', r == '/':
		default:
			return false
		}
	}
	return true
}

const nameChars = "letters, digits, '.', '_', '-' and '/'"

// parseLabels parses --labels values: comma-separated KEY=VALUE pairs,
// the flag may be repeated.
func parseLabels(vals []string) (map[string]string, error) {
	labels := map[string]string{}
	hint := "pass comma-separated KEY=VALUE pairs, e.g. --labels zone=eu-1,disk=ssd"
	for _, v := range vals {
		for _, entry := range strings.Split(v, ",") {
			entry = strings.TrimSpace(entry)
			if entry == "" {
				return nil, usageError(fmt.Sprintf("--labels has an empty entry (got %q)", v), hint)
			}
			key, value, ok := strings.Cut(entry, "=")
			if !ok {
				return nil, usageError(fmt.Sprintf("--labels entry %q is not KEY=VALUE", entry), hint)
			}
			key = strings.TrimSpace(key)
			if key == "" {
				return nil, usageError(fmt.Sprintf("--labels entry %q has an empty key", entry), hint)
			}
			if !labelNameOK(key) {
				return nil, usageError(fmt.Sprintf("--labels key %q may only contain %s", key, nameChars), hint)
			}
			if _, dup := labels[key]; dup {
				return nil, usageError(fmt.Sprintf("--labels sets key %q more than once", key), "give each key once")
			}
			labels[key] = strings.TrimSpace(value)
		}
	}
	return labels, nil
}

// parseCapabilities checks --capabilities names and drops duplicates.
func parseCapabilities(vals []string) ([]string, error) {
	var caps []string
	seen := map[string]bool{}
	hint := "pass comma-separated names, e.g. --capabilities docker,gpu"
	for _, c := range vals {
		c = strings.TrimSpace(c)
		if c == "" {
			return nil, usageError("--capabilities has an empty entry", hint)
		}
		if !labelNameOK(c) {
			return nil, usageError(fmt.Sprintf("--capabilities name %q may only contain %s", c, nameChars), hint)
		}
		if !seen[c] {
			seen[c] = true
			caps = append(caps, c)
		}
	}
	return caps, nil
}

// runNode runs the server until SIGINT/SIGTERM or the command's context
// ends. A second signal kills the process the default way.
func (a *app) runNode(cmd *cobra.Command, cfg server.Config, lo logOptions, notes []string) error {
	logger := lo.logger(a.stderr)
	cfg.Logger = logger
	for _, n := range notes {
		logger.Warn(n)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return failure(fmt.Sprintf("cannot create --data-dir %q: %v", cfg.DataDir, err), "pick a directory blixard can write to")
	}

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore default signal handling: a second Ctrl-C kills
	}()

	if src, ok := cfg.TLS.(*pki.Source); ok {
		// SIGHUP reloads the certificates (file changes are also picked up
		// at the next handshake).
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					if err := src.Reload(); err != nil {
						logger.Warn("SIGHUP: reloading the TLS certificates failed; the previous ones stay in use", "err", err)
					} else {
						logger.Info("SIGHUP: reloaded the TLS certificates", "identity", src.Identity().String(), "not_after", src.NotAfter())
					}
				}
			}
		}()
	}

	logger.Info("starting node",
		"id", cfg.ID, "listen", cfg.Listen, "advertise", cfg.Advertise, "http", cfg.HTTPAddr, "data_dir", cfg.DataDir,
		"bootstrap", cfg.Bootstrap, "join", cfg.Join, "worker", cfg.Worker,
		"cpu", strconv.FormatFloat(float64(cfg.CPUMillis)/1000, 'f', -1, 64), "memory_mib", cfg.MemoryMiB)
	err := a.runServer(ctx, cfg)
	if err != nil && (ctx.Err() == nil || !errors.Is(err, ctx.Err())) {
		return failure(fmt.Sprintf("node %d stopped: %v", cfg.ID, err), "see the log above for details")
	}
	logger.Info("node stopped", "id", cfg.ID)
	return nil
}
