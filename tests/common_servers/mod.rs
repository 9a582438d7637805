//! Real servers on 127.0.0.1 for the storage tests: moto (S3) and pyftpdlib (FTP), run with the
//! Python that `scripts/test.sh` prepares and exports as `SEGMILL_TEST_PYTHON`.
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
