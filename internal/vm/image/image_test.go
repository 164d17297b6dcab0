package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/blixard/blixard/internal/vm"
)

const installHint = "run scripts/test.sh, which installs busybox-static and linux-image-cloud-amd64"

// testELF builds a minimal x86-64 ELF kernel: one loadable segment and,
// if pvh, the Xen PHYS32_ENTRY note QEMU needs.
func testELF(t *testing.T, pvh bool) []byte {
	t.Helper()
	var note bytes.Buffer
	typ := uint32(xenElfnotePhys32Entry)
	if !pvh {
		typ = 1
	}
	binary.Write(&note, binary.LittleEndian, []uint32{4, 4, typ})
	note.WriteString("Xen\x00")
	binary.Write(&note, binary.LittleEndian, uint32(0x1000000))
	const phoff, nph = 64, 2
	dataOff := uint64(phoff + nph*56)
	code := bytes.Repeat([]byte{0x90}, 64)
	noteOff := dataOff + uint64(len(code))
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: 1,
		Entry: 0x1000000, Phoff: phoff, Ehsize: 64, Phentsize: 56, Phnum: nph,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_LOAD), Flags: 5, Off: dataOff, Vaddr: 0x1000000, Paddr: 0x1000000, Filesz: uint64(len(code)), Memsz: 1 << 20, Align: 16})
	binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_NOTE), Off: noteOff, Filesz: uint64(note.Len()), Align: 4})
	b.Write(code)
	b.Write(note.Bytes())
	return b.Bytes()
}

// testBzImage wraps payload in the x86 boot protocol header the way a
// vmlinuz does, with the kernel's trailing uncompressed size.
func testBzImage(payload []byte, version string, size int) []byte {
	b := make([]byte, 1024) // setup: boot sector + 1 sector
	b[0x1f1] = 1
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f)
	binary.LittleEndian.PutUint16(b[0x20e:], 0x100) // version string at 0x300
	copy(b[0x300:], version+" (test@example) #1 SMP\x00")
	payload = binary.LittleEndian.AppendUint32(append([]byte{}, payload...), uint32(size))
	binary.LittleEndian.PutUint32(b[0x248:], 0)
	binary.LittleEndian.PutUint32(b[0x24c:], uint32(len(payload)))
	return append(append(b, payload...), bytes.Repeat([]byte{0xcc}, 64)...)
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// lz4Literals encodes b as an LZ4 legacy frame of literal-only blocks
// (valid LZ4, just not compressed).
func lz4Literals(b []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	var blk []byte
	n := len(b) - 15
	blk = append(blk, 0xf0)
	for ; n >= 255; n -= 255 {
		blk = append(blk, 255)
	}
	blk = append(append(blk, byte(n)), b...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(blk)))
	return append(out, blk...)
}

func TestExtractVmlinuxFromBzImages(t *testing.T) {
	kernel := testELF(t, true)
	cases := []struct {
		name, compression string
		data              []byte
		version           string
	}{
		{"gzip", "gzip", testBzImage(gzipBytes(t, kernel), "6.1.0-99-cloud-amd64", len(kernel)), "6.1.0-99-cloud-amd64"},
		{"lz4", "lz4", testBzImage(lz4Literals(kernel), "6.1.0-98-cloud-amd64", len(kernel)), "6.1.0-98-cloud-amd64"},
		// No boot header: found by scanning for the magic.
		{"scan", "gzip", append(bytes.Repeat([]byte("junk\x1f\x8b\x08"), 20), gzipBytes(t, kernel)...), ""},
		{"already vmlinux", "none", kernel, ""},
	}
	for _, c := range cases {
		out, k, err := ExtractVmlinux(c.data)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !bytes.Equal(out, kernel) || k.Compression != c.compression || k.Version != c.version || !k.PVH {
			t.Errorf("%s: got %d bytes, %+v", c.name, len(out), k)
		}
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	xz := append([]byte{0xfd, '7', 'z', 'X', 'Z', 0}, bytes.Repeat([]byte{1}, 100)...)
	if _, _, err := ExtractVmlinux(testBzImage(xz, "6.12.0-1-cloud-amd64", 1000)); err == nil || !strings.Contains(err.Error(), "xz-compressed") {
		t.Errorf("xz payload: %v", err)
	}
	if _, _, err := ExtractVmlinux([]byte("no kernel here")); err == nil || !strings.Contains(err.Error(), "bzImage") {
		t.Errorf("no kernel: %v", err)
	}
	kernel := testELF(t, true)
	if _, _, err := ExtractVmlinux(kernel[:len(kernel)-40]); err == nil {
		t.Error("a truncated ELF was accepted")
	}
	_, k, err := ExtractVmlinux(testELF(t, false))
	if err != nil || k.PVH {
		t.Errorf("ELF without the PVH note: %+v, %v", k, err)
	}
}

// writeModules lays out a modules directory: modules.dep, modules.builtin
// and the files, .ko holding its own name.
func writeModules(t *testing.T, dep, builtin string) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644))
	must(os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644))
	for _, line := range strings.Split(dep, "\n") {
		p, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		must(os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755))
		data := []byte("module " + modName(p))
		if strings.HasSuffix(p, ".gz") {
			data = gzipBytes(t, data)
		}
		must(os.WriteFile(filepath.Join(dir, p), data, 0o644))
	}
	return dir
}

