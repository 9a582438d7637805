//! E-mails a job receipt over SMTP, as AAM mailed its receipts (AAM-REFERENCE §4.1; operations
//! issue item 4).
//!
//! Owns: building the message (subject from the receipt's `Subject:` line, the rest of the
//! receipt text as a plain-text body), the SMTP session (plain, or STARTTLS required; optional
//! login) and the retry policy: up to 3 attempts with 0.5 s and 2 s pauses, no retry after a
//! permanent (5xx) answer.
//!
//! Does not: decide who gets which receipt, or stop the run. A failed send is returned as a
//! [`MailError`] carrying the attempts and the last error for the run report; the run's data
//! is never affected by it.

use std::fmt;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
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
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("retry_delays", &self.retry_delays)
            .field("timeout", &self.timeout)
            .finish()
    }
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
/// of `settings.retry_delays`; a permanent 5xx answer ends the attempts at once. With no
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
                let next = if err.is_permanent() {
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
        let params = TlsParameters::new(settings.host.clone())
            .map_err(|e| format!("cannot set up TLS for {}: {e}", settings.host))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::receipt::Counters;
    use std::collections::BTreeMap;

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
