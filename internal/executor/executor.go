package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	defaultMaxLogBytes = 64 << 20
	defaultRetention   = 24 * time.Hour
	defaultTailBytes   = 64 << 10
	defaultKillGrace   = 10 * time.Second
	// defaultMonitorInterval is how often a running attempt's log sizes
	// are checked (and v2 memory.current sampled when memory.peak is
	// missing).
	defaultMonitorInterval = 250 * time.Millisecond
	defaultPath            = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	maxAttemptIDLen        = 128
	pidFileName            = "pid"
)

// ErrSpec marks a start failure caused by the attempt's spec (command not
// found, missing working directory, unknown user, invalid values): the task
// cannot run, but the worker is healthy.
var ErrSpec = errors.New("invalid task spec")

// ErrStopped is returned by Start after Stop.
var ErrStopped = errors.New("executor stopped")

// Config configures an Executor.
type Config struct {
	DataDir        string        // logs go to DataDir/tasks/<attemptID>/{stdout,stderr}, created on the first byte
	MaxLogBytes    int64         // per file, default 64 MiB; at the cap the file becomes stdout.1 (replacing the older one) and a new one starts
	Retention      time.Duration // finished attempts' log dirs older than this are deleted by Prune; default 24h
	TailBytes      int           // bytes of each stream kept in Result; default 64 KiB
	CgroupRoot     string        // default /sys/fs/cgroup; v2 (cgroup.controllers present) or v1 (memory+cpu dirs). A root with no hierarchy at all (empty, as inside `ip netns exec`) means no limits, logged once; an explicit root whose hierarchy cannot be used is an error
	DisableCgroups bool          // tests / hosts without cgroup write access
	Logger         *slog.Logger
}

// Spec describes one attempt.
type Spec struct {
	AttemptID string // unique, filesystem-safe ([A-Za-z0-9._-], not starting with '.'), e.g. "t-123.2"
	Command   string // a path, or a name looked up in the task's PATH
	Args      []string
	Env       map[string]string // on top of PATH, HOME, USER, LOGNAME
	Dir       string            // working directory; "" = the worker's
	CPUMillis int64             // CPU limit in thousandths of a core; 0 = none
	MemoryMiB int64             // memory limit; 0 = none
	Timeout   time.Duration     // 0 = none
	KillGrace time.Duration     // SIGTERM→SIGKILL; 0 = 10s
	User      string            // run as this user (name or uid); "" = the worker's
}

// Result is the outcome of an attempt.
type Result struct {
	ExitCode int    // -1 when killed by a signal or not started
	Signal   string // e.g. "SIGKILL"; "" if exited normally

	TimedOut, Cancelled, OOMKilled bool

	StdoutTail, StderrTail []byte

	PeakMemoryBytes int64
	CPUTime         time.Duration

	StartedAt, FinishedAt time.Time

	// Err is set when the process could not be started (bad command, bad
	// dir, unknown user); Start returns it as an error too.
	Err string
}

// Orphan is an attempt left running by a previous incarnation of the
// worker.
type Orphan struct {
	// AttemptID is the attempt's ID, or, for a cgroup slot whose record
	// is missing or unreadable, the slot's name (which starts with '.', so
	// it is never a valid attempt ID).
	AttemptID string
	// PID is the leader's pid, which is also its process group id; 0 when
	// only the attempt's cgroup is known (always with cgroups, which need
	// no pid file; without, when the worker died before writing it).
	PID int
}

// Executor runs attempts. It is safe for concurrent use.
type Executor struct {
	cfg      Config
	log      *slog.Logger
	tasksDir string
	cg       *cgroupDriver // nil without cgroups
	basePath string        // PATH given to tasks unless Spec.Env sets one
	// monitorInterval is how often cgroup memory is sampled; a field so
	// tests can change it.
	monitorInterval time.Duration

	users userCache

	mu       sync.Mutex
	attempts map[string]*Handle // starting and running
	stopped  bool
	wg       sync.WaitGroup // Start calls in progress and supervisors
}

