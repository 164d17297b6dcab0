//go:build race

package sim_test

// Under the race detector every memory access is instrumented and a seed
// costs about 11 times as much.
const (
	defaultSeeds       = 25
	defaultOps         = 1000
	defaultBrokenSeeds = 6
)
