package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/blixard/blixard/api/blixardpb"
	rpcpb "github.com/blixard/blixard/api/blixardrpc"
	"github.com/blixard/blixard/internal/state"
)

// defaultVMWait is how long vm create/start/stop/restart/delete wait for
// the VM to get where it was asked to be.
const defaultVMWait = 5 * time.Minute

func (a *app) newVMCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create and manage microVMs",
		Long: `Create and manage microVMs: QEMU microvm guests placed on workers by the
scheduler, started and watched by the worker, restarted by their policy, and
moved to another worker when theirs goes down.`,
		Args: noSubcommand,
		RunE: showHelp,
	}
	cmd.AddCommand(
		a.newVMCreateCmd(),
		a.newVMListCmd(),
		a.newVMStatusCmd(),
		a.newVMDesiredCmd("start", "Start a stopped VM (or a failed one again)", blixardpb.VMDesired_VM_DESIRED_RUNNING, false),
		a.newVMDesiredCmd("stop", "Stop a VM; it keeps its place on its worker", blixardpb.VMDesired_VM_DESIRED_STOPPED, false),
		a.newVMDesiredCmd("restart", "Restart a VM on its worker", blixardpb.VMDesired_VM_DESIRED_RUNNING, true),
		a.newVMDesiredCmd("delete", "Stop a VM and forget it", blixardpb.VMDesired_VM_DESIRED_DELETED, false),
		a.newVMLogsCmd(),
	)
	return cmd
}

// ---------------------------------------------------------------------------
// create

type vmCreateOptions struct {
	vcpus        uint32
	memory       uint32
	kernel       string
	initrd       string
	disk         string
	diskReadonly bool
	cmdline      string
	network      string
	ports        []string
	restart      string
	constraints  []string
	node         uint64
	detach       bool
	wait         time.Duration
}

func (a *app) newVMCreateCmd() *cobra.Command {
	o := &vmCreateOptions{}
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM and wait until it runs",
		Long: `Create a VM named NAME (1 to 63 characters of a-z, 0-9 and '-'; unique in
the cluster). The scheduler places it on a worker with room for its vCPUs
(1000m CPU each) and memory; the worker boots it with QEMU's microvm machine.

The command prints a line as the VM is scheduled, starting and running, and
returns once it runs; with --detach it returns as soon as the VM is
recorded. It fails (exit code 1) if the VM fails to start or is not running
within --timeout; the VM then stays in the cluster (see 'vm status', or
'vm delete' it).

Without --kernel the worker boots its default guest image (blixard node
--vm-image, built on first use when not given). Paths are on the worker.`,
		Example: `  blixard vm create web --memory 256 --port 8080:80
  blixard vm create db --vcpus 2 --memory 1024 --disk /srv/db.img --restart on-failure --constraint zone=eu-1
  blixard vm create job --kernel /srv/vmlinux --initrd /srv/initrd.img --cmdline "quiet" --restart never --detach`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := o.spec(cmd, args[0])
			if err != nil {
				return err
			}
			return a.runVMCreate(cmd, spec, o.detach, o.wait)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.Uint32Var(&o.vcpus, "vcpus", state.DefaultVMVCPUs, fmt.Sprintf("virtual CPUs, 1 to %d; each reserves 1000m CPU on the worker", state.MaxVMVCPUs))
	fs.Uint32Var(&o.memory, "memory", state.DefaultVMMemoryMiB, fmt.Sprintf("guest memory in `MiB`, at least %d", state.MinVMMemoryMiB))
	fs.StringVar(&o.kernel, "kernel", "", "kernel `PATH` on the worker (default: the worker's guest image)")
	fs.StringVar(&o.initrd, "initrd", "", "initrd `PATH` on the worker")
	fs.StringVar(&o.disk, "disk", "", "disk image `PATH` on the worker (optional)")
	fs.BoolVar(&o.diskReadonly, "disk-readonly", false, "attach --disk read-only")
	fs.StringVar(&o.cmdline, "cmdline", "", "extra kernel command line")
	fs.StringVar(&o.network, "network", state.NetworkUser, "networking: user (unprivileged, with --port forwards), none, or tap (root)")
	fs.StringArrayVar(&o.ports, "port", nil, "forward worker port HOST to guest port GUEST: `HOST:GUEST[/udp]` (repeatable)")
	fs.StringVar(&o.restart, "restart", "always", "restart `POLICY` when the VM stops by itself: always, on-failure or never")
	fs.StringArrayVar(&o.constraints, "constraint", nil, "run only on workers with label `KEY=VALUE` (repeatable)")
	fs.Uint64Var(&o.node, "node", 0, "run only on worker `ID` (default 0: any)")
	fs.BoolVarP(&o.detach, "detach", "d", false, "return once the VM is recorded, without waiting for it to run")
	fs.DurationVar(&o.wait, "timeout", defaultVMWait, "give up waiting for the VM to run after this long")
	expect(fs, "vcpus", fmt.Sprintf("a number of vCPUs between 1 and %d", state.MaxVMVCPUs))
	expect(fs, "memory", "a number of MiB")
	expect(fs, "node", "a worker ID (a non-negative integer)")
	return cmd
}

