package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/internal/vm/image"
)

type imageBuildOptions struct {
	outDir     string
	kernel     string
	modulesDir string
	busybox    string
}

func (a *app) newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build guest images for micro-VMs",
		Args:  noSubcommand,
		RunE:  showHelp,
	}
	cmd.AddCommand(a.newImageBuildCmd())
	return cmd
}

func (a *app) newImageBuildCmd() *cobra.Command {
	o := &imageBuildOptions{}
	cmd := &cobra.Command{
		Use:   "build --output DIR",
		Short: "Build a guest kernel and initramfs from this machine's Debian packages",
		Long: `Build a minimal micro-VM guest image into DIR:

  DIR/vmlinux     the uncompressed kernel, extracted from a vmlinuz
  DIR/initrd.img  an initramfs with busybox, the virtio modules and an init

The guest's init prints BLIXARD-READY on the console once it is up, then
runs the command given on the kernel command line (blixard.cmd=, base64)
and powers off when it exits, or idles until the VM is stopped.

The inputs come from Debian packages: the kernel and its modules from
linux-image-cloud-amd64 (the newest /boot/vmlinuz-* is used unless
--kernel is given) and a static busybox from busybox-static. Progress goes
to stderr; the paths written go to stdout.

Here --output names the output directory (not the output format).`,
		Example: `  blixard image build --output ./guest
  blixard image build --output ./guest --kernel /boot/vmlinuz-6.1.0-56-cloud-amd64`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.runImageBuild(cmd, o)
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	// A local --output shadows the global output-format flag for this
	// command only (cobra lets local flags win).
	fs.StringVar(&o.outDir, "output", "", "directory `DIR` to write vmlinux and initrd.img to (created if missing)")
	fs.StringVar(&o.kernel, "kernel", "", "kernel `PATH` (vmlinuz or vmlinux; default: the newest /boot/vmlinuz-*)")
	fs.StringVar(&o.modulesDir, "modules-dir", "", "kernel modules `DIR` with modules.dep (default: /lib/modules/<kernel version>)")
	fs.StringVar(&o.busybox, "busybox", image.DefaultBusybox, "statically linked busybox `PATH`")
	return cmd
}

func (a *app) runImageBuild(cmd *cobra.Command, o *imageBuildOptions) error {
	if o.outDir == "" {
		return usageError("missing --output DIR", "pass e.g. --output ./guest")
	}
	res, err := image.Build(cmd.Context(), o.outDir, image.Options{
		Kernel:     o.kernel,
		ModulesDir: o.modulesDir,
		Busybox:    o.busybox,
		Progress:   a.stderr,
	})
	if err != nil {
		return failure("image build: "+err.Error(), "")
	}
	fmt.Fprintf(a.stdout, "kernel: %s\ninitrd: %s\n", res.Vmlinux, res.Initrd)
	return nil
}