// New prepares DataDir/tasks and detects cgroups.
func New(cfg Config) (*Executor, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("executor: DataDir is required")
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("executor: data dir %q: %w", cfg.DataDir, err)
	}
	cfg.DataDir = dataDir
	if cfg.MaxLogBytes <= 0 {
		cfg.MaxLogBytes = defaultMaxLogBytes
	}
	if cfg.Retention <= 0 {
		cfg.Retention = defaultRetention
	}
	if cfg.TailBytes <= 0 {
		cfg.TailBytes = defaultTailBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Executor{
		cfg:             cfg,
		log:             cfg.Logger,
		tasksDir:        filepath.Join(dataDir, "tasks"),
		basePath:        os.Getenv("PATH"),
		monitorInterval: defaultMonitorInterval,
		attempts:        make(map[string]*Handle),
	}
	if e.basePath == "" {
		e.basePath = defaultPath
	}
	if mkdirErr := os.MkdirAll(e.tasksDir, 0o755); mkdirErr != nil {
		return nil, fmt.Errorf("executor: create tasks dir: %w", mkdirErr)
	}

	if cfg.DisableCgroups {
		e.log.Info("cgroups disabled by configuration: attempts run without CPU or memory limits")
		return e, nil
	}
	root := cfg.CgroupRoot
	if root == "" {
		root = "/sys/fs/cgroup"
	}
	sum := sha256.Sum256([]byte(dataDir))
	cg, notes, err := detectCgroups(root, hex.EncodeToString(sum[:4]))
	if err != nil {
		if cfg.CgroupRoot != "" && !errors.Is(err, errNoCgroupHierarchy) {
			// An explicitly configured hierarchy that does not work is a
			// misconfiguration, not a host without cgroups.
			return nil, fmt.Errorf("executor: cgroup root %s: %w (fix its permissions or mount, or set DisableCgroups)", root, err)
		}
		e.log.Warn("cgroups unavailable: attempts run without CPU or memory limits; peak memory and CPU time come from rusage", "reason", err.Error())
		return e, nil
	}
	if err := cg.initPool(filepath.Join(e.tasksDir, slotRecordsDir), e.log); err != nil {
		return nil, fmt.Errorf("executor: cgroup slots: %w", err)
	}
	e.cg = cg
	e.log.Info("using cgroups for attempts", "version", cg.version, "root", root)
	for _, n := range notes {
		e.log.Warn("cgroup limit not enforceable", "reason", n)
	}
	return e, nil
}

// LogPath is where an attempt's stdout (or stderr) is written; the rotated
// older part is the same path with ".1". It returns "" for an invalid
// attempt ID.
func (e *Executor) LogPath(attemptID string, stderr bool) string {
	if validAttemptID(attemptID) != nil {
		return ""
	}
	name := "stdout"
	if stderr {
		name = "stderr"
	}
	return filepath.Join(e.tasksDir, attemptID, name)
}

