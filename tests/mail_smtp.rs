//! Receipt e-mails against a real SMTP server: aiosmtpd on 127.0.0.1 (tests/common_servers),
//! plain or requiring STARTTLS with a certificate from a test CA made by trustme, started from
//! `$SEGMILL_TEST_PYTHON` (skipped when unset). The server writes each message it accepts as a
//! JSON file, with whether its session ran over TLS, so the tests assert the envelope, the
//! subject, the decoded body and the TLS session. The refused connection test needs no server
//! and always runs. The last tests run the real binary: a receipt mail that cannot be sent
//! over STARTTLS is reported in the run report and changes neither the data nor the exit code.

mod common;
mod common_servers;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common_servers::Smtp;
use segmill::report::mail::{
    Delivery, MailError, MailOutcome, MailSettings, TrustedCa, send_receipts,
};
use segmill::report::receipt::{Counters, FileReceipt, FileStatus, JobReceipt};

fn receipt() -> JobReceipt {
    let counters = Counters {
        records_received: 3,
        records_processed: 3,
        stored_records: 2,
        no_matching_aam_id: 1,
        total_devices: 2,
        total_signals: 4,
        total_realized_traits: 3,
        ..Counters::default()
    };
    JobReceipt {
        run_id: "20261122T020000Z".into(),
        job: "21".into(),
        dpid: 21,
        owner: None,
        counters: counters.clone(),
        job_start_time: "2026-11-22 02:00:00".into(),
        job_end_time: "2026-11-22 02:00:04".into(),
        files: vec![FileReceipt {
            name: "ftp_dpm_21_1795831200.sync".into(),
            status: FileStatus::Processed,
            reason: None,
            duplicate_of: None,
            processed_by_run: None,
            counters,
        }],
        error_samples: BTreeMap::new(),
    }
}

fn settings(port: u16) -> MailSettings {
    let mut s = MailSettings::new("127.0.0.1", port, "segmill <segmill@example.com>");
    s.retry_delays = vec![Duration::from_millis(10), Duration::from_millis(20)];
    s.timeout = Duration::from_secs(5);
    s
}

#[test]
fn receipt_is_delivered_to_every_recipient() {
    let Some(server) = Smtp::start() else {
        return;
    };
    let to = vec![
        "ops@example.com".to_owned(),
        "Partner Team <partner@example.org>".to_owned(),
    ];
    let r = receipt();
    let result = send_receipts(&settings(server.port()), &to, &r);
    assert_eq!(
        *result.as_ref().unwrap(),
        Delivery {
            attempts: 1,
            last_error: None
        }
    );
    let outcome = MailOutcome::from_result(&r, &to, &result);
    assert_eq!(
        serde_json::to_string(&outcome).unwrap(),
        r#"{"job":"21","recipients":["ops@example.com","Partner Team <partner@example.org>"],"delivered":true,"attempts":1}"#
    );

    let mails = server.messages();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m["mail_from"], "segmill@example.com");
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["ops@example.com", "partner@example.org"])
    );
    assert_eq!(
        m["subject"],
        "segmill Server-To-Server Processing Result: job 21 run 20261122T020000Z"
    );
    assert_eq!(m["content_type"], "text/plain");
    assert_eq!(m["tls"], false);
    let text = r.to_text();
    let expected_body = text.split_once('\n').unwrap().1;
    // On the wire lines end in CRLF, and the DATA terminator adds one more.
    let body = m["body"].as_str().unwrap().replace("\r\n", "\n");
    assert_eq!(
        body.trim_end_matches('\n'),
        expected_body.trim_end_matches('\n')
    );
    assert!(expected_body.starts_with("Dear Partner: (ID:21)\n"));
    assert!(expected_body.contains("\nStored Records: 2\n"));
}

#[test]
fn permanent_refusal_is_not_retried() {
    let Some(server) = Smtp::start() else {
        return;
    };
    let to = vec!["nobody@refuse.example.com".to_owned()];
    let err = send_receipts(&settings(server.port()), &to, &receipt()).unwrap_err();
    assert_eq!(err.attempts(), 1, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "receipt mail for job 21 to 127.0.0.1:{} failed after 1 attempt(s): ",
            server.port()
        )),
        "{text}"
    );
    assert!(text.contains("mailbox unavailable"), "{text}");
    assert!(server.messages().is_empty());
}

