package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/blixard/blixard/internal/pki"
)

// tlsDir runs 'tls init' into a fresh directory and returns it.
func tlsDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	h := newHarness(t)
	if code := h.run("tls", "init", "--dir", dir); code != exitOK {
		t.Fatalf("tls init: exit %d, stderr %q", code, h.stderr.String())
	}
	return dir
}

func TestTLSInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	h := newHarness(t)
	if code := h.run("tls", "init", "--dir", dir, "--days", "30"); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	want := "wrote " + filepath.Join(dir, "ca.crt") + " (the CA certificate, valid until 2026-03-31T12:00:00Z: copy it to every node and client)\n" +
		"wrote " + filepath.Join(dir, "ca.key") + " (the CA key: keep it secret, it signs certificates)\n" +
		"next: blixard tls cert --dir " + dir + " --node 1\n"
	if got := h.stdout.String(); got != want {
		t.Errorf("stdout\n%s\nwant\n%s", got, want)
	}
	if fi, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v, %v", fi.Mode(), err)
	}

	// A second init refuses and leaves the CA alone.
	before, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	h = newHarness(t)
	if code := h.run("tls", "init", "--dir", dir); code != exitFailure {
		t.Fatalf("re-init: exit %d, stderr %q", code, h.stderr.String())
	}
	h.wantErrorLine("refusing to overwrite "+filepath.Join(dir, "ca.crt"), "blixard tls cert --dir "+dir)
	if after, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); string(after) != string(before) {
		t.Error("refused init changed ca.crt")
	}

	// JSON.
	dir2 := filepath.Join(t.TempDir(), "tls")
	h = newHarness(t)
	if code := h.run("-o", "json", "tls", "init", "--dir", dir2); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
	}
	got, _ := json.Marshal(map[string]string{
		"cert": filepath.Join(dir2, "ca.crt"), "key": filepath.Join(dir2, "ca.key"),
		"not_after": "2036-02-27T12:00:00Z", "next": "blixard tls cert --dir " + dir2 + " --node 1",
	})
	jsonEqual(t, h.stdout.String(), string(got))
}

func TestTLSCert(t *testing.T) {
	dir := tlsDir(t)
	tests := []struct {
		name     string
		args     []string
		cert     string // base name
		identity string
		notAfter string
		hosts    string // table row; "" for clients
	}{
		{"node", []string{"--node", "3", "--host", "node3.example.com", "--host", "10.0.0.3"}, "node-3.crt", "node 3", "2026-05-30T12:00:00Z", "node3.example.com, 10.0.0.3"},
		{"node hosts comma-separated", []string{"--node", "4", "--host", "a.example.com,10.0.0.4", "--days", "1"}, "node-4.crt", "node 4", "2026-03-02T12:00:00Z", "a.example.com, 10.0.0.4"},
		{"client", []string{"--client", "alice"}, "client-alice.crt", "client alice", "2026-05-30T12:00:00Z", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certPath := filepath.Join(dir, tc.cert)
			keyPath := strings.TrimSuffix(certPath, ".crt") + ".key"

			h := newHarness(t)
			if code := h.run(append([]string{"tls", "cert", "--dir", dir}, tc.args...)...); code != exitOK {
				t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
			}
			rows := []string{"cert:", certPath, "key:", keyPath, "identity:", tc.identity, "not after:", tc.notAfter}
			for _, w := range rows {
				if !strings.Contains(h.stdout.String(), w) {
					t.Errorf("stdout %q lacks %q", h.stdout.String(), w)
				}
			}
			if hasHosts := strings.Contains(h.stdout.String(), "hosts:"); hasHosts != (tc.hosts != "") || !strings.Contains(h.stdout.String(), tc.hosts) {
				t.Errorf("stdout %q: hosts row, want %q", h.stdout.String(), tc.hosts)
			}
			for _, p := range []string{certPath, keyPath} {
				if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v, %v; want 0600", p, fi.Mode(), err)
				}
			}
			c, err := readCertFile(certPath)
			if err != nil {
				t.Fatal(err)
			}
			if id, err := pki.IdentityOf(c); err != nil || id.String() != tc.identity {
				t.Errorf("identity %v, %v", id, err)
			}

			h = newHarness(t)
			if code := h.run(append([]string{"tls", "cert", "--dir", dir, "--output", "json"}, tc.args...)...); code != exitOK {
				t.Fatalf("json: exit %d, stderr %q", code, h.stderr.String())
			}
			var obj map[string]any
			if err := json.Unmarshal([]byte(h.stdout.String()), &obj); err != nil {
				t.Fatal(err)
			}
			if got, want := sortedKeys(obj), sorted("cert", "key", "identity", "not_after"); !reflect.DeepEqual(got, want) {
				t.Errorf("fields = %v, want %v", got, want)
			}
			want, _ := json.Marshal(map[string]string{"cert": certPath, "key": keyPath, "identity": tc.identity, "not_after": tc.notAfter})
			jsonEqual(t, h.stdout.String(), string(want))
		})
	}
}