// vmFlagOf names the create flag that sets a VMSpec field, for errors.
var vmFlagOf = map[string]string{
	"vcpus": "--vcpus", "memory_mib": "--memory", "kernel": "--kernel", "initrd": "--initrd", "disk": "--disk",
	"disk_readonly": "--disk-readonly", "cmdline": "--cmdline", "network": "--network", "restart": "--restart",
	"ports": "--port", "constraints": "--constraint", "node": "--node",
}

// restartPolicies maps --restart values to the policy.
var restartPolicies = map[string]blixardpb.RestartPolicy{
	"always":     blixardpb.RestartPolicy_RESTART_POLICY_ALWAYS,
	"on-failure": blixardpb.RestartPolicy_RESTART_POLICY_ON_FAILURE,
	"never":      blixardpb.RestartPolicy_RESTART_POLICY_NEVER,
}

func restartName(p blixardpb.RestartPolicy) string {
	switch p {
	case blixardpb.RestartPolicy_RESTART_POLICY_UNSPECIFIED, blixardpb.RestartPolicy_RESTART_POLICY_ALWAYS:
		return "always"
	case blixardpb.RestartPolicy_RESTART_POLICY_ON_FAILURE:
		return "on-failure"
	case blixardpb.RestartPolicy_RESTART_POLICY_NEVER:
		return "never"
	}
	return strings.ToLower(p.String())
}

// checkVMName checks a NAME argument.
func checkVMName(name string) error {
	if state.ValidVMName(name) {
		return nil
	}
	return usageError(fmt.Sprintf("NAME %q is not a valid VM name", name),
		fmt.Sprintf("use 1 to %d characters of a-z, 0-9 and '-', starting and ending with a letter or digit", state.MaxVMNameLen))
}

// parsePort parses HOST:GUEST[/tcp|/udp].
func parsePort(v string) (*blixardpb.PortForward, error) {
	hint := "pass --port HOST:GUEST, e.g. --port 8080:80 or --port 5353:53/udp"
	spec, proto, hasProto := strings.Cut(v, "/")
	if !hasProto {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return nil, usageError(fmt.Sprintf("--port %q: protocol must be tcp or udp (got %q)", v, proto), hint)
	}
	host, guest, ok := strings.Cut(spec, ":")
	if !ok {
		return nil, usageError(fmt.Sprintf("--port %q is not HOST:GUEST", v), hint)
	}
	num := func(what, s string) (uint32, error) {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n < 1 || n > 65535 {
			return 0, usageError(fmt.Sprintf("--port %q: %s port must be a number between 1 and 65535 (got %q)", v, what, s), hint)
		}
		return uint32(n), nil
	}
	hp, err := num("host", host)
	if err != nil {
		return nil, err
	}
	gp, err := num("guest", guest)
	if err != nil {
		return nil, err
	}
	return &blixardpb.PortForward{HostPort: hp, GuestPort: gp, Protocol: proto}, nil
}