// Running returns the IDs of attempts currently running, sorted.
func (e *Executor) Running() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]string, 0, len(e.attempts))
	for id, h := range e.attempts {
		if h.pid > 0 {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// Stop terminates every running attempt (SIGTERM to each group, SIGKILL
// after its KillGrace; Result.Cancelled), waits until all are gone, and
// removes the pool of cgroup slots (and their launcher threads). Later
// Starts fail with ErrStopped. Stop is idempotent.
func (e *Executor) Stop() {
	e.mu.Lock()
	e.stopped = true
	hs := make([]*Handle, 0, len(e.attempts))
	for _, h := range e.attempts {
		hs = append(hs, h)
	}
	e.mu.Unlock()
	for _, h := range hs {
		h.Cancel()
	}
	e.wg.Wait()
	// No Start is in progress and every attempt has given its slot back.
	if e.cg != nil {
		if err := e.cg.closePool(); err != nil {
			e.log.Warn("removing cgroup slots failed", "err", err)
		}
	}
}

// Start launches an attempt. The attempt is cancelled (as by Cancel) when
// ctx is done. Start always returns a non-nil Handle; when err is non-nil
// the handle is already done and its Result.Err is err's message. Errors
// caused by the spec wrap ErrSpec; a reused attempt ID wraps fs.ErrExist.
// A failed Start leaves nothing behind but, at most, the attempt's empty
// directory (created for the pid file on hosts without cgroups).
func (e *Executor) Start(ctx context.Context, spec Spec) (*Handle, error) {
	h := &Handle{
		e:        e,
		spec:     spec,
		cancelCh: make(chan struct{}),
		done:     make(chan struct{}),
	}
	if err := e.start(ctx, h); err != nil {
		err = fmt.Errorf("start attempt %q: %w", spec.AttemptID, err)
		now := time.Now()
		h.result = Result{ExitCode: -1, Err: err.Error(), StartedAt: now, FinishedAt: now}
		close(h.done)
		return h, err
	}
	return h, nil
}

func (e *Executor) start(ctx context.Context, h *Handle) (retErr error) {
	spec := &h.spec
	if ctx == nil {
		ctx = context.Background()
	}
	if err := validateSpec(spec); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("before start: %w", err)
	}
	h.dir = filepath.Join(e.tasksDir, spec.AttemptID)
	h.adir = &attemptDir{path: h.dir}
	h.log = e.log.With("attempt", spec.AttemptID)

	// Reserve the ID under e.mu so Prune and KillOrphans never see a
	// starting attempt as finished or orphaned. The directory itself is
	// created only when something needs it (output, or the pid file).
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		return ErrStopped
	}
	if _, dup := e.attempts[spec.AttemptID]; dup {
		e.mu.Unlock()
		return fmt.Errorf("attempt is already running: %w", fs.ErrExist)
	}
	if _, err := os.Lstat(h.dir); err == nil {
		e.mu.Unlock()
		return fmt.Errorf("attempt directory already exists (attempt IDs must be unique): %w", fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		e.mu.Unlock()
		return fmt.Errorf("check attempt directory: %w", err)
	}
	e.attempts[spec.AttemptID] = h
	e.wg.Add(1)
	e.mu.Unlock()
	launched := false
	defer func() {
		if !launched {
			e.mu.Lock()
			delete(e.attempts, spec.AttemptID)
			e.mu.Unlock()
			e.wg.Done()
		}
	}()

	// Output goes through pipes to logStreams, which create the log files
	// on the first byte (see logStream for why).
	var pipes [4]*os.File // stdout r, w; stderr r, w
	for i := 0; i < 4; i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("create output pipe: %w", err)
		}
		pipes[i], pipes[i+1] = r, w
	}
	defer func() {
		_ = pipes[1].Close() // the child has its own copies
		_ = pipes[3].Close()
		if !launched {
			_ = pipes[0].Close()
			_ = pipes[2].Close()
		}
	}()
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("open %s for stdin: %w", os.DevNull, err)
	}
	defer stdin.Close()

	sys := &syscall.SysProcAttr{Setpgid: true}
	account, err := e.users.resolve(spec.User, time.Now())
	if err != nil {
		return err
	}
	if account.cred != nil {
		sys.Credential = account.cred
	}
	env := map[string]string{"PATH": e.basePath}
	if account.home != "" {
		env["HOME"] = account.home
	}
	if account.name != "" {
		env["USER"] = account.name
		env["LOGNAME"] = account.name
	}
	for k, v := range spec.Env {
		env[k] = v
	}
	if spec.Dir != "" {
		fi, statErr := os.Stat(spec.Dir)
		if statErr != nil {
			return fmt.Errorf("%w: working directory %q: %w", ErrSpec, spec.Dir, statErr)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: working directory %q is not a directory", ErrSpec, spec.Dir)
		}
	}
	path, err := resolveCommand(spec.Command, spec.Dir, env["PATH"])
	if err != nil {
		return err
	}
	attr := &os.ProcAttr{
		Dir:   spec.Dir,
		Env:   envList(env),
		Files: []*os.File{stdin, pipes[1], pipes[3]},
		Sys:   sys,
	}
	argv := append([]string{spec.Command}, spec.Args...)

	var cg *slot
	slotOK := true // false when starting failed for a reason that may be the slot's
	if e.cg != nil {
		cg, err = e.cg.acquire(spec.AttemptID, spec.MemoryMiB, spec.CPUMillis)
		if err != nil {
			return fmt.Errorf("prepare cgroup: %w", err)
		}
		defer func() {
			if retErr != nil {
				// Nothing was started, or it was killed and reaped: the
				// slot is reusable unless something is left in it.
				if releaseErr := e.cg.release(cg, slotOK && !cg.killListed()); releaseErr != nil {
					h.log.Warn("removing cgroup slot of attempt that failed to start", "err", releaseErr)
				}
			}
		}()
	}

	select {
	case <-h.cancelCh:
		// Stop ran while this attempt was being prepared.
		return ErrStopped
	default:
	}
	var proc *os.Process
	if cg != nil {
		proc, err = cg.start(path, argv, attr)
	} else {
		proc, err = os.StartProcess(path, argv, attr)
	}
	if err != nil {
		err = classifyStartError(spec, err)
		slotOK = errors.Is(err, ErrSpec)
		return err
	}
	startedAt := time.Now()

	// With a cgroup the attempt is found again through it (Orphans lists
	// attempt cgroups), so the pid file is only needed without one; each
	// file created costs an inode allocation on this hot path.
	var err2 error
	if cg == nil {
		var st procStat
		st, err2 = readProcStat(proc.Pid)
		if err2 == nil {
			err2 = h.adir.create()
		}
		if err2 == nil {
			err2 = writePidFile(h.dir, pidState{PID: proc.Pid, StartTicks: st.startTicks})
		}
	}
	if err := err2; err != nil {
		// Without a pid file a worker restart could not find this process,
		// so it must not run.
		h.log.Error("recording pid failed; killing the attempt", "err", err)
		killAndReap(proc, cg)
		return fmt.Errorf("record pid of attempt: %w", err)
	}

	h.proc = proc
	h.cg = cg
	h.startedAt = startedAt
	e.mu.Lock() // Running reads pid under e.mu
	h.pid = proc.Pid
	e.mu.Unlock()
	launched = true
	h.stdout = newLogStream(filepath.Join(h.dir, "stdout"), h.adir.create, e.cfg.MaxLogBytes, e.cfg.TailBytes, h.log, pipes[0])
	h.stderr = newLogStream(filepath.Join(h.dir, "stderr"), h.adir.create, e.cfg.MaxLogBytes, e.cfg.TailBytes, h.log, pipes[2])
	// Both copies end before supervise does (it drains them in finish),
	// so they are covered by its e.wg count.
	go h.stdout.run()
	go h.stderr.run()
	h.log.Debug("attempt started", "pid", proc.Pid, "command", path)
	go h.supervise(ctx)
	return nil
}

