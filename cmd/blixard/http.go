package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// httpPortOffset places the default --http-addr next to --listen: the same
// host, port + 80 (--listen 127.0.0.1:7000 serves HTTP on 127.0.0.1:7080),
// so several nodes on one machine get distinct defaults.
const httpPortOffset = 80

const httpAddrUsage = "`HOST:PORT` serving /metrics, /healthz, /readyz and the dashboard; off (or \"\") disables it (default: the --listen host, port + 80)"

// resolveHTTPAddr resolves --http-addr against --listen (already checked): ""
// when off, the derived default when the flag was not given.
func resolveHTTPAddr(fs *pflag.FlagSet, value, listen string) (string, error) {
	lhost, lport, _ := net.SplitHostPort(listen)
	if !fs.Changed("http-addr") {
		p, _ := strconv.Atoi(lport) // 1..65535: --listen was checked
		if p+httpPortOffset > 65535 {
			return "", usageError(fmt.Sprintf("--http-addr has no default for --listen %s (port + %d is past 65535)", listen, httpPortOffset),
				"pass --http-addr HOST:PORT, or --http-addr off")
		}
		return net.JoinHostPort(lhost, strconv.Itoa(p+httpPortOffset)), nil
	}
	v := strings.TrimSpace(value)
	if v == "" || v == "off" {
		return "", nil
	}
	hint := "pass e.g. --http-addr 127.0.0.1:7080, or --http-addr off"
	if p := hostPortProblem(v, false, false); p != "" {
		return "", usageError(fmt.Sprintf("--http-addr %s (got %q)", p, value), hint)
	}
	host, port, _ := net.SplitHostPort(v)
	if port == lport && (host == lhost || isUnspecifiedHost(host) || isUnspecifiedHost(lhost)) {
		return "", usageError(fmt.Sprintf("--http-addr must differ from --listen (both use port %s)", port), hint)
	}
	return v, nil
}

// dashboardURL is where a browser on this machine finds the dashboard.
func dashboardURL(httpAddr string) string {
	host, port, _ := net.SplitHostPort(httpAddr)
	if isUnspecifiedHost(host) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}
