//! S3 store: a bucket prefix through object_store, driven from blocking code by a private
//! current-thread tokio runtime.
//!
//! Fetches split an object into ranged GETs of `part_bytes`, keep `concurrency` of them in
//! flight and write each at its offset in the local file, so memory holds at most
//! `concurrency × part_bytes` whatever the object's size. Every GET carries `If-Match` with the
//! ETag seen first, so an object replaced mid-fetch fails the fetch instead of mixing versions.
//! Uploads above `part_bytes` (at least S3's 5 MiB minimum part) are multipart (S3 makes the
//! object visible only on completion) and are aborted on failure; smaller ones are one atomic
//! PUT.

use std::fmt;
use std::fs::{self, File};
use std::future::poll_fn;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path as LocalPath;
use std::sync::{Arc, Mutex};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

use super::{
    DEFAULT_CONCURRENCY, DEFAULT_PART_BYTES, MIN_UPLOAD_PART_BYTES, StorageError, StorageSettings,
    join_rel, scrub,
};

/// Region used when none is configured; S3-compatible servers generally accept any.
const DEFAULT_REGION: &str = "us-east-1";
/// Read buffer when feeding a multipart upload: `read()` in 64–128 KiB steps is fastest
/// (DESIGN.md), and the upload copies into its own part buffer anyway.
const UPLOAD_READ_BYTES: usize = 128 << 10;

