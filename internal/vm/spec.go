package vm

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Spec describes one VM.
type Spec struct {
	ID        ID
	VCPUs     int // at least 1
	MemoryMiB int // at least MinMemoryMiB; the kernel must fit (the QEMU driver checks ELF kernels)
	// Kernel is the guest kernel: an uncompressed ELF vmlinux with a PVH
	// entry point (fastest; what internal/vm/image writes) or a bzImage.
	Kernel string
	Initrd string // optional initramfs
	Disk   *Disk  // optional; the guest sees it as /dev/vda
	// Cmdline is appended to the driver's kernel command line (console,
	// panic and clock settings), so a parameter here overrides the
	// driver's.
	Cmdline string
	Network Network
	// StateDir is the VM's own directory (control socket, pid file,
	// console log). Empty means <driver state root>/<ID>.
	StateDir string
	// ReadyMarker is the console line that makes the VM ready; empty means
	// DefaultReadyMarker. A line containing it counts.
	ReadyMarker string
}

// MinMemoryMiB is the smallest MemoryMiB a Spec may ask for. Real kernels
// need more (Debian's cloud kernel occupies about 62 MiB and does not boot
// below 72).
const MinMemoryMiB = 16

// MaxVCPUs is the most VCPUs a Spec may ask for.
const MaxVCPUs = 64

// Disk is a block device for the guest.
type Disk struct {
	Path     string
	Format   string // "raw" (default) or "qcow2"
	ReadOnly bool
}

// NetworkMode selects the guest's network; see the package doc for what
// each gives.
type NetworkMode string

// Network modes.
const (
	NetworkNone NetworkMode = "none"
	NetworkUser NetworkMode = "user"
	NetworkTap  NetworkMode = "tap"
)

// Network configures the guest's one NIC.
type Network struct {
	Mode     NetworkMode   // "" means NetworkNone
	Forwards []PortForward // NetworkUser only
	// TapDevice is the host tap interface (NetworkTap only). It is created
	// if missing (root only) and is not configured.
	TapDevice string
	// MAC is the NIC's address; empty means one derived from the VM's ID
	// (stable across restarts, locally administered).
	MAC string
}

// PortForward relays connections to HostAddr:HostPort on the host to
// GuestPort in the guest (NetworkUser only).
type PortForward struct {
	Protocol  string // "tcp" (default) or "udp"
	HostAddr  string // IP address to listen on; empty means 127.0.0.1
	HostPort  uint16
	GuestPort uint16
}

// String formats f as ParsePortForward reads it.
func (f PortForward) String() string {
	s := fmt.Sprintf("%d:%d", f.HostPort, f.GuestPort)
	if f.HostAddr != "" {
		host := f.HostAddr
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		s = host + ":" + s
	}
	if f.Protocol != "" && f.Protocol != "tcp" {
		s += "/" + f.Protocol
	}
	return s
}

// ParsePortForward reads "[HOSTADDR:]HOSTPORT:GUESTPORT[/PROTO]", e.g.
// "8080:80", "127.0.0.1:5353:53/udp" (the form docker uses).
func ParsePortForward(s string) (PortForward, error) {
	bad := func(why string) (PortForward, error) {
		return PortForward{}, fmt.Errorf("port forward %q: %s (want [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80)", s, why)
	}
	var f PortForward
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		f.Protocol = rest[i+1:]
		rest = rest[:i]
		if f.Protocol != "tcp" && f.Protocol != "udp" {
			return bad("protocol must be tcp or udp")
		}
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return bad("missing ':'")
	}
	guest, hostPart := rest[i+1:], rest[:i]
	host := hostPart
	if j := strings.LastIndexByte(hostPart, ':'); j >= 0 {
		f.HostAddr = strings.TrimSuffix(strings.TrimPrefix(hostPart[:j], "["), "]")
		host = hostPart[j+1:]
	}
	hp, err := strconv.ParseUint(host, 10, 16)
	if err != nil || hp == 0 {
		return bad("host port must be 1-65535")
	}
	gp, err := strconv.ParseUint(guest, 10, 16)
	if err != nil || gp == 0 {
		return bad("guest port must be 1-65535")
	}
	f.HostPort, f.GuestPort = uint16(hp), uint16(gp)
	if f.HostAddr != "" {
		if _, err := netip.ParseAddr(f.HostAddr); err != nil {
			return bad("host address must be an IP address")
		}
	}
	return f, nil
}

