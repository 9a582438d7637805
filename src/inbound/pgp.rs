//! Decrypts `.pgp`/`.gpg` inbound files with the configured private key (CONTRACT §2).
//!
//! Owns: loading the private key (binary or ASCII-armored, optionally passphrase-protected) and
//! streaming one encrypted inbound file (binary or ASCII-armored) into a local plaintext file.
//! AAM accepts AES only (AAM-REFERENCE §1.7), so a message whose session key uses another cipher
//! is rejected before any plaintext is produced; a plaintext that is itself gzip is rejected, as
//! AAM does ("gzip inside PGP"). OpenPGP's own compression (ZIP, ZLIB, BZip2 packets) is part of
//! PGP and is undone here.
//!
//! Does not: parse the plaintext, decide where the plaintext lives, or verify signatures (AAM
//! does not require signed inbound files).
//!
//! Errors come in two kinds. [`PgpError::rejection_reason`] gives the receipt text of the
//! file-level rejections ("undecryptable PGP: …", "gzip inside PGP is rejected"); the other
//! variants (an unreadable key, an unwritable destination) are run problems.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use pgp::composed::{
    DecryptionOptions, Deserializable, Edata, Esk, Message, PlainSessionKey, SignedSecretKey,
    TheRing,
};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{ProtectedDataConfig, SymEncryptedProtectedDataConfig};
use pgp::types::{DecryptionKey, EskType, Password, PkeskVersion, Seipdv1ReadMode};

use crate::state::{StateError, atomic_writer};

/// Read buffer size: 64–128 KiB reads measured fastest on this class of machine (DESIGN.md).
const BUF_BYTES: usize = 128 * 1024;

/// The two first bytes of every gzip member (RFC 1952 §2.3.1).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Receipt text of a plaintext that is gzip.
pub const GZIP_INSIDE_PGP: &str = "gzip inside PGP is rejected";

/// Why a PGP file could not be decrypted, or the key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The private key file could not be read (a run problem: fix the config).
    #[error("cannot read PGP private key {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The private key file is not a usable OpenPGP secret key (a run problem).
    #[error("PGP private key {} is not usable: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    /// The inbound file could not be opened (a run problem: the input vanished or is unreadable).
    #[error("cannot open PGP file {}: {source}", path.display())]
    OpenInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a message this key can decrypt, or its ciphertext is damaged.
    /// A file-level rejection.
    #[error("{}: undecryptable PGP: {reason}", path.display())]
    Undecryptable { path: PathBuf, reason: String },
    /// The plaintext starts with the gzip magic bytes. A file-level rejection.
    #[error("{}: {GZIP_INSIDE_PGP}", path.display())]
    GzipInside { path: PathBuf },
    /// The plaintext could not be written (a run problem).
    #[error("cannot write decrypted {} for {}: {source}", dest.display(), path.display())]
    Write {
        path: PathBuf,
        dest: PathBuf,
        #[source]
        source: StateError,
    },
}

impl PgpError {
    /// The reason a receipt shows when the file is rejected, or `None` when the error is a run
    /// problem (key, input or output I/O) rather than a problem of the file's content.
    pub fn rejection_reason(&self) -> Option<String> {
        match self {
            PgpError::Undecryptable { reason, .. } => Some(format!("undecryptable PGP: {reason}")),
            PgpError::GzipInside { .. } => Some(GZIP_INSIDE_PGP.to_owned()),
            PgpError::ReadKey { .. }
            | PgpError::BadKey { .. }
            | PgpError::OpenInput { .. }
            | PgpError::Write { .. } => None,
        }
    }
}

/// The configured OpenPGP private key with its passphrase. `Debug` shows the key's
/// fingerprint, never the secret material or the passphrase.
pub struct PrivateKey {
    key: SignedSecretKey,
    passphrase: Password,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use pgp::types::KeyDetails as _;
        f.debug_struct("PrivateKey")
            .field("fingerprint", &self.key.fingerprint().to_string())
            .field("passphrase", &"<redacted>")
            .finish()
    }
}

