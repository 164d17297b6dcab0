package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/blixard/blixard/internal/fsutil"
	"github.com/blixard/blixard/internal/vm"
)

// record is the driver's vm.json in a VM's state directory. It is
// written before QEMU starts (PID 0) and again once it runs, so a later
// driver can always tell whose process is whose: PID plus start time plus
// the boot it belongs to, and the VM's QMP socket on the process's
// command line. If the driver dies before the second write, QEMU's own
// pid file (written before the guest starts) supplies the PID.
type record struct {
	Version    int       `json:"version"`
	Spec       vm.Spec   `json:"spec"`
	PID        int       `json:"pid"`
	StartTicks uint64    `json:"start_ticks"` // /proc/<pid>/stat starttime
	BootID     string    `json:"boot_id"`
	StartedAt  time.Time `json:"started_at"`
	Accel      string    `json:"accel"`
}

const recordVersion = 1

func writeRecord(p string, r *record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", p, err)
	}
	return fsutil.WriteFileAtomic(p, append(b, '\n'), 0o600)
}

func readRecord(p string) (*record, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	if r.Version != recordVersion {
		return nil, fmt.Errorf("%s: unknown record version %d", p, r.Version)
	}
	return &r, nil
}
