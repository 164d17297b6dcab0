package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// DefaultModules returns the kernel modules the guest's init loads, by
// module name. Debian's cloud kernel builds them as modules; any that a
// kernel has built in (modules.builtin) are skipped.
func DefaultModules() []string {
	return []string{
		"virtio_mmio",    // microvm's virtio transport: nothing virtio appears without it
		"virtio_console", // virtio-serial ports (host↔guest channels)
		"virtio_blk",     // Spec.Disk as /dev/vda
		"virtio_net",     // the NIC of user and tap networking
		"virtio_rng",     // entropy from the host, so getrandom() does not stall
		"button",         // ACPI power button: graceful Stop (system_powerdown)
		"evdev",          // /dev/input/event* for acpid to see the button
	}
}

// module is one kernel module file to put into the initramfs.
type module struct {
	name string // module name, e.g. "virtio_net"
	rel  string // path below the modules dir, e.g. "kernel/drivers/net/virtio_net.ko"
}

// modName turns a module path into its module name: the base name without
// the .ko(.gz|.xz|.zst) suffix, with '-' read as '_' as modprobe does.
func modName(p string) string {
	b := filepath.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// resolveModules returns the modules to load for wanted, dependencies
// first, from dir's modules.dep; wanted modules listed in modules.builtin
// are skipped. A wanted module that is neither is an error.
func resolveModules(dir string, wanted []string) ([]module, error) {
	depFile := filepath.Join(dir, "modules.dep")
	f, err := os.Open(depFile)
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	defer f.Close()
	deps := map[string][]string{} // module path → dependency paths
	byName := map[string]string{} // module name → path
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		mod = strings.TrimSpace(mod)
		deps[mod] = strings.Fields(rest)
		byName[modName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", depFile, err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(l)] = true
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}

	var order []module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("%s: dependency cycle through %s", depFile, strings.Join(append(chain, p), " → "))
		}
		state[p] = 1
		ds, ok := deps[p]
		if !ok {
			return fmt.Errorf("%s: %s (needed by %s) is not listed", depFile, p, strings.Join(chain, " → "))
		}
		for _, d := range ds {
			if err := visit(d, append(chain, p)); err != nil {
				return err
			}
		}
		state[p] = 2
		order = append(order, module{name: modName(p), rel: p})
		return nil
	}
	var missing []string
	for _, name := range wanted {
		p, ok := byName[name]
		if !ok {
			if !builtin[name] {
				missing = append(missing, name)
			}
			continue
		}
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("kernel modules %s are neither modules nor built in according to %s: the guest would lack its virtio devices; use a kernel that has them (Debian's linux-image-cloud-amd64 does)",
			strings.Join(missing, ", "), dir)
	}
	return order, nil
}

// readModule returns a module file ready for insmod: uncompressed .ko
// bytes. gzip is decompressed here; xz and zstd (Debian 13 compresses
// modules with xz) are not supported by this builder.
func readModule(dir string, m module) ([]byte, error) {
	p := filepath.Join(dir, m.rel)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("kernel module %s: %w", m.name, err)
	}
	switch {
	case strings.HasSuffix(p, ".ko"):
		return b, nil
	case strings.HasSuffix(p, ".ko.gz"):
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("kernel module %s: %w", p, err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("kernel module %s: %w", p, err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("kernel module %s is compressed in a format this builder cannot read (it reads .ko and .ko.gz); pass --modules-dir with uncompressed modules", p)
	}
}
