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

    #[error("LMDB error: {0}")]
    Lmdb(#[from] heed::Error),

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn corrupt_store(what: impl Into<String>) -> Self {
        Error::CorruptStore(what.into())
    }
}