impl PrivateKey {
    /// Loads a transferable secret key (binary or ASCII-armored) from `path`. The passphrase
    /// is only needed when the key's secret material is protected. The key's self-signatures
    /// are verified, so a corrupted key file fails here rather than on the first file.
    pub fn from_file(path: &Path, passphrase: Option<&str>) -> Result<PrivateKey, PgpError> {
        let bytes = std::fs::read(path).map_err(|source| PgpError::ReadKey {
            path: path.to_path_buf(),
            source,
        })?;
        PrivateKey::from_bytes(&bytes, passphrase).map_err(|reason| PgpError::BadKey {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses a secret key from bytes (binary or ASCII-armored); the error is the reason.
    fn from_bytes(bytes: &[u8], passphrase: Option<&str>) -> Result<PrivateKey, String> {
        let (key, _headers) =
            SignedSecretKey::from_reader_single(bytes).map_err(|e| e.to_string())?;
        key.verify_bindings()
            .map_err(|e| format!("invalid self-signature: {e}"))?;
        Ok(PrivateKey {
            key,
            passphrase: passphrase.map_or_else(Password::empty, Password::from),
        })
    }
}

/// Decrypts the OpenPGP message in `src` (binary or ASCII-armored) into `dest`, streaming, and
/// returns the number of plaintext bytes written.
///
/// `dest` appears only complete (written to a temp file beside it, synced, renamed); on any
/// error nothing is left at `dest`. Rejected: a message that is not encrypted to `key`, a
/// cipher other than AES-128/192/256, an unprotected (SED) or damaged ciphertext
/// ([`PgpError::Undecryptable`]), and a plaintext starting with the gzip magic
/// ([`PgpError::GzipInside`]).
pub fn decrypt_file(src: &Path, dest: &Path, key: &PrivateKey) -> Result<u64, PgpError> {
    let undecryptable = |reason: String| PgpError::Undecryptable {
        path: src.to_path_buf(),
        reason,
    };
    let file = File::open(src).map_err(|source| PgpError::OpenInput {
        path: src.to_path_buf(),
        source,
    })?;
    let rdr = BufReader::with_capacity(BUF_BYTES, file);
    let (msg, _headers) = Message::from_reader(rdr).map_err(|e| undecryptable(e.to_string()))?;
    let Message::Encrypted { esk, edata, .. } = &msg else {
        return Err(undecryptable(
            "the file is not an encrypted OpenPGP message".into(),
        ));
    };
    let session_key = find_session_key(esk, key).map_err(undecryptable)?;
    let cipher = cipher_of(&session_key, edata).map_err(undecryptable)?;
    if !is_aes(cipher) {
        return Err(undecryptable(format!(
            "cipher {cipher:?} is not AES; AAM accepts AES only (encrypt with --cipher-algo AES256)"
        )));
    }
    let ring = TheRing {
        session_keys: vec![session_key],
        // GnuPG 2.4 writes its OCB packets when the recipient key advertises them.
        //
        // Streaming: rpgp's default buffers a whole SEIPD v1 message (up to 1 GiB) to check
        // its MDC before releasing plaintext, and AAM allows 5 GB files. Released plaintext
        // only reaches a temp file that becomes `dest` after the integrity check at the end
        // of the stream has passed, so no unauthenticated byte is ever used.
        decrypt_options: DecryptionOptions::new()
            .enable_gnupg_aead()
            .set_seipdv1_read_mode(Seipdv1ReadMode::Streaming),
        ..TheRing::default()
    };
    let (msg, _) = msg
        .decrypt_the_ring(ring, true)
        .map_err(|e| undecryptable(e.to_string()))?;
    let mut msg = msg
        .decompress()
        .map_err(|e| undecryptable(format!("cannot decompress: {e}")))?;
    if msg.is_compressed() {
        return Err(undecryptable("nested compressed packets".into()));
    }
    copy_plaintext(&mut msg, src, dest)
}

/// Streams the plaintext of `msg` to `dest`, rejecting a gzip plaintext before writing a byte.
fn copy_plaintext(msg: &mut Message<'_>, src: &Path, dest: &Path) -> Result<u64, PgpError> {
    let write_err = |source: StateError| PgpError::Write {
        path: src.to_path_buf(),
        dest: dest.to_path_buf(),
        source,
    };
    // Reading can fail late: a damaged or truncated ciphertext is detected by its integrity
    // check (MDC or AEAD tag) only at the end.
    let read_err = |e: io::Error| PgpError::Undecryptable {
        path: src.to_path_buf(),
        reason: e.to_string(),
    };
    let mut buf = vec![0u8; BUF_BYTES];
    // The first read may return a single byte; fill at least the magic's length first.
    let mut head = 0;
    while head < GZIP_MAGIC.len() {
        let n = read_retrying(msg, buf.get_mut(head..).unwrap_or_default()).map_err(read_err)?;
        if n == 0 {
            break;
        }
        head += n;
    }
    if head >= GZIP_MAGIC.len() && buf.starts_with(&GZIP_MAGIC) {
        // Read to the end without writing, so a damaged file is reported as undecryptable
        // rather than judged by unauthenticated first bytes.
        while read_retrying(msg, &mut buf).map_err(read_err)? > 0 {}
        return Err(PgpError::GzipInside {
            path: src.to_path_buf(),
        });
    }
    let mut wtr = atomic_writer(dest).map_err(write_err)?;
    let io_write_err = |source: io::Error| write_err(StateError::io("write", dest, source));
    wtr.write_all(buf.get(..head).unwrap_or_default())
        .map_err(io_write_err)?;
    let mut total = head as u64;
    loop {
        let n = read_retrying(msg, &mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        wtr.write_all(buf.get(..n).unwrap_or_default())
            .map_err(io_write_err)?;
        total += n as u64;
    }
    wtr.finish().map_err(write_err)?;
    Ok(total)
}

/// `read`, retried on `Interrupted`.
fn read_retrying(rdr: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rdr.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Decrypts the session key from the first public-key ESK addressed to `key` (its primary key
/// or a subkey). The error is the receipt reason.
fn find_session_key(esks: &[Esk], key: &PrivateKey) -> Result<PlainSessionKey, String> {
    let mut last_failure = None;
    for esk in esks {
        let Esk::PublicKeyEncryptedSessionKey(pkesk) = esk else {
            continue;
        };
        let typ = match pkesk.version() {
            PkeskVersion::V3 => EskType::V3_4,
            PkeskVersion::V6 => EskType::V6,
            PkeskVersion::Other(v) => {
                last_failure = Some(format!("unsupported session key packet version {v}"));
                continue;
            }
        };
        let Ok(values) = pkesk.values() else {
            continue;
        };
        let primary = &key.key.primary_key;
        let mut candidates: Vec<(&dyn DecryptionKey, bool)> = Vec::new();
        if pkesk.match_identity(primary.public_key()) {
            candidates.push((primary, primary.secret_params().is_encrypted()));
        }
        for sub in &key.key.secret_subkeys {
            if pkesk.match_identity(sub.key.public_key()) {
                candidates.push((&sub.key, sub.key.secret_params().is_encrypted()));
            }
        }
        for (dec, locked) in candidates {
            let pw = if locked {
                &key.passphrase
            } else {
                &Password::empty()
            };
            match dec.decrypt(pw, values, typ) {
                Ok(Ok(session_key)) => return Ok(session_key),
                Ok(Err(e)) => last_failure = Some(format!("cannot decrypt the session key: {e}")),
                Err(e) => {
                    last_failure = Some(format!(
                        "cannot unlock the private key (wrong or missing passphrase?): {e}"
                    ))
                }
            }
        }
    }
    Err(last_failure
        .unwrap_or_else(|| "the file is not encrypted to the configured private key".to_owned()))
}

/// The symmetric cipher of the encrypted data: from the session key (v3 PKESK) or from the
/// SEIPD v2 header (v6 PKESK).
fn cipher_of(
    session_key: &PlainSessionKey,
    edata: &Edata<'_>,
) -> Result<SymmetricKeyAlgorithm, String> {
    if let Some(alg) = session_key.sym_algorithm() {
        return Ok(alg);
    }
    match edata {
        Edata::SymEncryptedProtectedData { reader } => match reader.config() {
            ProtectedDataConfig::Seipd(SymEncryptedProtectedDataConfig::V2 { sym_alg, .. }) => {
                Ok(*sym_alg)
            }
            ProtectedDataConfig::Seipd(SymEncryptedProtectedDataConfig::V1)
            | ProtectedDataConfig::GnupgAead(_) => {
                Err("session key and encrypted data versions do not match".into())
            }
        },
        Edata::SymEncryptedData { .. } => {
            Err("the data is not integrity-protected (legacy SED packet)".into())
        }
        Edata::GnupgAeadData { .. } => {
            Err("session key and encrypted data versions do not match".into())
        }
    }
}

/// AAM-REFERENCE §1.7: "Audience Manager supports only the Advanced Encryption Standard (AES)
/// data-encryption algorithm. Audience Manager supports any key size."
fn is_aes(alg: SymmetricKeyAlgorithm) -> bool {
    matches!(
        alg,
        SymmetricKeyAlgorithm::AES128
            | SymmetricKeyAlgorithm::AES192
            | SymmetricKeyAlgorithm::AES256
    )
}
