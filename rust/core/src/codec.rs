//! zstd for payloads: used only when it makes the record smaller, and bounded
//! on the way back so a damaged frame cannot ask for unbounded memory.

/// Payloads shorter than this never shrink enough to pay for a zstd frame.
const MIN_COMPRESS_LEN: usize = 64;
const LEVEL: i32 = 3;
/// The largest payload a frame may claim to decompress to.
pub const MAX_PAYLOAD_LEN: usize = 1 << 30;

pub fn compress_if_smaller(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < MIN_COMPRESS_LEN {
        return None;
    }
    let frame = zstd::bulk::compress(payload, LEVEL).ok()?;
    (frame.len() < payload.len()).then_some(frame)
}

pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, String> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| "payload is not a valid zstd frame".to_string())?
        .ok_or("zstd frame does not state its size")?;
    let size = usize::try_from(size)
        .ok()
        .filter(|size| *size <= MAX_PAYLOAD_LEN)
        .ok_or_else(|| format!("zstd frame claims {size} bytes, over the limit"))?;
    // The stated size is only a claim, and the output buffer is made that
    // big before decoding: a damaged header must not get a gigabyte for a
    // frame of a few bytes. Its blocks bound what it can really hold.
    let bound = blocks_bound(frame)?;
    if size > bound {
        return Err(format!(
            "zstd frame claims {size} bytes, more than its blocks can hold ({bound})"
        ));
    }
    let payload = zstd::bulk::decompress(frame, size).map_err(|err| format!("zstd: {err}"))?;
    if payload.len() != size {
        return Err("zstd frame shorter than it claims".into());
    }
    Ok(payload)
}

/// The largest block a zstd frame holds, decompressed.
const BLOCK_MAX: usize = 128 << 10;

/// The most the blocks of a single zstd frame can decompress to, read from
/// their headers: a raw or RLE block states its size, a compressed one
/// gives at most `BLOCK_MAX`. The blocks must end exactly where the frame
/// does (after its checksum, if it has one).
fn blocks_bound(frame: &[u8]) -> Result<usize, String> {
    let cut = || "zstd frame is cut short".to_string();
    let descriptor = *frame.get(4).ok_or_else(cut)?;
    let single_segment = descriptor & 0x20 != 0;
    let content_size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dictionary_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let window_len = usize::from(!single_segment);
    let mut pos = 5 + window_len + dictionary_len + content_size_len;
    let mut bound = 0usize;
    loop {
        let header = frame.get(pos..pos + 3).ok_or_else(cut)?;
        pos += 3;
        let header = u32::from_le_bytes([header[0], header[1], header[2], 0]);
        let block_len = (header >> 3) as usize;
        let (stored, output) = match (header >> 1) & 3 {
            0 => (block_len, block_len), // raw
            1 => (1, block_len),         // one byte repeated
            2 => (block_len, BLOCK_MAX), // compressed
            _ => return Err("zstd block of a reserved type".into()),
        };
        pos = pos
            .checked_add(stored)
            .filter(|end| *end <= frame.len())
            .ok_or_else(cut)?;
        bound = bound.saturating_add(output);
        if header & 1 != 0 {
            break;
        }
    }
    if descriptor & 0x04 != 0 {
        pos += 4; // content checksum
    }
    if pos != frame.len() {
        return Err(format!(
            "zstd frame does not end where its blocks do ({pos} of {} bytes)",
            frame.len()
        ));
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_every_shape_round_trip() {
        let texts: [Vec<u8>; 4] = [
            b"{\"k\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}".to_vec(),
            vec![7u8; 300_000],
            (0..400_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect(),
            (0..1_000_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        ];
        for text in texts {
            let frame = zstd::bulk::compress(&text, LEVEL).unwrap();
            assert!(blocks_bound(&frame).unwrap() >= text.len());
            assert_eq!(decompress(&frame).unwrap(), text);
        }
    }

    #[test]
    fn a_frame_claiming_more_than_its_blocks_hold_is_refused() {
        let frame = compress_if_smaller(&[b'a'; 200]).unwrap();
        // The same blocks under a header that claims a gigabyte.
        let mut claims = vec![0x28, 0xb5, 0x2f, 0xfd, 0xa0]; // 4-byte size, single segment
        claims.extend_from_slice(&(1u32 << 30).to_le_bytes());
        let header_len = 5 + 1; // this frame: single segment, 1-byte size
        assert_eq!(frame[4] & 0xe7, 0x20, "{:02x}", frame[4]);
        claims.extend_from_slice(&frame[header_len..]);
        let err = decompress(&claims).unwrap_err();
        assert!(err.contains("more than its blocks can hold"), "{err}");
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(decompress(&trailing).unwrap_err().contains("does not end"));
        assert!(decompress(&frame[..frame.len() - 1]).is_err());
    }
}
