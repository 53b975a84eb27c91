//! Journal records: one per event, compact, checksummed, zstd-compressed when
//! that pays. The byte layout is specified in `docs/format.md`; keep the two in step.
//!
//! ```text
//! [0]      format version (RECORD_VERSION)
//! [1..5]   CRC-32 (IEEE, little-endian) of bytes [5..]
//! [5]      kind        [6] op type     [7] sub type     [8] flags
//! varint   timestamp_ms
//! varint   len, op id (UTF-8)
//! flags:   NAME -> varint len + UTF-8; ATTEMPT -> varint; AUX -> varint;
//!          AUX2 -> varint; EXTRA -> varint len + UTF-8;
//!          LABEL -> varint len + UTF-8 (sub type Custom only);
//!          PAYLOAD -> the rest of the record (zstd frame if PAYLOAD_ZSTD)
//! ```

use crate::codec;
use crate::error::Result;

pub const RECORD_VERSION: u8 = 1;
const HEADER_LEN: usize = 9;

const FLAG_NAME: u8 = 1 << 0;
const FLAG_ATTEMPT: u8 = 1 << 1;
const FLAG_AUX: u8 = 1 << 2;
const FLAG_AUX2: u8 = 1 << 3;
const FLAG_EXTRA: u8 = 1 << 4;
const FLAG_PAYLOAD: u8 = 1 << 5;
const FLAG_PAYLOAD_ZSTD: u8 = 1 << 6;
const FLAG_LABEL: u8 = 1 << 7;

/// The longest custom sub type label, as the AWS SDK allows.
pub const LABEL_MAX_LEN: usize = 32;

macro_rules! byte_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($(#[$vmeta])* $variant = $value),+ }

        impl $name {
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

byte_enum!(
    /// What happened to the operation (or execution) the record belongs to.
    RecordKind {
        Started = 1,
        Succeeded = 2,
        Failed = 3,
        /// An attempt failed and another is scheduled.
        Retry = 4,
        Cancelled = 5,
        TimedOut = 6,
        /// The end of one invocation (one run of the function from the top).
        InvocationCompleted = 7,
    }
);

byte_enum!(
    OpType {
        Execution = 0,
        Step = 1,
        Wait = 2,
        Callback = 3,
        Context = 4,
        ChainedInvoke = 5,
    }
);

byte_enum!(
    /// The AWS history `SubType` of an operation.
    SubType {
        None = 0,
        Step = 1,
        Wait = 2,
        Callback = 3,
        RunInChildContext = 4,
        Map = 5,
        MapIteration = 6,
        Parallel = 7,
        ParallelBranch = 8,
        WaitForCallback = 9,
        WaitForCondition = 10,
        ChainedInvoke = 11,
        /// A label of the user's own (`sub_type=` in a step, callback or
        /// child context config), kept in the record's `label`.
        Custom = 12,
    }
);

impl SubType {
    /// The AWS history name of a built-in sub type.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            SubType::None | SubType::Custom => return None,
            SubType::Step => "Step",
            SubType::Wait => "Wait",
            SubType::Callback => "Callback",
            SubType::RunInChildContext => "RunInChildContext",
            SubType::Map => "Map",
            SubType::MapIteration => "MapIteration",
            SubType::Parallel => "Parallel",
            SubType::ParallelBranch => "ParallelBranch",
            SubType::WaitForCallback => "WaitForCallback",
            SubType::WaitForCondition => "WaitForCondition",
            SubType::ChainedInvoke => "ChainedInvoke",
        })
    }

    /// The sub type a label names: a built-in one by its AWS name, otherwise
    /// Custom with the label, which must be 1 to 32 of `A-Z a-z 0-9 _ -`.
    pub fn from_label(label: &str) -> Result<(SubType, Option<String>), String> {
        // Codes are contiguous from 1, so this walks every named sub type.
        let mut named = (1..=u8::MAX).map_while(SubType::from_u8);
        if let Some(built_in) = named.find(|sub| sub.name() == Some(label)) {
            return Ok((built_in, None));
        }
        check_label(label)?;
        Ok((SubType::Custom, Some(label.to_owned())))
    }
}

fn check_label(label: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if label.is_empty() || label.len() > LABEL_MAX_LEN || !label.chars().all(allowed) {
        return Err(format!(
            "sub type label {label:?} must be 1 to {LABEL_MAX_LEN} characters from A-Z, a-z, 0-9, '_' and '-'"
        ));
    }
    Ok(())
}

