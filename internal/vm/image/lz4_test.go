package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "regenerate testdata/sample.lz4 with the lz4 command (lz4 package)")

// lz4Sample is the input of testdata/sample.lz4: text, long runs (which
// compress to overlapping matches), far repeats and some noise.
func lz4Sample() []byte {
	var b bytes.Buffer
	x := uint32(7)
	next := func() uint32 { x = x*1664525 + 1013904223; return x }
	for b.Len() < 200<<10 {
		switch r := next(); r >> 30 {
		case 0:
			b.WriteString("the quick brown fox jumps over the lazy dog; ")
		case 1:
			b.Write(bytes.Repeat([]byte{byte(r >> 8)}, 1+int(r>>12)%400))
		case 2:
			binary.Write(&b, binary.LittleEndian, next())
		case 3:
			if n := b.Len(); n > 1000 {
				start := int(r>>8) % (n - 600)
				b.Write(append([]byte(nil), b.Bytes()[start:start+1+int(r)%500]...))
			}
		}
	}
	return b.Bytes()
}

func TestLZ4LegacyMatchesTheReferenceTool(t *testing.T) {
	want := lz4Sample()
	path := filepath.Join("testdata", "sample.lz4")
	if *update {
		in := filepath.Join(t.TempDir(), "sample")
		if err := os.WriteFile(in, want, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("lz4", "-l", "-9", "-f", in, path).CombinedOutput(); err != nil {
			t.Fatalf("lz4: %v\n%s", err, out)
		}
	}
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decompressLZ4Legacy(src, 0)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("decoded %d bytes (%v), want the %d-byte sample", len(got), err, len(want))
	}

	// Several blocks, a concatenated frame and trailing bytes (the
	// kernel's appended size), as in a bzImage.
	block := src[4:]
	multi := append(append(append([]byte{}, src...), block...), src...)
	multi = binary.LittleEndian.AppendUint32(multi, uint32(3*len(want)))
	got, err = decompressLZ4Legacy(multi, 0)
	if err != nil || !bytes.Equal(got, bytes.Repeat(want, 3)) {
		t.Fatalf("multi-block: %d bytes, %v", len(got), err)
	}
}

func TestLZ4RejectsCorruptInput(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("testdata", "sample.lz4"))
	if err != nil {
		t.Fatal(err)
	}
	frame := func(block []byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(block)))
		return append(b, block...)
	}
	cases := map[string][]byte{
		"no magic":              src[4:],
		"no blocks":             src[:4],
		"offset before start":   frame([]byte{0x10, 'a', 0x05, 0x00}),
		"zero offset":           frame([]byte{0x10, 'a', 0x00, 0x00}),
		"truncated literals":    frame([]byte{0xf0, 200}),
		"truncated offset":      frame([]byte{0x10, 'a', 0x01}),
		"literals past the end": frame([]byte{0x50, 'a', 'b'}),
	}
	for name, in := range cases {
		if _, err := decompressLZ4Legacy(in, 0); !errors.Is(err, errLZ4Corrupt) {
			t.Errorf("%s: err = %v, want errLZ4Corrupt", name, err)
		}
	}
}

// FuzzLZ4Block checks the decoder never panics or overruns its limit.
func FuzzLZ4Block(f *testing.F) {
	src, err := os.ReadFile(filepath.Join("testdata", "sample.lz4"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(src[8:200])
	f.Add([]byte{0x1f, 'a', 0x01, 0x00, 0xff, 0xff, 0x10})
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, block []byte) {
		out, err := decodeLZ4Block(nil, block, 1<<16)
		if err == nil && len(out) > 1<<16 {
			t.Fatalf("decoded %d bytes past the limit", len(out))
		}
	})
}
