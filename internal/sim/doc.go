// Package sim is a deterministic simulation of a Blixard cluster. It runs
// the production raftnode.Core, state.Machine, worker.Monitor,
// worker.AgentCore, worker.LeaderDuties, worker.RunnerCore, worker.VMCore
// (over the production fake hypervisor, vm.FakeHost) and
// scheduler.FullPass on a simulated clock, network, disk, executor and
// machines, all driven by one goroutine from one seed, and checks raft
// safety, linearizability of the key-value API, the task and VM
// invariants and liveness after the faults heal.
//
// What the production server, raftnode.Node and the worker shells do with
// goroutines and channels (proposal waiters, linearizable reads,
// checkpoints, the loops that call the scheduling pass and the leader
// duties, the agent's tickers and RPCs, and the worker.Runner and
// worker.VMReconciler shells that carry out their cores' actions) is
// re-enacted here as events, following the production code's rules; the
// packages under test need no simulation-only branches.
//
// # Determinism
//
// Every random choice comes from PCG streams seeded by Config.Seed, and
// events at the same sim instant run in the order they were scheduled.
// One source is outside the simulation's reach: etcd raft draws its
// randomized election timeouts from crypto/rand through an unexported
// global. The tests pin it with testing/cryptotest.SetGlobalRandom before
// each run, so a run is only reproducible inside a test binary, and runs
// must not overlap (they share that global).
//
// # Replay
//
// A failing seed replays with
//
//	go test ./internal/sim -run TestSimulation -sim.seed=N -sim.ops=M -sim.trace
//
// which prints every event: ticks aside, which node sent, delivered,
// dropped or duplicated which message, crashes, pauses, partitions, disk
// faults, client operations and their outcomes, scheduler passes and
// worker actions.
package sim
