package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// vmImageDirs are the directories a VM's kernel, initrd and disk must be
// in: the guest image directory and Config.VMImageDirs.
func (c *Config) vmImageDirs() []string {
	dir, _ := c.vmImageDir()
	return append([]string{dir}, c.VMImageDirs...)
}

// checkVMPaths refuses a VM whose kernel, initrd or disk is outside the
// allowed directories, or is not a regular file where this node can see
// it. QEMU runs as the node's user (often root): without this, 'vm create
// --kernel /etc/shadow' would read any file of the worker into a guest.
func (s *Server) checkVMPaths(spec *pb.VMSpec) error {
	for _, f := range []struct{ field, path string }{
		{"kernel", spec.GetKernel()}, {"initrd", spec.GetInitrd()}, {"disk", spec.GetDisk()},
	} {
		if f.path == "" {
			continue
		}
		if err := allowedVMFile(f.path, s.cfg.vmImageDirs()); err != nil {
			return fmt.Errorf("%s: %w", f.field, err)
		}
	}
	return nil
}

// allowedVMFile checks one path against dirs, after resolving symbolic
// links on both sides (a link inside an allowed directory pointing out of
// it is refused). A path that does not exist here passes the directory
// check lexically: the worker that runs the VM checks it again.
func allowedVMFile(p string, dirs []string) error {
	if strings.ContainsRune(p, 0) {
		return errors.New("contains a NUL byte")
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%q is not an absolute path", p)
	}
	real := filepath.Clean(p)
	st, err := os.Stat(p)
	switch {
	case err == nil:
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file (it is a %s)", p, fileKind(st.Mode()))
		}
		if r, lerr := filepath.EvalSymlinks(p); lerr == nil {
			real = r
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s: %w", p, err)
	}
	for _, d := range dirs {
		rd := filepath.Clean(d)
		if r, err := filepath.EvalSymlinks(d); err == nil {
			rd = r
		}
		if strings.HasPrefix(real, rd+string(filepath.Separator)) {
			return nil
		}
	}
	return fmt.Errorf("%s is outside the directories this node allows for VM images (%s); put the file there, or start the nodes with --vm-image-dir DIR", p, strings.Join(dirs, ", "))
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&os.ModeNamedPipe != 0:
		return "named pipe"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeDevice != 0:
		return "device"
	default:
		return "special file"
	}
}
