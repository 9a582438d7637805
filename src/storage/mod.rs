//! Storage: the inbound root and the destinations as one blocking interface over a local
//! folder, an S3 bucket prefix or an FTP folder (CONTRACT §2, §6, §7).
//!
//! Owns: listing a root recursively, copying one object to a local file, writing a local file or
//! a small marker under a root so that it appears whole or not at all, S3 and FTP credentials
//! (from the config's settings, else the standard AWS environment or the FTP URL), and keeping
//! secrets out of every message.
//!
//! Does not: read or parse contents (the caller fetches to a local file and uses
//! `inbound::read`), decide what to fetch (discovery rules live in `inbound::discover`; this
//! module only hands it a listing), delete or modify inbound objects (markers are new objects
//! beside them), or retry beyond what the S3 client does itself.
//!
//! Input: a [`Location`] and [`StorageSettings`]. Output: a [`Store`] whose operations return
//! `Result<_, StorageError>`; every error names the object (an `s3://` URL, an `ftp://` URL
//! without its password, or a local path) and the reason.
//!
//! The interface is blocking. S3 runs on a small private tokio runtime inside the store
//! (object_store is async); FTP uses one control connection per operation, in binary type and
//! passive mode.

mod ftp;
mod local;
mod s3;
mod settings;

use std::path::{Path, PathBuf};

pub use settings::StorageSettings;

use crate::config::{Config, Location};
use crate::inbound::discover::{self, DiscoverError, Discovery};

/// Default size of one ranged GET when fetching from S3, and of one multipart upload part:
/// 8 MiB is above S3's 5 MiB minimum part size and keeps memory bounded at
/// `concurrency × part` while still giving a 1 GB object 128 requests to spread.
pub const DEFAULT_PART_BYTES: u64 = 8 << 20;
/// S3's minimum size of a multipart upload part (all but the last).
pub const MIN_UPLOAD_PART_BYTES: u64 = 5 << 20;
/// Default number of S3 requests in flight for one fetch or upload.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// A storage root: where inbound files are listed and fetched from, or where outputs go.
#[derive(Debug)]
pub enum Store {
    /// A local folder.
    Local(PathBuf),
    /// A prefix in an S3 bucket (or an S3-compatible endpoint).
    S3(s3::S3Store),
    /// A folder on an FTP server.
    Ftp(ftp::FtpStore),
}

impl Store {
    /// Opens the root at `location`. For S3 nothing is sent yet (errors in credentials show on
    /// the first operation); for FTP the URL is checked but no connection is made.
    pub fn open(location: &Location, settings: &StorageSettings) -> Result<Store, StorageError> {
        match location {
            Location::Local(path) => Ok(Store::Local(path.clone())),
            Location::S3 { bucket, prefix } => {
                s3::S3Store::open(bucket, prefix, settings).map(Store::S3)
            }
            Location::Ftp { url } => ftp::FtpStore::open(url, settings).map(Store::Ftp),
        }
    }

    /// Every object under the root, recursively, as (relative `/`-separated path, size),
    /// sorted by path. Local symlinks and entries an FTP server reports as links are not
    /// followed and not listed (a server that presents a link as a plain folder is followed, as
    /// it asks); a missing S3 prefix is an empty listing, a missing local or FTP folder an
    /// error.
    pub fn list(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut listing = match self {
            Store::Local(root) => local::list(root)?,
            Store::S3(store) => store.list()?,
            Store::Ftp(store) => store.list()?,
        };
        listing.sort();
        Ok(listing)
    }

    /// Copies the object `rel` to the local file `dest` (created or truncated) and returns its
    /// size. Streamed: S3 objects are fetched in ranged GETs of at most the part size, several in
    /// flight, each written at its offset, so memory stays bounded whatever the object's size.
    /// If the object changes while it is fetched, the fetch fails rather than mixing versions
    /// (S3: `If-Match` on the ETag; FTP: the size is checked). On failure `dest` is removed, so
    /// a partial copy is never left to be read.
    pub fn fetch(&self, rel: &str, dest: &Path) -> Result<u64, StorageError> {
        check_rel(rel)?;
        let result = match self {
            Store::Local(root) => local::fetch(root, rel, dest),
            Store::S3(store) => store.fetch(rel, dest),
            Store::Ftp(store) => store.fetch(rel, dest),
        };
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
    }

    /// Writes the local file `src` to `rel` under the root so that the object appears complete
    /// or not at all: local and FTP write a temporary name beside it and rename it, S3 puts are
    /// atomic (multipart uploads above the part size, aborted on failure). Missing folders are
    /// created. An existing object is replaced.
    pub fn put(&self, src: &Path, rel: &str) -> Result<(), StorageError> {
        check_rel(rel)?;
        match self {
            Store::Local(root) => local::put(root, src, rel),
            Store::S3(store) => store.put(src, rel),
            Store::Ftp(store) => store.put(src, rel),
        }
    }

