//! Keys and small values of the LMDB databases. Numbers in keys are big-endian
//! so that LMDB's byte order is numeric order: one cursor range is one
//! execution's journal, and the timers database is ordered by deadline.

use crate::record::{put_bytes, put_varint, Reader};

pub const META_VERSION: u8 = 1;
/// Execution metadata of a child execution: version 1 plus its parent link.
pub const META_VERSION_CHILD: u8 = 2;

pub fn journal_key(exec_key: u64, seq: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&exec_key.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub fn split_journal_key(key: &[u8]) -> Option<(u64, u32)> {
    let exec = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let seq = u32::from_be_bytes(key.get(8..12)?.try_into().ok()?);
    (key.len() == 12).then_some((exec, seq))
}

pub fn exec_key_bytes(exec_key: u64) -> [u8; 8] {
    exec_key.to_be_bytes()
}

pub fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Why a timer exists; decides what firing it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum TimerKind {
    /// Wake the execution (a wait ended, a retry is due).
    Wake = 1,
    /// A callback's overall timeout.
    CallbackTimeout = 2,
    /// A callback's heartbeat deadline.
    CallbackHeartbeat = 3,
    /// The execution's own timeout, given when it was started.
    ExecutionTimeout = 4,
}

impl TimerKind {
    pub(crate) fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(TimerKind::Wake),
            2 => Some(TimerKind::CallbackTimeout),
            3 => Some(TimerKind::CallbackHeartbeat),
            4 => Some(TimerKind::ExecutionTimeout),
            _ => None,
        }
    }
}

/// A durable timer; ordered by deadline first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    pub due_ms: u64,
    pub exec_key: u64,
    pub kind: TimerKind,
    /// The operation id for wake timers, the callback id for callback timers.
    pub subject: String,
}

impl Timer {
    pub fn encode(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(17 + self.subject.len());
        key.extend_from_slice(&self.due_ms.to_be_bytes());
        key.extend_from_slice(&self.exec_key.to_be_bytes());
        key.push(self.kind as u8);
        key.extend_from_slice(self.subject.as_bytes());
        key
    }

    pub fn decode(key: &[u8]) -> Option<Timer> {
        Some(Timer {
            due_ms: read_u64(key)?,
            exec_key: read_u64(key.get(8..)?)?,
            kind: TimerKind::from_u8(*key.get(16)?)?,
            subject: String::from_utf8(key.get(17..)?.to_vec()).ok()?,
        })
    }
}

/// The lifecycle state stored for an execution. Whether an active execution is
/// pending or suspended is not stored here but derived from the pending index,
/// so a wake-up never has to rewrite this record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExecState {
    Active = 1,
    Succeeded = 2,
    Failed = 3,
    Cancelled = 4,
    TimedOut = 5,
}

impl ExecState {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(ExecState::Active),
            2 => Some(ExecState::Succeeded),
            3 => Some(ExecState::Failed),
            4 => Some(ExecState::Cancelled),
            5 => Some(ExecState::TimedOut),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecState::Active => "ACTIVE",
            ExecState::Succeeded => "SUCCEEDED",
            ExecState::Failed => "FAILED",
            ExecState::Cancelled => "CANCELLED",
            ExecState::TimedOut => "TIMED_OUT",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != ExecState::Active
    }
}

/// The executions database value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecMeta {
    pub state: ExecState,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub execution_id: String,
    pub function: String,
    /// A child execution's parent and the operation that started it.
    pub parent: Option<ParentLink>,
}

/// Where a child execution reports its outcome: an operation of its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLink {
    pub exec_key: u64,
    pub op_id: String,
}

impl ExecMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.execution_id.len() + self.function.len());
        out.push(if self.parent.is_some() {
            META_VERSION_CHILD
        } else {
            META_VERSION
        });
        out.push(self.state as u8);
        put_varint(&mut out, self.created_ms);
        put_varint(&mut out, self.updated_ms);
        put_bytes(&mut out, self.execution_id.as_bytes());
        put_bytes(&mut out, self.function.as_bytes());
        if let Some(parent) = &self.parent {
            put_varint(&mut out, parent.exec_key);
            put_bytes(&mut out, parent.op_id.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ExecMeta, String> {
        let mut reader = Reader { bytes, pos: 0 };
        let version = reader.u8()?;
        if version != META_VERSION && version != META_VERSION_CHILD {
            return Err(format!(
                "execution metadata version {version} is not {META_VERSION} or {META_VERSION_CHILD}"
            ));
        }
        let state = ExecState::from_u8(reader.u8()?).ok_or("unknown execution state")?;
        let mut meta = ExecMeta {
            state,
            created_ms: reader.varint()?,
            updated_ms: reader.varint()?,
            execution_id: reader.string()?,
            function: reader.string()?,
            parent: None,
        };
        if version == META_VERSION_CHILD {
            meta.parent = Some(ParentLink {
                exec_key: reader.varint()?,
                op_id: reader.string()?,
            });
        }
        Ok(meta)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CallbackState {
    Pending = 0,
    Succeeded = 1,
    Failed = 2,
    TimedOut = 3,
    Cancelled = 4,
}

impl CallbackState {
    pub(crate) fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(CallbackState::Pending),
            1 => Some(CallbackState::Succeeded),
            2 => Some(CallbackState::Failed),
            3 => Some(CallbackState::TimedOut),
            4 => Some(CallbackState::Cancelled),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CallbackState::Pending => "pending",
            CallbackState::Succeeded => "succeeded",
            CallbackState::Failed => "failed",
            CallbackState::TimedOut => "timed out",
            CallbackState::Cancelled => "cancelled",
        }
    }
}

/// The callbacks database value (the key is the callback id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackEntry {
    pub state: CallbackState,
    pub exec_key: u64,
    /// Absolute deadline of the whole callback; 0 when it has none.
    pub deadline_ms: u64,
    /// Allowed silence between heartbeats; 0 when heartbeats are not required.
    pub heartbeat_timeout_ms: u64,
    /// When the callback was created or last heard from.
    pub last_heartbeat_ms: u64,
    pub op_id: String,
}

