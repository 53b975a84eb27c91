//! The files of a store directory, checked before LMDB maps them.
//!
//! * Who may own them: the directory must belong to this user and be writable
//!   by nobody else, and `data.mdb`, `lock.mdb` and the marker must be plain
//!   files of this user, never symbolic links (as ssh refuses loose key
//!   files). Once that holds, no other user can plant a file or a link
//!   between the check and LMDB's own `open`.
//! * The marker `perdure.store`, written once the store's first transaction
//!   is committed: it tells a new store (no `data.mdb` yet, or an empty one
//!   left by a crash while LMDB created it) from one whose `data.mdb` was
//!   emptied, truncated or deleted, which is corrupt and not new.
//! * `data.mdb`'s two meta pages, read with plain file reads: LMDB trusts
//!   them, and a meta page that points past the end of the file makes LMDB
//!   read pages that are not there (SIGBUS) instead of failing.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const DATA: &str = "data.mdb";
pub const LOCK: &str = "lock.mdb";
pub const MARKER: &str = "perdure.store";
pub const OWNERS: &str = "owners";

const MARKER_TEXT: &[u8] = b"perdure store\n";

/// LMDB's constants for the meta pages (lmdb.h / mdb.c, data version 1).
const MDB_MAGIC: u32 = 0xBEEF_C0DE;
const MDB_DATA_VERSION: u32 = 1;
const P_META: u16 = 0x08;
const P_INVALID: u64 = u64::MAX;
/// LMDB's cursor stack depth: no tree of a valid file is deeper.
const MAX_DEPTH: u16 = 32;
/// Page header (16 bytes) and MDB_meta up to mm_txnid (144 bytes).
const META_BYTES: usize = 160;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) fn refused(path: &Path, reason: String) -> Error {
    Error::StoreAccess {
        path: path.to_path_buf(),
        source: std::io::Error::new(ErrorKind::PermissionDenied, reason),
    }
}

pub(crate) fn access(path: &Path, source: std::io::Error) -> Error {
    Error::StoreAccess {
        path: path.to_path_buf(),
        source,
    }
}

