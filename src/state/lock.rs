//! The run lock: one segmill run per state folder.
//!
//! Owns `root/lock`, an advisory OS lock (`flock`-style, via `File::try_lock`) on an open file.
//! The OS releases it when the holder exits or is killed, so a lock file left by a killed run is
//! free again; the file itself is never deleted (deleting would let two runs lock two different
//! files). Its content (pid and start time of the holder) is only for the error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StateError;

/// Proof that this process holds the state folder's lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the file releases the lock as well; unlocking first makes it immediate even
        // if a duplicated descriptor were to outlive us.
        let _ = self.file.unlock();
    }
}

/// Takes the lock at `path` without waiting. `StateError::Locked` if another open file holds it.
pub(crate) fn acquire(path: &Path) -> Result<LockGuard, StateError> {
    // No truncate: the holder's pid and start time must survive until we own the lock.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| StateError::io("open lock file", path, source))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut info = String::new();
            // Best effort: the holder may be rewriting the file right now.
            let _ = file.read_to_string(&mut info);
            let info = info.trim();
            return Err(StateError::Locked {
                path: path.to_path_buf(),
                holder: if info.is_empty() {
                    "holder unknown".to_owned()
                } else {
                    info.to_owned()
                },
            });
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(StateError::io("lock", path, source));
        }
    }
    let info = format!(
        "pid {}, started {}\n",
        std::process::id(),
        jiff::Timestamp::now()
    );
    let written = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(info.as_bytes()));
    written.map_err(|source| StateError::io("write holder info into lock file", path, source))?;
    Ok(LockGuard {
        file,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_with_holder_info_until_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        let first = acquire(&path).unwrap();
        let err = acquire(&path).unwrap_err();
        match &err {
            StateError::Locked { path: p, holder } => {
                assert_eq!(p, &path);
                assert!(
                    holder.starts_with(&format!("pid {}, started ", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        assert!(
            err.to_string().contains("is locked by another segmill run"),
            "{err}"
        );
        drop(first);
        let again = acquire(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn stale_lock_file_of_a_dead_run_is_free() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lock");
        std::fs::write(&path, "pid 999999, started 2020-01-01T00:00:00Z\n").unwrap();
        let guard = acquire(&path).unwrap();
        let info = std::fs::read_to_string(guard.path()).unwrap();
        assert!(
            info.starts_with(&format!("pid {}, started ", std::process::id())),
            "{info}"
        );
    }
}
