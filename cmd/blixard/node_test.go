package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/pki"
	"github.com/blixard/blixard/internal/server"
)

func TestNodeFlagValidation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	// base is a valid command line; each case replaces or adds flags.
	base := []string{"--id", "1", "--data-dir", data, "--listen", "127.0.0.1:7001", "--bootstrap"}
	without := func(flag string, args []string) []string {
		var out []string
		for i := 0; i < len(args); i++ {
			if args[i] == flag {
				if flag != "--bootstrap" {
					i++
				}
				continue
			}
			out = append(out, args[i])
		}
		return out
	}
	with := func(extra ...string) []string {
		return append(append([]string{}, base...), extra...)
	}
	withOut := func(flag string, extra ...string) []string {
		return append(without(flag, base), extra...)
	}

	tests := []struct {
		name string
		args []string
		want []string // all must appear in the one error line
	}{
		{"id missing", withOut("--id"), []string{"--id is required"}},
		{"vm accel unknown", with("--vm-accel", "hvf"), []string{`--vm-accel must be auto, kvm or tcg (got "hvf")`}},
		{"vm image missing", with("--vm-image", filepath.Join(dir, "nope")), []string{"--vm-image", "holds no guest image", "blixard image build"}},
		{"vm image empty dir", with("--vm-image", dir), []string{"--vm-image", "vmlinux"}},
		{"vm image without worker", with("--worker=false", "--vm-image", dir), []string{"--vm-image only applies to workers"}},
		{"id zero", withOut("--id", "--id", "0"), []string{`--id must be a positive integer (got "0")`}},
		{"id not a number", withOut("--id", "--id", "abc"), []string{`--id must be a positive integer (got "abc")`}},
		{"id negative", withOut("--id", "--id", "-3"), []string{`--id must be a positive integer (got "-3")`}},
		{"id empty", withOut("--id", "--id="), []string{`--id must be a positive integer (got "")`}},
		{"data dir missing", withOut("--data-dir"), []string{"--data-dir is required"}},
		{"data dir is a file", withOut("--data-dir", "--data-dir", file), []string{"--data-dir", "is not a directory"}},
		{"listen missing", withOut("--listen"), []string{"--listen is required"}},
		{"listen without port", withOut("--listen", "--listen", "localhost"), []string{`--listen must be HOST:PORT (got "localhost")`}},
		{"listen bad port", withOut("--listen", "--listen", "127.0.0.1:99999"), []string{"--listen needs a port between 1 and 65535"}},
		{"listen port zero", withOut("--listen", "--listen", "127.0.0.1:0"), []string{"--listen needs a port"}},
		{"listen wildcard without advertise", withOut("--listen", "--listen", "0.0.0.0:7001"), []string{"--advertise is required"}},
		{"listen empty host without advertise", withOut("--listen", "--listen", ":7001"), []string{"--advertise is required"}},
		{"advertise wildcard", with("--advertise", "0.0.0.0:7001"), []string{"--advertise must be an address other nodes can dial"}},
		{"advertise bad", with("--advertise", "nope"), []string{`--advertise must be HOST:PORT (got "nope")`}},
		{"neither bootstrap nor join", without("--bootstrap", base), []string{"one of --bootstrap or --join is required"}},
		{"both bootstrap and join", with("--join", "127.0.0.1:7000"), []string{"--bootstrap and --join are mutually exclusive"}},
		{"join bad", withOut("--bootstrap", "--join", "127.0.0.1"), []string{`--join must be HOST:PORT (got "127.0.0.1")`}},
		{"join empty", withOut("--bootstrap", "--join="), []string{`--join must be HOST:PORT (got "")`}},
		{"join no host", withOut("--bootstrap", "--join", ":7000"), []string{"--join needs a host"}},
		{"join self", withOut("--bootstrap", "--join", "127.0.0.1:7001"), []string{"--join points at this node itself"}},
		{"cpu without worker", with("--worker=false", "--cpu", "2"), []string{"--cpu only applies to workers", "--worker=false"}},
		{"labels without worker", with("--worker=false", "--labels", "a=b"), []string{"--labels only applies to workers"}},
		{"cpu zero", with("--worker", "--cpu", "0"), []string{`--cpu must be a positive number of cores, e.g. 2 or 0.5 (got "0")`}},
		{"cpu negative", with("--worker", "--cpu", "-1"), []string{`--cpu must be a positive number of cores`, `(got "-1")`}},
		{"cpu not a number", with("--worker", "--cpu", "lots"), []string{`--cpu must be a positive number of cores`, `(got "lots")`}},
		{"cpu NaN", with("--worker", "--cpu", "NaN"), []string{`--cpu must be a positive number of cores`}},
		{"cpu too small", with("--worker", "--cpu", "0.0001"), []string{`--cpu must be a positive number of cores`}},
		{"memory zero", with("--worker", "--memory", "0"), []string{`--memory must be a positive number of MiB (got "0")`}},
		{"memory not a number", with("--worker", "--memory", "4G"), []string{`--memory must be a positive number of MiB (got "4G")`}},
		{"disk negative", with("--worker", "--disk", "-1"), []string{`--disk must be a non-negative number of MiB (got "-1")`}},
		{"label without =", with("--worker", "--labels", "zone"), []string{`--labels entry "zone" is not KEY=VALUE`}},
		{"label empty key", with("--worker", "--labels", "=x"), []string{`--labels entry "=x" has an empty key`}},
		{"label empty entry", with("--worker", "--labels", "a=b,,c=d"), []string{"--labels has an empty entry"}},
		{"label bad key", with("--worker", "--labels", "a b=c"), []string{`--labels key "a b" may only contain`}},
		{"label duplicate", with("--worker", "--labels", "a=1", "--labels", "a=2"), []string{`--labels sets key "a" more than once`}},
		{"capability empty", with("--worker", "--capabilities", "gpu,,docker"), []string{"--capabilities has an empty entry"}},
		{"capability bad", with("--worker", "--capabilities", "g p u"), []string{`--capabilities name "g p u" may only contain`}},
		{"tick zero", with("--tick", "0s"), []string{`--tick must be a positive duration (got "0s")`}},
		{"tick not a duration", with("--tick", "100"), []string{`--tick must be a duration like 500ms, 2s or 1m (got "100")`}},
		{"election ticks too low", with("--election-ticks", "1"), []string{"--election-ticks must be greater than --heartbeat-ticks (got 1 and 1)"}},
		{"heartbeat ticks zero", with("--heartbeat-ticks", "0"), []string{`--heartbeat-ticks must be at least 1 (got "0")`}},
		{"snapshot every zero", with("--snapshot-every", "0"), []string{`--snapshot-every must be at least 1 (got "0")`}},
		{"snapshot keep negative", with("--snapshot-keep", "-1"), []string{`--snapshot-keep must be a non-negative integer (got "-1")`}},
		{"heartbeat interval zero", with("--heartbeat-interval", "0s"), []string{`--heartbeat-interval must be a positive duration`}},
		{"worker ttl below heartbeat", with("--worker-ttl", "500ms"), []string{"--worker-ttl must be longer than --heartbeat-interval (got 500ms and 1s)"}},
		{"vm replace after too short", with("--vm-replace-after", "3s"), []string{"--vm-replace-after: 3s is too short for worker-ttl 5s", "raise --vm-replace-after to more than 4.5s"}},
		{"vm replace after negative", with("--vm-replace-after", "-1s"), []string{"--vm-replace-after must not be negative"}},
		{"http addr bad", with("--http-addr", "nope"), []string{`--http-addr must be HOST:PORT (got "nope")`}},
		{"http addr port zero", with("--http-addr", "127.0.0.1:0"), []string{"--http-addr needs a port between 1 and 65535"}},
		{"http addr is listen", with("--http-addr", "127.0.0.1:7001"), []string{"--http-addr must differ from --listen (both use port 7001)"}},
		{"http addr clashes with wildcard listen", withOut("--listen", "--listen", "0.0.0.0:7001", "--advertise", "10.0.0.1:7001", "--http-addr", "127.0.0.1:7001"), []string{"--http-addr must differ from --listen"}},
		{"http addr without default", withOut("--listen", "--listen", "127.0.0.1:65500"), []string{"--http-addr has no default for --listen 127.0.0.1:65500", "--http-addr off"}},
		{"log format", with("--log-format", "xml"), []string{`--log-format must be "text" or "json" (got "xml")`}},
		{"log level", with("--log-level", "loud"), []string{`--log-level must be debug, info, warn or error (got "loud")`}},
		{"unknown flag", with("--bogus"), []string{"unknown flag: --bogus", "blixard node --help"}},
		{"flag without value", with("--join"), []string{"--join needs a value"}},
		{"positional argument", with("extra"), []string{"too many arguments"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.deps.runServer = func(context.Context, server.Config) error {
				t.Fatal("server started despite invalid flags")
				return nil
			}
			code := h.run(append([]string{"node"}, tc.args...)...)
			if code != exitUsage {
				t.Errorf("exit code = %d, want %d", code, exitUsage)
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Errorf("stdout = %q, want nothing", h.stdout.String())
			}
			if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("data dir was created despite invalid flags")
			}
		})
	}
}