func TestTLSErrors(t *testing.T) {
	dir := tlsDir(t)
	empty := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want []string // all in the one error line
	}{
		{"init without dir", []string{"tls", "init"}, exitUsage, []string{"--dir is required"}},
		{"init negative days", []string{"tls", "init", "--dir", empty, "--days", "-1"}, exitUsage, []string{`--days must be between 1 and 36500 (got "-1")`}},
		{"init days not a number", []string{"tls", "init", "--dir", empty, "--days", "x"}, exitUsage, []string{`--days must be a number of days (got "x")`}},
		{"init extra argument", []string{"tls", "init", "--dir", empty, "extra"}, exitUsage, []string{"too many arguments"}},
		{"unknown subcommand", []string{"tls", "sign"}, exitUsage, []string{`unknown command "sign"`}},
		{"cert without dir", []string{"tls", "cert", "--node", "1"}, exitUsage, []string{"--dir is required"}},
		{"cert neither", []string{"tls", "cert", "--dir", dir}, exitUsage, []string{"one of --node or --client is required"}},
		{"cert both", []string{"tls", "cert", "--dir", dir, "--node", "1", "--client", "a"}, exitUsage, []string{"--node and --client are mutually exclusive"}},
		{"cert node zero", []string{"tls", "cert", "--dir", dir, "--node", "0"}, exitUsage, []string{`--node must be a positive integer (got "0")`}},
		{"cert node not a number", []string{"tls", "cert", "--dir", dir, "--node", "x"}, exitUsage, []string{`--node must be a positive integer (got "x")`}},
		{"cert client empty", []string{"tls", "cert", "--dir", dir, "--client", ""}, exitUsage, []string{`--client must be 1 to 64`, `(got "")`}},
		{"cert client bad name", []string{"tls", "cert", "--dir", dir, "--client", "a/b"}, exitUsage, []string{`(got "a/b")`}},
		{"cert client with host", []string{"tls", "cert", "--dir", dir, "--client", "a", "--host", "x"}, exitUsage, []string{"--host only applies to node certificates"}},
		{"cert host with port", []string{"tls", "cert", "--dir", dir, "--node", "1", "--host", "10.0.0.1:7000"}, exitUsage, []string{`--host must be a DNS name or an IP address, without a port (got "10.0.0.1:7000")`}},
		{"cert bad DNS name", []string{"tls", "cert", "--dir", dir, "--node", "1", "--host", "a..b"}, exitFailure, []string{`host "a..b"`}},
		{"cert days too many", []string{"tls", "cert", "--dir", dir, "--client", "a", "--days", "40000"}, exitUsage, []string{"--days must be between 1 and 36500", "default of 90 days"}},
		{"cert without CA", []string{"tls", "cert", "--dir", empty, "--client", "a"}, exitFailure, []string{filepath.Join(empty, "ca.crt"), "blixard tls init --dir " + empty}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(tc.args...); code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tc.code, h.stderr.String())
			}
			h.wantErrorLine(tc.want...)
			if h.stdout.String() != "" {
				t.Errorf("stdout %q, want nothing", h.stdout.String())
			}
		})
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("failed commands wrote %v", ents)
	}
}
