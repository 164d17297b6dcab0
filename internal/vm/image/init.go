package image

import (
	"strings"

	"github.com/blixard/blixard/internal/vm"
)

// initScript is the guest's /init (PID 1), run by busybox sh. In order:
// mount the pseudo filesystems, load the modules listed in
// /etc/blixard/modules, read blixard.* parameters from the kernel command
// line, configure the network, start acpid (so the ACPI power button, which
// the host presses for a graceful stop, reaches us as SIGTERM), print the
// readiness marker, run the command or idle, report the command's status
// and power off. PID 1 must never exit (the kernel would panic), so every
// path ends in poweroff -f.
const initScript = `#!/bin/busybox sh
# Blixard guest init, written by 'blixard image build'.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run /root /var/log /etc
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# The console has no input (the host logs it to a file): read nothing.
exec </dev/null >/dev/console 2>&1

say() { echo "blixard-init: $*"; }

while read -r m; do
	insmod "/lib/modules/$m.ko" || say "cannot load kernel module $m"
done </etc/blixard/modules

cmd64= ip= gw= dns= name=blixard
set -f
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	{{CMD}}=*) cmd64=${arg#*=} ;;
	{{IP}}=*) ip=${arg#*=} ;;
	{{GW}}=*) gw=${arg#*=} ;;
	{{DNS}}=*) dns=${arg#*=} ;;
	{{HOST}}=*) name=${arg#*=} ;;
	esac
done
set +f
hostname "$name"

ip link set lo up
if [ -n "$ip" ]; then
	# virtio_net registers eth0 while insmod runs; wait briefly anyway.
	i=0
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
	ip link set eth0 up && ip addr add "$ip" dev eth0 || say "cannot configure eth0 with $ip"
	[ -z "$gw" ] || ip route add default via "$gw" || say "cannot add default route via $gw"
fi
[ -z "$dns" ] || echo "nameserver $dns" >/etc/resolv.conf

# The power button runs /etc/acpi/PWRF/00000080, which signals us. We
# pass SIGTERM to every other process (kill -1 spares PID 1): that reaches
# the command even if the signal lands before $child is set.
stopping=
trap 'stopping=1; say "power button: stopping"; kill -TERM -1 2>/dev/null' TERM
acpid -d -c /etc/acpi 2>/dev/null &
apid=$!
# A press before acpid has opened the input devices is lost: wait (up to
# 2 s) until it has, so the guest is stoppable once it says it is ready.
if ls /dev/input/event* >/dev/null 2>&1; then
	i=0
	while [ $i -lt 40 ] && ! ls -l /proc/$apid/fd 2>/dev/null | grep -q /dev/input/; do sleep 0.05; i=$((i+1)); done
fi

child=
code=
echo "{{READY}}"
if [ -n "$cmd64" ]; then
	cmd=$(echo "$cmd64" | base64 -d) || say "blixard.cmd is not valid base64"
	# Its own session, so a stop signals the whole command.
	setsid sh -c "$cmd" &
	child=$!
	wait "$child"
	code=$?
else
	# No command: idle until the power button.
	while [ -z "$stopping" ]; do
		sleep 3600 &
		child=$!
		wait "$child"
	done
fi
if [ -n "$stopping" ] && [ -n "$child" ]; then
	# wait returned early for the signal: give the command 5 s to exit.
	i=0
	while kill -0 "$child" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
	kill -KILL -"$child" 2>/dev/null
	wait "$child"
	rc=$?
	[ -z "$cmd64" ] || code=$rc
fi
[ -z "$code" ] || echo "{{EXIT}} $code"
sync
poweroff -f
say "poweroff failed"
while :; do sleep 3600; done
`

// powerButtonScript is what acpid runs for the power button.
const powerButtonScript = `#!/bin/sh
kill -TERM 1
`

// renderInit fills in the parameter names and markers.
func renderInit() string {
	return strings.NewReplacer(
		"{{CMD}}", vm.ParamCommand,
		"{{IP}}", vm.ParamIP,
		"{{GW}}", vm.ParamGateway,
		"{{DNS}}", vm.ParamDNS,
		"{{HOST}}", vm.ParamHostname,
		"{{READY}}", vm.DefaultReadyMarker,
		"{{EXIT}}", vm.GuestExitMarker,
	).Replace(initScript)
}
