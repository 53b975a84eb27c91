//! The byte codec of every database: each key and value LMDB hands out is
//! checked to lie inside the part of the map that the file backs.
//!
//! LMDB trusts the sizes stored in its pages. A damaged size makes it hand
//! out a slice that runs past the end of `data.mdb` (reading it kills the
//! process with SIGBUS) or past the map (SIGSEGV). [`Store::read`] and the
//! writer set the bounds of their transaction's snapshot for the thread
//! ([`Bounds`]); a slice that starts inside the map and ends past the file
//! is refused as a decoding error, which the store reports as a corrupt
//! `data.mdb`. Slices outside the map (a write transaction's own dirty
//! pages, in memory) are left alone.
//!
//! [`Store::read`]: crate::backend::lmdb::Store::read

use std::borrow::Cow;
use std::cell::Cell;

use heed::{BoxedError, BytesDecode, BytesEncode};

/// Raw bytes, checked against the thread's [`Bounds`] when read.
pub enum Mapped {}

#[derive(Clone, Copy, Default)]
struct Span {
    map_start: usize,
    map_end: usize,
    file_end: usize,
}

thread_local! {
    static BOUNDS: Cell<Option<Span>> = const { Cell::new(None) };
}

/// The map and file bounds for the transaction this thread runs, until dropped.
pub struct Bounds {
    previous: Option<Span>,
}

impl Bounds {
    /// `map_start`: the map's address; `map_size` its length; `file_len`
    /// the length of `data.mdb`, taken after the transaction began.
    pub fn set(map_start: usize, map_size: usize, file_len: u64) -> Bounds {
        let file_len = usize::try_from(file_len).unwrap_or(usize::MAX).min(map_size);
        let span = Span {
            map_start,
            map_end: map_start.saturating_add(map_size),
            file_end: map_start.saturating_add(file_len),
        };
        Bounds {
            previous: BOUNDS.with(|cell| cell.replace(Some(span))),
        }
    }
}

impl Drop for Bounds {
    fn drop(&mut self) {
        BOUNDS.with(|cell| cell.set(self.previous));
    }
}

#[derive(Debug)]
struct OutOfFile {
    len: usize,
}

impl std::fmt::Display for OutOfFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a stored item of {} bytes runs past the end of the file (damaged page)",
            self.len
        )
    }
}

impl std::error::Error for OutOfFile {}

fn check(bytes: &[u8]) -> Result<(), OutOfFile> {
    let Some(span) = BOUNDS.with(Cell::get).filter(|span| span.map_start != 0) else {
        return Ok(());
    };
    let start = bytes.as_ptr() as usize;
    if start < span.map_start || start >= span.map_end {
        return Ok(());
    }
    match start.checked_add(bytes.len()) {
        Some(end) if end <= span.file_end => Ok(()),
        _ => Err(OutOfFile { len: bytes.len() }),
    }
}

impl<'a> BytesEncode<'a> for Mapped {
    type EItem = [u8];

    fn bytes_encode(item: &'a [u8]) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Borrowed(item))
    }
}

impl<'a> BytesDecode<'a> for Mapped {
    type DItem = &'a [u8];

    fn bytes_decode(bytes: &'a [u8]) -> Result<&'a [u8], BoxedError> {
        check(bytes)?;
        Ok(bytes)
    }
}

/// Where the map of `data_path` starts in this process, from
/// `/proc/self/maps` (LMDB does not tell: `mdb_env_info`'s map address is
/// the fixed-map address stored in the meta page, null here): the mapping of the file at offset
/// 0, `map_size` long when several are found. None where there is no such
/// listing: keys and values are then not bounded.
pub fn map_start_of(data_path: &std::path::Path, map_size: usize) -> Option<usize> {
    let listing = std::fs::read_to_string("/proc/self/maps").ok()?;
    let wanted = data_path.to_str()?;
    let mut found = None;
    for line in listing.lines() {
        let mut fields = line.splitn(6, ' ');
        let (Some(range), _, Some(offset), _, _, Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if path.trim_start() != wanted || usize::from_str_radix(offset, 16).ok() != Some(0) {
            continue;
        }
        let (start, end) = range.split_once('-')?;
        let (start, end) = (
            usize::from_str_radix(start, 16).ok()?,
            usize::from_str_radix(end, 16).ok()?,
        );
        if end - start == map_size {
            return Some(start);
        }
        found.get_or_insert(start);
    }
    found
}