impl CallbackEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.op_id.len());
        out.push(META_VERSION);
        out.push(self.state as u8);
        out.extend_from_slice(&self.exec_key.to_be_bytes());
        put_varint(&mut out, self.deadline_ms);
        put_varint(&mut out, self.heartbeat_timeout_ms);
        put_varint(&mut out, self.last_heartbeat_ms);
        put_bytes(&mut out, self.op_id.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<CallbackEntry, String> {
        let mut reader = Reader { bytes, pos: 0 };
        if reader.u8()? != META_VERSION {
            return Err("unknown callback entry version".into());
        }
        let state = CallbackState::from_u8(reader.u8()?).ok_or("unknown callback state")?;
        let exec_key = reader.u64_be()?;
        Ok(CallbackEntry {
            state,
            exec_key,
            deadline_ms: reader.varint()?,
            heartbeat_timeout_ms: reader.varint()?,
            last_heartbeat_ms: reader.varint()?,
            op_id: reader.string()?,
        })
    }

    /// The earliest moment at which this callback times out, if any.
    pub fn next_deadline(&self) -> Option<(u64, TimerKind)> {
        let overall = (self.deadline_ms != 0).then_some((self.deadline_ms, TimerKind::CallbackTimeout));
        let heartbeat = (self.heartbeat_timeout_ms != 0).then(|| {
            (
                self.last_heartbeat_ms.saturating_add(self.heartbeat_timeout_ms),
                TimerKind::CallbackHeartbeat,
            )
        });
        match (overall, heartbeat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The owners database value (the key is the owner id, 8 bytes big-endian):
/// one running engine, its process and when it last renewed its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerEntry {
    pub pid: u32,
    pub started_ms: u64,
    pub renewed_ms: u64,
}

impl OwnerEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.push(META_VERSION);
        put_varint(&mut out, u64::from(self.pid));
        put_varint(&mut out, self.started_ms);
        put_varint(&mut out, self.renewed_ms);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<OwnerEntry, String> {
        let mut reader = Reader { bytes, pos: 0 };
        if reader.u8()? != META_VERSION {
            return Err("unknown owner entry version".into());
        }
        Ok(OwnerEntry {
            pid: u32::try_from(reader.varint()?).map_err(|_| "owner pid out of range")?,
            started_ms: reader.varint()?,
            renewed_ms: reader.varint()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_sort_by_deadline_in_bytes() {
        let early = Timer {
            due_ms: 5,
            exec_key: 9,
            kind: TimerKind::Wake,
            subject: "2".into(),
        };
        let late = Timer {
            due_ms: 300,
            exec_key: 1,
            kind: TimerKind::Wake,
            subject: "1".into(),
        };
        assert!(early.encode() < late.encode());
        assert_eq!(Timer::decode(&early.encode()).unwrap(), early);
    }

    #[test]
    fn meta_and_callback_round_trip() {
        let meta = ExecMeta {
            state: ExecState::Active,
            created_ms: 10,
            updated_ms: 20,
            execution_id: "o-1".into(),
            function: "place_order".into(),
            parent: None,
        };
        assert_eq!(ExecMeta::decode(&meta.encode()).unwrap(), meta);
        assert_eq!(meta.encode()[0], META_VERSION);
        let child = ExecMeta {
            parent: Some(ParentLink {
                exec_key: 3,
                op_id: "2-1".into(),
            }),
            ..meta.clone()
        };
        assert_eq!(ExecMeta::decode(&child.encode()).unwrap(), child);
        assert_eq!(child.encode()[0], META_VERSION_CHILD);
        let entry = CallbackEntry {
            state: CallbackState::Pending,
            exec_key: 7,
            deadline_ms: 1000,
            heartbeat_timeout_ms: 50,
            last_heartbeat_ms: 900,
            op_id: "2.1".into(),
        };
        assert_eq!(CallbackEntry::decode(&entry.encode()).unwrap(), entry);
        assert_eq!(entry.next_deadline(), Some((950, TimerKind::CallbackHeartbeat)));
        let owner = OwnerEntry {
            pid: 4242,
            started_ms: 1,
            renewed_ms: 99,
        };
        assert_eq!(OwnerEntry::decode(&owner.encode()).unwrap(), owner);
    }
}
