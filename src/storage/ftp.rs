//! FTP store: a folder on an FTP server through suppaftp, one control connection per operation,
//! always binary type and passive mode.
//!
//! The URL's path is relative to the login folder, as RFC 1738 §3.2.2 reads it
//! (`ftp://host/in` is `in` under the login folder; `ftp://host/%2Fsrv/in` is `/srv/in`).
//! Credentials come from the URL, else from the settings, else `anonymous`.
//!
//! Listing uses `MLSD` (exact types and sizes) and falls back to `LIST` for servers without it.
//! Uploads go to a dot-prefixed temporary name in the target folder and are renamed into place,
//! so a reader never sees a partial object. Fetches compare the bytes received with `SIZE`.

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use suppaftp::list::File as ListedFile;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpResult, FtpStream, Mode, Status};

use super::{StorageError, StorageSettings, join_rel, scrub};

/// Default FTP port.
const DEFAULT_PORT: u16 = 21;
/// Connect timeout of the control and data connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Read and write timeout of the control and data connections: a stalled server fails the
/// operation instead of hanging the nightly run.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Copy buffer for transfers (DESIGN.md: 64–128 KiB reads are fastest).
const COPY_BYTES: usize = 128 << 10;

/// A folder on an FTP server.
pub struct FtpStore {
    host: String,
    port: u16,
    user: String,
    password: String,
    /// The root folder, percent-decoded, without trailing `/`; empty means the login folder.
    root: String,
}

impl fmt::Debug for FtpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpStore")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// One entry of a folder listing.
#[derive(Debug, PartialEq, Eq)]
enum Listed {
    File(String, u64),
    Dir(String),
}

