// Package image builds a minimal guest image for internal/vm drivers from
// what a Debian host has installed: DIR/vmlinux, the uncompressed ELF
// kernel extracted from a vmlinuz (QEMU boots it through its PVH entry
// point, skipping firmware and decompression), and DIR/initrd.img, a
// gzip-compressed newc cpio archive with a static busybox, the virtio
// kernel modules the kernel lacks built in (with their dependencies, from
// modules.dep) and an /init script.
//
// The init mounts /proc, /sys and /dev, loads the modules, sets up eth0
// from blixard.ip=/blixard.gw=/blixard.dns= on the kernel command line,
// starts acpid so the ACPI power button powers the guest off, prints
// vm.DefaultReadyMarker on the console, then runs the command passed with
// vm.CommandParam (reporting its status as vm.GuestExitMarker) or idles
// until the power button, and powers off.
//
// On Debian the inputs come from linux-image-cloud-amd64 (kernel and
// modules) and busybox-static.
package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/blixard/blixard/internal/fsutil"
)

// Default locations on a Debian host.
const (
	DefaultBusybox = "/bin/busybox"
	bootDir        = "/boot"
	modulesBase    = "/lib/modules"
)

// Output file names inside the output directory.
const (
	VmlinuxName = "vmlinux"
	InitrdName  = "initrd.img"
)

// Options says where the inputs are. Zero values mean the Debian defaults.
type Options struct {
	// Kernel is a vmlinuz (bzImage) or a vmlinux; empty means the newest
	// /boot/vmlinuz-*, preferring Debian's cloud flavour.
	Kernel string
	// ModulesDir holds the kernel's modules and modules.dep; empty means
	// /lib/modules/<the kernel's version>.
	ModulesDir string
	// Busybox must be statically linked (the guest has no libc); empty
	// means DefaultBusybox.
	Busybox string
	// Modules to load in the guest, by name; nil means DefaultModules().
	Modules []string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// Result says what Build wrote.
type Result struct {
	Vmlinux string // path of the ELF kernel
	Initrd  string // path of the initramfs
	Kernel  Kernel
	// Source is the kernel file it was extracted from.
	Source string
	// Modules lists the module names in the initramfs, in load order.
	Modules []string
}

// Build writes outDir/vmlinux and outDir/initrd.img, creating outDir.
// Existing files are replaced atomically. Errors are one line that says
// what to install or pass when an input is missing.
func Build(ctx context.Context, outDir string, o Options) (Result, error) {
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "image: "+format+"\n", args...)
		}
	}
	var res Result
	if outDir == "" {
		return res, errors.New("no output directory given")
	}

	src := o.Kernel
	if src == "" {
		var err error
		if src, err = findKernel(bootDir); err != nil {
			return res, err
		}
	}
	res.Source = src
	progress("reading kernel %s", src)
	data, err := os.ReadFile(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("kernel %s not found: install one with 'apt-get install linux-image-cloud-amd64' or pass --kernel: %w", src, err)
		}
		return res, fmt.Errorf("read kernel: %w", err)
	}
	vmlinux, k, err := ExtractVmlinux(data)
	if err != nil {
		return res, fmt.Errorf("kernel %s: %w", src, err)
	}
	if !k.PVH {
		return res, fmt.Errorf("kernel %s has no PVH entry point (CONFIG_PVH), so QEMU cannot boot its vmlinux directly: use a kernel built with CONFIG_PVH=y (Debian's are), or boot the bzImage itself", src)
	}
	if k.Version == "" {
		k.Version = versionFromName(src)
	}
	res.Kernel = k
	progress("kernel %s, %s-compressed, %d MiB uncompressed", orUnknown(k.Version), k.Compression, len(vmlinux)>>20)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return res, ctxErr
	}

	modDir := o.ModulesDir
	if modDir == "" {
		if k.Version == "" {
			return res, fmt.Errorf("cannot tell the version of kernel %s, so not where its modules are: pass --modules-dir", src)
		}
		modDir = filepath.Join(modulesBase, k.Version)
	}
	if st, statErr := os.Stat(modDir); statErr != nil || !st.IsDir() {
		return res, fmt.Errorf("kernel modules directory %s not found: install the matching package (apt-get install linux-image-%s) or pass --modules-dir", modDir, orUnknown(k.Version))
	}
	wanted := o.Modules
	if wanted == nil {
		wanted = DefaultModules()
	}
	mods, err := resolveModules(modDir, wanted)
	if err != nil {
		return res, err
	}
	for _, m := range mods {
		res.Modules = append(res.Modules, m.name)
	}
	progress("modules from %s: %s", modDir, strings.Join(res.Modules, " "))

	bbPath := o.Busybox
	if bbPath == "" {
		bbPath = DefaultBusybox
	}
	busybox, err := readStaticBusybox(bbPath)
	if err != nil {
		return res, err
	}

	var initrd bytes.Buffer
	if err := writeInitramfs(&initrd, busybox, modDir, mods); err != nil {
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}

	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return res, fmt.Errorf("create output directory: %w", err)
	}
	res.Vmlinux = filepath.Join(outDir, VmlinuxName)
	res.Initrd = filepath.Join(outDir, InitrdName)
	if err := fsutil.WriteFileAtomic(res.Vmlinux, vmlinux, 0o644); err != nil {
		return res, err
	}
	progress("wrote %s (%.1f MiB)", res.Vmlinux, float64(len(vmlinux))/(1<<20))
	if err := fsutil.WriteFileAtomic(res.Initrd, initrd.Bytes(), 0o644); err != nil {
		return res, err
	}
	progress("wrote %s (%.1f MiB)", res.Initrd, float64(initrd.Len())/(1<<20))
	return res, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown version)"
	}
	return s
}