const testDep = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko.gz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/input/evdev.ko.xz:
`

func TestResolveModulesOrdersDependenciesFirst(t *testing.T) {
	dir := writeModules(t, testDep, "kernel/drivers/acpi/button.ko\n")
	mods, err := resolveModules(dir, []string{"virtio_rng", "virtio_mmio", "button"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.name)
	}
	// button is built in: nothing to load.
	if want := []string{"virtio_ring", "virtio", "virtio_rng", "virtio_mmio"}; !slices.Equal(names, want) {
		t.Fatalf("order = %v, want %v", names, want)
	}
	if b, err := readModule(dir, mods[2]); err != nil || string(b) != "module virtio_rng" {
		t.Errorf("gzip module = %q, %v", b, err)
	}
	if _, err := resolveModules(dir, []string{"virtio_mmio", "virtio_fs"}); err == nil || !strings.Contains(err.Error(), "virtio_fs") {
		t.Errorf("missing module: %v", err)
	}
	if _, err := readModule(dir, module{name: "evdev", rel: "kernel/drivers/input/evdev.ko.xz"}); err == nil || !strings.Contains(err.Error(), "--modules-dir") {
		t.Errorf("xz module: %v", err)
	}
}

type cpioEntry struct {
	name         string
	mode         uint32
	data         []byte
	major, minor uint32
}

// parseInitrd gunzips and reads a newc archive, checking its alignment.
func parseInitrd(t *testing.T, gz []byte) map[string]cpioEntry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	var order []string
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("cpio header at %d: %v", off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		mode, size, namesz := field(1), int(field(6)), int(field(11))
		name := string(b[off+110 : off+110+namesz-1])
		dataOff := align(off + 110 + namesz)
		if name == "TRAILER!!!" {
			break
		}
		for _, p := range order {
			if p == name {
				t.Fatalf("%s twice", name)
			}
		}
		if dir := filepath.Dir(name); dir != "." {
			if _, ok := entries[dir]; !ok {
				t.Fatalf("%s comes before its directory", name)
			}
		}
		order = append(order, name)
		entries[name] = cpioEntry{name: name, mode: mode, data: b[dataOff : dataOff+size], major: field(9), minor: field(10)}
		off = align(dataOff + size)
	}
	return entries
}

func TestBuildWithGivenInputs(t *testing.T) {
	kernel := testELF(t, true)
	src := filepath.Join(t.TempDir(), "vmlinuz-6.1.0-99-cloud-amd64")
	if err := os.WriteFile(src, testBzImage(gzipBytes(t, kernel), "6.1.0-99-cloud-amd64", len(kernel)), 0o644); err != nil {
		t.Fatal(err)
	}
	mods := writeModules(t, testDep, "")
	out := filepath.Join(t.TempDir(), "guest")
	var progress bytes.Buffer
	res, err := Build(context.Background(), out, Options{
		Kernel: src, ModulesDir: mods, Modules: []string{"virtio_mmio", "virtio_rng"}, Progress: &progress,
	})
	if err != nil {
		t.Fatalf("Build: %v (%s)", err, installHint)
	}
	if got, _ := os.ReadFile(res.Vmlinux); !bytes.Equal(got, kernel) {
		t.Error("vmlinux is not the extracted kernel")
	}
	if res.Kernel.Version != "6.1.0-99-cloud-amd64" || !slices.Equal(res.Modules, []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_rng"}) {
		t.Errorf("result = %+v", res)
	}
	for _, want := range []string{"reading kernel", "gzip-compressed", "wrote " + res.Vmlinux, "wrote " + res.Initrd} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}
	gz, err := os.ReadFile(res.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	files := parseInitrd(t, gz)
	checks := []struct {
		name string
		mode uint32
	}{
		{"init", cpioFile | 0o755},
		{"bin/busybox", cpioFile | 0o755},
		{"bin/sh", cpioSymlink | 0o777},
		{"dev/console", cpioCharDev | 0o600},
		{"lib/modules/virtio_rng.ko", cpioFile | 0o644},
		{"etc/acpi/PWRF/00000080", cpioFile | 0o755},
	}
	for _, c := range checks {
		if e, ok := files[c.name]; !ok || e.mode != c.mode {
			t.Errorf("%s: %+v (present %v), want mode %o", c.name, e.mode, ok, c.mode)
		}
	}
	if c := files["dev/console"]; c.major != 5 || c.minor != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", c.major, c.minor)
	}
	if got := string(files["lib/modules/virtio_rng.ko"].data); got != "module virtio_rng" {
		t.Errorf("virtio_rng.ko = %q, want the decompressed module", got)
	}
	if got := string(files["etc/blixard/modules"].data); got != "virtio_ring\nvirtio\nvirtio_mmio\nvirtio_rng\n" {
		t.Errorf("load order file = %q", got)
	}
	init := string(files["init"].data)
	for _, want := range []string{vm.DefaultReadyMarker, vm.GuestExitMarker, vm.ParamCommand + "=*", "poweroff -f"} {
		if !strings.Contains(init, want) {
			t.Errorf("init lacks %q", want)
		}
	}
	// Same inputs, same bytes (no timestamps in the archive).
	res2, err := Build(context.Background(), out, Options{Kernel: src, ModulesDir: mods, Modules: []string{"virtio_mmio", "virtio_rng"}})
	if err != nil {
		t.Fatal(err)
	}
	if gz2, _ := os.ReadFile(res2.Initrd); !bytes.Equal(gz, gz2) {
		t.Error("two builds of the same inputs differ")
	}
}

func TestInitScriptIsValidShell(t *testing.T) {
	p := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(p, []byte(renderInit()), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(DefaultBusybox, "sh", "-n", p).CombinedOutput()
	if err != nil {
		t.Fatalf("busybox sh -n init: %v\n%s\n(%s)", err, out, installHint)
	}
}

func TestBuildErrorsSayWhatToDo(t *testing.T) {
	kernel := testELF(t, true)
	dir := t.TempDir()
	src := filepath.Join(dir, "vmlinuz-6.1.0-99-cloud-amd64")
	if err := os.WriteFile(src, testBzImage(gzipBytes(t, kernel), "6.1.0-99-cloud-amd64", len(kernel)), 0o644); err != nil {
		t.Fatal(err)
	}
	noPVH := filepath.Join(dir, "vmlinux-nopvh")
	if err := os.WriteFile(noPVH, testELF(t, false), 0o644); err != nil {
		t.Fatal(err)
	}
	mods := writeModules(t, testDep, "")
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		o    Options
		want []string
	}{
		{"missing kernel", Options{Kernel: filepath.Join(dir, "nope")}, []string{"nope", "not found", "linux-image-cloud-amd64"}},
		{"no PVH", Options{Kernel: noPVH, ModulesDir: mods}, []string{"PVH"}},
		{"missing modules dir", Options{Kernel: src}, []string{"/lib/modules/6.1.0-99-cloud-amd64", "--modules-dir"}},
		{"missing module", Options{Kernel: src, ModulesDir: mods, Modules: []string{"virtio_blk"}}, []string{"virtio_blk"}},
		{"missing busybox", Options{Kernel: src, ModulesDir: mods, Modules: []string{}, Busybox: filepath.Join(dir, "bb")}, []string{"busybox-static"}},
		{"dynamic busybox", Options{Kernel: src, ModulesDir: mods, Modules: []string{}, Busybox: dynamic}, []string{"dynamically linked", "busybox-static"}},
	}
	for _, c := range cases {
		out := filepath.Join(t.TempDir(), "out")
		_, err := Build(context.Background(), out, c.o)
		if err == nil {
			t.Fatalf("%s: Build succeeded", c.name)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error is not one line: %q", c.name, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not mention %q", c.name, err, w)
			}
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: the failed build created %s", c.name, out)
		}
	}
}

func TestFindKernelPrefersNewestCloudKernel(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-10-cloud-amd64", "vmlinuz-6.12.0-1-amd64"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := findKernel(dir)
	if err != nil || filepath.Base(got) != "vmlinuz-6.1.0-10-cloud-amd64" {
		t.Fatalf("findKernel = %s, %v", got, err)
	}
	if _, err := findKernel(t.TempDir()); err == nil || !strings.Contains(err.Error(), "apt-get install linux-image-cloud-amd64") {
		t.Fatalf("no kernels: %v", err)
	}
}

// TestBuildFromThisMachinesPackages builds the real image the VM tests
// boot: Debian's cloud kernel and busybox-static must be installed.
func TestBuildFromThisMachinesPackages(t *testing.T) {
	res, err := Build(context.Background(), t.TempDir(), Options{})
	if err != nil {
		t.Fatalf("%v\n%s", err, installHint)
	}
	data, err := os.ReadFile(res.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if _, k, extractErr := ExtractVmlinux(data); extractErr != nil || !k.PVH {
		t.Fatalf("vmlinux: %+v, %v", k, extractErr)
	}
	for _, want := range []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console"} {
		if !slices.Contains(res.Modules, want) {
			t.Errorf("modules %v lack %s", res.Modules, want)
		}
	}
	gz, err := os.ReadFile(res.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	files := parseInitrd(t, gz)
	for _, m := range res.Modules {
		if _, ok := files["lib/modules/"+m+".ko"]; !ok {
			t.Errorf("initrd lacks module %s", m)
		}
	}
}
