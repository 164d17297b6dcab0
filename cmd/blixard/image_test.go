package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blixard/blixard/internal/vm/image"
)

// pvhKernel writes a minimal x86-64 ELF "vmlinux" with the PVH note the
// image builder requires (a real kernel is 50 MiB and slow to handle
// under the race detector; internal/vm/image tests the real one).
func pvhKernel(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	hdr := elf.Header64{Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: 1, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 2}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS], hdr.Ident[elf.EI_DATA], hdr.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	const dataOff = 64 + 2*56
	binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_LOAD), Off: dataOff, Paddr: 1 << 24, Filesz: 16, Memsz: 16})
	binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_NOTE), Off: dataOff + 16, Filesz: 20})
	b.Write(make([]byte, 16))
	binary.Write(&b, binary.LittleEndian, []uint32{4, 4, 18}) // Xen PHYS32_ENTRY
	b.WriteString("Xen\x00")
	binary.Write(&b, binary.LittleEndian, uint32(1<<24))
	p := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImageBuildWritesKernelAndInitrd(t *testing.T) {
	// Every module the guest wants is "built in": nothing to copy.
	mods := t.TempDir()
	var builtin strings.Builder
	for _, m := range image.DefaultModules() {
		builtin.WriteString("kernel/" + m + ".ko\n")
	}
	if err := os.WriteFile(filepath.Join(mods, "modules.dep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mods, "modules.builtin"), []byte(builtin.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "guest")
	h := newHarness(t)
	if code := h.run("image", "build", "--output", out, "--kernel", pvhKernel(t), "--modules-dir", mods); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s\n(the test needs busybox-static: run scripts/test.sh)", code, h.stderr.String())
	}
	want := "kernel: " + filepath.Join(out, "vmlinux") + "\ninitrd: " + filepath.Join(out, "initrd.img") + "\n"
	if h.stdout.String() != want {
		t.Errorf("stdout = %q, want %q", h.stdout.String(), want)
	}
	for _, w := range []string{"image: reading kernel", "image: wrote " + filepath.Join(out, "initrd.img")} {
		if !strings.Contains(h.stderr.String(), w) {
			t.Errorf("progress on stderr lacks %q:\n%s", w, h.stderr.String())
		}
	}
	for _, f := range []string{"vmlinux", "initrd.img"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestImageBuildErrors(t *testing.T) {
	h := newHarness(t)
	if code := h.run("image", "build"); code != exitUsage {
		t.Fatalf("no --output: exit %d", code)
	}
	h.wantErrorLine("missing --output DIR", "--output ./guest")

	missing := filepath.Join(t.TempDir(), "vmlinuz-none")
	h = newHarness(t)
	if code := h.run("image", "build", "--output", t.TempDir(), "--kernel", missing); code != exitFailure {
		t.Fatalf("missing kernel: exit %d", code)
	}
	// Progress lines come first; the last line is the one error.
	lines := strings.Split(strings.TrimSuffix(h.stderr.String(), "\n"), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "error: image build: kernel "+missing+" not found") || !strings.Contains(last, "linux-image-cloud-amd64") {
		t.Fatalf("error line = %q", last)
	}

	h = newHarness(t)
	if code := h.run("image", "build", "--output", t.TempDir(), "extra"); code != exitUsage {
		t.Fatalf("extra argument: exit %d", code)
	}
}
