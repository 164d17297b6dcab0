package vm

import (
	"errors"
	"strings"
	"testing"
)

func validSpec() Spec {
	return Spec{ID: "web-1", VCPUs: 1, MemoryMiB: 128, Kernel: "/img/vmlinux"}
}

func TestValidateAcceptsAGoodSpec(t *testing.T) {
	s := validSpec()
	s.Disk = &Disk{Path: "/img/disk.qcow2", Format: "qcow2"}
	s.Network = Network{Mode: NetworkUser, Forwards: []PortForward{{HostPort: 8080, GuestPort: 80}, {Protocol: "udp", HostPort: 8080, GuestPort: 53}}}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Marker() != DefaultReadyMarker {
		t.Errorf("marker = %q", s.Marker())
	}
}

func TestValidateNamesEveryProblem(t *testing.T) {
	cases := []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"no id", func(s *Spec) { s.ID = "" }, "id is required"},
		{"bad id", func(s *Spec) { s.ID = "../x" }, "only letters"},
		{"dot id", func(s *Spec) { s.ID = ".hidden" }, "only letters"},
		{"long id", func(s *Spec) { s.ID = ID(strings.Repeat("a", 65)) }, "longer than 64"},
		{"zero vcpus", func(s *Spec) { s.VCPUs = 0 }, "vcpus must be 1-64 (got 0)"},
		{"zero memory", func(s *Spec) { s.MemoryMiB = 0 }, "memory must be at least 16 MiB (got 0)"},
		{"no kernel", func(s *Spec) { s.Kernel = "" }, "kernel path is required"},
		{"newline in cmdline", func(s *Spec) { s.Cmdline = "a\nb" }, "line break"},
		{"blank marker", func(s *Spec) { s.ReadyMarker = "  " }, "ready marker"},
		{"disk without path", func(s *Spec) { s.Disk = &Disk{} }, "disk path is required"},
		{"disk format", func(s *Spec) { s.Disk = &Disk{Path: "d", Format: "vmdk"} }, "raw or qcow2"},
		{"net mode", func(s *Spec) { s.Network.Mode = "bridge" }, "mode must be none, user or tap"},
		{"forwards without mode", func(s *Spec) { s.Network.Forwards = []PortForward{{HostPort: 1, GuestPort: 1}} }, "need a network mode"},
		{"forward port 0", func(s *Spec) {
			s.Network = Network{Mode: NetworkUser, Forwards: []PortForward{{HostPort: 0, GuestPort: 80}}}
		}, "1-65535"},
		{"forward twice", func(s *Spec) {
			s.Network = Network{Mode: NetworkUser, Forwards: []PortForward{{HostPort: 80, GuestPort: 80}, {HostPort: 80, GuestPort: 81}}}
		}, "forwarded twice"},
		{"tap without device", func(s *Spec) { s.Network = Network{Mode: NetworkTap} }, "tap device name"},
		{"tap with forwards", func(s *Spec) {
			s.Network = Network{Mode: NetworkTap, TapDevice: "tap0", Forwards: []PortForward{{HostPort: 80, GuestPort: 80}}}
		}, "only for mode user"},
		{"multicast mac", func(s *Spec) { s.Network = Network{Mode: NetworkUser, MAC: "01:00:5e:00:00:01"} }, "mac"},
	}
	for _, c := range cases {
		s := validSpec()
		c.change(&s)
		err := s.Validate()
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalidSpec mentioning %q", c.name, err, c.want)
		}
	}
	// Several problems are all reported.
	s := Spec{}
	err := s.Validate()
	for _, w := range []string{"id", "vcpus", "memory", "kernel"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("empty spec: %v lacks %q", err, w)
		}
	}
}

func TestParsePortForward(t *testing.T) {
	good := map[string]PortForward{
		"8080:80":               {HostPort: 8080, GuestPort: 80},
		"127.0.0.1:5353:53/udp": {Protocol: "udp", HostAddr: "127.0.0.1", HostPort: 5353, GuestPort: 53},
		"0.0.0.0:2222:22/tcp":   {Protocol: "tcp", HostAddr: "0.0.0.0", HostPort: 2222, GuestPort: 22},
		"[::1]:8080:80":         {HostAddr: "::1", HostPort: 8080, GuestPort: 80},
	}
	for in, want := range good {
		got, err := ParsePortForward(in)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", in, got, err, want)
		}
		if back, err := ParsePortForward(got.String()); err != nil || back.String() != got.String() {
			t.Errorf("%s: String %q does not parse back: %+v, %v", in, got.String(), back, err)
		}
	}
	for _, in := range []string{"80", "0:80", "80:0", "70000:80", "a:80", "8080:80/sctp", "host:8080:80"} {
		if _, err := ParsePortForward(in); err == nil || !strings.Contains(err.Error(), "8080:80") {
			t.Errorf("%s: err = %v, want an error with an example", in, err)
		}
	}
}

func TestCommandParamIsOneWord(t *testing.T) {
	p := CommandParam(`echo "hello world"; exit 3`)
	if strings.ContainsAny(p, " \t\n\"") || !strings.HasPrefix(p, ParamCommand+"=") {
		t.Fatalf("CommandParam = %q", p)
	}
}