/// One journal event. What `aux`, `aux2` and `extra` mean depends on the kind
/// and op type; `docs/format.md` lists every combination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub op_type: OpType,
    pub sub_type: SubType,
    pub timestamp_ms: u64,
    pub op_id: String,
    pub name: Option<String>,
    pub attempt: u32,
    pub aux: u64,
    pub aux2: u64,
    pub extra: Option<String>,
    /// The label of a Custom sub type; set exactly when `sub_type` is Custom.
    pub label: Option<String>,
    pub payload: Option<Vec<u8>>,
}

impl Record {
    pub fn new(kind: RecordKind, op_type: OpType, sub_type: SubType, op_id: impl Into<String>) -> Self {
        Record {
            kind,
            op_type,
            sub_type,
            timestamp_ms: 0,
            op_id: op_id.into(),
            name: None,
            attempt: 0,
            aux: 0,
            aux2: 0,
            extra: None,
            label: None,
            payload: None,
        }
    }

    /// Encodes the record, compressing the payload when that makes it smaller.
    pub fn encode(&self) -> Vec<u8> {
        let compressed = self.payload.as_deref().and_then(codec::compress_if_smaller);
        let payload_len = self.payload.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(HEADER_LEN + 24 + self.op_id.len() + payload_len);
        out.extend_from_slice(&[RECORD_VERSION, 0, 0, 0, 0]);
        let mut flags = 0u8;
        if self.name.is_some() {
            flags |= FLAG_NAME;
        }
        if self.attempt != 0 {
            flags |= FLAG_ATTEMPT;
        }
        if self.aux != 0 {
            flags |= FLAG_AUX;
        }
        if self.aux2 != 0 {
            flags |= FLAG_AUX2;
        }
        if self.extra.is_some() {
            flags |= FLAG_EXTRA;
        }
        if self.label.is_some() {
            flags |= FLAG_LABEL;
        }
        if self.payload.is_some() {
            flags |= FLAG_PAYLOAD;
        }
        if compressed.is_some() {
            flags |= FLAG_PAYLOAD_ZSTD;
        }
        out.extend_from_slice(&[self.kind as u8, self.op_type as u8, self.sub_type as u8, flags]);
        put_varint(&mut out, self.timestamp_ms);
        put_bytes(&mut out, self.op_id.as_bytes());
        if let Some(name) = &self.name {
            put_bytes(&mut out, name.as_bytes());
        }
        if self.attempt != 0 {
            put_varint(&mut out, u64::from(self.attempt));
        }
        if self.aux != 0 {
            put_varint(&mut out, self.aux);
        }
        if self.aux2 != 0 {
            put_varint(&mut out, self.aux2);
        }
        if let Some(extra) = &self.extra {
            put_bytes(&mut out, extra.as_bytes());
        }
        if let Some(label) = &self.label {
            put_bytes(&mut out, label.as_bytes());
        }
        match (&compressed, &self.payload) {
            (Some(frame), _) => out.extend_from_slice(frame),
            (None, Some(raw)) => out.extend_from_slice(raw),
            (None, None) => {}
        }
        let crc = crc32fast::hash(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and verifies a record. The error says what is wrong; callers add
    /// the execution and sequence number.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!("record is {} bytes, shorter than its header", bytes.len()));
        }
        if bytes[0] != RECORD_VERSION {
            return Err(format!("record format version {} is not {}", bytes[0], RECORD_VERSION));
        }
        let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let actual = crc32fast::hash(&bytes[5..]);
        if stored != actual {
            return Err(format!(
                "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
            ));
        }
        let kind = RecordKind::from_u8(bytes[5]).ok_or_else(|| format!("unknown record kind {}", bytes[5]))?;
        let op_type = OpType::from_u8(bytes[6]).ok_or_else(|| format!("unknown op type {}", bytes[6]))?;
        let sub_type = SubType::from_u8(bytes[7]).ok_or_else(|| format!("unknown sub type {}", bytes[7]))?;
        let flags = bytes[8];
        let mut reader = Reader { bytes, pos: HEADER_LEN };
        let timestamp_ms = reader.varint()?;
        let op_id = reader.string()?;
        let name = if flags & FLAG_NAME != 0 {
            Some(reader.string()?)
        } else {
            None
        };
        let attempt = if flags & FLAG_ATTEMPT != 0 {
            u32::try_from(reader.varint()?).map_err(|_| "attempt out of range".to_string())?
        } else {
            0
        };
        let aux = if flags & FLAG_AUX != 0 { reader.varint()? } else { 0 };
        let aux2 = if flags & FLAG_AUX2 != 0 { reader.varint()? } else { 0 };
        let extra = if flags & FLAG_EXTRA != 0 {
            Some(reader.string()?)
        } else {
            None
        };
        let label = if flags & FLAG_LABEL != 0 {
            let label = reader.string()?;
            check_label(&label)?;
            Some(label)
        } else {
            None
        };
        if label.is_some() != (sub_type == SubType::Custom) {
            return Err(format!("sub type {} with label {label:?}", sub_type as u8));
        }
        let rest = &bytes[reader.pos..];
        let payload = if flags & FLAG_PAYLOAD == 0 {
            if !rest.is_empty() {
                return Err(format!("{} trailing bytes after a record without payload", rest.len()));
            }
            None
        } else if flags & FLAG_PAYLOAD_ZSTD != 0 {
            Some(codec::decompress(rest)?)
        } else {
            Some(rest.to_vec())
        };
        Ok(Record {
            kind,
            op_type,
            sub_type,
            timestamp_ms,
            op_id,
            name,
            attempt,
            aux,
            aux2,
            extra,
            label,
            payload,
        })
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over an encoded value; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        let byte = *self.bytes.get(self.pos).ok_or("truncated value")?;
        self.pos += 1;
        Ok(byte)
    }

