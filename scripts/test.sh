#!/usr/bin/env bash
# Runs Blixard's whole test suite. It sets up what the tests need first, so
# a fresh machine runs everything and skips nothing:
#   - system packages (installed with apt-get when missing, as root)
#   - Go modules (downloaded through the Go module proxy)
# Usage: scripts/test.sh            # everything (CI runs exactly this)
#        BLIXARD_TEST_SHORT=1 ...   # skip the slow end-to-end suite
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests use (checked with dpkg, installed when missing).
packages=(gcc git qemu-system-x86 busybox-static linux-image-cloud-amd64)
need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  step "installing system packages: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing ${need[*]} and not root — install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "error: go is not installed — install Go 1.26 or newer (https://go.dev/doc/install)" >&2; exit 1; }

step "go mod download"
go mod download

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "error: gofmt would change: $unformatted — run: gofmt -w ." >&2
  exit 1
fi

step "go vet"
go vet ./...

# Static analysis with pinned tools, installed once into .cache/bin (ignored
# by git) and reinstalled only when a pin changes. Any finding fails the run:
# fix it, or for a staticcheck false positive add one //lint:ignore with the
# reason. shadow (default mode) catches an err declared in an if statement
# that hides the one checked after it (the detectCgroups nil-driver panic).
step "static analysis (staticcheck, shadow)"
staticcheck_version=v0.8.2 # honnef.co/go/tools, staticcheck 2026.2.2
xtools_version=v0.53.0     # golang.org/x/tools, for the shadow analyzer
bin="$(pwd)/.cache/bin"
installed() { [ -x "$bin/$1" ] && go version -m "$bin/$1" | grep -Eq "^[[:space:]]+mod[[:space:]]+$2[[:space:]]+$3([[:space:]]|$)"; }
installed staticcheck honnef.co/go/tools "$staticcheck_version" ||
  GOBIN="$bin" go install "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version"
installed shadow golang.org/x/tools "$xtools_version" ||
  GOBIN="$bin" go install "golang.org/x/tools/go/analysis/passes/shadow/cmd/shadow@$xtools_version"
"$bin/staticcheck" ./...
go vet -vettool="$bin/shadow" ./...

step "unit and package tests (race detector)"
go test -race -count=1 -timeout 15m $(go list ./... | grep -v -e /e2e -e /internal/sim)

# Each fuzz target beyond its seed corpus (which the step above ran), 5 s
# each in CI to stay near two minutes on 2 cores; BLIXARD_FUZZ_TIME
# changes it.
step "fuzzing (scripts/fuzz.sh, ${BLIXARD_FUZZ_TIME:-5s} per target)"
BLIXARD_FUZZ_TIME=${BLIXARD_FUZZ_TIME:-5s} scripts/fuzz.sh

# The simulation is single-goroutine and deterministic; without the race
# detector it runs the full CI budget (200 seeds x 2,000 operations, plus
# the broken variants). -sim.seeds/-sim.seed/-sim.ops change it.
step "deterministic simulation"
go test -count=1 -timeout 15m ./internal/sim/

if [ -z "${BLIXARD_TEST_SHORT:-}" ]; then
  step "end-to-end tests: real blixard processes on loopback"
  go test -count=1 -timeout 20m ./e2e/
fi
step "all tests passed"
