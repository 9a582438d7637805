//! Real servers on 127.0.0.1 for the storage and mail tests: moto (S3), pyftpdlib (FTP) and
//! aiosmtpd (SMTP, plain or STARTTLS with a trustme test CA), run with the Python that
//! `scripts/test.sh` prepares and exports as `SEGMILL_TEST_PYTHON`.
//!
//! Each server is a child process on a free port, waited for until its port answers, and
//! killed by its PID when its guard is dropped (also when the test panics). Without
//! `SEGMILL_TEST_PYTHON` the constructors print why and return `None`, so plain `cargo test`
//! stays green.

#![allow(dead_code)] // Each test binary uses part of this module.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer on its port (moto imports a lot).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The test Python, or `None` after printing the skip notice.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("SEGMILL_TEST_PYTHON") {
        Some(python) if !python.is_empty() => Some(PathBuf::from(python)),
        _ => {
            println!("skipped: SEGMILL_TEST_PYTHON not set (run scripts/test.sh)");
            None
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A running server process, killed by PID on drop.
pub struct Server {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Where its stdout and stderr go, for failure messages.
    log: PathBuf,
    /// Scratch folder (logs, FTP home); removed after the process is gone.
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Starts `python args...` with `envs` and waits until `port` accepts connections.
    fn start(python: &Path, args: &[&str], envs: &[(&str, &str)], port: u16) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, python, args, envs, port)
    }

    fn start_in(
        dir: tempfile::TempDir,
        python: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        port: u16,
    ) -> Server {
        let log = dir.path().join("server.log");
        let out = File::create(&log).expect("create server log");
        let err = out.try_clone().expect("clone server log");
        let child = Command::new(python)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let mut server = Server {
            child,
            port,
            log,
            dir,
        };
        server.wait_for_port();
        server
    }

    fn wait_for_port(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "server did not listen on port {} within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // `Child::kill` signals exactly this child's PID; `wait` reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto in server mode with one bucket and one user allowed everything; with authentication
/// enforced or not.
pub struct Moto {
    /// The server process.
    pub server: Server,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created for the test.
    pub bucket: String,
    /// A valid access key ID.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
}

/// Creates the user, its policy, its key and the bucket; prints `KEY_ID SECRET`. With
/// authentication enforced these are the three unauthenticated actions moto allows
/// (INITIAL_NO_AUTH_ACTION_COUNT); from then on every request must be signed by a known key.
const MOTO_SETUP: &str = r#"
import sys, boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
def client(service, key="setup", secret="setup"):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)
iam = client("iam")
iam.create_user(UserName="segmill")
iam.put_user_policy(UserName="segmill", PolicyName="all", PolicyDocument=
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
key = iam.create_access_key(UserName="segmill")["AccessKey"]
client("s3", key["AccessKeyId"], key["SecretAccessKey"]).create_bucket(Bucket=bucket)
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

impl Moto {
    /// Starts moto accepting any credentials, or returns `None` (after the skip notice)
    /// without a Python.
    pub fn start() -> Option<Moto> {
        Self::start_with(&[])
    }

    /// Starts moto with IAM authentication enforced: only the returned key signs valid
    /// requests. Beware: moto 5.1 then rejects the signature of any key containing `=` or `:`
    /// (boto3's too), so `date=` folders can only be tested with [`Moto::start`].
    pub fn start_with_auth() -> Option<Moto> {
        Self::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")])
    }

    fn start_with(envs: &[(&str, &str)]) -> Option<Moto> {
        let python = python()?;
        let port = free_port();
        let port_text = port.to_string();
        let server = Server::start(
            &python,
            &["-m", "moto.server", "-H", "127.0.0.1", "-p", &port_text],
            envs,
            port,
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        let bucket = "segmill-drop".to_owned();
        let setup = Command::new(&python)
            .args(["-c", MOTO_SETUP, &endpoint, &bucket])
            .output()
            .expect("run the moto setup script");
        assert!(
            setup.status.success(),
            "moto setup failed: {}\n{}",
            String::from_utf8_lossy(&setup.stderr),
            server.log()
        );
        let stdout = String::from_utf8(setup.stdout).expect("setup output is UTF-8");
        let (access_key_id, secret_access_key) = stdout
            .trim()
            .split_once(' ')
            .expect("setup prints KEY_ID SECRET");
        Some(Moto {
            endpoint,
            bucket,
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            server,
        })
    }
}

/// pyftpdlib with one user whose home is a temp folder, passive ports in a 127.0.0.1 range.
pub struct Ftp {
    /// The server process; `server.dir` holds the user's home as `home/`.
    pub server: Server,
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
}

/// `port home user password passive_low passive_high`.
const FTP_SERVER: &str = r#"
import sys, logging
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
port, home, user, password, low, high = sys.argv[1:]
logging.basicConfig(level=logging.WARNING)
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, home, perm="elradfmwMT")
class Handler(FTPHandler):
    pass
Handler.authorizer = authorizer
Handler.passive_ports = range(int(low), int(high))
Handler.permit_foreign_addresses = False
Handler.auth_failed_timeout = 0.1
FTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
"#;

impl Ftp {
    /// Starts the FTP server, or returns `None` (after the skip notice) without a Python.
    pub fn start() -> Option<Ftp> {
        let python = python()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("create FTP home");
        let port = free_port();
        // pyftpdlib falls back to any free port when the whole range is taken.
        let low = free_port().clamp(1024, 65_000);
        let (user, password) = ("segmill".to_owned(), "ftp-Secr3t-pw".to_owned());
        let args = [
            "-c".to_owned(),
            FTP_SERVER.to_owned(),
            port.to_string(),
            home.display().to_string(),
            user.clone(),
            password.clone(),
            low.to_string(),
            (low + 20).to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_in(dir, &python, &args, &[], port);
        Some(Ftp {
            server,
            user,
            password,
        })
    }

    /// The user's home folder on disk.
    pub fn home(&self) -> PathBuf {
        self.server.dir.path().join("home")
    }

    /// `ftp://user:password@127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "ftp://{}:{}@127.0.0.1:{}/{path}",
            self.user, self.password, self.server.port
        )
    }
}