#[test]
fn refused_connection_fails_after_three_fast_attempts() {
    // A port nothing listens on: bound, then released.
    let port = common_servers::free_port();
    let r = receipt();
    let to = vec!["ops@example.com".to_owned()];
    let started = Instant::now();
    let result = send_receipts(&settings(port), &to, &r);
    let elapsed = started.elapsed();
    let err = result.as_ref().unwrap_err();
    assert!(
        matches!(err, MailError::Send { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "receipt mail for job 21 to 127.0.0.1:{port} failed after 3 attempt(s): "
        )),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let outcome = MailOutcome::from_result(&r, &to, &result);
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 3);
    assert_eq!(
        outcome.last_error.as_deref(),
        Some(err.to_string().as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// STARTTLS

/// Settings for a STARTTLS server at 127.0.0.1 (the test certificate names 127.0.0.1).
fn starttls_settings(port: u16, ca: Option<&Path>) -> MailSettings {
    let mut s = settings(port);
    s.starttls = true;
    s.ca = ca.map(|path| TrustedCa::load(path).unwrap());
    s
}

/// The receipt text without its `Subject:` line, as the body must read.
fn expected_body(text: &str) -> &str {
    text.split_once('\n').unwrap().1.trim_end_matches('\n')
}

fn body_of(message: &serde_json::Value) -> String {
    let body = message["body"].as_str().unwrap().replace("\r\n", "\n");
    body.trim_end_matches('\n').to_owned()
}

#[test]
fn starttls_with_the_private_ca_delivers_over_tls() {
    let Some(server) = Smtp::start_starttls() else {
        return;
    };
    let to = vec!["ops@example.com".to_owned()];
    let r = receipt();
    let s = starttls_settings(server.port(), server.ca_file.as_deref());
    let result = send_receipts(&s, &to, &r);
    assert_eq!(
        *result.as_ref().unwrap(),
        Delivery {
            attempts: 1,
            last_error: None
        },
        "{}",
        server.server.log()
    );
    let mails = server.messages();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m["tls"], true, "{m:#}");
    let version = m["tls_version"].as_str().unwrap();
    assert!(version == "TLSv1.2" || version == "TLSv1.3", "{version}");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["ops@example.com"]));
    assert_eq!(
        m["subject"],
        "segmill Server-To-Server Processing Result: job 21 run 20261122T020000Z"
    );
    assert_eq!(body_of(m), expected_body(&r.to_text()));
}

#[test]
fn starttls_without_the_ca_is_refused_without_retrying() {
    let Some(server) = Smtp::start_starttls() else {
        return;
    };
    let to = vec!["ops@example.com".to_owned()];
    let r = receipt();
    // The test CA is in no trust store: the certificate check must fail.
    let result = send_receipts(&starttls_settings(server.port(), None), &to, &r);
    let err = result.as_ref().unwrap_err();
    // Waiting does not make a certificate trusted: one attempt.
    assert!(
        matches!(err, MailError::Send { attempts: 1, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "receipt mail for job 21 to 127.0.0.1:{} failed after 1 attempt(s): ",
            server.port()
        )),
        "{text}"
    );
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    let outcome = MailOutcome::from_result(&r, &to, &result);
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 1);
    assert!(server.messages().is_empty());
}