// spec builds the VMSpec from the flags and checks it the way the cluster
// will, so bad input fails here, before anything is sent.
func (o *vmCreateOptions) spec(cmd *cobra.Command, name string) (*blixardpb.VMSpec, error) {
	if err := checkVMName(name); err != nil {
		return nil, err
	}
	if o.wait <= 0 {
		return nil, usageError(fmt.Sprintf("--timeout must be a positive duration (got %q)", o.wait.String()), "pass e.g. --timeout 2m")
	}
	// 0 would read as "the default" further on; here it is a mistake.
	if o.vcpus == 0 {
		return nil, usageError(fmt.Sprintf("--vcpus must be between 1 and %d (got 0)", state.MaxVMVCPUs), helpHint(cmd))
	}
	if o.memory == 0 {
		return nil, usageError(fmt.Sprintf("--memory must be between %d and %d MiB (got 0)", state.MinVMMemoryMiB, state.MaxVMMemoryMiB), helpHint(cmd))
	}
	policy, ok := restartPolicies[o.restart]
	if !ok {
		return nil, usageError(fmt.Sprintf(`--restart must be "always", "on-failure" or "never" (got %q)`, o.restart), helpHint(cmd))
	}
	switch o.network {
	case state.NetworkUser, state.NetworkNone, state.NetworkTap:
	default:
		return nil, usageError(fmt.Sprintf(`--network must be "user", "none" or "tap" (got %q)`, o.network), helpHint(cmd))
	}
	constraints, err := parsePairs("constraint", o.constraints, true, "zone=eu-1")
	if err != nil {
		return nil, err
	}
	s := &blixardpb.VMSpec{
		Name: name, Vcpus: o.vcpus, MemoryMib: o.memory, Kernel: o.kernel, Initrd: o.initrd, Disk: o.disk,
		DiskReadonly: o.diskReadonly, Cmdline: o.cmdline, Network: o.network, Restart: policy, Node: o.node,
	}
	if len(constraints) > 0 {
		s.Constraints = constraints
	}
	for _, p := range o.ports {
		pf, err := parsePort(p)
		if err != nil {
			return nil, err
		}
		s.Ports = append(s.Ports, pf)
	}
	if err := state.ValidateVMSpec(state.NormalizeVMSpec(s)); err != nil {
		return nil, fieldUsageError(cmd, err)
	}
	return s, nil
}

// fieldUsageError turns a spec FieldError into a usage error naming the
// flag.
func fieldUsageError(cmd *cobra.Command, err error) error {
	var fe *state.FieldError
	if errors.As(err, &fe) {
		flag := vmFlagOf[fe.Field]
		if flag == "" {
			flag = fe.Field
		}
		return usageError(flag+" "+fe.Msg, helpHint(cmd))
	}
	return usageError(err.Error(), helpHint(cmd))
}

func (a *app) runVMCreate(cmd *cobra.Command, spec *blixardpb.VMSpec, detach bool, wait time.Duration) error {
	vc, err := a.dialVMs(cmd)
	if err != nil {
		return err
	}
	defer vc.close()
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	resp, err := vc.c.CreateVM(ctx, &blixardpb.CreateVMRequest{Spec: spec})
	cancel()
	if err != nil {
		return vc.createErr(err, spec.Name)
	}
	out := cmd.OutOrStdout()
	if detach {
		if a.jsonOutput() {
			return writeJSON(out, toVMJSON(resp.GetVm()))
		}
		fmt.Fprintf(out, "vm %s created (%s)\n", spec.Name, vmStateName(resp.GetVm().GetState()))
		return nil
	}
	if !a.jsonOutput() {
		fmt.Fprintf(out, "vm %s created\n", spec.Name)
	}
	vm, err := vc.waitFor(cmd, spec.Name, wait, untilRunning(resp.GetVm(), false))
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		return writeJSON(out, toVMJSON(vm))
	}
	return nil
}

// ---------------------------------------------------------------------------
// start, stop, restart, delete

func (a *app) newVMDesiredCmd(verb, short string, desired blixardpb.VMDesired, restart bool) *cobra.Command {
	var detach bool
	var wait time.Duration
	until := map[string]string{"start": "it runs", "stop": "its worker reports it stopped", "restart": "it runs again", "delete": "its worker has stopped it and it is gone"}[verb]
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Long: fmt.Sprintf(`%s. The command waits until %s, printing progress, unless
--detach is given; it fails (exit code 1) if that does not happen within
--timeout.`, short, until),
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkVMName(name); err != nil {
				return err
			}
			if wait <= 0 {
				return usageError(fmt.Sprintf("--timeout must be a positive duration (got %q)", wait.String()), "pass e.g. --timeout 2m")
			}
			return a.runVMDesired(cmd, name, verb, desired, restart, detach, wait)
		},
	}
	fs := cmd.Flags()
	fs.BoolVarP(&detach, "detach", "d", false, "return once the request is recorded, without waiting")
	fs.DurationVar(&wait, "timeout", defaultVMWait, "give up waiting after this long")
	return cmd
}