    /// Writes a small object (a marker such as `<name>.processed`) at `rel`, with the same
    /// all-or-nothing guarantee as [`Store::put`]. Never touches any other object.
    pub fn put_bytes(&self, rel: &str, bytes: &[u8]) -> Result<(), StorageError> {
        check_rel(rel)?;
        match self {
            Store::Local(root) => local::put_bytes(root, rel, bytes),
            Store::S3(store) => store.put_bytes(rel, bytes),
            Store::Ftp(store) => store.put_bytes(rel, bytes),
        }
    }

    /// Writes a small object at `rel` only if none is there: `false` (and nothing written)
    /// when one is. The create-once commit of a staged run's task. S3 sends `If-None-Match: *`;
    /// a local folder links a complete temporary file into place; FTP cannot do it.
    pub fn put_bytes_once(&self, rel: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        check_rel(rel)?;
        match self {
            Store::Local(root) => local::put_bytes_once(root, rel, bytes),
            Store::S3(store) => store.put_bytes_once(rel, bytes),
            Store::Ftp(_) => Err(self.unsupported("create-once writes")),
        }
    }

    /// The whole object `rel` (a small one), or `None` if there is none.
    pub fn get_bytes(&self, rel: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_rel(rel)?;
        match self {
            Store::Local(root) => match std::fs::read(root.join(rel)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StorageError::local("read local file", &root.join(rel))(e)),
            },
            Store::S3(store) => store.get_bytes(rel),
            Store::Ftp(_) => Err(self.unsupported("reading objects into memory")),
        }
    }

    /// Every object under the folder `rel` (`""`: the root), named relative to the root, sorted;
    /// a missing folder is an empty listing.
    pub fn list_under(&self, rel: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let mut listing = match self {
            Store::Local(root) => {
                let dir = root.join(rel);
                match local::list(&dir) {
                    Ok(found) => found
                        .into_iter()
                        .map(|(name, size)| (join_rel(rel, &name), size))
                        .collect(),
                    Err(_) if !dir.exists() => Vec::new(),
                    Err(e) => return Err(e),
                }
            }
            Store::S3(store) => store.list_under(rel)?,
            Store::Ftp(_) => return Err(self.unsupported("listing a folder")),
        };
        listing.sort();
        Ok(listing)
    }

    /// The names of the folders directly under the folder `rel`, sorted; a missing folder has
    /// none.
    pub fn list_folders(&self, rel: &str) -> Result<Vec<String>, StorageError> {
        check_rel(rel)?;
        let mut names = match self {
            Store::Local(root) => {
                let dir = root.join(rel);
                match std::fs::read_dir(&dir) {
                    Ok(entries) => entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(e) => return Err(StorageError::local("list local folder", &dir)(e)),
                }
            }
            Store::S3(store) => store.list_folders(rel)?,
            Store::Ftp(_) => return Err(self.unsupported("listing folders")),
        };
        names.sort();
        Ok(names)
    }

    /// Removes the objects `rels`; missing ones are not an error.
    pub fn delete(&self, rels: &[String]) -> Result<(), StorageError> {
        for rel in rels {
            check_rel(rel)?;
        }
        match self {
            Store::Local(root) => {
                for rel in rels {
                    let path = root.join(rel);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StorageError::local("remove local file", &path)(e)),
                    }
                }
                Ok(())
            }
            Store::S3(store) => store.delete(rels),
            Store::Ftp(_) => Err(self.unsupported("deleting objects")),
        }
    }

    fn unsupported(&self, what: &str) -> StorageError {
        StorageError::Settings {
            location: self.describe_root(),
            reason: format!("{what} is not supported on this kind of store"),
        }
    }

    /// How the object `rel` is named in messages: a local path, an `s3://` URL or an `ftp://`
    /// URL without its password.
    pub fn describe(&self, rel: &str) -> String {
        match self {
            Store::Local(root) => root.join(rel).display().to_string(),
            Store::S3(store) => store.describe(rel),
            Store::Ftp(store) => store.describe(rel),
        }
    }

    /// The root itself, named as in [`Store::describe`].
    pub fn describe_root(&self) -> String {
        match self {
            Store::Local(root) => root.display().to_string(),
            Store::S3(store) => store.describe(""),
            Store::Ftp(store) => store.describe(""),
        }
    }
}

/// Why discovery over a [`Store`] failed: the listing, or the rules themselves.
#[derive(Debug, thiserror::Error)]
pub enum StoreDiscoverError {
    /// The root could not be listed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The local walk or the rules failed.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
}

/// Discovers the inbound files under `store` with exactly the rules of
/// [`discover::discover_local`] (folder layout, name grammar, file-level checks, order).
///
/// A local store is walked directly (so symlinks are seen and listed as ignored). A remote store
/// is listed once and the listing classified by [`discover::discover_listing`]: each [`Found`]
/// keeps its relative path in `display` (pass it to [`Store::fetch`]) and has `path` set to the
/// object's URL, for messages only; the caller replaces `path` with the local copy once fetched.
///
/// [`Found`]: crate::inbound::discover::Found
pub fn discover(store: &Store, config: &Config) -> Result<Discovery, StoreDiscoverError> {
    discover_in(store, None, config)
}

