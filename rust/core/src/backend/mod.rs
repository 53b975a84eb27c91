//! The storage seam: what the engine asks of a store. LMDB ([`lmdb`]) is
//! the one implementation today.

pub mod lmdb;
