package vm

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParsePortForward: any --port-style string parses or is refused,
// never a panic; what parses is valid in a user-mode network and prints
// (String) to a form that parses back to the same forward.
func FuzzParsePortForward(f *testing.F) {
	for _, s := range []string{"8080:80", "127.0.0.1:5353:53/udp", "[::1]:2222:22/tcp", "0.0.0.0:1:65535", "80", "a:b", ":80:80", "[fe80::1%eth0]:8080:80", "80:80/sctp", "1.2.3.4:0:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fw, err := ParsePortForward(s)
		if err != nil {
			return
		}
		if netErr := (&Network{Mode: NetworkUser, Forwards: []PortForward{fw}}).validate(); netErr != nil {
			t.Fatalf("%q parses to %+v, which the network refuses: %v", s, fw, netErr)
		}
		again, err := ParsePortForward(fw.String())
		if err != nil {
			t.Fatalf("%q parses to %+v, whose String %q does not parse: %v", s, fw, fw.String(), err)
		}
		if again.String() != fw.String() {
			t.Fatalf("%q: %q parses back as %q", s, fw.String(), again.String())
		}
	})
}

// FuzzSpecValidate: Validate never panics on any spec built from
// arbitrary fields, and every error it returns wraps ErrInvalidSpec.
func FuzzSpecValidate(f *testing.F) {
	f.Add("web", 1, 128, "/k/vmlinux", "", "", "raw", "quiet", "user", "8080:80,5353:53/udp", "", "", "")
	f.Add("db.1", 4, 1024, "/k/bzImage", "/k/initrd", "/srv/db.qcow2", "qcow2", "", "tap", "", "tap0", "52:54:00:12:34:56", "READY")
	f.Add("", 0, 0, "", "a\nb", "x", "vmdk", "a\x00", "bridge", "1:1,1:1", "waytoolongtapdevicename", "01:00:00:00:00:00", " ")
	f.Fuzz(func(t *testing.T, id string, vcpus, mem int, kernel, initrd, disk, format, cmdline, mode, forwards, tap, mac, marker string) {
		s := &Spec{ID: ID(id), VCPUs: vcpus, MemoryMiB: mem, Kernel: kernel, Initrd: initrd, Cmdline: cmdline, ReadyMarker: marker,
			Network: Network{Mode: NetworkMode(mode), TapDevice: tap, MAC: mac}}
		if disk != "" || format != "" {
			s.Disk = &Disk{Path: disk, Format: format}
		}
		for _, fs := range strings.Split(forwards, ",") {
			if fw, err := ParsePortForward(fs); err == nil {
				s.Network.Forwards = append(s.Network.Forwards, fw)
			} else {
				s.Network.Forwards = append(s.Network.Forwards, PortForward{Protocol: fs, HostPort: uint16(len(fs))})
			}
		}
		err := s.Validate()
		if err != nil && !errors.Is(err, ErrInvalidSpec) {
			t.Fatalf("error without ErrInvalidSpec: %v", err)
		}
		_ = s.Marker()
	})
}