func (a *app) runVMDesired(cmd *cobra.Command, name, verb string, desired blixardpb.VMDesired, restart, detach bool, wait time.Duration) error {
	vc, err := a.dialVMs(cmd)
	if err != nil {
		return err
	}
	defer vc.close()
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	var before *blixardpb.VM
	var resp *blixardpb.VMResponse
	got, err := vc.c.GetVM(ctx, &blixardpb.GetVMRequest{Name: name})
	if err == nil {
		before = got.GetVm()
		resp, err = vc.c.SetVMDesired(ctx, &blixardpb.SetVMDesiredRequest{Name: name, Desired: desired, Restart: restart})
	}
	cancel()
	if err != nil {
		return vc.mapErr(err, name)
	}
	out := cmd.OutOrStdout()
	done := verb + " requested"
	switch {
	case resp.GetRemoved():
		if a.jsonOutput() {
			return writeJSON(out, toVMJSON(resp.GetVm()))
		}
		fmt.Fprintf(out, "vm %s deleted\n", name)
		return nil
	case detach:
		if a.jsonOutput() {
			return writeJSON(out, toVMJSON(resp.GetVm()))
		}
		fmt.Fprintf(out, "vm %s: %s\n", name, done)
		return nil
	}
	if verb == "start" && before.GetState() == blixardpb.VMState_VM_STATE_RUNNING &&
		before.GetDesired() == blixardpb.VMDesired_VM_DESIRED_RUNNING {
		// Nothing changes: waiting for a new run would wait forever.
		if a.jsonOutput() {
			return writeJSON(out, toVMJSON(resp.GetVm()))
		}
		fmt.Fprintf(out, "vm %s is already running on worker %d\n", name, before.GetWorkerId())
		return nil
	}
	if !a.jsonOutput() {
		fmt.Fprintf(out, "vm %s: %s\n", name, done)
	}
	var cond waitCond
	switch verb {
	case "stop":
		cond = untilStopped
	case "delete":
		cond = untilRemoved
	default:
		// A restart, or a start of a failed VM (which the cluster restarts),
		// must see a new run: the old state does not count.
		cond = untilRunning(before, restart || before.GetState() == blixardpb.VMState_VM_STATE_FAILED)
	}
	vm, err := vc.waitFor(cmd, name, wait, cond)
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		return writeJSON(out, toVMJSON(vm))
	}
	return nil
}

// ---------------------------------------------------------------------------
// waiting with progress

// waitCond looks at one update and says whether the wait is over, and if
// it is over badly, why (what, hint).
type waitCond func(vm *blixardpb.VM, removed, sawChange bool) (done bool, what, hint string)

// untilRunning is done when the VM runs. With fresh set (restart, or start
// of a running VM) a run that began before the command does not count: it
// must have started again (a new started_at, or a state other than
// running seen first).
func untilRunning(before *blixardpb.VM, fresh bool) waitCond {
	return func(vm *blixardpb.VM, removed, sawChange bool) (bool, string, string) {
		name := vm.GetSpec().GetName()
		status := fmt.Sprintf("see 'blixard vm status %s' and 'blixard vm logs %s'", name, name)
		if removed {
			return true, fmt.Sprintf("vm %s was deleted before it ran", name), "create it again if needed"
		}
		switch vm.GetState() {
		case blixardpb.VMState_VM_STATE_RUNNING:
			if !fresh || sawChange || vm.GetStartedAtUnixNano() != before.GetStartedAtUnixNano() {
				return true, "", ""
			}
		case blixardpb.VMState_VM_STATE_FAILED:
			if !fresh || sawChange || before.GetState() != blixardpb.VMState_VM_STATE_FAILED {
				return true, fmt.Sprintf("vm %s failed on worker %d: %s", name, vm.GetWorkerId(), orNone(vm.GetReason())), "fix the cause, then 'blixard vm start " + name + "'; " + status
			}
		case blixardpb.VMState_VM_STATE_STOPPED:
			if vm.GetDesired() != blixardpb.VMDesired_VM_DESIRED_RUNNING {
				return true, fmt.Sprintf("vm %s was stopped before it ran", name), "start it with 'blixard vm start " + name + "'"
			}
		}
		if vm.GetDesired() == blixardpb.VMDesired_VM_DESIRED_DELETED {
			return true, fmt.Sprintf("vm %s is being deleted", name), "create it again once it is gone"
		}
		return false, "", ""
	}
}