#[test]
fn starttls_with_another_ca_is_refused() {
    let (Some(server), Some(other)) = (Smtp::start_starttls(), Smtp::start_starttls()) else {
        return;
    };
    // A CA file that parses but did not sign this server's certificate.
    let s = starttls_settings(server.port(), other.ca_file.as_deref());
    let err = send_receipts(&s, &["ops@example.com".to_owned()], &receipt()).unwrap_err();
    assert_eq!(err.attempts(), 1, "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(server.messages().is_empty());
}

#[test]
fn required_starttls_against_a_plain_server_fails_cleanly() {
    let Some(server) = Smtp::start() else {
        return;
    };
    let err = send_receipts(
        &starttls_settings(server.port(), None),
        &["ops@example.com".to_owned()],
        &receipt(),
    )
    .unwrap_err();
    assert!(
        matches!(err, MailError::Send { attempts: 1, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.ends_with("failed after 1 attempt(s): internal client error: STARTTLS is not supported on this server"),
        "{text}"
    );
    // Never sent in the clear.
    assert!(server.messages().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The whole run, through the binary

const AS_OF: &str = "2026-11-21T23:59:59Z";

/// An ID-sync file and a trait file for data source 21: every line matches, the run exits 0.
fn drop_files(env: &common::Env) {
    let uuid = |n: u64| format!("{n:038}");
    env.put(
        "date=2026-11-21/adobe_id_0_21_1795219200.sync",
        format!("{}\tcust1\n{}\tcust2\n", uuid(1), uuid(2)).as_bytes(),
    );
    env.put(
        "date=2026-11-21/ftp_dpm_21_1795222800.sync",
        b"cust1\td_sid=101\ncust2\td_sid=101,d_sid=102\n",
    );
}

/// Data source 21 (receipts to ops@example.com) with traits 101 and 102, after `smtp`.
fn world(smtp: &str) -> common::Env {
    let env = common::Env::new();
    env.config(
        4,
        &format!(
            "{smtp}\n[[data_source]]\nid = 21\nname = \"CRM\"\n\
             receipt_emails = [\"ops@example.com\"]\n\n\
             [[trait]]\nid = 101\ndata_source = 21\n\n[[trait]]\nid = 102\ndata_source = 21\n"
        ),
    );
    drop_files(&env);
    env
}

/// `[smtp]` for a STARTTLS server on `port`, with `extra` lines.
fn starttls_table(port: u16, extra: &str) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nstarttls = true\n\
         from = \"segmill@example.com\"\n{extra}"
    )
}

/// `segmill run --as-of AS_OF` with short pauses between mail attempts.
fn run(env: &common::Env) -> common::Out {
    let out = Command::new(env!("CARGO_BIN_EXE_segmill"))
        .arg("--config")
        .arg(env.config_path())
        .args(["run", "--as-of", AS_OF])
        .env_remove("RUST_LOG")
        .env("SEGMILL_SMTP_RETRY_MS", "10")
        .output()
        .expect("spawn segmill");
    common::Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_run_mails_its_receipt_over_starttls_with_the_configured_ca() {
    let Some(server) = Smtp::start_starttls() else {
        return;
    };
    // ca_file is relative: resolved against the config's folder.
    let env = world(&starttls_table(server.port(), "ca_file = \"tls/ca.pem\"\n"));
    std::fs::create_dir(env.root().join("tls")).unwrap();
    std::fs::copy(
        server.ca_file.as_ref().unwrap(),
        env.root().join("tls/ca.pem"),
    )
    .unwrap();
    let out = run(&env);
    assert_eq!(out.code, 0, "{out:#?}");
    let run_id = common::run_id(1, AS_OF);
    let report = env.run_report(&run_id);
    assert_eq!(
        report["mail"],
        serde_json::json!([{
            "job": "21",
            "recipients": ["ops@example.com"],
            "delivered": true,
            "attempts": 1
        }])
    );
    let mails = server.messages();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0]["tls"], true);
    let text = env.receipt_text(&run_id, "21");
    assert_eq!(body_of(&mails[0]), expected_body(&text));
    assert_eq!(
        mails[0]["subject"],
        text.lines().next().unwrap().trim_start_matches("Subject: ")
    );
}

/// Runs the drop with `smtp` and without mail, and checks the failed mail left the run alone:
/// exit 0, the same state byte for byte, and the failure in the run report.
fn assert_failed_mail_is_only_reported(smtp: &str, port: u16, error_end: &str) {
    let plain = world("");
    let out = run(&plain);
    assert_eq!(out.code, 0, "{out:#?}");
    let env = world(smtp);
    let out = run(&env);
    assert_eq!(out.code, 0, "{out:#?}");
    common::assert_same_tree("state", &plain.state_snapshot(), &env.state_snapshot());
    let report = env.run_report(&common::run_id(1, AS_OF));
    assert_eq!(report["exit_code"], 0);
    let mail = &report["mail"];
    assert_eq!(mail.as_array().map(Vec::len), Some(1), "{mail:#}");
    assert_eq!(mail[0]["job"], "21");
    assert_eq!(
        mail[0]["recipients"],
        serde_json::json!(["ops@example.com"])
    );
    assert_eq!(mail[0]["delivered"], false);
    // Both callers' failures (certificate, no STARTTLS) are not retried.
    assert_eq!(mail[0]["attempts"], 1);
    let last = mail[0]["last_error"].as_str().unwrap();
    assert!(
        last.starts_with(&format!(
            "receipt mail for job 21 to 127.0.0.1:{port} failed after 1 attempt(s): "
        )),
        "{last}"
    );
    assert!(last.ends_with(error_end), "{last}");
    assert!(
        out.stderr.contains("receipt mail not delivered"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_run_whose_mail_fails_the_certificate_check_commits_normally() {
    let Some(server) = Smtp::start_starttls() else {
        return;
    };
    assert_failed_mail_is_only_reported(
        &starttls_table(server.port(), ""),
        server.port(),
        "invalid peer certificate: UnknownIssuer",
    );
    assert!(server.messages().is_empty());
}

#[test]
fn a_run_requiring_starttls_from_a_plain_server_commits_normally() {
    let Some(server) = Smtp::start() else {
        return;
    };
    assert_failed_mail_is_only_reported(
        &starttls_table(server.port(), ""),
        server.port(),
        "STARTTLS is not supported on this server",
    );
    assert!(server.messages().is_empty());
}
