package image

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// cpioWriter writes a "newc" (SVR4, no checksum) cpio archive, the format
// the kernel unpacks as an initramfs. Every entry is owned by root with
// mtime 0, so the same inputs give the same bytes.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	n   int64 // bytes written, for padding
	err error
	// dirs already written, so parents are created once and first.
	dirs map[string]bool
}

// Mode bits of cpio entries (the st_mode file types).
const (
	cpioDir     = 0o040000
	cpioFile    = 0o100000
	cpioSymlink = 0o120000
	cpioCharDev = 0o020000
)

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: w, dirs: map[string]bool{".": true, "": true}}
}

// Dir adds directory name (and any missing parents) with perm.
func (c *cpioWriter) Dir(name string, perm uint32) {
	name = cleanName(name)
	if c.dirs[name] {
		return
	}
	c.Dir(path.Dir(name), 0o755)
	c.dirs[name] = true
	c.entry(name, cpioDir|perm&0o7777, 2, nil)
}

// File adds a regular file, creating missing parent directories.
func (c *cpioWriter) File(name string, perm uint32, data []byte) {
	name = cleanName(name)
	c.Dir(path.Dir(name), 0o755)
	c.entry(name, cpioFile|perm&0o7777, 1, data)
}

// Symlink adds a symbolic link name → target.
func (c *cpioWriter) Symlink(name, target string) {
	name = cleanName(name)
	c.Dir(path.Dir(name), 0o755)
	c.entry(name, cpioSymlink|0o777, 1, []byte(target))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) {
	name = cleanName(name)
	c.Dir(path.Dir(name), 0o755)
	c.entryDev(name, cpioCharDev|perm&0o7777, 1, nil, major, minor)
}

// Close writes the trailer. It returns the first error of any call.
func (c *cpioWriter) Close() error {
	c.entry("TRAILER!!!", 0, 1, nil)
	return c.err
}

func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

func (c *cpioWriter) entry(name string, mode, nlink uint32, data []byte) {
	c.entryDev(name, mode, nlink, data, 0, 0)
}

func (c *cpioWriter) entryDev(name string, mode, nlink uint32, data []byte, major, minor uint32) {
	if c.err != nil {
		return
	}
	if uint64(len(data)) > 0xffffffff {
		c.err = fmt.Errorf("cpio: %s is larger than 4 GiB", name)
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
	c.write(data)
	c.pad()
}

func (c *cpioWriter) write(p []byte) {
	if c.err != nil || len(p) == 0 {
		return
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil {
		c.err = fmt.Errorf("cpio: %w", err)
	}
}

// pad aligns the output to 4 bytes, as newc requires after the name and
// after the data.
func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