func untilStopped(vm *blixardpb.VM, removed, _ bool) (bool, string, string) {
	name := vm.GetSpec().GetName()
	switch {
	case removed:
		return true, fmt.Sprintf("vm %s was deleted", name), "nothing to stop"
	case vm.GetState() == blixardpb.VMState_VM_STATE_STOPPED || vm.GetState() == blixardpb.VMState_VM_STATE_FAILED:
		return true, "", ""
	case vm.GetDesired() != blixardpb.VMDesired_VM_DESIRED_STOPPED:
		return true, fmt.Sprintf("vm %s was asked to be %s meanwhile", name, vmDesiredName(vm.GetDesired())), fmt.Sprintf("see 'blixard vm status %s'", name)
	}
	return false, "", ""
}

func untilRemoved(_ *blixardpb.VM, removed, _ bool) (bool, string, string) {
	return removed, "", ""
}

func orNone(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// progressLine describes vm for the progress output.
func progressLine(vm *blixardpb.VM) string {
	name := vm.GetSpec().GetName()
	switch vm.GetState() {
	case blixardpb.VMState_VM_STATE_PENDING:
		if vm.GetReason() != "" {
			return fmt.Sprintf("vm %s pending: %s", name, vm.GetReason())
		}
		return fmt.Sprintf("vm %s pending", name)
	case blixardpb.VMState_VM_STATE_SCHEDULED:
		return fmt.Sprintf("vm %s scheduled on worker %d", name, vm.GetWorkerId())
	case blixardpb.VMState_VM_STATE_STARTING:
		return fmt.Sprintf("vm %s starting on worker %d", name, vm.GetWorkerId())
	case blixardpb.VMState_VM_STATE_RUNNING:
		return fmt.Sprintf("vm %s running on worker %d", name, vm.GetWorkerId())
	case blixardpb.VMState_VM_STATE_STOPPING:
		return fmt.Sprintf("vm %s stopping on worker %d", name, vm.GetWorkerId())
	case blixardpb.VMState_VM_STATE_STOPPED:
		if vm.GetWorkerId() == 0 {
			return fmt.Sprintf("vm %s stopped", name)
		}
		return fmt.Sprintf("vm %s stopped on worker %d", name, vm.GetWorkerId())
	case blixardpb.VMState_VM_STATE_FAILED:
		return fmt.Sprintf("vm %s failed on worker %d: %s", name, vm.GetWorkerId(), orNone(vm.GetReason()))
	}
	return fmt.Sprintf("vm %s %s", name, vmStateName(vm.GetState()))
}

// waitFor follows the VM with WaitVM until cond says done, printing a
// progress line per change (table output only). Broken streams are
// re-opened until the deadline.
func (vc *vmConn) waitFor(cmd *cobra.Command, name string, limit time.Duration, cond waitCond) (*blixardpb.VM, error) {
	base, stop := interruptible(cmd.Context())
	defer stop()
	ctx, cancel := context.WithTimeout(base, limit)
	defer cancel()
	out := cmd.OutOrStdout()
	var last *blixardpb.VM
	lastLine := ""
	sawChange := false
	first := true
	bo := retryBackoff
	for {
		stream, err := vc.c.WaitVM(ctx, &blixardpb.WaitVMRequest{Name: name})
		for err == nil {
			var m *blixardpb.VMResponse
			m, err = stream.Recv()
			if err != nil {
				break
			}
			bo.reset()
			vm := m.GetVm()
			if !first && last != nil && (vm.GetState() != last.GetState() || vm.GetStartedAtUnixNano() != last.GetStartedAtUnixNano()) {
				sawChange = true
			}
			first = false
			last = vm
			if !vc.a.jsonOutput() && !m.GetRemoved() {
				if l := progressLine(vm); l != lastLine {
					fmt.Fprintln(out, l)
					lastLine = l
				}
			}
			done, what, hint := cond(vm, m.GetRemoved(), sawChange)
			if m.GetRemoved() && !vc.a.jsonOutput() && what == "" {
				fmt.Fprintf(out, "vm %s deleted\n", name)
			}
			if done {
				if what != "" {
					return vm, failure(what, hint)
				}
				return vm, nil
			}
			if m.GetRemoved() {
				return vm, failure(fmt.Sprintf("vm %s is gone", name), "see 'blixard vm list'")
			}
		}
		switch {
		case base.Err() != nil:
			return nil, &cliError{code: exitInterrupted, what: "interrupted", hint: fmt.Sprintf("vm %s carries on; see 'blixard vm status %s'", name, name)}
		case ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded:
			// The server may end the stream at the deadline a moment
			// before this side's context notices.
			return nil, vc.timedOut(cmd, name, limit, last)
		case status.Code(err) == codes.NotFound:
			// The record went before the stream opened (a delete the
			// worker finished quickly): that is a removal, not an error.
			gone := last
			if gone == nil {
				gone = &blixardpb.VM{Spec: &blixardpb.VMSpec{Name: name}}
			}
			done, what, hint := cond(gone, true, sawChange)
			switch {
			case done && what == "":
				if !vc.a.jsonOutput() {
					fmt.Fprintf(out, "vm %s deleted\n", name)
				}
				return gone, nil
			case done:
				return gone, failure(what, hint)
			}
			return gone, failure(fmt.Sprintf("vm %s is gone", name), "see 'blixard vm list'")
		case errors.Is(err, io.EOF) || vc.retryable(status.Code(err)):
			if sleepCtx(ctx, bo.next()) != nil {
				continue // the next round reports the deadline or interrupt
			}
		default:
			return nil, vc.mapErr(err, name)
		}
	}
}

// timedOut is the error when the wait limit passes: it says where the VM
// got to and why it waits, asking the cluster once more for the reason.
func (vc *vmConn) timedOut(cmd *cobra.Command, name string, limit time.Duration, last *blixardpb.VM) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), vc.a.timeout)
	defer cancel()
	if r, err := vc.c.GetVM(ctx, &blixardpb.GetVMRequest{Name: name}); err == nil {
		last = r.GetVm()
	}
	where := ""
	if last != nil {
		where = " (" + strings.TrimPrefix(progressLine(last), "vm "+name+" ") + ")"
	}
	return failure(fmt.Sprintf("vm %s did not get there within %s%s", name, limit, where),
		fmt.Sprintf("it stays in the cluster and keeps converging; see 'blixard vm status %s', wait longer with --timeout, or 'blixard vm delete %s'", name, name))
}