/// A prefix in an S3 bucket.
pub struct S3Store {
    store: Arc<AmazonS3>,
    runtime: Runtime,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    part_bytes: u64,
    concurrency: usize,
    secrets: Vec<String>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not derived: the client's own Debug shows its credentials.
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("part_bytes", &self.part_bytes)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// A failure inside one part of a transfer, before it is named for the user.
enum PartError {
    Store(object_store::Error),
    Short { start: u64, expected: u64, got: u64 },
    Io(io::Error),
    Task(String),
}

impl S3Store {
    pub(super) fn open(
        bucket: &str,
        prefix: &str,
        settings: &StorageSettings,
    ) -> Result<S3Store, StorageError> {
        let location = format!("s3://{bucket}/{prefix}");
        let bad = |reason: String| StorageError::Settings {
            location: location.clone(),
            reason,
        };
        let secrets = settings.secrets();
        let part_bytes = settings.part_bytes.unwrap_or(DEFAULT_PART_BYTES);
        let concurrency = settings.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if part_bytes == 0 || usize::try_from(part_bytes).is_err() {
            return Err(bad(format!("part size {part_bytes} bytes is not usable")));
        }
        if concurrency == 0 {
            return Err(bad("concurrency must be at least 1".to_owned()));
        }
        if !prefix.is_empty() {
            Path::parse(prefix).map_err(|_| {
                bad("the prefix is not a valid S3 key prefix (empty, '.' or '..' segment)".into())
            })?;
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region.as_deref().unwrap_or(DEFAULT_REGION));
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
            }
            (None, None) => {} // The client falls back to the instance's credentials.
            (Some(_), None) => {
                return Err(bad(
                    "an access key ID is set but no secret access key (AWS_SECRET_ACCESS_KEY)"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "a secret access key is set but no access key ID (AWS_ACCESS_KEY_ID)".into(),
                ));
            }
        }
        if let Some(token) = &settings.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(allow_http) = settings.allow_http {
            builder = builder.with_allow_http(allow_http);
        }
        let store = builder
            .build()
            .map_err(|err| bad(scrub(err.to_string(), &secrets)))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| bad(format!("cannot start the S3 client's runtime: {err}")))?;
        Ok(S3Store {
            store: Arc::new(store),
            runtime,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: settings.endpoint.clone(),
            part_bytes,
            concurrency,
            secrets,
        })
    }

    /// `s3://bucket/prefix/rel`.
    pub(super) fn describe(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, join_rel(&self.prefix, rel))
    }

    fn key(&self, rel: &str) -> Result<Path, StorageError> {
        Path::parse(join_rel(&self.prefix, rel)).map_err(|_| StorageError::InvalidPath {
            rel: rel.to_owned(),
            reason: "not a valid S3 object key",
        })
    }

    /// Names an object_store error for the user, secrets removed.
    fn error(&self, op: &'static str, rel: &str, err: object_store::Error) -> StorageError {
        let object = self.describe(rel);
        match err {
            object_store::Error::NotFound { .. } => StorageError::NotFound { op, object },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => StorageError::Denied {
                op,
                object,
                reason: scrub(source.to_string(), &self.secrets),
            },
            object_store::Error::Precondition { .. } => StorageError::Changed {
                object,
                reason: "its ETag no longer matches".to_owned(),
            },
            other => {
                let reason = scrub(other.to_string(), &self.secrets);
                // Listing failures arrive as `Generic`, with the HTTP status only in the text
                // (the client's status-carrying error type is private).
                if reason.contains("status code: 401") || reason.contains("status code: 403") {
                    StorageError::Denied { op, object, reason }
                } else {
                    StorageError::Remote { op, object, reason }
                }
            }
        }
    }

    /// Names a transfer failure; `local` is the local file and `local_op` what was being done
    /// to it (`write local file` for fetches, `read local file` for uploads).
    fn part_error(
        &self,
        op: &'static str,
        rel: &str,
        (local_op, local): (&'static str, &LocalPath),
        err: PartError,
    ) -> StorageError {
        match err {
            PartError::Store(err) => self.error(op, rel, err),
            PartError::Short {
                start,
                expected,
                got,
            } => StorageError::Changed {
                object: self.describe(rel),
                reason: format!("range at byte {start} returned {got} bytes, expected {expected}"),
            },
            PartError::Io(source) => StorageError::Local {
                op: local_op,
                path: local.to_path_buf(),
                source,
            },
            PartError::Task(reason) => StorageError::Remote {
                op,
                object: self.describe(rel),
                reason,
            },
        }
    }

    pub(super) fn list(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.list_under("")
    }

    /// The objects under `rel` (a folder-like prefix, `""` for the root), named relative to
    /// the root.
    pub(super) fn list_under(&self, rel: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let under = join_rel(&self.prefix, rel);
        let prefix = match under.is_empty() {
            true => None,
            false => Some(self.key(rel)?),
        };
        let strip = match self.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", self.prefix),
        };
        let mut stream = self.store.list(prefix.as_ref());
        let mut out = Vec::new();
        self.runtime.block_on(async {
            while let Some(item) = poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                let meta = item.map_err(|err| self.error("list", "", err))?;
                if let Some(rel) = meta.location.as_ref().strip_prefix(strip.as_str()) {
                    out.push((rel.to_owned(), meta.size));
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    pub(super) fn fetch(&self, rel: &str, dest: &LocalPath) -> Result<u64, StorageError> {
        let key = self.key(rel)?;
        self.runtime.block_on(async {
            let meta = self
                .store
                .head(&key)
                .await
                .map_err(|err| self.error("fetch", rel, err))?;
            let file =
                File::create(dest).map_err(StorageError::local("create local file", dest))?;
            let file = Arc::new(Mutex::new(file));
            self.fetch_parts(&key, meta.size, meta.e_tag, &file)
                .await
                .map_err(|err| self.part_error("fetch", rel, ("write local file", dest), err))?;
            Ok(meta.size)
        })
    }

    /// Fetches `0..size` of `key` in ranged GETs, `concurrency` in flight, each written at its
    /// offset. On the first failure the other requests are cancelled (dropping the set aborts
    /// them).
    async fn fetch_parts(
        &self,
        key: &Path,
        size: u64,
        e_tag: Option<String>,
        file: &Arc<Mutex<File>>,
    ) -> Result<(), PartError> {
        let mut tasks = JoinSet::new();
        let mut next = 0u64;
        loop {
            while tasks.len() < self.concurrency && next < size {
                let start = next;
                let end = start.saturating_add(self.part_bytes).min(size);
                next = end;
                let store = Arc::clone(&self.store);
                let key = key.clone();
                let e_tag = e_tag.clone();
                let file = Arc::clone(file);
                tasks.spawn(async move {
                    let options = GetOptions {
                        range: Some((start..end).into()),
                        if_match: e_tag,
                        ..GetOptions::default()
                    };
                    let bytes = store
                        .get_opts(&key, options)
                        .await
                        .map_err(PartError::Store)?
                        .bytes()
                        .await
                        .map_err(PartError::Store)?;
                    let got = bytes.len() as u64;
                    if got != end - start {
                        return Err(PartError::Short {
                            start,
                            expected: end - start,
                            got,
                        });
                    }
                    write_at(&file, start, &bytes).map_err(PartError::Io)
                });
            }
            match tasks.join_next().await {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(err))) => return Err(err),
                Some(Err(err)) => return Err(PartError::Task(err.to_string())),
            }
        }
    }

    pub(super) fn put(&self, src: &LocalPath, rel: &str) -> Result<(), StorageError> {
        let key = self.key(rel)?;
        let size = fs::metadata(src)
            .map_err(StorageError::local("read local file", src))?
            .len();
        if size <= self.upload_part_bytes() {
            let bytes = fs::read(src).map_err(StorageError::local("read local file", src))?;
            return self.put_payload(&key, rel, bytes.into());
        }
        let rdr = File::open(src).map_err(StorageError::local("read local file", src))?;
        self.runtime
            .block_on(self.put_multipart(&key, rdr))
            .map_err(|err| self.part_error("put", rel, ("read local file", src), err))
    }

    /// Streams `rdr` into a multipart upload of `part_bytes` parts, `concurrency` in flight;
    /// aborts the upload on failure so no partial object ever appears.
    async fn put_multipart(&self, key: &Path, mut rdr: File) -> Result<(), PartError> {
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(PartError::Store)?;
        // Fits a usize: `part_bytes` was checked in `open`.
        let part = usize::try_from(self.upload_part_bytes()).unwrap_or(usize::MAX);
        let mut wtr = WriteMultipart::new_with_chunk_size(upload, part);
        let mut buf = vec![0u8; UPLOAD_READ_BYTES];
        let fed: Result<(), PartError> = async {
            loop {
                wtr.wait_for_capacity(self.concurrency)
                    .await
                    .map_err(PartError::Store)?;
                let n = rdr.read(&mut buf).map_err(PartError::Io)?;
                match buf.get(..n) {
                    Some([]) | None => return Ok(()),
                    Some(data) => wtr.write(data),
                }
            }
        }
        .await;
        match fed {
            Ok(()) => wtr.finish().await.map(|_| ()).map_err(PartError::Store),
            Err(err) => {
                // The upload's own failure is what the user needs; a failed abort only leaves
                // invisible parts that the bucket's lifecycle rule cleans up.
                let _ = wtr.abort().await;
                Err(err)
            }
        }
    }

    /// The multipart part size: `part_bytes`, raised to S3's minimum.
    fn upload_part_bytes(&self) -> u64 {
        self.part_bytes.max(MIN_UPLOAD_PART_BYTES)
    }

    pub(super) fn put_bytes(&self, rel: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let key = self.key(rel)?;
        self.put_payload(&key, rel, bytes.to_vec().into())
    }

    /// Writes `bytes` at `rel` only if no object is there (`If-None-Match: *`); `false` when
    /// one is, whoever wrote it.
    pub(super) fn put_bytes_once(&self, rel: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let key = self.key(rel)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let put = self
            .runtime
            .block_on(self.store.put_opts(&key, bytes.to_vec().into(), opts));
        match put {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(err) => Err(self.error("put", rel, err)),
        }
    }

    /// The whole object `rel`, or `None` if there is none.
    pub(super) fn get_bytes(&self, rel: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = self.key(rel)?;
        let got = self.runtime.block_on(async {
            let result = self.store.get(&key).await?;
            result.bytes().await
        });
        match got {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(self.error("fetch", rel, err)),
        }
    }

    /// Removes the objects `rels` with bulk deletes (1,000 keys a request); a missing one is
    /// not an error.
    pub(super) fn delete(&self, rels: &[String]) -> Result<(), StorageError> {
        use futures_util::StreamExt as _;
        let keys = rels
            .iter()
            .map(|rel| self.key(rel))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let input = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        let mut done = self.store.delete_stream(input);
        self.runtime.block_on(async {
            while let Some(item) = done.next().await {
                match item {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => return Err(self.error("delete", "", err)),
                }
            }
            Ok(())
        })
    }

    /// The names of the folder-like prefixes directly under `rel` (one `/`-delimited level).
    pub(super) fn list_folders(&self, rel: &str) -> Result<Vec<String>, StorageError> {
        let key = self.key(rel)?;
        let listed = self
            .runtime
            .block_on(self.store.list_with_delimiter(Some(&key)))
            .map_err(|err| self.error("list", rel, err))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    fn put_payload(&self, key: &Path, rel: &str, payload: PutPayload) -> Result<(), StorageError> {
        self.runtime
            .block_on(self.store.put(key, payload))
            .map(|_| ())
            .map_err(|err| self.error("put", rel, err))
    }
}

/// Writes `bytes` at `offset` of the shared file.
fn write_at(file: &Mutex<File>, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let mut file = file
        .lock()
        .map_err(|_| io::Error::other("another part's write panicked"))?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}
