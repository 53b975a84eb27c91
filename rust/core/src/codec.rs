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
    let payload = zstd::bulk::decompress(frame, size).map_err(|err| format!("zstd: {err}"))?;
    if payload.len() != size {
        return Err("zstd frame shorter than it claims".into());
    }
    Ok(payload)
}