/// aiosmtpd on 127.0.0.1, plain or with STARTTLS required, writing each accepted message to
/// `<dir>/mail/NNN.json` (to a temp name first, then renamed, so a reader never sees half a
/// file).
pub struct Smtp {
    /// The server process; `server.dir` holds `mail/` and, with STARTTLS, `ca.pem`.
    pub server: Server,
    /// The test CA that signed the server's certificate (STARTTLS servers only).
    pub ca_file: Option<PathBuf>,
}

/// `port out_dir tls_dir|-`. With a TLS folder, trustme makes a CA (written as `ca.pem`) and a
/// certificate for localhost and 127.0.0.1, and the server requires STARTTLS before MAIL.
/// Each message records whether its session ran over TLS (`session.ssl`, set by aiosmtpd only
/// after a completed STARTTLS) and the protocol version. Recipients at `refuse.example.com`
/// get a permanent 550.
const SMTP_SERVER: &str = r#"
import email, email.policy, json, os, ssl, sys, threading
from aiosmtpd.controller import Controller
port, out_dir, tls_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
kwargs = {}
if tls_dir != "-":
    import trustme
    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(tls_dir, "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    kwargs = {"tls_context": context, "require_starttls": True}
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
        ssl_object = (session.ssl or {}).get("ssl_object")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "content_type": msg.get_content_type(),
            "body": msg.get_content(),
            "tls": session.ssl is not None,
            "tls_version": ssl_object.version() if ssl_object is not None else None,
        }
        tmp = os.path.join(out_dir, "%03d.tmp" % Handler.count)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out_dir, "%03d.json" % Handler.count))
        return "250 Message accepted"
controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
threading.Event().wait()
"#;

impl Smtp {
    /// A plain SMTP server (no STARTTLS offered), or `None` without a Python.
    pub fn start() -> Option<Smtp> {
        Self::start_with(false)
    }

    /// A server that requires STARTTLS with a certificate from a fresh test CA, or `None`
    /// without a Python.
    pub fn start_starttls() -> Option<Smtp> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<Smtp> {
        let python = python()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("mail");
        std::fs::create_dir(&out).expect("create the mail folder");
        let tls_dir = if tls {
            dir.path().display().to_string()
        } else {
            "-".to_owned()
        };
        let port = free_port();
        let args = [
            "-c".to_owned(),
            SMTP_SERVER.to_owned(),
            port.to_string(),
            out.display().to_string(),
            tls_dir,
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_in(dir, &python, &args, &[], port);
        let ca_file = tls.then(|| server.dir.path().join("ca.pem"));
        if let Some(ca) = &ca_file {
            assert!(ca.is_file(), "no {}:\n{}", ca.display(), server.log());
        }
        Some(Smtp { server, ca_file })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The messages accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let dir = self.server.dir.path().join("mail");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
            })
            .collect()
    }
}

/// An HTTP proxy in front of moto that records every request, for what moto cannot report:
/// the `Range` and `If-Match` headers of each GET and how many requests were in flight at once.
/// It can also replace an object between the ranged parts of one fetch.
pub struct S3Proxy {
    /// The proxy process; `server.dir` holds `requests.jsonl` and the replacement trigger.
    pub server: Server,
    /// `http://127.0.0.1:PORT`: use it as the S3 endpoint instead of moto's.
    pub endpoint: String,
}

/// One request as the proxy saw it. `start` is when its headers were read and `end` when the
/// upstream answer was in hand, just before the proxy began to send it on: a client cannot
/// issue the next request of a slot before `end`, so overlaps never overstate concurrency.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxiedRequest {
    /// `GET`, `HEAD`, `PUT`...
    pub method: String,
    /// The decoded path, without the query: `/<bucket>/<key>`.
    pub path: String,
    /// The `Range` header, e.g. `bytes=0-1048575`.
    pub range: Option<String>,
    /// The `If-Match` header.
    pub if_match: Option<String>,
    /// The status moto answered.
    pub status: u16,
    /// Seconds (monotonic clock of the proxy).
    pub start: f64,
    /// Seconds (monotonic clock of the proxy).
    pub end: f64,
}

