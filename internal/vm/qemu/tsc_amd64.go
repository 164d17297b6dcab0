package qemu

import (
	"runtime"
	"slices"
	"time"
)

// rdtsc reads the CPU's time-stamp counter (tsc_amd64.s).
func rdtsc() uint64

// measureTSCKHz measures the host's TSC frequency against the monotonic
// clock. Under TCG the guest's TSC is the host's (QEMU returns host
// RDTSC values), and a guest that calibrates it itself can hang or get it
// wrong under load, so the driver passes tsc_early_khz. The median of
// three 10 ms samples is accurate to well under 1%; 0 means the result was
// implausible and no value should be passed.
func measureTSCKHz() int {
	// Stay on one CPU so both reads come from the same counter (they are
	// synchronized on hosts with constant_tsc, but this costs nothing).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var samples []int
	for range 3 {
		t0, c0 := time.Now(), rdtsc()
		time.Sleep(10 * time.Millisecond)
		c1, t1 := rdtsc(), time.Now()
		ns := t1.Sub(t0).Nanoseconds()
		if c1 <= c0 || ns <= 0 {
			continue
		}
		samples = append(samples, int((c1-c0)*1e6/uint64(ns)))
	}
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	khz := samples[len(samples)/2]
	if khz < 100_000 || khz > 20_000_000 { // outside 100 MHz–20 GHz
		return 0
	}
	return khz
}
