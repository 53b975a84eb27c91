//! The one error type of the core. Every fallible function returns it; the
//! bindings map each variant to a Python exception class.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A journal record failed its checksum or could not be decoded.
    #[error("corrupt journal record: execution {execution_id:?}, sequence {sequence}: {reason}")]
    CorruptRecord {
        execution_id: String,
        sequence: u32,
        reason: String,
    },

    /// A stored value of one execution (its metadata, id index entry, lease,
    /// wake-up) failed its checksum or could not be decoded.
    #[error("corrupt store: the {what} of execution {execution_id:?} is damaged ({reason})")]
    CorruptExecution {
        execution_id: String,
        what: &'static str,
        reason: String,
    },

    /// Some other part of the store (metadata, index entry) is unreadable.
    #[error("corrupt store: {0}")]
    CorruptStore(String),

    /// A file of the store is damaged (truncated, emptied, meta pages or
    /// B-tree pages that LMDB refuses): nothing in it can be trusted.
    #[error("corrupt store file {path:?}: {reason}")]
    CorruptFile { path: PathBuf, reason: String },

    /// The store was written by a format this build does not understand.
    #[error("store {path:?} has format version {found}; this perdure reads version {supported}")]
    FormatVersion { path: PathBuf, found: u32, supported: u32 },

    /// A PostgreSQL store's schema was written by a newer perdure.
    #[error("store {location} has schema version {found}; this perdure reads version {supported}")]
    SchemaVersion {
        location: String,
        found: u32,
        supported: u32,
    },

    /// The store directory cannot be created, opened or written.
    #[error("cannot use store directory {path:?}: {source}")]
    StoreAccess {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// This engine no longer holds the execution's lease: another engine took
    /// it over (this one was thought dead), so this one's writes are refused.
    #[error("execution {execution_id:?} is now run by another engine; this engine's lease on it was lost")]
    LeaseLost { execution_id: String },

    #[error("no execution with id {0:?}")]
    ExecutionNotFound(String),

    /// The execution finished (or was cancelled) and takes no more records.
    #[error("execution {execution_id:?} is {status} and cannot be changed")]
    ExecutionFinished { execution_id: String, status: &'static str },

    /// An execution id was reused for a different function.
    #[error("execution id {execution_id:?} already belongs to function {existing:?}, not {requested:?}")]
    ExecutionIdConflict {
        execution_id: String,
        existing: String,
        requested: String,
    },

    #[error("unknown callback id {0:?}")]
    UnknownCallback(String),

    #[error("callback {callback_id:?} is already {state}")]
    CallbackAlreadyCompleted { callback_id: String, state: &'static str },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The engine or store was closed while the call was waiting.
    #[error("the store is closed")]
    Closed,

    /// A commit failed for lack of space (`full`: ENOSPC, EDQUOT, EFBIG, a
    /// map that cannot grow) or because the disk failed (EIO, MDB_PANIC).
    /// Nothing of the failed commit is stored; an invocation it stopped runs
    /// again later, from what was committed before.
    #[error("{detail}")]
    StorageFailed { full: bool, detail: String },

    /// The connection was lost while the store committed: the commit may or
    /// may not be stored. Never retried blind: an invocation it stopped runs
    /// again from what the store holds; another caller reads before it
    /// tries again.
    #[error("{0}")]
    OutcomeUnknown(String),

    /// The PostgreSQL store refused or lost a request (`what` says which).
    #[error("PostgreSQL store: {what}: {source}")]
    Postgres {
        what: String,
        #[source]
        source: postgres::Error,
    },

    #[error("LMDB error: {0}")]
    Lmdb(#[from] heed::Error),

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn corrupt_store(what: impl Into<String>) -> Self {
        Error::CorruptStore(what.into())
    }

    /// A write's error as a storage failure when it is one (the disk is full
    /// or failing), else unchanged.
    pub fn classify_storage(self) -> Self {
        if matches!(self, Error::StorageFailed { .. }) {
            return self;
        }
        match storage_failure(&self) {
            Some(full) => {
                let what = if full {
                    "the store's disk is full"
                } else {
                    "the store's disk failed"
                };
                Error::StorageFailed {
                    full,
                    detail: format!("{what}: {self}"),
                }
            }
            None => self,
        }
    }
}

/// Whether an error is a storage failure: `Some(true)` for a full disk,
/// `Some(false)` for a failing one, `None` for anything else.
fn storage_failure(err: &Error) -> Option<bool> {
    use heed::MdbError;
    match err {
        Error::Lmdb(heed::Error::Mdb(MdbError::MapFull)) => Some(true),
        Error::Lmdb(heed::Error::Mdb(MdbError::Panic)) => Some(false),
        Error::Lmdb(heed::Error::Mdb(MdbError::Other(code))) => errno_failure(*code),
        Error::Lmdb(heed::Error::Io(io)) | Error::Io(io) | Error::StoreAccess { source: io, .. } => {
            io.raw_os_error().and_then(errno_failure)
        }
        _ => None,
    }
}

fn errno_failure(code: i32) -> Option<bool> {
    match code {
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => Some(true),
        libc::EIO => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heed::MdbError;

    fn classified(err: Error) -> Option<bool> {
        match err.classify_storage() {
            Error::StorageFailed { full, .. } => Some(full),
            _ => None,
        }
    }

    #[test]
    fn full_disks_and_failing_disks_are_storage_failures() {
        for code in [libc::ENOSPC, libc::EDQUOT, libc::EFBIG] {
            assert_eq!(
                classified(Error::Lmdb(heed::Error::Mdb(MdbError::Other(code)))),
                Some(true)
            );
            let io = std::io::Error::from_raw_os_error(code);
            assert_eq!(classified(Error::Lmdb(heed::Error::Io(io))), Some(true));
        }
        assert_eq!(classified(Error::Lmdb(heed::Error::Mdb(MdbError::MapFull))), Some(true));
        assert_eq!(
            classified(Error::Lmdb(heed::Error::Mdb(MdbError::Other(libc::EIO)))),
            Some(false)
        );
        assert_eq!(
            classified(Error::Io(std::io::Error::from_raw_os_error(libc::EIO))),
            Some(false)
        );
        assert_eq!(classified(Error::Lmdb(heed::Error::Mdb(MdbError::Panic))), Some(false));
    }

    #[test]
    fn other_errors_are_not_storage_failures() {
        assert_eq!(
            classified(Error::Lmdb(heed::Error::Mdb(MdbError::Other(libc::EACCES)))),
            None
        );
        assert_eq!(classified(Error::Lmdb(heed::Error::Mdb(MdbError::Corrupted))), None);
        assert_eq!(classified(Error::corrupt_store("x")), None);
        assert_eq!(classified(Error::Closed), None);
        let message = Error::Lmdb(heed::Error::Mdb(MdbError::Other(libc::EIO)))
            .classify_storage()
            .to_string();
        assert!(message.starts_with("the store's disk failed"), "{message}");
        let again = Error::Lmdb(heed::Error::Mdb(MdbError::Other(libc::ENOSPC)))
            .classify_storage()
            .classify_storage()
            .to_string();
        assert_eq!(again.matches("the store's disk is full").count(), 1, "{again}");
    }
}