/// `port upstream_port log_path trigger_path delay_ms`. Ranged GETs wait `delay_ms` before
/// being forwarded, so requests a client sends together visibly overlap. When `trigger_path`
/// exists (`{"path": "/bucket/key", "body_file": "..."}`), the first ranged GET of that object
/// starting at byte 0 is answered from the object as it was, then the object is replaced with
/// the body file's bytes (a signed PUT through boto3, as moto requires), and every other ranged
/// GET of it waits for the replacement first.
const S3_PROXY: &str = r#"
import boto3, http.client, http.server, json, os, sys, threading, time, urllib.parse
port, upstream, log_path, trigger_path, delay = sys.argv[1:]
upstream, delay = int(upstream), int(delay) / 1000.0
log_lock, trigger_lock = threading.Lock(), threading.Lock()
replaced = threading.Event()
state = {"fired": False}
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
def trigger():
    try:
        with open(trigger_path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
def forward(method, path, headers, body):
    conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.reason, resp.getheaders(), data
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def handle_any(self):
        start = time.monotonic()
        if self.headers.get("Transfer-Encoding"):
            self.send_error(501, "chunked request bodies are not supported by the test proxy")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        rng = self.headers.get("Range")
        replace_after = False
        if self.command == "GET" and rng:
            time.sleep(delay)
            t = trigger()
            if t is not None and t["path"] == path:
                with trigger_lock:
                    first = rng.startswith("bytes=0-") and not state["fired"]
                    if first:
                        state["fired"] = True
                if first:
                    replace_after = t
                else:
                    replaced.wait(30)
        status, reason, resp_headers, data = forward(self.command, self.path, headers, body)
        if replace_after:
            with open(replace_after["body_file"], "rb") as f:
                new = f.read()
            bucket, key = path.lstrip("/").split("/", 1)
            try:
                s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:%d" % upstream,
                                  region_name="us-east-1", aws_access_key_id="proxy",
                                  aws_secret_access_key="proxy")
                s3.put_object(Bucket=bucket, Key=key, Body=new)
                print("replaced", path, flush=True)
            except Exception as e:
                print("replacing", path, "failed:", e, flush=True)
            replaced.set()
        record = {"method": self.command, "path": path, "range": rng,
                  "if_match": self.headers.get("If-Match"), "status": status,
                  "start": start, "end": time.monotonic()}
        with log_lock:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.send_response(status, reason)
        for k, v in resp_headers:
            if k.lower() in HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
server.daemon_threads = True
server.serve_forever()
"#;

impl S3Proxy {
    /// Starts a recording proxy in front of `moto`; ranged GETs are held `delay_ms` each.
    /// Returns `None` (after the skip notice) without a Python.
    pub fn start(moto: &Moto, delay_ms: u64) -> Option<S3Proxy> {
        let python = python()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let args = [
            "-c".to_owned(),
            S3_PROXY.to_owned(),
            port.to_string(),
            moto.server.port.to_string(),
            dir.path().join("requests.jsonl").display().to_string(),
            dir.path().join("replace.json").display().to_string(),
            delay_ms.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_in(dir, &python, &args, &[], port);
        Some(S3Proxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            server,
        })
    }

    /// Arms the replacement: once the ranged GET at byte 0 of `/<bucket>/<key>` is answered,
    /// the object becomes `body`.
    pub fn replace_after_first_part(&self, bucket: &str, key: &str, body: &[u8]) {
        let dir = self.server.dir.path();
        let body_file = dir.join("replacement.bin");
        std::fs::write(&body_file, body).expect("write the replacement body");
        let trigger = serde_json::json!({
            "path": format!("/{bucket}/{key}"),
            "body_file": body_file.display().to_string(),
        });
        // Written whole under a temporary name, so the proxy never reads half of it.
        let tmp = dir.join("replace.json.tmp");
        std::fs::write(&tmp, trigger.to_string()).expect("write the trigger");
        std::fs::rename(&tmp, dir.join("replace.json")).expect("arm the trigger");
    }

    /// Every request answered so far, in the order the proxy finished them.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        let path = self.server.dir.path().join("requests.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("proxy log line {line:?}: {e}"));
                let text = |k: &str| v[k].as_str().map(str::to_owned);
                ProxiedRequest {
                    method: text("method").expect("method"),
                    path: text("path").expect("path"),
                    range: text("range"),
                    if_match: text("if_match"),
                    status: v["status"].as_u64().expect("status") as u16,
                    start: v["start"].as_f64().expect("start"),
                    end: v["end"].as_f64().expect("end"),
                }
            })
            .collect()
    }
}

/// The largest number of `requests` whose [start, end] intervals overlap at one instant.
pub fn max_in_flight(requests: &[&ProxiedRequest]) -> usize {
    // Ends sort before starts at the same instant: touching intervals do not overlap.
    let mut events: Vec<(f64, i32)> = requests
        .iter()
        .flat_map(|r| [(r.start, 1), (r.end, -1)])
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        max = max.max(now);
    }
    max as usize
}