/// The store directory (its target, when reached through a link) belongs to
/// this user and no one else can write to it: otherwise another user could
/// replace its files.
pub fn check_dir(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir).map_err(|err| access(dir, err))?;
    if !meta.is_dir() {
        return Err(refused(dir, "exists and is not a directory".into()));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(refused(
            dir,
            format!(
                "the store directory belongs to uid {}, not to this user (uid {me}); \
                 perdure only opens a store of its own user",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(refused(
            dir,
            format!(
                "the store directory is writable by other users (mode {:o}); \
                 run `chmod go-w` on it",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Each file of the store that exists is a plain file of this user (the
/// `owners` folder a folder of this user), never a symbolic link.
pub fn check_files(dir: &Path) -> Result<()> {
    let me = euid();
    for (name, want_dir) in [(DATA, false), (LOCK, false), (MARKER, false), (OWNERS, true)] {
        let path = dir.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(access(&path, err)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(refused(
                &path,
                "is a symbolic link; a store's files must be its own".into(),
            ));
        }
        if want_dir != kind.is_dir() || (!want_dir && !kind.is_file()) {
            let what = if want_dir { "a directory" } else { "a regular file" };
            return Err(refused(&path, format!("is not {what}")));
        }
        if meta.uid() != me {
            return Err(refused(
                &path,
                format!("belongs to uid {}, not to this user (uid {me})", meta.uid()),
            ));
        }
    }
    Ok(())
}

/// Opens an existing file of the store without following a link.
fn open_nofollow(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Makes a file of the store owner-only, through a descriptor opened
/// without following links (a planted link is refused, not followed).
pub fn make_private(path: &Path) -> Result<()> {
    match open_nofollow(path, false) {
        Ok(file) => file
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|err| access(path, err)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(access(path, err)),
    }
}

pub fn has_marker(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(MARKER)).is_ok()
}

/// Writes the marker of a store whose first transaction is committed.
pub fn write_marker(dir: &Path) -> Result<()> {
    let path = dir.join(MARKER);
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(err) => return Err(access(&path, err)),
    };
    file.write_all(MARKER_TEXT)
        .and_then(|()| file.sync_all())
        .map_err(|err| access(&path, err))?;
    // The marker's name must be durable too, or a crash could lose it.
    if let Ok(folder) = File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks meta page `which` (0 or 1) of a file of `len` bytes with pages of `psize`.
fn check_meta(page: &[u8; META_BYTES], which: u64, psize: u64, len: u64) -> Result<u64, String> {
    let magic = u32_at(page, 16);
    if magic != MDB_MAGIC {
        return Err(format!(
            "meta page {which} has no LMDB magic number (found {magic:#010x})"
        ));
    }
    let version = u32_at(page, 20);
    if version != MDB_DATA_VERSION {
        return Err(format!(
            "meta page {which} has LMDB data version {version}, not {MDB_DATA_VERSION}"
        ));
    }
    if u64_at(page, 0) != which || u16_at(page, 10) & P_META == 0 {
        return Err(format!("page {which} is not marked as a meta page"));
    }
    if u64_at(page, 24) != 0 {
        // mm_address: set only for a fixed map, which perdure never asks for.
        return Err(format!("meta page {which} asks for a fixed map address"));
    }
    if u64::from(u32_at(page, 40)) != psize {
        return Err(format!("meta page {which} disagrees on the page size"));
    }
    let last_pg = u64_at(page, 136);
    let needed = last_pg.checked_add(1).and_then(|pages| pages.checked_mul(psize));
    let needed = match needed {
        Some(needed) if last_pg >= 1 && short_tail(len, needed).is_some() => needed,
        _ => {
            return Err(format!(
                "meta page {which} says the file has {} pages of {psize} bytes, but it is {len} bytes long \
                 (truncated?)",
                last_pg.saturating_add(1)
            ))
        }
    };
    // The free-page tree and the main tree: a root inside the file (a page
    // LMDB wrote, so one the file still has), a sane depth.
    let in_file = len / psize;
    for (name, db) in [("free-page", 40), ("main", 88)] {
        let depth = u16_at(page, db + 6);
        let root = u64_at(page, db + 40);
        let valid = if root == P_INVALID {
            depth == 0
        } else {
            (2..=last_pg).contains(&root) && root < in_file && (1..=MAX_DEPTH).contains(&depth)
        };
        if !valid {
            return Err(format!(
                "meta page {which}: the {name} tree's root page {root} (depth {depth}) is outside the file \
                 of {in_file} pages (truncated?)"
            ));
        }
    }
    Ok(needed)
}

/// How many bytes short of `needed` a file of `len` bytes is, if it is
/// short by no more than LMDB leaves legitimately. LMDB does not write the
/// pages a transaction allocated and freed again ("loose" pages), so the
/// newest pages its meta page counts may be missing from the file: they are
/// free, and never read. More than this is a truncated file.
fn short_tail(len: u64, needed: u64) -> Option<u64> {
    const TOLERATED_PAGES: u64 = 256;
    let missing = needed.saturating_sub(len);
    (missing <= (TOLERATED_PAGES * 4096).max(len / 4)).then_some(missing)
}

/// Grows `file` to `needed` bytes with zeros (never shrinks it, never
/// overwrites a byte another process writes meanwhile): pages LMDB counts
/// but never wrote then read as zeros, which LMDB reports as a damaged page
/// if a damaged tree points there, instead of killing the process with
/// SIGBUS. False where the file system cannot.
fn extend_with_zeros(file: &File, len: u64, needed: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(extra)) = (libc::off_t::try_from(len), libc::off_t::try_from(needed - len)) else {
            return false;
        };
        // SAFETY: fallocate on a descriptor we own; mode 0 only allocates
        // (zeros where nothing is written) and grows the file's size.
        unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, extra) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, len, needed);
        false
    }
}

/// One look at `data.mdb`: its meta pages, then its length (LMDB writes a
/// transaction's pages before its meta page, so a file read in this order
/// is long enough for what its meta pages say, even while an engine writes).
fn check_data_once(file: &mut File) -> Result<(u64, u64), String> {
    let read_page = |file: &mut File, offset: u64| -> Result<[u8; META_BYTES], String> {
        let mut page = [0u8; META_BYTES];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut page, offset)
            .map_err(|err| format!("cannot read the meta page at offset {offset}: {err}"))?;
        Ok(page)
    };
    let short = |len: u64| format!("{len} bytes, shorter than LMDB's two meta pages");
    let len = file.metadata().map_err(|err| err.to_string())?.len();
    if len < META_BYTES as u64 {
        return Err(short(len));
    }
    let first = read_page(file, 0)?;
    let psize = u64::from(u32_at(&first, 40));
    if !(512..=65536).contains(&psize) || !psize.is_power_of_two() {
        if u32_at(&first, 16) != MDB_MAGIC {
            return Err(format!("no LMDB magic number (found {:#010x})", u32_at(&first, 16)));
        }
        return Err(format!("meta page 0 has an impossible page size {psize}"));
    }
    if len < 2 * psize {
        return Err(short(len));
    }
    let second = read_page(file, psize)?;
    let len = file.metadata().map_err(|err| err.to_string())?.len();
    let needed = check_meta(&first, 0, psize, len)?.max(check_meta(&second, 1, psize, len)?);
    Ok((len, needed))
}

/// Checks `data.mdb` before LMDB opens it. A missing or empty file is a new
/// store, unless the marker says the store was created already.
pub fn check_data(dir: &Path) -> Result<()> {
    let path = dir.join(DATA);
    let marked = has_marker(dir);
    let mut file = match open_nofollow(&path, false) {
        Ok(file) => file,
        Err(err) if err.kind() == ErrorKind::NotFound && !marked => return Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            return Err(corrupt(
                &path,
                format!("the store's data file is missing, but {MARKER} says the store was created"),
            ))
        }
        Err(err) => return Err(access(&path, err)),
    };
    let len = file.metadata().map_err(|err| access(&path, err))?.len();
    if len == 0 {
        return if marked {
            Err(corrupt(
                &path,
                format!("the file is empty, but {MARKER} says the store was created"),
            ))
        } else {
            Ok(())
        };
    }
    // A meta page read while another process commits can be torn: a failed
    // check is believed only when it fails again.
    let mut tries = 0;
    loop {
        match check_data_once(&mut file) {
            Ok((len, needed)) => {
                if len < needed {
                    if let Ok(writable) = open_nofollow(&path, true) {
                        extend_with_zeros(&writable, len, needed);
                    }
                }
                return Ok(());
            }
            Err(reason) if tries >= 2 => return Err(corrupt(&path, reason)),
            Err(_) => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// The length of `data.mdb` now, through a descriptor kept open.
pub struct DataFile {
    file: File,
    pub path: PathBuf,
}

impl DataFile {
    pub fn open(dir: &Path) -> Result<DataFile> {
        let path = dir.join(DATA);
        let file = open_nofollow(&path, true)
            .or_else(|_| open_nofollow(&path, false))
            .map_err(|err| access(&path, err))?;
        Ok(DataFile { file, path })
    }

    /// The file's length, made at least `needed` bytes (the pages the newest
    /// meta page counts) when it falls short by no more than LMDB's unwritten
    /// free pages (see [`short_tail`]). Errs when it is shorter than that: it
    /// was truncated under the map, and reading the pages past its end would
    /// kill the process with SIGBUS.
    pub fn check_len(&self, needed: u64) -> Result<u64> {
        // lseek to the end, not fstat: on ext4 an fstat before each commit
        // made the commit's fdatasync ~10 µs slower (measured), lseek does not.
        let len = (&self.file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|err| access(&self.path, err))?;
        if len >= needed {
            return Ok(len);
        }
        if short_tail(len, needed).is_none() {
            return Err(corrupt(
                &self.path,
                format!("the file is {len} bytes long but holds {needed} bytes of pages (truncated while open)"),
            ));
        }
        if extend_with_zeros(&self.file, len, needed) {
            return Ok(needed);
        }
        Ok(len)
    }
}
