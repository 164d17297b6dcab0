package qemu

import "testing"

func TestMeasuredTSCIsPlausible(t *testing.T) {
	if khz := measureTSCKHz(); khz < 100_000 || khz > 20_000_000 {
		t.Fatalf("TSC %d kHz", khz)
	}
}