func TestNodeBuildsConfig(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	h := newHarness(t)
	code := h.run("node", "--insecure", "--id", "7", "--data-dir", data, "--listen", "0.0.0.0:7001",
		"--advertise", "10.0.0.7:7001", "--join", "10.0.0.1:7000",
		"--worker", "--cpu", "0.5", "--memory", "2048", "--disk", "100",
		"--labels", "zone=eu-1, disk=ssd", "--labels", "rack=r2",
		"--capabilities", "docker,gpu", "--capabilities", "docker",
		"--tick", "50ms", "--election-ticks", "20", "--snapshot-every", "100", "--snapshot-keep", "10",
		"--heartbeat-interval", "2s", "--worker-ttl", "10s", "--log-format", "json", "--log-level", "debug",
		"--vm-image-dir", "/srv/images", "--task-user", "builder", "--audit-log", "-")
	if code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	started := h.startedConfigs()
	if len(started) != 1 {
		t.Fatalf("server started %d times, want 1", len(started))
	}
	got := started[0]
	if got.Logger == nil {
		t.Error("no logger in config")
	}
	got.Logger = nil
	want := server.Config{
		ID: 7, DataDir: data, Listen: "0.0.0.0:7001", Advertise: "10.0.0.7:7001",
		Join: "10.0.0.1:7000", Worker: true, CPUMillis: 500, MemoryMiB: 2048, DiskMiB: 100,
		Labels:       map[string]string{"zone": "eu-1", "disk": "ssd", "rack": "r2"},
		Capabilities: []string{"docker", "gpu"},
		VMs:          true, VMAccel: "auto",
		TickInterval: 50 * time.Millisecond, ElectionTicks: 20, HeartbeatTicks: 1,
		SnapshotEvery: 100, SnapshotKeep: 10, CheckpointEvery: defaultCheckpointEvery,
		HeartbeatInterval: 2 * time.Second, WorkerTTL: 10 * time.Second, UsageInterval: defaultUsageInterval, TaskRetention: defaultTaskRetention,
		HTTPAddr: "0.0.0.0:7081", // --listen's host, port + 80
		Insecure: true, TaskUser: "builder", VMImageDirs: []string{"/srv/images"}, AuditLog: "-",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config\n got %+v\nwant %+v", got, want)
	}
	if fi, err := os.Stat(data); err != nil || !fi.IsDir() {
		t.Errorf("data dir not created: %v", err)
	}
	if !strings.Contains(h.stderr.String(), `"msg":"starting node"`) {
		t.Errorf("no JSON start log on stderr: %q", h.stderr.String())
	}
}

