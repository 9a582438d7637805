//! E-mails a job receipt over SMTP, as AAM mailed its receipts (AAM-REFERENCE §4.1; operations
//! issue item 4).
//!
//! Owns: building the message (subject from the receipt's `Subject:` line, the rest of the
//! receipt text as a plain-text body), the SMTP session (plain, or STARTTLS required, trusting
//! the public web roots plus an optional private CA from `[smtp] ca_file`; optional login) and
//! the retry policy: up to 3 attempts with 0.5 s and 2 s pauses, no retry after a
//! permanent (5xx) answer or a failure that waiting cannot fix (a certificate the TLS check
//! refuses, a server without the STARTTLS the config requires).
//!
//! Does not: decide who gets which receipt, or stop the run. A failed send is returned as a
//! [`MailError`] carrying the attempts and the last error for the run report; the run's data
//! is never affected by it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use serde::Serialize;

use crate::report::receipt::JobReceipt;

/// Pauses between attempts: 3 attempts in all. Long enough to ride out a relay restart or a
/// greylisting 4xx, short enough not to hold a nightly run for long.
pub const DEFAULT_RETRY_DELAYS: [Duration; 2] =
    [Duration::from_millis(500), Duration::from_secs(2)];

/// How long one SMTP command may take before the attempt counts as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom receipts are sent. `Debug` never shows the password.
#[derive(Clone)]
pub struct MailSettings {
    /// SMTP server host name (also the name its TLS certificate must carry).
    pub host: String,
    /// SMTP port, usually 25 or 587.
    pub port: u16,
    /// Require STARTTLS before anything else is sent; the send fails if the server does not
    /// offer it or its certificate is not trusted.
    pub starttls: bool,
    /// A private CA (or the relay's self-signed certificate) trusted for STARTTLS in addition
    /// to the built-in public roots. Only used with `starttls`.
    pub ca: Option<TrustedCa>,
    /// Login user name; no AUTH when `None`.
    pub username: Option<String>,
    /// Login password, used only with `username`.
    pub password: Option<String>,
    /// The sender, e.g. `segmill <segmill@example.com>`.
    pub from: String,
    /// Pauses between attempts; attempts = `retry_delays.len() + 1`.
    pub retry_delays: Vec<Duration>,
    /// Timeout of each SMTP command.
    pub timeout: Duration,
}

