//go:build !race

package sim_test

// The full budget, measured in docs/RELIABILITY.md.
const (
	defaultSeeds       = 200
	defaultOps         = 2000
	defaultBrokenSeeds = 20
)
