package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/internal/vm/guard"
)

// vmGuardCmd is the hidden `blixard vm-guard`, which a worker's QEMU
// driver runs between itself and each QEMU process: it stops QEMU when the
// worker's lease goes unrenewed (see docs/VMS.md, "Self-fencing").
func newVMGuardCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "vm-guard --lease FILE --ttl DURATION [--log FILE] -- COMMAND ARGS...",
		Short:              "Run a command (QEMU) and stop it when a lease file is not renewed (internal)",
		Hidden:             true,
		DisableFlagParsing: true,
		Run: func(_ *cobra.Command, args []string) {
			// Exit statuses: the command's own, guard.ExitFenced (86) when
			// the lease expired, 125 bad arguments, 127 cannot start.
			os.Exit(guard.Main(args))
		},
	}
}