func TestNodeDefaults(t *testing.T) {
	data := t.TempDir()
	h := newHarness(t)
	if code := h.run("node", "--insecure", "--id", "1", "--data-dir", data, "--listen", "127.0.0.1:7001", "--bootstrap", "--worker"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	got := h.startedConfigs()[0]
	if got.CPUMillis != 4000 || got.MemoryMiB != 8192 {
		t.Errorf("resources = %d millis, %d MiB; want detected 4000, 8192", got.CPUMillis, got.MemoryMiB)
	}
	if got.Advertise != "127.0.0.1:7001" || !got.Bootstrap || got.Join != "" {
		t.Errorf("advertise %q bootstrap %v join %q", got.Advertise, got.Bootstrap, got.Join)
	}
	d := defaultTuning()
	if got.TickInterval != d.tick || got.ElectionTicks != 10 || got.HeartbeatTicks != 1 ||
		got.SnapshotEvery != 10000 || got.SnapshotKeep != 5000 || got.HeartbeatInterval != d.heartbeatInterval ||
		got.WorkerTTL != d.workerTTL || got.UsageInterval != d.usageInterval || got.CheckpointEvery != d.checkpointEvery {
		t.Errorf("tuning defaults not applied: %+v", got)
	}
	if got.Labels == nil || len(got.Labels) != 0 {
		t.Errorf("labels = %#v, want empty map", got.Labels)
	}
	if got.HTTPAddr != "127.0.0.1:7081" {
		t.Errorf("HTTPAddr = %q, want --listen's host at port + 80", got.HTTPAddr)
	}
}

func TestNodeHTTPAddr(t *testing.T) {
	for _, tc := range []struct{ flag, want string }{
		{"--http-addr=off", ""},
		{"--http-addr=", ""},
		{"--http-addr=10.0.0.1:9100", "10.0.0.1:9100"},
		{"--http-addr=:9100", ":9100"},
	} {
		h := newHarness(t)
		if code := h.run("node", "--insecure", "--id", "1", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:7001", "--bootstrap", tc.flag); code != exitOK {
			t.Fatalf("%s: exit code %d, stderr %q", tc.flag, code, h.stderr.String())
		}
		if got := h.startedConfigs()[0].HTTPAddr; got != tc.want {
			t.Errorf("%s: HTTPAddr = %q, want %q", tc.flag, got, tc.want)
		}
	}
}

func TestNodeNonWorkerSkipsDetection(t *testing.T) {
	h := newHarness(t)
	h.deps.memTotalMiB = func() (int64, error) { t.Fatal("memory detected for a non-worker"); return 0, nil }
	if code := h.run("node", "--insecure", "--id", "1", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:7001", "--bootstrap", "--worker=false"); code != exitOK {
		t.Fatalf("exit code %d, stderr %q", code, h.stderr.String())
	}
	if got := h.startedConfigs()[0]; got.Worker || got.CPUMillis != 0 || got.MemoryMiB != 0 {
		t.Errorf("non-worker config has worker resources: %+v", got)
	}
}

func TestNodeRestartNeedsNoBootstrapOrJoin(t *testing.T) {
	data := t.TempDir()
	if err := os.Mkdir(filepath.Join(data, "wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, extra := range [][]string{nil, {"--bootstrap"}, {"--join", "127.0.0.1:7000"}} {
		h := newHarness(t)
		args := append([]string{"node", "--insecure", "--id", "2", "--data-dir", data, "--listen", "127.0.0.1:7001"}, extra...)
		if code := h.run(args...); code != exitOK {
			t.Fatalf("%v: exit code %d, stderr %q", extra, code, h.stderr.String())
		}
		got := h.startedConfigs()[0]
		if got.Bootstrap || got.Join != "" {
			t.Errorf("%v: restart config has bootstrap %v join %q", extra, got.Bootstrap, got.Join)
		}
		if len(extra) > 0 && !strings.Contains(h.stderr.String(), "ignoring "+extra[0]) {
			t.Errorf("%v: no warning that the flag is ignored: %q", extra, h.stderr.String())
		}
	}
}

func TestNodeServerFailure(t *testing.T) {
	h := newHarness(t)
	h.deps.runServer = func(context.Context, server.Config) error { return errors.New("bind: address in use") }
	code := h.run("node", "--insecure", "--id", "3", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:7001", "--bootstrap", "--log-level", "error")
	if code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("node 3 stopped: bind: address in use")
}

func TestNodeStopsOnCancel(t *testing.T) {
	h := newHarness(t)
	h.deps.runServer = func(ctx context.Context, cfg server.Config) error {
		<-ctx.Done()
		return ctx.Err()
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	code := h.runCtx(ctx, "node", "--insecure", "--id", "3", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:7001", "--bootstrap")
	if code != exitOK {
		t.Errorf("exit code = %d, want 0; stderr %q", code, h.stderr.String())
	}
}

func TestNodeMemoryDetectionFailure(t *testing.T) {
	h := newHarness(t)
	h.deps.memTotalMiB = func() (int64, error) { return 0, errors.New("no /proc") }
	code := h.run("node", "--insecure", "--id", "1", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:7001", "--bootstrap", "--worker")
	if code != exitFailure {
		t.Errorf("exit code = %d, want %d", code, exitFailure)
	}
	h.wantErrorLine("cannot detect this machine's memory", "pass --memory")
	if len(h.startedConfigs()) != 0 {
		t.Error("server started")
	}
}

func TestParseMemTotal(t *testing.T) {
	in := "MemFree:  100 kB\nMemTotal:       16318208 kB\n"
	got, err := parseMemTotalMiB(bufio.NewScanner(strings.NewReader(in)))
	if err != nil || got != 15935 {
		t.Errorf("got %d, %v; want 15935", got, err)
	}
	if _, err := parseMemTotalMiB(bufio.NewScanner(strings.NewReader("MemFree: 1 kB\n"))); err == nil {
		t.Error("no error without MemTotal")
	}
}

func TestNodeSecurityFlags(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if err := pki.InitCA(dir, 0, now); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pki.IssueNode(dir, 2, nil, 0, now); err != nil {
		t.Fatal(err)
	}
	base := func(id string, extra ...string) []string {
		return append([]string{"node", "--id", id, "--data-dir", t.TempDir(), "--listen", "127.0.0.1:7001", "--bootstrap"}, extra...)
	}
	refused := []struct {
		name string
		args []string
		want []string
	}{
		{"neither TLS nor insecure", base("2"), []string{"a node needs TLS certificates, or --insecure", "blixard tls cert --dir D --node 2", "--tls-dir D"}},
		{"both", base("2", "--tls-dir", dir, "--insecure"), []string{"--insecure and TLS certificates: give one, not both"}},
		{"no certificate for this id", base("3", "--tls-dir", dir), []string{"--tls-dir:", "blixard tls"}},
		{"half of the file flags", base("2", "--ca", filepath.Join(dir, "ca.crt")), []string{"--ca, --cert and --key go together"}},
		{"another node's certificate", base("3", "--ca", filepath.Join(dir, pki.CACertFile), "--cert", filepath.Join(dir, pki.NodeCertFile(2)), "--key", filepath.Join(dir, pki.NodeKeyFile(2))),
			[]string{"is a certificate for node 2, not for node 3 (--id)", "blixard tls cert --node 3"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.deps.runServer = func(context.Context, server.Config) error {
				t.Fatal("server started despite invalid security flags")
				return nil
			}
			if code := h.run(tc.args...); code != exitUsage {
				t.Errorf("exit code %d, want %d", code, exitUsage)
			}
			h.wantErrorLine(tc.want...)
		})
	}
	h := newHarness(t)
	if code := h.run(base("2", "--tls-dir", dir)...); code != exitOK {
		t.Fatalf("node with --tls-dir: exit %d: %s", code, h.stderr.String())
	}
	cfg := h.startedConfigs()[0]
	if cfg.Insecure || cfg.TLS == nil || cfg.Identify == nil {
		t.Fatalf("TLS node config: insecure %v, TLS %v, identify set %v", cfg.Insecure, cfg.TLS, cfg.Identify != nil)
	}
}