impl MailSettings {
    /// Settings with the default retry policy and timeout, no STARTTLS and no login.
    pub fn new(host: impl Into<String>, port: u16, from: impl Into<String>) -> MailSettings {
        MailSettings {
            host: host.into(),
            port,
            starttls: false,
            ca: None,
            username: None,
            password: None,
            from: from.into(),
            retry_delays: DEFAULT_RETRY_DELAYS.to_vec(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for MailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("starttls", &self.starttls)
            .field("ca", &self.ca)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("retry_delays", &self.retry_delays)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A CA certificate file (PEM, one or more certificates) that STARTTLS trusts besides the
/// public roots: how an operator's internal relay with a private CA or a self-signed
/// certificate is reached without turning certificate checks off.
#[derive(Clone)]
pub struct TrustedCa {
    path: PathBuf,
    certificate: Certificate,
}

impl TrustedCa {
    /// Reads and checks `path`: it must be readable, hold at least one `BEGIN CERTIFICATE`
    /// PEM block, and every such block must be a certificate TLS can use as a root.
    pub fn load(path: &Path) -> Result<TrustedCa, CaError> {
        let pem = std::fs::read(path).map_err(|source| CaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        TrustedCa::from_pem(path, &pem)
    }

    /// Checks `pem` as [`TrustedCa::load`] does; `path` only names it in errors.
    pub fn from_pem(path: &Path, pem: &[u8]) -> Result<TrustedCa, CaError> {
        let invalid = |reason: String| CaError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if memchr::memmem::find(pem, b"-----BEGIN CERTIFICATE-----").is_none() {
            return Err(CaError::NotPem {
                path: path.to_path_buf(),
            });
        }
        let certificate = Certificate::from_pem(pem).map_err(|e| invalid(e.to_string()))?;
        // Building TLS parameters parses every certificate as a trust anchor: a damaged one
        // is reported now, with the file's name, not at the first send of the night.
        TlsParameters::builder("localhost".to_owned())
            .add_root_certificate(certificate.clone())
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(TrustedCa {
            path: path.to_path_buf(),
            certificate,
        })
    }

    /// The file the certificate came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why a CA file cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The file cannot be read.
    #[error("cannot read CA file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file holds no `-----BEGIN CERTIFICATE-----` block.
    #[error("CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NotPem { path: PathBuf },
    /// A PEM block does not decode or is not a usable certificate.
    #[error("CA file {} is not a usable PEM certificate: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// A receipt that reached the SMTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Attempts made, the successful one included (0 when there was no recipient).
    pub attempts: u32,
    /// The error of the last failed attempt before the success, if any.
    pub last_error: Option<String>,
}

/// Why a receipt was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// An address in the settings or the recipient list does not parse; nothing was sent.
    #[error("receipt mail for job {job}: invalid {field} address {value:?}: {reason}")]
    Address {
        job: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    /// The message or transport could not be built (e.g. TLS parameters); nothing was sent.
    #[error("receipt mail for job {job}: {reason}")]
    Build { job: String, reason: String },
    /// Every attempt failed, or the server refused the message permanently.
    #[error(
        "receipt mail for job {job} to {host}:{port} failed after {attempts} attempt(s): {last_error}"
    )]
    Send {
        job: String,
        host: String,
        port: u16,
        attempts: u32,
        last_error: String,
    },
}

impl MailError {
    /// Attempts made before giving up (0 when the message could not be built).
    pub fn attempts(&self) -> u32 {
        match self {
            MailError::Send { attempts, .. } => *attempts,
            MailError::Address { .. } | MailError::Build { .. } => 0,
        }
    }
}

/// What the run report records about one receipt mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MailOutcome {
    pub job: String,
    pub recipients: Vec<String>,
    pub delivered: bool,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl MailOutcome {
    /// Summarizes the result of [`send_receipts`] for the run report.
    pub fn from_result(
        receipt: &JobReceipt,
        to: &[String],
        result: &Result<Delivery, MailError>,
    ) -> MailOutcome {
        let (delivered, attempts, last_error) = match result {
            Ok(d) => (true, d.attempts, d.last_error.clone()),
            Err(e) => (false, e.attempts(), Some(e.to_string())),
        };
        MailOutcome {
            job: receipt.job.clone(),
            recipients: to.to_vec(),
            delivered,
            attempts,
            last_error,
        }
    }
}

/// Sends `receipt` to every address in `to` as one message: the subject is the receipt text's
/// first line without its `Subject: ` prefix, the body is the rest of the text.
///
/// Retries transient failures (connection refused or reset, timeouts, 4xx answers) after each
/// of `settings.retry_delays`; a permanent 5xx answer, a TLS failure or a client-side refusal
/// (no STARTTLS offered) ends the attempts at once. With no
/// recipient, nothing is sent and the result is a `Delivery` of 0 attempts. Never panics.
pub fn send_receipts(
    settings: &MailSettings,
    to: &[String],
    receipt: &JobReceipt,
) -> Result<Delivery, MailError> {
    if to.is_empty() {
        return Ok(Delivery {
            attempts: 0,
            last_error: None,
        });
    }
    let message = build_message(settings, to, receipt)?;
    let mailer = build_transport(settings).map_err(|reason| MailError::Build {
        job: receipt.job.clone(),
        reason,
    })?;
    let mut attempts = 0u32;
    let mut delays = settings.retry_delays.iter();
    let mut last_error = None;
    loop {
        attempts += 1;
        match mailer.send(&message) {
            Ok(_) => {
                tracing::debug!(job = %receipt.job, attempts, "receipt mail sent");
                return Ok(Delivery {
                    attempts,
                    last_error,
                });
            }
            Err(err) => {
                let text = err.to_string();
                tracing::warn!(job = %receipt.job, attempts, error = %text, "receipt mail failed");
                let next = if !worth_retrying(&err) {
                    None
                } else {
                    delays.next()
                };
                match next {
                    Some(delay) => {
                        last_error = Some(text);
                        std::thread::sleep(*delay);
                    }
                    None => {
                        return Err(MailError::Send {
                            job: receipt.job.clone(),
                            host: settings.host.clone(),
                            port: settings.port,
                            attempts,
                            last_error: text,
                        });
                    }
                }
            }
        }
    }
}

/// Whether a failed attempt may succeed later: not after a permanent (5xx) answer, a client-side
/// refusal (the server offers no STARTTLS the config requires), or a TLS failure, including a
/// certificate the check refuses, which rustls reports as an I/O error of kind `InvalidData`
/// inside the connection error. A refused certificate is the same 2.5 s later.
fn worth_retrying(err: &lettre::transport::smtp::Error) -> bool {
    if err.is_permanent() || err.is_client() || err.is_tls() {
        return false;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return false;
        }
        source = e.source();
    }
    true
}

/// The receipt as a message: subject from the first line, the rest as text/plain UTF-8.
fn build_message(
    settings: &MailSettings,
    to: &[String],
    receipt: &JobReceipt,
) -> Result<Message, MailError> {
    let address = |field: &'static str, value: &str| {
        value.parse::<Mailbox>().map_err(|e| MailError::Address {
            job: receipt.job.clone(),
            field,
            value: value.to_owned(),
            reason: e.to_string(),
        })
    };
    let text = receipt.to_text();
    let (first, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    let subject = first.strip_prefix("Subject: ").unwrap_or(first);
    let mut builder = Message::builder()
        .from(address("from", &settings.from)?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for rcpt in to {
        builder = builder.to(address("to", rcpt)?);
    }
    builder.body(body.to_owned()).map_err(|e| MailError::Build {
        job: receipt.job.clone(),
        reason: format!("cannot build the message: {e}"),
    })
}

/// A transport that opens one connection per attempt (no pool: one mail per job per night).
fn build_transport(settings: &MailSettings) -> Result<SmtpTransport, String> {
    let tls = if settings.starttls {
        // The default store (the built-in public roots) plus the configured CA, if any.
        let mut params = TlsParameters::builder(settings.host.clone());
        if let Some(ca) = &settings.ca {
            params = params.add_root_certificate(ca.certificate.clone());
        }
        let params = params.build().map_err(|e| {
            let ca = settings.ca.as_ref().map_or(String::new(), |ca| {
                format!(" with CA file {}", ca.path.display())
            });
            format!("cannot set up TLS for {}{ca}: {e}", settings.host)
        })?;
        Tls::Required(params)
    } else {
        Tls::None
    };
    let mut builder = SmtpTransport::builder_dangerous(settings.host.as_str())
        .port(settings.port)
        .tls(tls)
        .timeout(Some(settings.timeout));
    if let Some(user) = &settings.username {
        let password = settings.password.clone().unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

/// A throwaway test CA (ECDSA P-256, generated with Python's trustme), for unit tests here and
/// in the config module.
#[cfg(test)]
pub(crate) const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIByDCCAW+gAwIBAgIUT/uUNeP9u6aery1wlne1/XWSLoYwCgYIKoZIzj0EAwIw
QDEXMBUGA1UECgwOdHJ1c3RtZSB2MS4yLjExJTAjBgNVBAsMHFRlc3RpbmcgQ0Eg
I19aLU56NTk0cVBKejJMc1YwIBcNMDAwMTAxMDAwMDAwWhgPMzAwMDAxMDEwMDAw
MDBaMEAxFzAVBgNVBAoMDnRydXN0bWUgdjEuMi4xMSUwIwYDVQQLDBxUZXN0aW5n
IENBICNfWi1OejU5NHFQSnoyTHNWMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
GwdC8WLUOLm3Dd8ugi34PCx8Y0yOyO62UlcXFVxzSeU08uL4z81QXCVF7f0Ima+J
C6hNjNB6T8ARWBc/3rwhGqNFMEMwHQYDVR0OBBYEFOKivR1sZCE2twA9Lwa6RJJR
tRNsMBIGA1UdEwEB/wQIMAYBAf8CAQkwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49
BAMCA0cAMEQCIC5ec1QG94MRyEYfuMz4RDufNLduS7btizVJWXPZI9DcAiAultfZ
8pHPyxUj0tLQCC5DYJ2lfIQT5uodCETaBq+pEA==
-----END CERTIFICATE-----
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::receipt::Counters;
    use std::collections::BTreeMap;

    #[test]
    fn ca_file_is_checked_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, TEST_CA_PEM).unwrap();
        let ca = TrustedCa::load(&good).unwrap();
        assert_eq!(ca.path(), good);
        assert_eq!(
            format!("{ca:?}"),
            format!("TrustedCa {{ path: {good:?}, .. }}")
        );

        let missing = dir.path().join("missing.pem");
        let err = TrustedCa::load(&missing).unwrap_err();
        assert!(matches!(err, CaError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read CA file {}: ", missing.display())),
            "{err}"
        );

        let name = Path::new("conf/ca.pem");
        let err = TrustedCa::from_pem(name, b"just text\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "CA file conf/ca.pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
        // A DER blob in PEM armour that is no certificate.
        let junk = b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
        let err = TrustedCa::from_pem(name, junk).unwrap_err();
        assert!(matches!(err, CaError::Invalid { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("CA file conf/ca.pem is not a usable PEM certificate: "),
            "{err}"
        );
        // Broken base64 inside the armour.
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = TrustedCa::from_pem(name, broken).unwrap_err();
        assert!(matches!(err, CaError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn starttls_transport_builds_with_a_private_ca() {
        let mut s = MailSettings::new("localhost", 2525, "s@example.com");
        s.starttls = true;
        s.ca = Some(TrustedCa::from_pem(Path::new("ca.pem"), TEST_CA_PEM.as_bytes()).unwrap());
        assert!(build_transport(&s).is_ok());
        assert!(format!("{s:?}").contains("ca: Some(TrustedCa { path: \"ca.pem\", .. })"));
    }

    fn receipt() -> JobReceipt {
        JobReceipt {
            run_id: "r7".into(),
            job: "21".into(),
            dpid: 21,
            owner: None,
            counters: Counters::default(),
            job_start_time: "2026-11-22 02:00:00".into(),
            job_end_time: "2026-11-22 02:00:01".into(),
            files: Vec::new(),
            error_samples: BTreeMap::new(),
        }
    }

    #[test]
    fn debug_redacts_the_password() {
        let mut s = MailSettings::new("mail.example.com", 587, "segmill <s@example.com>");
        s.username = Some("ops".into());
        s.password = Some("hunter2".into());
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: Some(\"<redacted>\")"), "{shown}");
    }

    #[test]
    fn bad_address_is_an_error_without_attempts() {
        let s = MailSettings::new("127.0.0.1", 1, "not an address");
        let err = send_receipts(&s, &["ops@example.com".into()], &receipt()).unwrap_err();
        assert_eq!(err.attempts(), 0);
        assert!(
            err.to_string()
                .starts_with("receipt mail for job 21: invalid from address \"not an address\""),
            "{err}"
        );
    }

    #[test]
    fn no_recipient_sends_nothing() {
        let s = MailSettings::new("127.0.0.1", 1, "s@example.com");
        let d = send_receipts(&s, &[], &receipt()).unwrap();
        assert_eq!(
            d,
            Delivery {
                attempts: 0,
                last_error: None
            }
        );
    }

    #[test]
    fn subject_and_body_split() {
        let s = MailSettings::new("127.0.0.1", 1, "s@example.com");
        let msg = build_message(&s, &["a@example.com".into()], &receipt()).unwrap();
        let raw = String::from_utf8(msg.formatted()).unwrap();
        assert!(
            raw.contains("Subject: segmill Server-To-Server Processing Result: job 21 run r7\r\n"),
            "{raw}"
        );
        assert!(raw.contains("\r\n\r\nDear Partner: (ID:21)\r\n"), "{raw}");
    }
}
