//! perdure-core: the durable-execution engine without Python.
//!
//! An execution's history is an append-only journal of [`record::Record`]s in
//! LMDB ([`backend::lmdb`]); every write goes through the group-commit [`writer`];
//! [`replay::ReplayIndex`] answers "what happened to operation X" in O(1);
//! [`runtime::Runtime`] ties them together with timers and the ready queue.

pub mod backend;
pub mod clock;
mod codec;
pub mod error;
pub mod executor;
mod files;
pub mod keys;
mod mapped;
pub mod record;
pub mod replay;
pub mod runtime;
mod scheduler;
pub mod sealed;
mod timers;
pub mod writer;

pub use backend::lmdb::{Durability, Store, StoreOptions};
pub use error::{Error, Result};
pub use record::{OpType, Record, RecordKind, SubType};
pub use replay::{OpState, ReplayIndex};
pub use runtime::{NewCallback, Runtime, RuntimeOptions};
