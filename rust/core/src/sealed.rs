//! Checksums on the values of the index databases (format 5).
//!
//! Journal records carry their own checksum. Every other value perdure
//! decodes (execution metadata, id index, callbacks, owners, leases, the
//! pending and wake indexes, orphans, timers, counters) is stored as
//! `payload ‖ crc32(key ‖ payload)`: a flipped bit in the value, or in the
//! key it is stored under, is noticed instead of believed.

const TRAILER: usize = 4;

fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    hasher.finalize()
}

/// The stored form of `payload` under `key`.
pub fn seal(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + TRAILER);
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(key, payload).to_le_bytes());
    out
}

/// The payload of a stored value, or why it cannot be trusted.
pub fn unseal<'v>(key: &[u8], value: &'v [u8]) -> Result<&'v [u8], String> {
    let Some(split) = value.len().checked_sub(TRAILER) else {
        return Err(format!("value of {} bytes is too short for its checksum", value.len()));
    };
    let (payload, trailer) = value.split_at(split);
    let stored = u32::from_le_bytes(trailer.try_into().map_err(|_| "bad checksum trailer")?);
    if stored != checksum(key, payload) {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

/// A big-endian u64 payload (execution keys, counters, owner ids).
pub fn unseal_u64(key: &[u8], value: &[u8]) -> Result<u64, String> {
    let payload = unseal(key, value)?;
    let bytes: [u8; 8] = payload
        .try_into()
        .map_err(|_| format!("expected 8 bytes, found {}", payload.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

pub fn seal_u64(key: &[u8], value: u64) -> Vec<u8> {
    seal(key, &value.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_in_key_or_value_is_noticed() {
        let sealed = seal(b"key", b"payload");
        assert_eq!(unseal(b"key", &sealed).unwrap(), b"payload");
        assert!(unseal(b"kez", &sealed).is_err());
        for byte in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[byte] ^= 0x10;
            assert!(unseal(b"key", &damaged).is_err(), "flip at {byte} unnoticed");
        }
        assert!(unseal(b"key", &sealed[..3]).is_err());
        assert_eq!(unseal_u64(b"k", &seal_u64(b"k", 42)).unwrap(), 42);
        assert!(unseal_u64(b"k", &seal(b"k", b"short")).is_err());
    }
}