// killAndReap ends a process that was started but must not run.
func killAndReap(proc *os.Process, cg *slot) {
	_ = unix.Kill(-proc.Pid, unix.SIGKILL)
	if cg != nil {
		cg.killListed()
	}
	_, _ = proc.Wait()
}

// classifyStartError tells failures caused by the spec (the program cannot
// be executed, the directory cannot be entered) from failures of the
// worker (out of processes, memory, permissions to switch user).
func classifyStartError(spec *Spec, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ENOENT, syscall.EACCES, syscall.ENOEXEC, syscall.ENOTDIR,
			syscall.ELOOP, syscall.ENAMETOOLONG, syscall.ETXTBSY, syscall.EISDIR:
			return fmt.Errorf("%w: run %q: %w", ErrSpec, spec.Command, err)
		}
	}
	return fmt.Errorf("run %q: %w", spec.Command, err)
}

func validAttemptID(id string) error {
	if id == "" {
		return errors.New("attempt ID is empty")
	}
	if len(id) > maxAttemptIDLen {
		return fmt.Errorf("attempt ID is longer than %d bytes", maxAttemptIDLen)
	}
	if id[0] == '.' {
		return fmt.Errorf("attempt ID %q starts with '.'", id)
	}
	for _, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("attempt ID %q has %q; only letters, digits, '.', '_' and '-' are allowed", id, c)
		}
	}
	return nil
}