// ---------------------------------------------------------------------------
// list, status, logs

func (a *app) newVMListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List VMs",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, func(ctx context.Context, c rpcpb.ClusterClient) (*blixardpb.ListVMsResponse, error) {
				return c.ListVMs(ctx, &blixardpb.ListVMsRequest{})
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.jsonOutput() {
				list := []vmJSON{}
				for _, vm := range resp.GetVms() {
					list = append(list, toVMJSON(vm))
				}
				return writeJSON(out, list)
			}
			tw := newTable(out)
			fmt.Fprintln(tw, "NAME\tSTATE\tDESIRED\tWORKER\tVCPUS\tMEMORY\tRESTARTS\tAGE\tREASON")
			now := a.now()
			for _, vm := range resp.GetVms() {
				worker := "-"
				if vm.GetWorkerId() != 0 {
					worker = strconv.FormatUint(vm.GetWorkerId(), 10)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%d\t%s\t%s\n", vm.GetSpec().GetName(), vmStateName(vm.GetState()),
					vmDesiredName(vm.GetDesired()), worker, vm.GetSpec().GetVcpus(), vm.GetSpec().GetMemoryMib(), vm.GetRestarts(),
					age(now, time.Unix(0, vm.GetCreatedAtUnixNano())), vm.GetReason())
			}
			return flushTable(tw)
		},
	}
}

func (a *app) newVMStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status NAME",
		Short: "Show one VM",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkVMName(name); err != nil {
				return err
			}
			vc, err := a.dialVMs(cmd)
			if err != nil {
				return err
			}
			defer vc.close()
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			resp, err := vc.c.GetVM(ctx, &blixardpb.GetVMRequest{Name: name})
			if err != nil {
				return vc.mapErr(err, name)
			}
			j := toVMJSON(resp.GetVm())
			out := cmd.OutOrStdout()
			if a.jsonOutput() {
				return writeJSON(out, j)
			}
			return writeVMStatus(out, j)
		},
	}
}

