//! Local folder store: recursive listing without following symlinks, copies, and atomic writes
//! (a temporary file in the same folder, `sync_data`, then rename).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StorageError;

/// Lists every regular file under `root`, recursively; symlinks and other special files are
/// neither followed nor listed.
pub(super) fn list(root: &Path) -> Result<Vec<(String, u64)>, StorageError> {
    let mut out = Vec::new();
    let mut pending: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = pending.pop() {
        let read_dir =
            fs::read_dir(&dir).map_err(StorageError::local("list local folder", &dir))?;
        for entry in read_dir {
            let entry = entry.map_err(StorageError::local("list local folder", &dir))?;
            let path = entry.path();
            // `DirEntry::metadata` does not traverse symlinks.
            let meta = entry
                .metadata()
                .map_err(StorageError::local("inspect local entry", &path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue; // Not UTF-8: cannot be named in a '/'-separated listing.
            };
            let child = super::join_rel(&rel, name);
            if meta.is_dir() {
                pending.push((path, child));
            } else if meta.is_file() {
                out.push((child, meta.len()));
            }
        }
    }
    Ok(out)
}

/// Copies `root/rel` to `dest`.
pub(super) fn fetch(root: &Path, rel: &str, dest: &Path) -> Result<u64, StorageError> {
    let src = root.join(rel);
    let mut rdr = match File::open(&src) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound {
                op: "fetch",
                object: src.display().to_string(),
            });
        }
        Err(err) => return Err(StorageError::local("read local file", &src)(err)),
    };
    let mut wtr = File::create(dest).map_err(StorageError::local("create local file", dest))?;
    io::copy(&mut rdr, &mut wtr).map_err(StorageError::local("write local file", dest))
}

/// Copies `src` to `root/rel` atomically.
pub(super) fn put(root: &Path, src: &Path, rel: &str) -> Result<(), StorageError> {
    let mut rdr = File::open(src).map_err(StorageError::local("read local file", src))?;
    write_atomic(&root.join(rel), |wtr| io::copy(&mut rdr, wtr).map(|_| ()))
}

/// Writes `bytes` to `root/rel` atomically.
pub(super) fn put_bytes(root: &Path, rel: &str, bytes: &[u8]) -> Result<(), StorageError> {
    write_atomic(&root.join(rel), |wtr| wtr.write_all(bytes))
}

/// Writes `bytes` to `root/rel` unless a file is there: a complete, synced temporary file is
/// hard-linked into place, which fails if the name exists. `false` in that case.
pub(super) fn put_bytes_once(root: &Path, rel: &str, bytes: &[u8]) -> Result<bool, StorageError> {
    let dest = root.join(rel);
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(StorageError::local("create local folder", parent))?;
    let tmp = parent.join(format!(".once.{}.tmp", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|mut wtr| wtr.write_all(bytes).and_then(|()| wtr.sync_data()))
        .and_then(|()| fs::hard_link(&tmp, &dest));
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(StorageError::Local {
            op: "write local file",
            path: dest,
            source,
        }),
    }
}

/// Writes `dest` through a temporary file beside it, synced before the rename, so a reader sees
/// the old file, nothing, or the whole new file.
fn write_atomic(
    dest: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), StorageError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(StorageError::local("create local folder", parent))?;
    let file_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = parent.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut wtr = File::create(&tmp)?;
        fill(&mut wtr)?;
        wtr.sync_data()
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::Local {
            op: "write local file",
            path: dest.to_path_buf(),
            source,
        });
    }
    fs::rename(&tmp, dest).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        StorageError::Local {
            op: "rename into place local file",
            path: dest.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    #[test]
    fn local_store_lists_fetches_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        fs::create_dir_all(root.join("partnerA/date=2026-11-21")).unwrap();
        fs::write(root.join("ftp_dpm_21_1000000001.sync"), "a\tb\n").unwrap();
        fs::write(
            root.join("partnerA/date=2026-11-21/ftp_dpm_21_1000000002.sync"),
            "xyz",
        )
        .unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("partnerA"), root.join("link")).unwrap();
        let store = Store::Local(root.clone());

        assert_eq!(
            store.list().unwrap(),
            [
                ("ftp_dpm_21_1000000001.sync".to_owned(), 4),
                (
                    "partnerA/date=2026-11-21/ftp_dpm_21_1000000002.sync".to_owned(),
                    3
                ),
            ]
        );

        let dest = dir.path().join("copy");
        assert_eq!(
            store
                .fetch("partnerA/date=2026-11-21/ftp_dpm_21_1000000002.sync", &dest)
                .unwrap(),
            3
        );
        assert_eq!(fs::read(&dest).unwrap(), b"xyz");

        store.put(&dest, "out/1234/x.sync").unwrap();
        assert_eq!(fs::read(root.join("out/1234/x.sync")).unwrap(), b"xyz");
        store
            .put_bytes("ftp_dpm_21_1000000001.sync.processed", b"")
            .unwrap();
        assert_eq!(
            fs::read(root.join("ftp_dpm_21_1000000001.sync.processed")).unwrap(),
            b""
        );
        assert_eq!(
            fs::read(root.join("ftp_dpm_21_1000000001.sync")).unwrap(),
            b"a\tb\n"
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(root.join("out/1234"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.sync"]);

        let err = store.fetch("nope.sync", &dest).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot fetch {}: not found",
                root.join("nope.sync").display()
            )
        );
        let err = Store::Local(dir.path().join("missing")).list().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot list local folder {}",
                dir.path().join("missing").display()
            )
        );
        assert!(matches!(
            store.put_bytes("../escape", b"x"),
            Err(StorageError::InvalidPath { .. })
        ));
    }
}