    pub fn u64_be(&mut self) -> Result<u64, String> {
        let bytes = self.bytes.get(self.pos..self.pos + 8).ok_or("truncated value")?;
        self.pos += 8;
        Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| "truncated value")?))
    }

    pub fn slice(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("truncated field")?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    pub fn string(&mut self) -> Result<String, String> {
        let slice = self.slice()?;
        String::from_utf8(slice.to_vec()).map_err(|_| "field is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut record = Record::new(RecordKind::Succeeded, OpType::Step, SubType::Step, "3.1");
        record.timestamp_ms = 1_790_000_000_123;
        record.name = Some("reserve".into());
        record.attempt = 2;
        record.aux = 17;
        record.payload = Some(b"42".to_vec());
        record
    }

    #[test]
    fn round_trips() {
        let record = sample();
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn small_step_record_is_compact() {
        let mut record = Record::new(RecordKind::Succeeded, OpType::Step, SubType::Step, "17");
        record.timestamp_ms = 1_790_000_000_123;
        record.aux = 1;
        record.payload = Some(b"42".to_vec());
        assert!(record.encode().len() <= 24, "{}", record.encode().len());
    }

    #[test]
    fn large_payload_is_compressed_and_restored() {
        let mut record = sample();
        record.payload = Some(b"{\"k\":\"aaaaaaaaaaaaaaaaaaaaaaaa\"}".repeat(100));
        let encoded = record.encode();
        assert!(encoded.len() < 500, "{}", encoded.len());
        assert_eq!(Record::decode(&encoded).unwrap(), record);
    }

    #[test]
    fn flipped_byte_is_detected() {
        let encoded = sample().encode();
        for index in 1..encoded.len() {
            let mut damaged = encoded.clone();
            damaged[index] ^= 0x20;
            assert!(Record::decode(&damaged).is_err(), "flip at {index} not detected");
        }
    }

    #[test]
    fn truncation_is_detected() {
        let encoded = sample().encode();
        for len in 0..encoded.len() {
            assert!(Record::decode(&encoded[..len]).is_err());
        }
    }

    #[test]
    fn custom_sub_type_keeps_its_label() {
        let (sub_type, label) = SubType::from_label("Transfer").unwrap();
        assert_eq!(sub_type, SubType::Custom);
        let mut record = Record::new(RecordKind::Started, OpType::Context, sub_type, "2");
        record.label = label;
        record.extra = Some("kept apart from the label".into());
        let decoded = Record::decode(&record.encode()).unwrap();
        assert_eq!(decoded.label.as_deref(), Some("Transfer"));
        assert_eq!(decoded, record);
    }

    #[test]
    fn built_in_names_are_not_custom() {
        assert_eq!(SubType::from_label("Map").unwrap(), (SubType::Map, None));
        assert_eq!(
            SubType::from_label("RunInChildContext").unwrap(),
            (SubType::RunInChildContext, None)
        );
        for bad in ["", "has space", "dot.ted", "x".repeat(33).as_str(), "émigré"] {
            let err = SubType::from_label(bad).unwrap_err();
            assert!(err.contains("1 to 32 characters"), "{err}");
        }
    }

    #[test]
    fn label_and_custom_sub_type_go_together() {
        let mut unlabelled = Record::new(RecordKind::Started, OpType::Step, SubType::Custom, "1");
        let err = Record::decode(&unlabelled.encode()).unwrap_err();
        assert!(err.contains("sub type 12"), "{err}");
        unlabelled.sub_type = SubType::Step;
        unlabelled.label = Some("Stray".into());
        assert!(Record::decode(&unlabelled.encode()).is_err());
    }
}