impl FtpStore {
    pub(super) fn open(url: &str, settings: &StorageSettings) -> Result<FtpStore, StorageError> {
        let bad = |reason: &str| StorageError::Settings {
            location: redacted_url(url),
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|_| bad("not a valid ftp:// URL"))?;
        if parsed.scheme() != "ftp" {
            return Err(bad("not an ftp:// URL"));
        }
        let host = match parsed.host_str() {
            Some(host) if !host.is_empty() => host.trim_matches(['[', ']']).to_owned(),
            _ => return Err(bad("an ftp:// URL needs a host")),
        };
        let decode = |text: &str, what: &str| {
            percent_decode(text).ok_or_else(|| bad(&format!("the {what} is not valid UTF-8")))
        };
        let url_user = decode(parsed.username(), "user name")?;
        let url_password = parsed
            .password()
            .map(|p| decode(p, "password"))
            .transpose()?;
        let user = match url_user.is_empty() {
            false => url_user,
            true => settings
                .ftp_user
                .clone()
                .unwrap_or_else(|| "anonymous".to_owned()),
        };
        let password = url_password
            .or_else(|| settings.ftp_password.clone())
            .unwrap_or_else(|| "anonymous@".to_owned());
        let path = parsed.path();
        let root = decode(path.strip_prefix('/').unwrap_or(path), "path")?;
        let root = match root.trim_end_matches('/') {
            "" if root.starts_with('/') => "/".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        Ok(FtpStore {
            host,
            port: parsed.port().unwrap_or(DEFAULT_PORT),
            user,
            password,
            root,
        })
    }

    /// `ftp://user@host:port/root/rel`, never with the password.
    pub(super) fn describe(&self, rel: &str) -> String {
        let path = join_rel(&self.root, rel);
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        let sep = if path.starts_with('/') { "" } else { "/" };
        format!("ftp://{}@{host}:{}{sep}{path}", self.user, self.port)
    }

    /// The server path of `rel`.
    fn path(&self, rel: &str) -> String {
        match (self.root.as_str(), rel) {
            ("/", rel) => format!("/{rel}"),
            (root, rel) => join_rel(root, rel),
        }
    }

    /// Names an FTP failure for the user, the password removed.
    fn error(&self, op: &'static str, rel: &str, err: FtpError) -> StorageError {
        let object = self.describe(rel);
        let secrets = [self.password.clone()];
        match err {
            FtpError::UnexpectedResponse(response) => {
                // The reply's text starts with its code: `550 No such file or directory.`
                let text = response
                    .as_string()
                    .unwrap_or_else(|_| format!("{} (reply not UTF-8)", response.status.code()));
                let reason = scrub(text, &secrets);
                match response.status {
                    Status::NotLoggedIn => StorageError::Denied { op, object, reason },
                    Status::FileUnavailable if op != "put" => StorageError::NotFound { op, object },
                    _ => StorageError::Remote { op, object, reason },
                }
            }
            other => StorageError::Remote {
                op,
                object,
                reason: scrub(other.to_string(), &secrets),
            },
        }
    }

    /// Connects, logs in, and selects binary type and passive mode.
    fn connect(&self, op: &'static str, rel: &str) -> Result<FtpStream, StorageError> {
        let remote = |reason: String| StorageError::Remote {
            op,
            object: self.describe(rel),
            reason,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|err| remote(format!("cannot resolve the host: {err}")))?
            .collect();
        let mut last = None;
        let mut control = None;
        for addr in addrs {
            match connect_tcp(addr) {
                Ok(stream) => {
                    control = Some(stream);
                    break;
                }
                Err(err) => last = Some(err),
            }
        }
        let control = control.ok_or_else(|| {
            remote(match last {
                Some(err) => format!("cannot connect: {err}"),
                None => "the host has no address".to_owned(),
            })
        })?;
        let mut ftp = FtpStream::connect_with_stream(control)
            .map_err(|err| self.error(op, rel, err))?
            .passive_stream_builder(|addr| connect_tcp(addr).map_err(FtpError::ConnectionError));
        ftp.set_mode(Mode::Passive);
        // Servers behind NAT announce private addresses in PASV: use the control peer's.
        ftp.set_passive_nat_workaround(true);
        ftp.login(self.user.as_str(), self.password.as_str())
            .map_err(|err| self.error(op, rel, err))?;
        ftp.transfer_type(FileType::Binary)
            .map_err(|err| self.error(op, rel, err))?;
        Ok(ftp)
    }

    pub(super) fn list(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut ftp = self.connect("list", "")?;
        let mut out = Vec::new();
        let mut pending = vec![String::new()];
        let mut mlsd = true;
        while let Some(rel) = pending.pop() {
            let dir = self.path(&rel);
            let entries =
                list_dir(&mut ftp, &dir, &mut mlsd).map_err(|err| self.error("list", &rel, err))?;
            for entry in entries {
                match entry {
                    Listed::File(name, size) => out.push((join_rel(&rel, &name), size)),
                    Listed::Dir(name) => pending.push(join_rel(&rel, &name)),
                }
            }
        }
        let _ = ftp.quit();
        Ok(out)
    }

    pub(super) fn fetch(&self, rel: &str, dest: &Path) -> Result<u64, StorageError> {
        let mut ftp = self.connect("fetch", rel)?;
        let path = self.path(rel);
        let expected = match ftp.size(&path) {
            Ok(size) => Some(size as u64),
            Err(FtpError::UnexpectedResponse(r)) if is_not_implemented(r.status) => None,
            Err(err) => return Err(self.error("fetch", rel, err)),
        };
        let mut wtr = File::create(dest).map_err(StorageError::local("create local file", dest))?;
        let mut rdr = ftp
            .retr_as_stream(&path)
            .map_err(|err| self.error("fetch", rel, err))?;
        let copied = copy(&mut rdr, &mut wtr);
        let got = match copied {
            Ok(got) => got,
            Err(CopyError::Read(err)) => {
                return Err(self.error("fetch", rel, FtpError::ConnectionError(err)));
            }
            Err(CopyError::Write(source)) => {
                return Err(StorageError::Local {
                    op: "write local file",
                    path: dest.to_path_buf(),
                    source,
                });
            }
        };
        rdr.finish().map_err(|err| self.error("fetch", rel, err))?;
        let _ = ftp.quit();
        match expected {
            Some(expected) if expected != got => Err(StorageError::Changed {
                object: self.describe(rel),
                reason: format!("received {got} bytes, SIZE said {expected}"),
            }),
            _ => Ok(got),
        }
    }

    pub(super) fn put(&self, src: &Path, rel: &str) -> Result<(), StorageError> {
        let mut rdr = File::open(src).map_err(StorageError::local("read local file", src))?;
        self.upload(rel, &mut rdr)
    }

    pub(super) fn put_bytes(&self, rel: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.upload(rel, &mut Cursor::new(bytes))
    }

    /// Uploads to a temporary name beside `rel`, then renames it into place.
    fn upload(&self, rel: &str, mut rdr: &mut dyn Read) -> Result<(), StorageError> {
        let mut ftp = self.connect("put", rel)?;
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        // Create the root and the folders above `rel`, level by level. Each may exist already;
        // a real failure shows at the upload.
        let folder = match parent.is_empty() {
            true => self.root.clone(),
            false => self.path(parent),
        };
        let mut dir = String::new();
        if folder.starts_with('/') {
            dir.push('/');
        }
        for part in folder.split('/').filter(|p| !p.is_empty()) {
            if !(dir.is_empty() || dir.ends_with('/')) {
                dir.push('/');
            }
            dir.push_str(part);
            let _ = ftp.mkdir(&dir);
        }
        let tmp = self.path(&join_rel(
            parent,
            &format!(".{name}.{}.tmp", std::process::id()),
        ));
        let target = self.path(rel);
        let result = ftp
            .put_file(&tmp, &mut rdr)
            .and_then(|_| match ftp.rename(&tmp, &target) {
                Ok(()) => Ok(()),
                // Some servers refuse to rename over an existing file.
                Err(_) => ftp.rm(&target).and_then(|()| ftp.rename(&tmp, &target)),
            });
        if let Err(err) = result {
            let _ = ftp.rm(&tmp);
            return Err(self.error("put", rel, err));
        }
        let _ = ftp.quit();
        Ok(())
    }
}

/// Lists one server folder with `MLSD`, or `LIST` once the server turned out not to know it.
fn list_dir(ftp: &mut FtpStream, dir: &str, mlsd: &mut bool) -> FtpResult<Vec<Listed>> {
    let arg = (!dir.is_empty()).then_some(dir);
    if *mlsd {
        match ftp.mlsd(arg) {
            Ok(lines) => return Ok(lines.iter().filter_map(|l| parse_mlsd(l)).collect()),
            Err(FtpError::UnexpectedResponse(r)) if is_not_implemented(r.status) => {
                *mlsd = false;
            }
            Err(err) => return Err(err),
        }
    }
    let lines = ftp.list(arg)?;
    Ok(lines
        .iter()
        .filter_map(|line| {
            let file = ListedFile::try_from(line.as_str()).ok()?;
            let name = file.name();
            if name == "." || name == ".." || name.is_empty() || name.contains('/') {
                None
            } else if file.is_directory() {
                Some(Listed::Dir(name.to_owned()))
            } else if file.is_file() {
                Some(Listed::File(name.to_owned(), file.size() as u64))
            } else {
                None // Symlinks are not followed, as in a local walk.
            }
        })
        .collect())
}

/// One `MLSD` line (RFC 3659 §7): `fact=value;...; name`. Regular files and folders only; the
/// folder itself (`cdir`), its parent (`pdir`), links and anything unparsable are skipped.
fn parse_mlsd(line: &str) -> Option<Listed> {
    let (facts, name) = match line.strip_prefix(' ') {
        Some(name) => ("", name),
        None => line.split_once("; ")?,
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let mut kind = None;
    let mut size = None;
    for fact in facts.split(';') {
        let Some((key, value)) = fact.split_once('=') else {
            continue;
        };
        if key.eq_ignore_ascii_case("type") {
            kind = Some(value.to_ascii_lowercase());
        } else if key.eq_ignore_ascii_case("size") {
            size = value.parse::<u64>().ok();
        }
    }
    match kind.as_deref() {
        Some("file") => Some(Listed::File(name.to_owned(), size.unwrap_or(0))),
        Some("dir") => Some(Listed::Dir(name.to_owned())),
        _ => None,
    }
}

/// Whether a reply means "command not implemented or not understood".
fn is_not_implemented(status: Status) -> bool {
    matches!(
        status,
        Status::NotImplemented
            | Status::BadCommand
            | Status::NotImplementedParameter
            | Status::BadArguments
    )
}

/// A TCP connection with connect, read and write timeouts.
fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `rdr` to `wtr`, telling a failed read (the server) from a failed write (the disk).
fn copy(rdr: &mut impl Read, wtr: &mut impl Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; COPY_BYTES];
    let mut total = 0u64;
    loop {
        let n = match rdr.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(CopyError::Read(err)),
        };
        let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else {
            return Ok(total);
        };
        wtr.write_all(data).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with any password replaced by `***`, for messages about the URL itself.
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "an ftp:// URL".to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str) -> FtpStore {
        FtpStore::open(url, &StorageSettings::default()).unwrap()
    }

