//! The replay index: an execution's journal folded into the current state of
//! each operation, so that every operation the code asks for again is
//! answered without scanning, however long the history.
//!
//! Operations are kept densely in the order they first appear in the journal,
//! which is the order a replay asks for them: a cursor remembers where the
//! last lookup landed, so a sequential replay walks memory in order and never
//! hashes. Any other lookup goes through a hash table of positions.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use crate::record::{OpType, Record, RecordKind, SubType};

/// The state of one operation after all its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpState {
    pub op_id: String,
    pub op_type: OpType,
    pub sub_type: SubType,
    /// A Custom sub type's label.
    pub label: Option<String>,
    pub name: Option<String>,
    /// The kind of the operation's latest record.
    pub status: RecordKind,
    pub attempt: u32,
    pub aux: u64,
    pub aux2: u64,
    /// When the latest record was written.
    pub timestamp_ms: u64,
    /// Set by the first record that carries one (a callback id).
    pub extra: Option<String>,
    /// The latest record's payload: a result, an error object or a state.
    pub payload: Option<Vec<u8>>,
    /// The first record's aux: a wait's duration, a callback's timeout.
    pub start_aux: u64,
    pub started_ms: u64,
}

pub struct ReplayIndex {
    ops: Vec<OpState>,
    /// Positions in `ops`, hashed by op id. Op ids come from our own journal,
    /// so a fast non-keyed hash is safe.
    positions: HashTable<u32>,
    hasher: FxBuildHasher,
    /// Where the next lookup most likely is: just after the last one.
    cursor: AtomicUsize,
    /// The execution's input (the ExecutionStarted payload).
    pub input: Option<Vec<u8>>,
    /// Invocations recorded so far.
    pub invocations: u32,
}

impl ReplayIndex {
    /// An empty index with room for `capacity` records.
    pub fn with_capacity(capacity: usize) -> ReplayIndex {
        ReplayIndex {
            ops: Vec::with_capacity(capacity),
            positions: HashTable::with_capacity(capacity),
            hasher: FxBuildHasher,
            cursor: AtomicUsize::new(0),
            input: None,
            invocations: 0,
        }
    }

    pub fn build(records: Vec<Record>) -> ReplayIndex {
        let mut index = ReplayIndex::with_capacity(records.len());
        for record in records {
            index.add(record);
        }
        index
    }

    /// Folds the journal's next record in.
    pub fn add(&mut self, record: Record) {
        match (record.op_type, record.kind) {
            (OpType::Execution, RecordKind::Started) => self.input = record.payload,
            (_, RecordKind::InvocationCompleted) => self.invocations += 1,
            (OpType::Execution, _) => {}
            _ => self.fold(record),
        }
    }

    pub fn get(&self, op_id: &str) -> Option<&OpState> {
        let hint = self.cursor.load(Ordering::Relaxed);
        let position = match self.ops.get(hint) {
            Some(op) if op.op_id == op_id => hint,
            _ => self.position(op_id)?,
        };
        self.cursor.store(position + 1, Ordering::Relaxed);
        self.ops.get(position)
    }

    fn position(&self, op_id: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(op_id);
        self.positions
            .find(hash, |&position| self.ops[position as usize].op_id == op_id)
            .map(|&position| position as usize)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn fold(&mut self, record: Record) {
        // The latest operation is the likeliest to get another record.
        let position = match self.ops.last() {
            Some(last) if last.op_id == record.op_id => Some(self.ops.len() - 1),
            _ => self.position(&record.op_id),
        };
        let Some(position) = position else {
            self.insert(record);
            return;
        };
        let state = &mut self.ops[position];
        state.status = record.kind;
        state.attempt = record.attempt.max(state.attempt);
        state.aux = record.aux;
        state.aux2 = record.aux2;
        state.timestamp_ms = record.timestamp_ms;
        if state.extra.is_none() {
            state.extra = record.extra;
        }
        // A START of a new attempt carries no payload; keep the last one seen.
        if record.payload.is_some() || record.kind != RecordKind::Started {
            state.payload = record.payload;
        }
    }

    fn insert(&mut self, record: Record) {
        // Sequence numbers are u32, so a journal never has more operations.
        let position = u32::try_from(self.ops.len()).unwrap_or(u32::MAX);
        let hash = self.hasher.hash_one(record.op_id.as_str());
        let started_ms = record
            .timestamp_ms
            .saturating_sub(if record.kind == RecordKind::Started {
                0
            } else {
                record.aux
            });
        self.ops.push(OpState {
            op_id: record.op_id,
            op_type: record.op_type,
            sub_type: record.sub_type,
            label: record.label,
            name: record.name,
            status: record.kind,
            attempt: record.attempt,
            aux: record.aux,
            aux2: record.aux2,
            timestamp_ms: record.timestamp_ms,
            extra: record.extra,
            payload: record.payload,
            start_aux: record.aux,
            started_ms,
        });
        let (ops, hasher) = (&self.ops, &self.hasher);
        self.positions
            .insert_unique(hash, position, |&p| hasher.hash_one(ops[p as usize].op_id.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: RecordKind, op_id: &str, payload: &[u8]) -> Record {
        let mut record = Record::new(kind, OpType::Step, SubType::Step, op_id);
        record.payload = Some(payload.to_vec());
        record
    }

    #[test]
    fn latest_record_wins() {
        let mut retry = record(RecordKind::Retry, "1", b"{\"ErrorType\":\"E\"}");
        retry.attempt = 1;
        let mut done = record(RecordKind::Succeeded, "1", b"42");
        done.attempt = 2;
        let index = ReplayIndex::build(vec![retry, done, record(RecordKind::Succeeded, "2", b"7")]);
        let first = index.get("1").unwrap();
        assert_eq!(
            (first.status, first.attempt, first.payload.as_deref()),
            (RecordKind::Succeeded, 2, Some(&b"42"[..]))
        );
        assert_eq!(index.get("2").unwrap().payload.as_deref(), Some(&b"7"[..]));
        assert!(index.get("3").is_none());
        // Out of order, and again in order after a jump.
        assert_eq!(index.get("2").unwrap().op_id, "2");
        assert_eq!(index.get("1").unwrap().op_id, "1");
        assert_eq!(index.get("2").unwrap().op_id, "2");
    }
}
