//! Owner liveness. Each running engine holds an advisory `flock` on its own
//! file under `<store>/owners/`; the kernel releases it when the process dies,
//! so another engine learns of a crash at once by trying the same lock,
//! without waiting for a lease to time out.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::files::{access, refused, OWNERS};

pub struct OwnerLock {
    /// Holds the lock for as long as it is open.
    _file: File,
    path: PathBuf,
}

fn lock_path(store_dir: &Path, owner: u64) -> PathBuf {
    store_dir.join(OWNERS).join(format!("{owner:016x}.lock"))
}

fn open(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        // A link planted in place of a lock file is refused, not followed.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a file descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl OwnerLock {
    /// Takes the lock of a new owner id (fresh and random, so never held).
    pub fn acquire(store_dir: &Path, owner: u64) -> Result<OwnerLock> {
        let dir = store_dir.join(OWNERS);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| access(&dir, source))?;
        // The folder must be the store's own, not a link to somewhere else.
        let folder = fs::symlink_metadata(&dir).map_err(|source| access(&dir, source))?;
        if !folder.is_dir() {
            return Err(refused(&dir, "is not a directory (a symbolic link?)".into()));
        }
        let path = lock_path(store_dir, owner);
        let mut file = open(&path, true).map_err(|source| access(&path, source))?;
        if !try_lock(&file) {
            return Err(Error::InvalidInput(format!("owner lock {path:?} is already held")));
        }
        write!(file, "pid {}", std::process::id())?;
        Ok(OwnerLock { _file: file, path })
    }

    /// Whether the engine `owner` is alive: its lock file exists and is held.
    /// A missing file counts as dead (the owner closed, or never got this far).
    pub fn is_held(store_dir: &Path, owner: u64) -> bool {
        match open(&lock_path(store_dir, owner), false) {
            // Taking the lock proves nobody holds it; closing the file drops it again.
            Ok(file) => !try_lock(&file),
            Err(_) => false,
        }
    }

    /// Deletes a dead owner's lock file.
    pub fn remove_stale(store_dir: &Path, owner: u64) {
        let _ = fs::remove_file(lock_path(store_dir, owner));
    }
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        // Remove the file before the lock goes with the descriptor, so no
        // other engine finds it unlocked and takes this owner for dead twice.
        let _ = fs::remove_file(&self.path);
    }
}

impl crate::backend::OwnerHold for OwnerLock {}
