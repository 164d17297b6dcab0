package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/blixard/blixard/internal/vm/guard"
	"github.com/blixard/blixard/internal/vm/image"
)

// testImage is the guest image TestMain builds once for the whole test
// binary (building takes about a second; every boot test shares it).
var testImage image.Result

// helperEnv makes the test binary act as a short-lived "worker" that
// starts a VM and exits without stopping it (see runHelper).
const helperEnv = "BLIXARD_QEMU_TEST_HELPER"

func TestMain(m *testing.M) {
	// The test binary is also the guard ("blixard vm-guard" in production).
	if len(os.Args) > 1 && os.Args[1] == "vm-guard" {
		os.Exit(guard.Main(os.Args[2:]))
	}
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(runHelper(dir))
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	const hint = "run scripts/test.sh, which installs qemu-system-x86, busybox-static and linux-image-cloud-amd64"
	if _, err := exec.LookPath(defaultQEMU); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %s not found: %s\n", defaultQEMU, hint)
		return 1
	}
	dir, err := os.MkdirTemp("", "blixard-qemu-test-image-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	testImage, err = image.Build(ctx, dir, image.Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: cannot build the guest image: %v\n%s\n", err, hint)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: leaked goroutines: %v\n", err)
			return 1
		}
	}
	return code
}
