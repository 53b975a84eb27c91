//! The replay index: an execution's journal folded into the current state of
//! each operation, so that every operation the code asks for again is
//! answered with one hash lookup, however long the history.

use rustc_hash::FxHashMap;

use crate::record::{OpType, Record, RecordKind, SubType};

/// The state of one operation after all its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpState {
    pub op_type: OpType,
    pub sub_type: SubType,
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
    /// Op ids come from our own journal, so a fast non-keyed hash is safe.
    ops: FxHashMap<String, OpState>,
    /// The execution's input (the ExecutionStarted payload).
    pub input: Option<Vec<u8>>,
    /// Invocations recorded so far.
    pub invocations: u32,
}

impl ReplayIndex {
    pub fn build(records: Vec<Record>) -> ReplayIndex {
        let mut ops = FxHashMap::with_capacity_and_hasher(records.len(), Default::default());
        let mut input = None;
        let mut invocations = 0;
        for record in records {
            match (record.op_type, record.kind) {
                (OpType::Execution, RecordKind::Started) => input = record.payload,
                (_, RecordKind::InvocationCompleted) => invocations += 1,
                (OpType::Execution, _) => {}
                _ => fold(&mut ops, record),
            }
        }
        ReplayIndex {
            ops,
            input,
            invocations,
        }
    }

    pub fn get(&self, op_id: &str) -> Option<&OpState> {
        self.ops.get(op_id)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

fn fold(ops: &mut FxHashMap<String, OpState>, record: Record) {
    match ops.get_mut(record.op_id.as_str()) {
        Some(state) => {
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
        None => {
            ops.insert(
                record.op_id,
                OpState {
                    op_type: record.op_type,
                    sub_type: record.sub_type,
                    name: record.name,
                    status: record.kind,
                    attempt: record.attempt,
                    aux: record.aux,
                    aux2: record.aux2,
                    timestamp_ms: record.timestamp_ms,
                    extra: record.extra,
                    payload: record.payload,
                    start_aux: record.aux,
                    started_ms: record
                        .timestamp_ms
                        .saturating_sub(if record.kind == RecordKind::Started {
                            0
                        } else {
                            record.aux
                        }),
                },
            );
        }
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
    }
}