/// Like [`discover`], for one day's folders only (`date=DAY/` and `PARTNER/date=DAY/`), as
/// [`discover::discover_day`] does for a local root.
pub fn discover_day(
    store: &Store,
    day: &str,
    config: &Config,
) -> Result<Discovery, StoreDiscoverError> {
    discover_in(store, Some(day), config)
}

fn discover_in(
    store: &Store,
    day: Option<&str>,
    config: &Config,
) -> Result<Discovery, StoreDiscoverError> {
    match (store, day) {
        (Store::Local(root), None) => Ok(discover::discover_local(root, config)?),
        (Store::Local(root), Some(day)) => Ok(discover::discover_day(root, day, config)?),
        (Store::S3(_) | Store::Ftp(_), _) => {
            let listing = store.list()?;
            let label = PathBuf::from(store.describe_root());
            Ok(discover::discover_listing(&label, &listing, day, config)?)
        }
    }
}

/// Why a storage operation failed. Messages name the object or root and the reason; they never
/// contain a password, secret key or session token.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A relative path that could escape the root or that the store cannot name.
    #[error("invalid object path {rel:?}: {reason}")]
    InvalidPath {
        /// The path given.
        rel: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The location or the settings cannot be used.
    #[error("{location}: {reason}")]
    Settings {
        /// The root, without secrets.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The object or folder does not exist.
    #[error("cannot {op} {object}: not found")]
    NotFound {
        /// What was being done: `list`, `fetch`, `put`.
        op: &'static str,
        /// The object, without secrets.
        object: String,
    },
    /// The server refused the credentials or the permission.
    #[error(
        "cannot {op} {object}: access denied ({reason}); check the credentials and permissions"
    )]
    Denied {
        /// What was being done.
        op: &'static str,
        /// The object, without secrets.
        object: String,
        /// The server's answer, secrets removed.
        reason: String,
    },
    /// The object changed while it was being fetched.
    #[error("cannot fetch {object}: it changed while being read ({reason}); run again")]
    Changed {
        /// The object, without secrets.
        object: String,
        /// How the change showed.
        reason: String,
    },
    /// Any other failure of the server or the connection.
    #[error("cannot {op} {object}: {reason}")]
    Remote {
        /// What was being done.
        op: &'static str,
        /// The object, without secrets.
        object: String,
        /// The client's or server's message, secrets removed.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("cannot {op} {}", path.display())]
    Local {
        /// What was being done, e.g. `read local file`, `list local folder`.
        op: &'static str,
        /// The local file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    fn local<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
        move |source| StorageError::Local {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Checks that `rel` is a plain relative `/`-separated path inside the root: not empty, no
/// empty, `.` or `..` segment, no backslash or NUL, no leading `/`.
fn check_rel(rel: &str) -> Result<(), StorageError> {
    let bad = |reason| {
        Err(StorageError::InvalidPath {
            rel: rel.to_owned(),
            reason,
        })
    };
    if rel.is_empty() {
        return bad("empty");
    }
    if rel.contains(['\\', '\0', '\r', '\n']) {
        return bad("contains a backslash, NUL or line break");
    }
    if rel
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("must be relative, with no empty, '.' or '..' segment");
    }
    Ok(())
}

/// Replaces every occurrence of each non-empty secret in `text` with `***`.
fn scrub(text: String, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(text, |text, secret| text.replace(secret.as_str(), "***"))
}

/// `a/b` from a root path (possibly empty) and a relative path.
fn join_rel(root: &str, rel: &str) -> String {
    match (root.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_owned(),
        (false, true) => root.to_owned(),
        (false, false) => format!("{root}/{rel}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside_the_root() {
        for ok in ["a", "date=2026-11-21/ftp_dpm_21_1000000001.sync", "a/b/c.x"] {
            assert!(check_rel(ok).is_ok(), "{ok}");
        }
        for (bad, reason) in [
            ("", "empty"),
            (
                "/etc/passwd",
                "must be relative, with no empty, '.' or '..' segment",
            ),
            (
                "a//b",
                "must be relative, with no empty, '.' or '..' segment",
            ),
            ("a/", "must be relative, with no empty, '.' or '..' segment"),
            (
                "../x",
                "must be relative, with no empty, '.' or '..' segment",
            ),
            (
                "a/./b",
                "must be relative, with no empty, '.' or '..' segment",
            ),
            ("a\\..\\b", "contains a backslash, NUL or line break"),
            ("a\nb", "contains a backslash, NUL or line break"),
        ] {
            let err = check_rel(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid object path {bad:?}: {reason}")
            );
        }
    }

    #[test]
    fn scrub_removes_every_secret() {
        let secrets = vec!["s3cr3t".to_owned(), String::new(), "tok".to_owned()];
        assert_eq!(
            scrub("a s3cr3t b tok s3cr3t".to_owned(), &secrets),
            "a *** b *** ***"
        );
        assert_eq!(scrub("nothing".to_owned(), &[]), "nothing");
    }

    #[test]
    fn join_rel_handles_empty_parts() {
        assert_eq!(join_rel("", "a/b"), "a/b");
        assert_eq!(join_rel("in", ""), "in");
        assert_eq!(join_rel("in/x", "a"), "in/x/a");
    }
}