// writeInitramfs writes the gzip-compressed cpio archive.
func writeInitramfs(w io.Writer, busybox []byte, modDir string, mods []module) error {
	// BestSpeed: the archive is ~8% larger than at the best level, but
	// building is several times faster (a test binary builds one).
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	c := newCPIOWriter(zw)
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "root", "etc/acpi/PWRF", "var/log", "lib/modules"} {
		c.Dir(d, 0o755)
	}
	// The kernel opens /dev/console for init before /init mounts
	// devtmpfs; without the node init would start with no output.
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("bin/busybox", 0o755, busybox)
	c.Symlink("bin/sh", "busybox")
	c.File("init", 0o755, []byte(renderInit()))
	c.File("etc/acpi/PWRF/00000080", 0o755, []byte(powerButtonScript))
	c.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	c.File("etc/group", 0o644, []byte("root:x:0:\n"))
	var order strings.Builder
	for _, m := range mods {
		b, err := readModule(modDir, m)
		if err != nil {
			return err
		}
		c.File("lib/modules/"+m.name+".ko", 0o644, b)
		order.WriteString(m.name + "\n")
	}
	c.File("etc/blixard/modules", 0o644, []byte(order.String()))
	if err := c.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// readStaticBusybox reads busybox and checks it has no ELF interpreter:
// a dynamically linked one would not start in a guest without libc.
func readStaticBusybox(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("busybox not found at %s: install busybox-static (apt-get install busybox-static) or pass its path", p)
	}
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("busybox %s is not an ELF executable: %w", p, err)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("busybox %s is dynamically linked, but the guest has no libc: install busybox-static (apt-get install busybox-static)", p)
		}
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("busybox %s is for %s, not x86-64", p, f.Machine)
	}
	return b, nil
}

// findKernel picks the newest dir/vmlinuz-*, preferring the cloud flavour
// (virtio as small modules, no hardware drivers to probe).
func findKernel(dir string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "vmlinuz-*"))
	if err != nil {
		return "", fmt.Errorf("look for kernels: %w", err)
	}
	if len(matches) == 0 {
		return "", fmt.Errorf("no kernel found (no %s/vmlinuz-*): install one with 'apt-get install linux-image-cloud-amd64' or pass --kernel", dir)
	}
	slices.SortFunc(matches, func(a, b string) int {
		ca, cb := strings.Contains(a, "-cloud-"), strings.Contains(b, "-cloud-")
		if ca != cb {
			if ca {
				return 1
			}
			return -1
		}
		return compareVersions(versionFromName(a), versionFromName(b))
	})
	return matches[len(matches)-1], nil
}

// versionFromName returns the version in ".../vmlinuz-6.1.0-56-cloud-amd64"
// or "vmlinux-<version>", or "".
func versionFromName(p string) string {
	b := filepath.Base(p)
	for _, prefix := range []string{"vmlinuz-", "vmlinux-"} {
		if v, ok := strings.CutPrefix(b, prefix); ok {
			return v
		}
	}
	return ""
}

// compareVersions orders version strings with numeric runs compared as
// numbers, so 6.1.0-10 sorts after 6.1.0-9.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		na, ra := leadingRun(a)
		nb, rb := leadingRun(b)
		if isDigit(na[0]) && isDigit(nb[0]) {
			x, _ := strconv.ParseUint(na, 10, 64)
			y, _ := strconv.ParseUint(nb, 10, 64)
			if x != y {
				if x < y {
					return -1
				}
				return 1
			}
		} else if c := strings.Compare(na, nb); c != 0 {
			return c
		}
		a, b = ra, rb
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// leadingRun splits s after its first run of digits or of non-digits.
func leadingRun(s string) (run, rest string) {
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}