    #[test]
    fn url_parts_and_defaults() {
        let s = open("ftp://al%40ice:p%3Ass@127.0.0.1:2121/in/drop/");
        assert_eq!(
            (
                s.host.as_str(),
                s.port,
                s.user.as_str(),
                s.password.as_str()
            ),
            ("127.0.0.1", 2121, "al@ice", "p:ss")
        );
        assert_eq!(s.root, "in/drop");
        assert_eq!(s.path("a/b"), "in/drop/a/b");
        assert_eq!(s.describe("a"), "ftp://al@ice@127.0.0.1:2121/in/drop/a");

        let s = open("ftp://example.com");
        assert_eq!((s.port, s.user.as_str()), (21, "anonymous"));
        assert_eq!(s.root, "");
        assert_eq!(s.path("x"), "x");
        assert_eq!(s.describe(""), "ftp://anonymous@example.com:21/");

        let s = open("ftp://h/%2Fsrv/in");
        assert_eq!(s.root, "/srv/in");
        assert_eq!(s.path("x"), "/srv/in/x");
        assert_eq!(s.describe("x"), "ftp://anonymous@h:21/srv/in/x");

        let settings = StorageSettings {
            ftp_user: Some("bob".into()),
            ftp_password: Some("pw".into()),
            ..StorageSettings::default()
        };
        let s = FtpStore::open("ftp://h/in", &settings).unwrap();
        assert_eq!((s.user.as_str(), s.password.as_str()), ("bob", "pw"));
        let s = FtpStore::open("ftp://carol@h/in", &settings).unwrap();
        assert_eq!((s.user.as_str(), s.password.as_str()), ("carol", "pw"));
    }

