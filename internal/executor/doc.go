// Package executor runs task attempts as real OS processes on a worker.
//
// # Processes and process groups
//
// Every attempt is started in a new process group whose id is the leader's
// pid (Setpgid). Timeouts, Cancel, a done Start context and Stop send
// SIGTERM to the whole group and, if the leader is still there after
// Spec.KillGrace, SIGKILL. The attempt ends when its leader exits: any
// process still in its group (or, with cgroups, still in its cgroup, which
// also catches processes that left the group with setsid) is then SIGKILLed,
// and Handle.Wait returns only once all of them are gone. The leader is
// reaped only after its group is empty: while it is a zombie its pid cannot
// be reused, so signalling the group id can never hit an unrelated process.
// Without cgroups, a process that moved itself to another group or session
// is out of reach and survives the attempt.
//
// The task gets a fresh environment (PATH, HOME, USER, LOGNAME, then
// Spec.Env on top), not the worker's, which may hold credentials. Stdin is
// /dev/null.
//
// # Logs
//
// Stdout and stderr are pipes to the worker, which copies each into
// DataDir/tasks/<attemptID>/{stdout,stderr}. The directory and each file are
// created when the first byte arrives, so an attempt that prints nothing
// creates no file: on ext4 each inode costs about half a millisecond, which
// made file creation the largest cost of a short task and capped throughput
// (docs/BENCHMARKS.md). A file that reaches MaxLogBytes is renamed to
// stdout.1 / stderr.1 (replacing the older one) and a new one is started,
// which is exact and loses nothing. The last TailBytes of each stream are
// kept in memory for the result.
//
// The cost of pipes: if the worker process dies, an attempt's next write
// fails (EPIPE, or SIGPIPE kills it) and what it prints until then is lost.
// Such an attempt is an orphan either way: the restarted worker kills it
// (KillOrphans) and the cluster has already marked it lost. When an attempt
// ends, the worker waits up to a second for the pipes to close; a process
// that escaped the group and the cgroup (possible only without cgroups) and
// still holds them loses its output instead of holding the attempt open.
//
// # Cgroups
//
// Unless disabled, New looks for cgroup v2 (cgroup.controllers at the root)
// and then v1 (memory and cpu hierarchies, cpuacct separate or co-mounted).
// Each attempt gets its own cgroup named "<attemptID>-<hash of DataDir>"
// under a "blixard" directory (v2: <root>/blixard/...; v1: one directory per
// hierarchy), with the memory limit (no swap beyond it) and a CFS CPU quota
// over a 100 ms period. The cgroup is removed when the attempt ends.
//
// Placement is race-free in both versions: on v2 the child is cloned
// straight into its cgroup (clone3 with CLONE_INTO_CGROUP, via
// SysProcAttr.UseCgroupFD). On v1 the launching OS thread moves itself into
// the attempt's cgroups (v1 allows per-thread membership) before forking, so
// the child is born there, and the thread is discarded afterwards (it is
// locked and never unlocked, so the Go runtime destroys it). The only window
// left is on v2 kernels older than 5.7, where the pid is written to
// cgroup.procs right after the fork; a child that forks within those
// microseconds leaves that grandchild outside the cgroup (still in the
// process group, so it is still killed).
//
// If cgroups are not available (not mounted, not writable, not root) the
// executor runs without limits and says so once in the log. With cgroup v2
// but without the memory or cpu controller delegated, that limit is not
// enforced (also logged once).
//
// # What is reported
//
// Result.ExitCode is the exit status, or -1 when the leader was killed by a
// signal, whose name (e.g. "SIGKILL") is then in Result.Signal. TimedOut and
// Cancelled say why the executor terminated it (the first reason wins).
// OOMKilled comes from the cgroup's OOM-kill counter (v2 memory.events, v1
// memory.oom_control), so it is only known with cgroups. PeakMemoryBytes and
// CPUTime come from the cgroup (v2 memory.peak or sampled memory.current and
// cpu.stat; v1 memory.max_usage_in_bytes and cpuacct.usage), which covers
// every process of the attempt; without them, or when a file cannot be read,
// from the leader's rusage (max RSS; user+system time of the leader and the
// children it waited for).
//
// # Restarts
//
// A worker that was killed and restarted calls Orphans and KillOrphans to
// find and kill the attempts a previous incarnation left running. With
// cgroups they are found by their cgroups (named after the attempt and the
// DataDir), which every process of an attempt is born into, so nothing is
// written per attempt. Without cgroups, DataDir/tasks/<attemptID>/pid
// records the leader's pid and its start time (from /proc/<pid>/stat, to
// tell it apart from a later process reusing the pid) while the attempt
// runs. Prune deletes finished attempts' directories after
// Config.Retention.
package executor
