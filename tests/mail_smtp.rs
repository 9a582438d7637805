//! Receipt e-mails against a real SMTP server: aiosmtpd on 127.0.0.1, started by the test from
//! `$SEGMILL_TEST_PYTHON` (skipped when unset). The server writes each message it accepts as a
//! JSON file, so the test asserts the envelope, the subject and the decoded body. The refused
//! connection test needs no server and always runs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use segmill::report::mail::{Delivery, MailError, MailOutcome, MailSettings, send_receipts};
use segmill::report::receipt::{Counters, FileReceipt, FileStatus, JobReceipt};

/// aiosmtpd handler: writes each accepted message as `NNN.json` (written to a temp name, then
/// renamed, so the test never reads half a file); refuses recipients at `refuse.example.com`
/// with a permanent 550.
const SERVER: &str = r#"
import asyncio, email, email.policy, json, os, sys, time
from aiosmtpd.controller import Controller

out_dir, port = sys.argv[1], int(sys.argv[2])

class Handler:
    count = 0
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@refuse.example.com"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"
    async def handle_DATA(self, server, session, envelope):
        Handler.count += 1
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "content_type": msg.get_content_type(),
            "body": msg.get_content(),
        }
        tmp = os.path.join(out_dir, "%03d.tmp" % Handler.count)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out_dir, "%03d.json" % Handler.count))
        return "250 Message accepted"

controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// The server process; killed (and reaped) on drop, so a failing test leaves nothing behind.
struct Server {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start_server() -> Option<Server> {
    let Ok(python) = std::env::var("SEGMILL_TEST_PYTHON") else {
        println!("skipped: SEGMILL_TEST_PYTHON is not set (a Python with aiosmtpd)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mail");
    std::fs::create_dir(&out).unwrap();
    let script = dir.path().join("smtp_server.py");
    std::fs::write(&script, SERVER).unwrap();
    let port = free_port();
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(&out)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {python}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server {
        child,
        port,
        out,
        _dir: dir,
    };
    assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
    Some(server)
}

/// The messages the server wrote, in arrival order.
fn received(dir: &Path) -> Vec<serde_json::Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

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
    let Some(server) = start_server() else {
        return;
    };
    let to = vec![
        "ops@example.com".to_owned(),
        "Partner Team <partner@example.org>".to_owned(),
    ];
    let r = receipt();
    let result = send_receipts(&settings(server.port), &to, &r);
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

    let mails = received(&server.out);
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
    let Some(server) = start_server() else {
        return;
    };
    let to = vec!["nobody@refuse.example.com".to_owned()];
    let err = send_receipts(&settings(server.port), &to, &receipt()).unwrap_err();
    assert_eq!(err.attempts(), 1, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "receipt mail for job 21 to 127.0.0.1:{} failed after 1 attempt(s): ",
            server.port
        )),
        "{text}"
    );
    assert!(text.contains("mailbox unavailable"), "{text}");
    assert!(received(&server.out).is_empty());
}

#[test]
fn refused_connection_fails_after_three_fast_attempts() {
    // A port nothing listens on: bound, then released.
    let port = free_port();
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