func writeVMStatus(out io.Writer, j vmJSON) error {
	tw := newTable(out)
	str := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	worker := "-"
	if j.Worker != 0 {
		worker = strconv.FormatUint(j.Worker, 10)
	}
	fmt.Fprintf(tw, "name:\t%s\n", j.Name)
	fmt.Fprintf(tw, "state:\t%s\n", j.State)
	fmt.Fprintf(tw, "desired:\t%s\n", j.Desired)
	fmt.Fprintf(tw, "worker:\t%s\n", worker)
	fmt.Fprintf(tw, "reason:\t%s\n", str(j.Reason))
	fmt.Fprintf(tw, "vcpus:\t%d\n", j.VCPUs)
	fmt.Fprintf(tw, "memory:\t%d MiB\n", j.MemoryMiB)
	fmt.Fprintf(tw, "restart policy:\t%s\n", j.RestartPolicy)
	fmt.Fprintf(tw, "restarts:\t%d\n", j.Restarts)
	fmt.Fprintf(tw, "started at:\t%s\n", str(j.StartedAt))
	fmt.Fprintf(tw, "created at:\t%s\n", str(j.CreatedAt))
	fmt.Fprintf(tw, "network:\t%s\n", j.Network)
	var ports []string
	for _, p := range j.Ports {
		ports = append(ports, fmt.Sprintf("%d:%d/%s", p.Host, p.Guest, p.Protocol))
	}
	if len(ports) > 0 {
		fmt.Fprintf(tw, "ports:\t%s\n", strings.Join(ports, ", "))
	}
	kernel := j.Kernel
	if kernel == "" {
		kernel = "(worker's default image)"
	}
	fmt.Fprintf(tw, "kernel:\t%s\n", kernel)
	if j.Initrd != "" {
		fmt.Fprintf(tw, "initrd:\t%s\n", j.Initrd)
	}
	if j.Disk != "" {
		ro := ""
		if j.DiskReadonly {
			ro = " (read-only)"
		}
		fmt.Fprintf(tw, "disk:\t%s%s\n", j.Disk, ro)
	}
	if j.Cmdline != "" {
		fmt.Fprintf(tw, "cmdline:\t%s\n", j.Cmdline)
	}
	if len(j.Constraints) > 0 {
		fmt.Fprintf(tw, "constraints:\t%s\n", formatLabels(j.Constraints))
	}
	if j.Node != 0 {
		fmt.Fprintf(tw, "node:\t%d\n", j.Node)
	}
	fmt.Fprintf(tw, "generation:\t%d\n", j.Generation)
	return flushTable(tw)
}

func (a *app) newVMLogsCmd() *cobra.Command {
	var follow, previous bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's serial console",
		Long: `Print the serial console output of a VM, as raw bytes, from the worker that
runs it (through whichever node --addr names). With --follow keep printing as
the guest writes, until the VM leaves its worker or you press Ctrl-C. With
--previous print the log kept from before: the run before the VM's last
restart, or the part before the log was last rotated (at 16 MiB).`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkVMName(name); err != nil {
				return err
			}
			if follow && previous {
				return usageError("--follow and --previous do not go together", "the previous log is complete: drop --follow, or drop --previous to follow the current one")
			}
			vc, err := a.dialVMs(cmd)
			if err != nil {
				return err
			}
			defer vc.close()
			ctx := cmd.Context()
			var cancel context.CancelFunc
			if follow {
				ctx, cancel = interruptible(ctx)
			} else {
				ctx, cancel = context.WithTimeout(ctx, a.timeout)
			}
			defer cancel()
			stream, err := vc.c.VMLogs(ctx, &blixardpb.VMLogsRequest{Name: name, Follow: follow, Previous: previous})
			out := cmd.OutOrStdout()
			for err == nil {
				var c *blixardpb.LogChunk
				if c, err = stream.Recv(); err == nil {
					if _, werr := out.Write(c.GetData()); werr != nil {
						return failure("cannot write output: "+werr.Error(), "check where stdout goes")
					}
				}
			}
			switch {
			case errors.Is(err, io.EOF):
				return nil
			case follow && ctx.Err() != nil:
				return nil // stopped by the user, as with tail -f
			}
			return vc.mapErr(err, name)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing console output as it is written")
	cmd.Flags().BoolVar(&previous, "previous", false, "print the previous run's console (or the part before the last rotation)")
	return cmd
}

// ---------------------------------------------------------------------------
// connection and errors

type vmConn struct {
	a    *app
	conn *grpc.ClientConn
	c    rpcpb.ClusterClient
	// reached: a TCP connection was made, so Unavailable came from a node.
	reached interface{ Load() bool }
}

func (a *app) dialVMs(cmd *cobra.Command) (*vmConn, error) {
	conn, reached, err := a.dial(cmd)
	if err != nil {
		return nil, err
	}
	return &vmConn{a: a, conn: conn, c: rpcpb.NewClusterClient(conn), reached: reached}, nil
}

func (vc *vmConn) close() { _ = vc.conn.Close() }

