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
// Attempts run in pooled cgroups ("slots") named ".pool-<worker pid>-<its
// start time>-<n>-<hash of DataDir>" under a "blixard" directory (v2:
// <root>/blixard/...; v1: one directory per hierarchy). The leading '.'
// keeps a slot's name from ever being an attempt ID; the worker's pid and
// start time tell whether the slot's maker is still alive. Making and
// removing a cgroup is costly (a v1 memcg most of all, and its removal goes
// on in kernel workers), so a slot is made once and serves attempt after
// attempt. Start takes an idle slot (or makes one) and writes the memory
// limit (no swap beyond it) only when it differs from the slot's; a CPU
// quota (CFS, 100 ms period) is written even when it is the same, as that
// refills the period's budget, so an attempt does not start throttled by
// what earlier attempts in the slot used. Then it takes this attempt's
// baselines: v1 resets memory.max_usage_in_bytes (writing 0 sets it to the
// current usage), v2 resets memory.peak through a kept-open file (Linux
// 6.12+), and the CPU usage is read so that the attempt's own is the
// difference at its end. The OOM-kill counter is compared with its value
// when the slot was made, as a slot that sees an OOM kill is not reused.
// When the attempt ends, its slot goes back to the pool if nothing of it is
// left in there; a slot that saw an OOM kill, whose limits could not be set,
// whose files could not be read, or (v2 on Linux 5.19 to 6.11, where
// memory.peak cannot be reset) that has served once, is removed instead,
// and so are idle slots beyond 64. Files read or written per attempt are
// kept open, so each is one syscall; v1 cgroup.procs cannot be (the kernel
// caches its pid list per open file, so a re-read would be stale) and is
// opened per read, in one hierarchy only: every process of an attempt is
// born in all of the slot's cgroups. The page cache an attempt leaves
// charged to its slot counts towards the next attempts' usage (and limit,
// though the kernel reclaims it first) until reclaimed. Stop removes the
// pool.
//
// Placement is race-free in both versions: on v2 the child is cloned
// straight into its slot (clone3 with CLONE_INTO_CGROUP, via
// SysProcAttr.UseCgroupFD, with the slot's directory kept open). On v1
// (which allows per-thread membership) every slot has a launcher: a
// goroutine locked to its own OS thread, which moved itself into the
// slot's cgroups when the slot was made and forks each of the slot's
// attempts, so the child is born there, with no thread created and nothing
// written to the tasks files per attempt. The thread is never unlocked: it
// must run nothing else while in the slot, and when the slot is removed the
// thread moves back to the worker's own cgroups (read once at New) and its
// goroutine returns, so the Go runtime destroys it. As the thread is in the
// slot, the worker's own pid is listed in the slot's v1 cgroup.procs; every
// check for processes left and every kill skips it (the OOM killer picks
// processes by their main thread, which is not in the slot, and the
// worker's memory is charged to its main thread's cgroup). The only window
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
// OOMKilled comes from the slot's OOM-kill counter (v2 memory.events, v1
// memory.oom_control), so it is only known with cgroups. PeakMemoryBytes and
// CPUTime come from the slot (v2 memory.peak or sampled memory.current and
// cpu.stat; v1 memory.max_usage_in_bytes and cpuacct.usage), reset or
// baselined when the attempt took it (see Cgroups), which covers every
// process of the attempt and, on v1, the fork by the slot's launcher thread;
// without cgroups, or when a file cannot be read, from the leader's rusage
// (max RSS; user+system time of the leader and the children it waited for).
//
// # Restarts
//
// A worker that was killed and restarted calls Orphans and KillOrphans to
// find and kill the attempts a previous incarnation left running. With
// cgroups they are found through the slots of dead workers over this
// DataDir that still hold processes, which every process of an attempt is
// born into. Each slot has a record, DataDir/tasks/.slots/<slot>, naming
// the attempt it serves: a fixed-size pwrite of the attempt ID per attempt
// to a file made with the slot, so no file is created per attempt.
// KillOrphans removes such slots and their records. New removes the empty
// slots of every dead worker, whatever its DataDir (a worker killed with -9
// leaves all its idle slots, and where DataDirs are temporary, as in tests,
// no restart would ever come for them), and leaves those of live workers
// and populated ones. Cgroups named "<attemptID>-<hash of DataDir>", as
// workers before the pool made them, are found and cleaned up the same way.
// Without cgroups, DataDir/tasks/<attemptID>/pid records the leader's pid
// and its start time (from /proc/<pid>/stat, to tell it apart from a later
// process reusing the pid) while the attempt runs. Prune deletes finished
// attempts' directories after Config.Retention.
package executor
