//! The owner lock: one engine per store runs executions. An advisory `flock`
//! is released by the kernel when its process dies, so a crashed owner never
//! blocks the next one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

pub struct OwnerLock {
    _file: File,
}

impl OwnerLock {
    pub fn acquire(dir: &Path) -> Result<OwnerLock> {
        let path = dir.join("owner.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| Error::StoreAccess {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "unknown process".to_string()
            } else {
                holder.to_string()
            };
            return Err(Error::StoreBusy {
                path: dir.to_path_buf(),
                holder,
            });
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "pid {}", std::process::id())?;
        Ok(OwnerLock { _file: file })
    }
}