// Validate checks the spec's values (not the files it names; drivers do
// that). Every error wraps ErrInvalidSpec and names the field.
func (s *Spec) Validate() error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidSpec}, args...)...))
	}
	if err := s.ID.Validate(); err != nil {
		errs = append(errs, err)
	}
	if s.VCPUs < 1 || s.VCPUs > MaxVCPUs {
		add("vcpus must be 1-%d (got %d)", MaxVCPUs, s.VCPUs)
	}
	if s.MemoryMiB < MinMemoryMiB {
		add("memory must be at least %d MiB (got %d)", MinMemoryMiB, s.MemoryMiB)
	}
	if s.Kernel == "" {
		add("kernel path is required (build one with 'blixard image build')")
	}
	for name, v := range map[string]string{"kernel": s.Kernel, "initrd": s.Initrd, "state dir": s.StateDir} {
		if strings.ContainsAny(v, "\x00\n") {
			add("%s path contains a NUL or newline", name)
		}
	}
	if strings.ContainsAny(s.Cmdline, "\x00\n\r") {
		add("kernel command line contains a NUL or line break")
	}
	if strings.ContainsAny(s.ReadyMarker, "\n\r") || (s.ReadyMarker != "" && strings.TrimSpace(s.ReadyMarker) == "") {
		add("ready marker must be one non-blank line")
	}
	if d := s.Disk; d != nil {
		if d.Path == "" {
			add("disk path is required when a disk is given")
		}
		if strings.ContainsAny(d.Path, "\x00\n") {
			add("disk path contains a NUL or newline")
		}
		switch d.Format {
		case "", "raw", "qcow2":
		default:
			add("disk format must be raw or qcow2 (got %q)", d.Format)
		}
	}
	if err := s.Network.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Marker returns the readiness marker in effect.
func (s *Spec) Marker() string {
	if s.ReadyMarker == "" {
		return DefaultReadyMarker
	}
	return s.ReadyMarker
}

// Validate checks that id is usable as a VM name and directory name.
func (id ID) Validate() error {
	if id == "" {
		return fmt.Errorf("%w: id is required", ErrInvalidSpec)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: id %q is longer than %d bytes", ErrInvalidSpec, id, MaxIDLen)
	}
	for i, c := range []byte(id) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return fmt.Errorf("%w: id %q: only letters, digits and . _ - allowed, starting with a letter or digit", ErrInvalidSpec, id)
		}
	}
	return nil
}

func (n *Network) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: network: "+format, append([]any{ErrInvalidSpec}, args...)...)
	}
	if n.MAC != "" && !validMAC(n.MAC) {
		return bad("mac %q is not of the form 52:54:00:12:34:56", n.MAC)
	}
	switch n.Mode {
	case "", NetworkNone:
		if len(n.Forwards) > 0 || n.TapDevice != "" {
			return bad("port forwards and tap device need a network mode (user or tap)")
		}
		if n.MAC != "" {
			return bad("mac needs a network mode (user or tap)")
		}
	case NetworkUser:
		if n.TapDevice != "" {
			return bad("tap device is only for mode tap")
		}
		seen := map[string]bool{}
		for _, f := range n.Forwards {
			if f.HostPort == 0 || f.GuestPort == 0 {
				return bad("port forward %s: ports must be 1-65535", f)
			}
			switch f.Protocol {
			case "", "tcp", "udp":
			default:
				return bad("port forward %s: protocol must be tcp or udp", f)
			}
			if f.HostAddr != "" {
				if _, err := netip.ParseAddr(f.HostAddr); err != nil {
					return bad("port forward %s: host address must be an IP address", f)
				}
			}
			key := fmt.Sprintf("%s/%s/%d", f.Protocol, f.HostAddr, f.HostPort)
			if f.Protocol == "" {
				key = fmt.Sprintf("tcp/%s/%d", f.HostAddr, f.HostPort)
			}
			if seen[key] {
				return bad("host port %d is forwarded twice", f.HostPort)
			}
			seen[key] = true
		}
	case NetworkTap:
		if len(n.Forwards) > 0 {
			return bad("port forwards are only for mode user (a tap device is reachable directly)")
		}
		if !validIfName(n.TapDevice) {
			return bad("mode tap needs a tap device name of 1-15 letters, digits, '-', '_' or '.' (got %q)", n.TapDevice)
		}
	default:
		return bad("mode must be none, user or tap (got %q)", n.Mode)
	}
	return nil
}

func validIfName(s string) bool {
	if len(s) == 0 || len(s) > 15 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func validMAC(s string) bool {
	if len(s) != 17 {
		return false
	}
	for i, c := range []byte(s) {
		if i%3 == 2 {
			if c != ':' {
				return false
			}
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	// The low bit of the first octet marks multicast, which a NIC cannot use.
	first, _ := strconv.ParseUint(s[:2], 16, 8)
	return first&1 == 0
}
