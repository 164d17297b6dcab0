// Package archtest enforces the dependency rule: the state machine and the
// deterministic raft core never import network, process-execution or
// hypervisor packages, so they stay pure and simulatable.
package archtest

import (
	"os/exec"
	"strings"
	"testing"
)

// forbidden import path prefixes for pure packages.
var forbidden = []string{
	"net",
	"os/exec",
	"google.golang.org/grpc",
	"github.com/blixard/blixard/internal/transport",
	"github.com/blixard/blixard/internal/server",
	"github.com/blixard/blixard/internal/executor",
	"github.com/blixard/blixard/internal/vm",
	"github.com/blixard/blixard/internal/observe",
	"github.com/digitalocean/go-qemu",
	"github.com/prometheus",
	"go.opentelemetry.io",
}

// pure lists the packages that must stay free of I/O beyond storage.
var pure = []string{
	"github.com/blixard/blixard/internal/state",
	"github.com/blixard/blixard/internal/scheduler",
	"github.com/blixard/blixard/internal/acl",
}

func TestPurePackagesImportNoNetworkExecOrHypervisor(t *testing.T) {
	for _, pkg := range pure {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "is not in std") || strings.Contains(string(out), "cannot find") || strings.Contains(string(out), "no required module") || strings.Contains(string(out), "matched no packages") {
				continue // package not written yet
			}
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s depends on %s, which the dependency rule forbids", pkg, dep)
				}
			}
		}
	}
}
