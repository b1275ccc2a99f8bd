//! Decompression of the LZ4 *legacy* frame format, the one Linux uses for
//! LZ4-compressed kernels (Debian's cloud kernel among them), so extracting `vmlinux`
//! needs no `lz4` program on the host. Bounds-checked throughout: bad input is an
//! error, never a panic.

/// The legacy frame's magic number (little endian on disk).
const MAGIC: u32 = 0x184C_2102;
/// Largest decompressed size of one legacy block.
const MAX_BLOCK: usize = 8 << 20;

/// Decompresses a legacy LZ4 frame. The kernel appends the decompressed size (4
/// bytes) after the frame; a trailing 4-byte remainder is therefore ignored.
pub fn decompress_legacy(input: &[u8]) -> Result<Vec<u8>, String> {
    let word = |pos: usize| -> Option<u32> {
        input
            .get(pos..pos + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if word(0) != Some(MAGIC) {
        return Err("not an LZ4 legacy frame".into());
    }
    let mut out = Vec::new();
    let mut pos = 4;
    while let Some(size) = word(pos) {
        if size == MAGIC {
            // Concatenated frames.
            pos += 4;
            continue;
        }
        if pos + 4 == input.len() {
            // The kernel's appended size.
            break;
        }
        pos += 4;
        let end = pos
            .checked_add(size as usize)
            .filter(|&e| e <= input.len())
            .ok_or_else(|| format!("block at {pos} of {size} bytes runs past the end"))?;
        decode_block(&input[pos..end], &mut out).map_err(|e| format!("block at {pos}: {e}"))?;
        pos = end;
    }
    Ok(out)
}

/// Appends the decompression of one raw LZ4 block to `out` (blocks are independent).
fn decode_block(src: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    let mut i = 0;
    let byte = |i: usize| src.get(i).copied().ok_or("truncated block");
    let extend = |i: &mut usize, mut n: usize| -> Result<usize, String> {
        loop {
            let b = byte(*i)?;
            *i += 1;
            n += usize::from(b);
            if b != 255 {
                return Ok(n);
            }
        }
    };
    loop {
        let token = byte(i)?;
        i += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            literals = extend(&mut i, literals)?;
        }
        let lit = src
            .get(i..i + literals)
            .ok_or("literals run past the block")?;
        out.extend_from_slice(lit);
        i += literals;
        if i == src.len() {
            break;
        }
        let offset = usize::from(u16::from_le_bytes([byte(i)?, byte(i + 1)?]));
        i += 2;
        let mut length = usize::from(token & 15);
        if length == 15 {
            length = extend(&mut i, length)?;
        }
        length += 4;
        let produced = out.len() - start;
        if offset == 0 || offset > produced {
            return Err(format!(
                "match offset {offset} outside the {produced} bytes made"
            ));
        }
        if produced + length > MAX_BLOCK {
            return Err("block decompresses to more than 8 MiB".into());
        }
        let from = out.len() - offset;
        if offset >= length {
            out.extend_from_within(from..from + length);
        } else {
            // Overlapping: the match repeats bytes it is itself producing.
            for k in 0..length {
                let b = out[from + k];
                out.push(b);
            }
        }
    }
    if out.len() - start > MAX_BLOCK {
        return Err("block decompresses to more than 8 MiB".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(blocks: &[&[u8]], appended: Option<u32>) -> Vec<u8> {
        let mut v = MAGIC.to_le_bytes().to_vec();
        for b in blocks {
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        }
        if let Some(n) = appended {
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    #[test]
    fn literals_and_overlapping_matches_decode() {
        // "abc" then a match of offset 3, length 9 → "abcabcabcabc", then literal "!".
        let block: &[u8] = &[0x35, b'a', b'b', b'c', 3, 0, 0x10, b'!'];
        let out = decompress_legacy(&frame(&[block, block], Some(26))).unwrap();
        assert_eq!(out, b"abcabcabcabc!abcabcabcabc!");
    }

    #[test]
    fn long_literal_runs_use_extension_bytes() {
        let mut block = vec![0xf0, 255, 5]; // 15 + 255 + 5 = 275 literals
        block.extend(std::iter::repeat_n(b'x', 275));
        let out = decompress_legacy(&frame(&[&block], None)).unwrap();
        assert_eq!(out.len(), 275);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(decompress_legacy(b"nope").is_err());
        // A match pointing before the start of the block.
        assert!(decompress_legacy(&frame(&[&[0x10, b'a', 9, 0, 0x00]], None)).is_err());
        // Literals past the end.
        assert!(decompress_legacy(&frame(&[&[0x50, b'a']], None)).is_err());
        // A block size past the end.
        let mut f = frame(&[], None);
        f.extend_from_slice(&1000u32.to_le_bytes());
        f.extend_from_slice(&[0; 10]);
        assert!(decompress_legacy(&f).is_err());
    }
}
