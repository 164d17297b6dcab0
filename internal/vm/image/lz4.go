package image

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// LZ4 is implemented here rather than taken from a library because the
// kernel only uses the tiny legacy frame format (a magic number, then
// length-prefixed blocks of at most 8 MiB), the block decoder is about
// fifty lines, and it keeps the module free of a dependency used for
// nothing else. Debian's cloud kernels are LZ4-compressed.

const (
	lz4LegacyMagic     = 0x184C2102
	lz4LegacyBlockSize = 8 << 20
)

var errLZ4Corrupt = errors.New("lz4: corrupt input")

// decompressLZ4Legacy decodes an LZ4 legacy frame (what `lz4 -l` and the
// kernel build write). Decoding stops at the end of src or at trailing
// bytes that cannot be a block (the kernel appends the uncompressed size
// as 4 bytes); it fails on a corrupt block. sizeHint, if positive,
// preallocates the output.
func decompressLZ4Legacy(src []byte, sizeHint int) ([]byte, error) {
	if len(src) < 4 || binary.LittleEndian.Uint32(src) != lz4LegacyMagic {
		return nil, fmt.Errorf("%w: no legacy frame magic", errLZ4Corrupt)
	}
	src = src[4:]
	if sizeHint < 0 || sizeHint > 1<<31 {
		sizeHint = 0
	}
	out := make([]byte, 0, sizeHint)
	blocks := 0
	for len(src) >= 4 {
		n := binary.LittleEndian.Uint32(src)
		if n == lz4LegacyMagic { // concatenated frame
			src = src[4:]
			continue
		}
		if n == 0 || uint64(n) > uint64(len(src)-4) {
			break // trailing data, not a block
		}
		var err error
		out, err = decodeLZ4Block(out, src[4:4+n], lz4LegacyBlockSize)
		if err != nil {
			return nil, fmt.Errorf("lz4 block %d: %w", blocks, err)
		}
		src = src[4+n:]
		blocks++
	}
	if blocks == 0 {
		return nil, fmt.Errorf("%w: no blocks", errLZ4Corrupt)
	}
	return out, nil
}

// decodeLZ4Block appends the decoding of one LZ4 block to dst, producing
// at most maxOut bytes. Legacy blocks are independent, so a match may not
// reach back before the block's own output.
func decodeLZ4Block(dst, src []byte, maxOut int) ([]byte, error) {
	limit := len(dst) + maxOut
	start := len(dst)
	i := 0
	for {
		if i >= len(src) {
			return nil, fmt.Errorf("%w: truncated sequence", errLZ4Corrupt)
		}
		token := src[i]
		i++
		lit := int(token >> 4)
		if lit == 15 {
			n, next, err := lz4Length(src, i)
			if err != nil {
				return nil, err
			}
			lit += n
			i = next
		}
		if lit > len(src)-i || lit > limit-len(dst) {
			return nil, fmt.Errorf("%w: literals overrun", errLZ4Corrupt)
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			return dst, nil // the last sequence has literals only
		}
		if len(src)-i < 2 {
			return nil, fmt.Errorf("%w: truncated offset", errLZ4Corrupt)
		}
		off := int(binary.LittleEndian.Uint16(src[i:]))
		i += 2
		if off == 0 || off > len(dst)-start {
			return nil, fmt.Errorf("%w: bad match offset %d", errLZ4Corrupt, off)
		}
		ml := int(token & 15)
		if ml == 15 {
			n, next, err := lz4Length(src, i)
			if err != nil {
				return nil, err
			}
			ml += n
			i = next
		}
		ml += 4 // minimum match
		if ml > limit-len(dst) {
			return nil, fmt.Errorf("%w: match overruns the block size", errLZ4Corrupt)
		}
		// An overlapping match (off < ml) repeats the last off bytes.
		// Copying in chunks that double keeps every chunk a whole number
		// of periods, so it is correct and takes log(ml/off) copies, not
		// ml single bytes.
		from := len(dst) - off
		for ml > 0 {
			n := min(len(dst)-from, ml)
			dst = append(dst, dst[from:from+n]...)
			ml -= n
		}
	}
}

// lz4Length reads the 255-continued extra length at src[i:].
func lz4Length(src []byte, i int) (n, next int, err error) {
	for {
		if i >= len(src) {
			return 0, 0, fmt.Errorf("%w: truncated length", errLZ4Corrupt)
		}
		b := src[i]
		i++
		n += int(b)
		if n > 1<<30 {
			return 0, 0, fmt.Errorf("%w: length too large", errLZ4Corrupt)
		}
		if b != 255 {
			return n, i, nil
		}
	}
}