    #[test]
    fn bad_urls_name_the_url_without_its_password() {
        for (url, reason) in [
            ("ftp://u:topsecret@/in", "not a valid ftp:// URL"),
            ("ftp://u:topsecret@h:99999/in", "not a valid ftp:// URL"),
            (
                "ftp://u:top%FFsecret@h/in",
                "the password is not valid UTF-8",
            ),
        ] {
            let err = FtpStore::open(url, &StorageSettings::default()).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(
                !text.contains("topsecret") && !text.contains("top%FFsecret"),
                "{text}"
            );
            assert_eq!(err.to_string().split(": ").last(), Some(reason), "{text}");
        }
        let debug = format!("{:?}", open("ftp://u:topsecret@h/in"));
        assert!(!debug.contains("topsecret"), "{debug}");
    }

    #[test]
    fn mlsd_lines() {
        assert_eq!(
            parse_mlsd("type=file;size=12;modify=20261121000000; ftp_dpm_21_1000000001.sync"),
            Some(Listed::File("ftp_dpm_21_1000000001.sync".into(), 12))
        );
        assert_eq!(
            parse_mlsd("Type=DIR;Modify=20261121000000; date=2026-11-21"),
            Some(Listed::Dir("date=2026-11-21".into()))
        );
        assert_eq!(
            parse_mlsd("type=file;size=3; name with; semicolon"),
            Some(Listed::File("name with; semicolon".into(), 3))
        );
        for skipped in [
            "type=cdir; /in",
            "type=pdir; ..",
            "type=OS.unix=slink:/x; link",
            "garbage",
            "type=file;size=1; ",
        ] {
            assert_eq!(parse_mlsd(skipped), None, "{skipped}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2F").as_deref(), Some("a b/"));
        assert_eq!(percent_decode("%E2%82%AC").as_deref(), Some("€"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }
}
