//go:build race

package sim_test

// Under the race detector every memory access is instrumented and a seed
// costs about 11 times as much. 21 seeds (not 25) since the VM broken
// variant needs 7 seeds of 2,000 operations (docs/RELIABILITY.md, Budget).
const (
	defaultSeeds       = 21
	defaultOps         = 1000
	defaultBrokenSeeds = 6
)