func validateSpec(s *Spec) error {
	if err := validAttemptID(s.AttemptID); err != nil {
		return fmt.Errorf("%w: %w", ErrSpec, err)
	}
	if s.Command == "" {
		return fmt.Errorf("%w: command is empty", ErrSpec)
	}
	if s.CPUMillis < 0 || s.MemoryMiB < 0 || s.Timeout < 0 || s.KillGrace < 0 {
		return fmt.Errorf("%w: limits, timeout and kill grace must not be negative", ErrSpec)
	}
	for _, a := range append([]string{s.Command, s.Dir, s.User}, s.Args...) {
		if containsNUL(a) {
			return fmt.Errorf("%w: command, arguments, dir and user must not contain NUL bytes", ErrSpec)
		}
	}
	for k, v := range s.Env {
		if k == "" || containsNUL(k) || containsNUL(v) || containsByte(k, '=') {
			return fmt.Errorf("%w: invalid environment variable name %q", ErrSpec, k)
		}
	}
	if s.KillGrace == 0 {
		s.KillGrace = defaultKillGrace
	}
	return nil
}

func containsNUL(s string) bool { return containsByte(s, 0) }

func containsByte(s string, b byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return true
		}
	}
	return false
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// resolveCommand finds the executable the way a shell would, but in the
// task's PATH rather than the worker's, and names what was wrong.
func resolveCommand(command, dir, pathEnv string) (string, error) {
	if containsByte(command, '/') {
		p := command
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%w: command %q: %w", ErrSpec, command, err)
		}
		return p, nil
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, command)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: command %q not found in PATH %q", ErrSpec, command, pathEnv)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", p)
	}
	return nil
}

// userCacheTTL is how long a resolved Spec.User is reused. Looking a user
// up reads /etc/passwd and /etc/group (or asks NSS) on every start, while
// tasks mostly run as one user; a change to the account is seen after
// this long.
const userCacheTTL = 5 * time.Second

// userCache remembers resolveUser's successes by name for userCacheTTL.
// Failures are not cached: an unknown user gets the same error each time
// and a user created meanwhile is found at once.
type userCache struct {
	mu      sync.Mutex
	entries map[string]cachedAccount
}

type cachedAccount struct {
	acc     account
	expires time.Time
}

func (c *userCache) resolve(name string, now time.Time) (account, error) {
	c.mu.Lock()
	ent, ok := c.entries[name]
	c.mu.Unlock()
	if ok && now.Before(ent.expires) {
		return ent.acc, nil
	}
	acc, err := resolveUser(name)
	if err != nil {
		return account{}, err
	}
	c.mu.Lock()
	if c.entries == nil {
		c.entries = make(map[string]cachedAccount)
	}
	// Expired entries go when a lookup misses, so the map holds at most
	// the names used within one TTL.
	for n, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, n)
		}
	}
	c.entries[name] = cachedAccount{acc: acc, expires: now.Add(userCacheTTL)}
	c.mu.Unlock()
	return acc, nil
}

type account struct {
	// cred is shared by every attempt the cached account serves: read
	// only.
	cred       *syscall.Credential // nil: keep the worker's identity
	name, home string
}

// resolveUser maps Spec.User to credentials. Switching to the worker's own
// uid is skipped because setgroups needs privileges a non-root worker lacks.
func resolveUser(name string) (account, error) {
	if name == "" {
		u, err := user.Current()
		if err != nil {
			// A worker uid without a passwd entry (common in containers)
			// still runs tasks; they just get no USER or HOME.
			return account{}, nil
		}
		return account{name: u.Username, home: u.HomeDir}, nil
	}
	var u *user.User
	var err error
	if _, convErr := strconv.ParseUint(name, 10, 32); convErr == nil {
		u, err = user.LookupId(name)
	} else {
		u, err = user.Lookup(name)
	}
	if err != nil {
		return account{}, fmt.Errorf("%w: unknown user %q: %w", ErrSpec, name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return account{}, fmt.Errorf("%w: user %q has non-numeric uid %q", ErrSpec, name, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return account{}, fmt.Errorf("%w: user %q has non-numeric gid %q", ErrSpec, name, u.Gid)
	}
	acc := account{name: u.Username, home: u.HomeDir}
	if int(uid) == os.Getuid() {
		return acc, nil
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(n))
			}
		}
	}
	acc.cred = cred
	return acc, nil
}
