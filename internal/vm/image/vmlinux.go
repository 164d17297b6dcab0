package image

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Kernel describes a kernel file.
type Kernel struct {
	// Version is the release from the bzImage header (e.g.
	// "6.1.0-56-cloud-amd64"); empty for a bare vmlinux.
	Version string
	// Compression is the payload's format ("lz4", "gzip", ...), or "none"
	// when the input already was an ELF vmlinux.
	Compression string
	// PVH says whether the ELF has a PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY),
	// which QEMU needs to boot an ELF kernel directly.
	PVH bool
}

// payload formats, by the magic bytes their streams start with (the table
// of the kernel's scripts/extract-vmlinux).
var payloadFormats = []struct {
	name      string
	magic     []byte
	supported bool
}{
	{"gzip", []byte{0x1f, 0x8b, 0x08}, true},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, true},
	{"bzip2", []byte("BZh"), true},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, false},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, false},
	{"lzma", []byte{0x5d, 0x00, 0x00, 0x00}, false},
	{"lzo", []byte{0x89, 'L', 'Z', 'O'}, false},
}

// maxTriesPerFormat bounds the scan: a magic that occurs by chance in
// setup code is retried at most this often per format.
const maxTriesPerFormat = 64

// ExtractVmlinux returns the uncompressed ELF kernel inside a bzImage
// (vmlinuz). An input that already is an ELF is returned as is. It first
// uses the boot protocol header's payload location, then falls back to
// scanning for compression magics as the kernel's extract-vmlinux does;
// a candidate counts only if it decompresses to a well-formed ELF.
func ExtractVmlinux(data []byte) ([]byte, Kernel, error) {
	if bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		pvh, err := checkELF(data)
		if err != nil {
			return nil, Kernel{}, err
		}
		return data, Kernel{Compression: "none", PVH: pvh}, nil
	}
	k := Kernel{Version: bzImageVersion(data)}
	try := func(off int) ([]byte, bool) {
		for _, f := range payloadFormats {
			if !f.supported || !bytes.HasPrefix(data[off:], f.magic) {
				continue
			}
			out := decompress(f.name, data[off:])
			if out == nil {
				return nil, false
			}
			pvh, err := checkELF(out)
			if err != nil {
				return nil, false
			}
			k.Compression, k.PVH = f.name, pvh
			return out, true
		}
		return nil, false
	}
	// Only the header's payload offset names an unsupported format
	// reliably: some magics (lzma's) are too short to trust in a scan.
	unsupported := ""
	if off, ok := bzImagePayload(data); ok {
		if out, ok := try(off); ok {
			return out, k, nil
		}
		for _, f := range payloadFormats {
			if !f.supported && bytes.HasPrefix(data[off:], f.magic) {
				unsupported = f.name
			}
		}
	}
	for _, f := range payloadFormats {
		tries := 0
		for off := 0; off < len(data) && tries < maxTriesPerFormat; {
			i := bytes.Index(data[off:], f.magic)
			if i < 0 {
				break
			}
			tries++
			if out, ok := try(off + i); ok {
				return out, k, nil
			}
			off += i + 1
		}
	}
	if unsupported != "" {
		return nil, k, fmt.Errorf("the kernel's payload is %s-compressed, which this builder cannot decompress (it reads gzip, bzip2 and lz4): pass an uncompressed vmlinux with --kernel, or boot the bzImage itself (Spec.Kernel accepts it)",
			unsupported)
	}
	return nil, k, errors.New("no compressed kernel found in the file: is it a Linux bzImage (vmlinuz)?")
}

// decompress decodes a stream that starts at src and may be followed by
// unrelated bytes; it returns what it decoded, or nil. Errors after some
// output are ignored on purpose: trailing data often makes the decoder
// complain at the very end, and the caller validates the result as an ELF.
func decompress(format string, src []byte) []byte {
	var r io.Reader
	switch format {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(src))
		if err != nil {
			return nil
		}
		zr.Multistream(false)
		r = zr
	case "bzip2":
		r = bzip2.NewReader(bytes.NewReader(src))
	case "lz4":
		out, err := decompressLZ4Legacy(src, 0)
		if err != nil {
			return nil
		}
		return out
	default:
		return nil
	}
	var buf bytes.Buffer
	_, _ = io.Copy(&buf, r)
	if buf.Len() == 0 {
		return nil
	}
	return buf.Bytes()
}

// bzImagePayload returns the offset of the compressed payload from the
// x86 boot protocol header (version 2.08 and later).
func bzImagePayload(data []byte) (int, bool) {
	if len(data) < 0x250 || string(data[0x202:0x206]) != "HdrS" {
		return 0, false
	}
	if binary.LittleEndian.Uint16(data[0x206:]) < 0x208 {
		return 0, false
	}
	setupSects := int(data[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(data[0x248:]))
	if off <= 0 || off >= len(data) {
		return 0, false
	}
	return off, true
}

// bzImageVersion returns the release string from the boot protocol
// header ("6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ..." → its
// first word), or "".
func bzImageVersion(data []byte) string {
	if len(data) < 0x210 || string(data[0x202:0x206]) != "HdrS" {
		return ""
	}
	p := int(binary.LittleEndian.Uint16(data[0x20e:]))
	if p == 0 {
		return ""
	}
	p += 0x200
	if p >= len(data) {
		return ""
	}
	s := data[p:]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	f := strings.Fields(string(s))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// checkELF validates data as a complete 64-bit x86 ELF (every loadable
// segment inside the file) and reports whether it has a PVH entry note.
func checkELF(data []byte) (pvh bool, err error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return false, fmt.Errorf("not an ELF kernel: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return false, fmt.Errorf("not an x86-64 kernel (%s, %s)", f.Class, f.Machine)
	}
	loads := 0
	for _, p := range f.Progs {
		if p.Off+p.Filesz > uint64(len(data)) || p.Off+p.Filesz < p.Off {
			return false, errors.New("truncated ELF kernel")
		}
		switch p.Type {
		case elf.PT_LOAD:
			loads++
		case elf.PT_NOTE:
			if hasPVHNote(data[p.Off:p.Off+p.Filesz], f.ByteOrder) {
				pvh = true
			}
		}
	}
	if loads == 0 {
		return false, errors.New("ELF kernel has no loadable segments")
	}
	return pvh, nil
}

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the note QEMU looks
// for to boot an ELF kernel through the PVH entry point.
const xenElfnotePhys32Entry = 18

func hasPVHNote(notes []byte, bo binary.ByteOrder) bool {
	for len(notes) >= 12 {
		namesz := int(bo.Uint32(notes))
		descsz := int(bo.Uint32(notes[4:]))
		typ := bo.Uint32(notes[8:])
		n := 12 + align4(namesz) + align4(descsz)
		if namesz < 0 || descsz < 0 || n > len(notes) || n < 12 {
			return false
		}
		name := notes[12 : 12+namesz]
		if typ == xenElfnotePhys32Entry && string(bytes.TrimRight(name, "\x00")) == "Xen" {
			return true
		}
		notes = notes[n:]
	}
	return false
}

func align4(n int) int { return (n + 3) &^ 3 }