// retryable: worth re-opening a broken wait.
func (vc *vmConn) retryable(code codes.Code) bool {
	return code == codes.Unavailable && vc.reached.Load()
}

func (vc *vmConn) mapErr(err error, name string) error {
	var ce *cliError
	if errors.As(err, &ce) {
		return err
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.NotFound:
		return failure(st.Message(), "list VMs with 'blixard vm list'")
	case codes.FailedPrecondition:
		return failure(st.Message(), fmt.Sprintf("see 'blixard vm status %s'", name))
	}
	return rpcError(err, vc.a.addr, vc.a.timeout, vc.reached.Load())
}

// createErr maps CreateVM errors; the server names spec fields, which
// become the flags that set them.
func (vc *vmConn) createErr(err error, name string) error {
	st, _ := status.FromError(err)
	msg := st.Message()
	switch st.Code() {
	case codes.AlreadyExists:
		return failure(strings.TrimPrefix(msg, "name: "), fmt.Sprintf("pick another name, or delete it first with 'blixard vm delete %s'", name))
	case codes.InvalidArgument:
		if field, rest, ok := strings.Cut(msg, ": "); ok {
			if flag, known := vmFlagOf[field]; known {
				msg = flag + ": " + rest
			}
		}
		return failure(msg, "nothing was created; fix the flag and run the command again")
	}
	return rpcError(err, vc.a.addr, vc.a.timeout, vc.reached.Load())
}

// ---------------------------------------------------------------------------
// JSON

// vmJSON is the JSON form of a VM ('vm status', 'vm list', and the other
// commands with --output json).
type vmJSON struct {
	Name          string            `json:"name"`
	State         string            `json:"state"`
	Desired       string            `json:"desired"`
	Worker        uint64            `json:"worker"`
	VCPUs         uint32            `json:"vcpus"`
	MemoryMiB     uint32            `json:"memory_mib"`
	Restarts      uint32            `json:"restarts"`
	StartedAt     *string           `json:"started_at"`
	Reason        *string           `json:"reason"`
	RestartPolicy string            `json:"restart_policy"`
	Generation    uint32            `json:"generation"`
	Network       string            `json:"network"`
	Ports         []portJSON        `json:"ports"`
	Kernel        string            `json:"kernel"`
	Initrd        string            `json:"initrd"`
	Disk          string            `json:"disk"`
	DiskReadonly  bool              `json:"disk_readonly"`
	Cmdline       string            `json:"cmdline"`
	Constraints   map[string]string `json:"constraints"`
	Node          uint64            `json:"node"`
	CreatedAt     *string           `json:"created_at"`
	UpdatedAt     *string           `json:"updated_at"`
}

type portJSON struct {
	Host     uint32 `json:"host"`
	Guest    uint32 `json:"guest"`
	Protocol string `json:"protocol"`
}

func toVMJSON(vm *blixardpb.VM) vmJSON {
	s := vm.GetSpec()
	j := vmJSON{
		Name: s.GetName(), State: vmStateName(vm.GetState()), Desired: vmDesiredName(vm.GetDesired()),
		Worker: vm.GetWorkerId(), VCPUs: s.GetVcpus(), MemoryMiB: s.GetMemoryMib(), Restarts: vm.GetRestarts(),
		StartedAt: timeJSON(vm.GetStartedAtUnixNano()), Reason: nullString(vm.GetReason()),
		RestartPolicy: restartName(s.GetRestart()), Generation: vm.GetGeneration(), Network: s.GetNetwork(),
		Ports: []portJSON{}, Kernel: s.GetKernel(), Initrd: s.GetInitrd(), Disk: s.GetDisk(), DiskReadonly: s.GetDiskReadonly(),
		Cmdline: s.GetCmdline(), Constraints: map[string]string{}, Node: s.GetNode(),
		CreatedAt: timeJSON(vm.GetCreatedAtUnixNano()), UpdatedAt: timeJSON(vm.GetUpdatedAtUnixNano()),
	}
	for _, p := range s.GetPorts() {
		j.Ports = append(j.Ports, portJSON{Host: p.GetHostPort(), Guest: p.GetGuestPort(), Protocol: p.GetProtocol()})
	}
	for k, v := range s.GetConstraints() {
		j.Constraints[k] = v
	}
	return j
}

func vmStateName(s blixardpb.VMState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "VM_STATE_"))
}

func vmDesiredName(d blixardpb.VMDesired) string {
	return strings.ToLower(strings.TrimPrefix(d.String(), "VM_DESIRED_"))
}
