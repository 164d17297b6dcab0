package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Fuzz targets for the CLI's flag parsers: whatever a user types is
// accepted or refused with a usage error (exit code 2), never a panic.

func isUsage(err error) bool {
	var ce *cliError
	return errors.As(err, &ce) && ce.code == exitUsage
}

// FuzzParsePort: --port HOST:GUEST[/tcp|/udp]. What parses is in range and
// prints back (HOST:GUEST/PROTO) to the same forward.
func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"8080:80", "5353:53/udp", "22:22/tcp", "0:80", "65536:1", "80", "80:80/sctp", "1:2:3", "+1:1", "80:80/udp/tcp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parsePort(s)
		if err != nil {
			if !isUsage(err) {
				t.Fatalf("%q: not a usage error: %v", s, err)
			}
			return
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 || (p.Protocol != "tcp" && p.Protocol != "udp") {
			t.Fatalf("%q parsed to %v", s, p)
		}
		again, err := parsePort(fmt.Sprintf("%d:%d/%s", p.HostPort, p.GuestPort, p.Protocol))
		if err != nil || again.HostPort != p.HostPort || again.GuestPort != p.GuestPort || again.Protocol != p.Protocol {
			t.Fatalf("%q parsed to %v, which does not parse back: %v %v", s, p, again, err)
		}
	})
}

// FuzzParsePairs: --env / --constraint KEY=VALUE (one value per flag;
// split on newlines here to fuzz several). What parses has no empty or
// duplicate key, and each value is exactly what followed the first '='.
func FuzzParsePairs(f *testing.F) {
	f.Add("A=b\nPATH=/bin:/usr/bin", false)
	f.Add("zone=eu-1\ndisk=ssd", true)
	f.Add("=v\nk", false)
	f.Add("a=1\na=2", true)
	f.Add("k=v=w\nx=\x00", false)
	f.Fuzz(func(t *testing.T, in string, labelKeys bool) {
		vals := strings.Split(in, "\n")
		m, err := parsePairs("env", vals, labelKeys, "A=b")
		if err != nil {
			if !isUsage(err) {
				t.Fatalf("not a usage error: %v", err)
			}
			return
		}
		if len(m) != len(vals) {
			t.Fatalf("%d values gave %d pairs", len(vals), len(m))
		}
		for _, v := range vals {
			k, val, _ := strings.Cut(v, "=")
			if k == "" || m[k] != val {
				t.Fatalf("%q: got key %q value %q", v, k, m[k])
			}
		}
	})
}

// FuzzParseLabelsAndCapabilities: --labels k=v,k2=v2 and --capabilities
// a,b of a node.
func FuzzParseLabelsAndCapabilities(f *testing.F) {
	f.Add("zone=eu-1,disk=ssd", "docker,gpu")
	f.Add(" a = b ,c=d", "x, y ,x")
	f.Add("a=1,a=2", ",")
	f.Add("=v,,k", "a b")
	f.Fuzz(func(t *testing.T, labels, caps string) {
		if m, err := parseLabels([]string{labels}); err != nil {
			if !isUsage(err) {
				t.Fatalf("labels: not a usage error: %v", err)
			}
		} else {
			for k := range m {
				if k == "" || !labelNameOK(k) {
					t.Fatalf("labels %q: key %q accepted", labels, k)
				}
			}
		}
		cs, err := parseCapabilities(strings.Split(caps, ","))
		if err != nil {
			if !isUsage(err) {
				t.Fatalf("capabilities: not a usage error: %v", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, c := range cs {
			if seen[c] || !labelNameOK(c) {
				t.Fatalf("capabilities %q: %q duplicated or invalid in %v", caps, c, cs)
			}
			seen[c] = true
		}
	})
}

// FuzzFlagMillis: duration flags (--timeout, --kill-grace, backoffs) as
// milliseconds. What is accepted is at least 1 ms (or 0 where allowed)
// and converts without changing sign.
func FuzzFlagMillis(f *testing.F) {
	for _, d := range []time.Duration{0, time.Nanosecond, time.Millisecond, 90 * time.Second, -time.Second, 1<<63 - 1, -1 << 63} {
		f.Add(int64(d), true)
		f.Add(int64(d), false)
	}
	f.Fuzz(func(t *testing.T, n int64, allowZero bool) {
		d := time.Duration(n)
		ms, err := flagMillis("timeout", d, allowZero, "30s")
		if err != nil {
			if !isUsage(err) {
				t.Fatalf("%v: not a usage error: %v", d, err)
			}
			return
		}
		if ms < 0 || (ms == 0 && (!allowZero || d != 0)) || time.Duration(ms)*time.Millisecond > d {
			t.Fatalf("%v (allowZero %v) gave %d ms", d, allowZero, ms)
		}
	})
}
