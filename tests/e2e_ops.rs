//! End-to-end tests of the operations features through the real binary (issue 5): S3 and FTP
//! inbound and destinations against moto and pyftpdlib, `.processed` markers, PGP inbound files,
//! e-mailed receipts against aiosmtpd, metrics, and secrets kept out of every output.
//!
//! The remote tests run the same drop twice, once from a local folder and once from the server,
//! and require identical receipts, state and destination files. Server tests print a skip line
//! and pass when `SEGMILL_TEST_PYTHON` is unset.

mod common;
mod common_servers;

use common::{assert_same_tree, read_json, read_text, run_id, snapshot};
use segmill::config::Location;
use segmill::storage::{StorageSettings, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const AS_OF: &str = "2026-11-21T23:59:59Z";
const S3_SECRET: &str = "s3-Secr3t-Value-xyz";

/// A 38-digit AAM UUID.
fn uuid(n: u64) -> String {
    format!("{n:038}")
}

/// The drop every remote test uses: an ID-sync file and a trait file in a `date=` folder, and a
/// trait file in a partner folder. Every line matches, so the run exits 0.
fn drop_files() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "date=2026-11-21/adobe_id_0_21_1795219200.sync".into(),
            format!("{}\tcust1\n{}\tcust2\n", uuid(1), uuid(2)).into_bytes(),
        ),
        (
            "date=2026-11-21/ftp_dpm_21_1795222800.sync".into(),
            b"cust1\td_sid=101\ncust2\td_sid=101,d_sid=102\n".to_vec(),
        ),
        (
            "partnerA/date=2026-11-21/ftp_dpm_21_1795226400.sync".into(),
            b"cust1\td_sid=102\n".to_vec(),
        ),
    ]
}

/// `[[data_source]]` 21 with traits 101 and 102, segment 3001 (`101T`) and destination 9 at
/// `dest`.
fn catalog(dest: &str, emails: &str) -> String {
    format!(
        "[[data_source]]\nid = 21\nname = \"CRM\"\nreceipt_emails = [{emails}]\n\n\
         [[trait]]\nid = 101\ndata_source = 21\n\n[[trait]]\nid = 102\ndata_source = 21\n\n\
         [[segment]]\nid = 3001\nrule = \"101T\"\n\n\
         [[destination]]\nid = 9\nsync_type = \"s3\"\nlocation = \"{dest}\"\nsegments = [3001]\n\
         gzip = false\n"
    )
}

/// One test's world: `<tmp>/segmill.toml`, `<tmp>/state`, `<tmp>/inbound` (when local).
struct World {
    dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().expect("temp dir"),
            envs: Vec::new(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    /// Writes the config: `[paths]` with `inbound`, `[run]` with 4 partitions, then `rest`.
    fn config(&self, inbound: &str, run_extra: &str, rest: &str) {
        let text = format!(
            "[paths]\ninbound = \"{inbound}\"\nstate = \"state\"\noutbound = \"out\"\n\n\
             [run]\npartitions = 4\n{run_extra}\n{rest}"
        );
        std::fs::write(self.root().join("segmill.toml"), text).expect("write config");
    }

    /// Writes the drop under the local `inbound/` folder.
    fn put_local(&self, files: &[(String, Vec<u8>)]) {
        for (rel, bytes) in files {
            common::write_file(&self.root().join("inbound").join(rel), bytes);
        }
    }

    /// Runs `segmill --config <cfg> ARGS...` with the world's environment variables.
    fn segmill(&self, args: &[&str]) -> common::Out {
        let config = self.root().join("segmill.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_segmill"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_ENDPOINT_URL")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("spawn segmill");
        common::Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, as_of: &str, expected: i32) -> common::Out {
        let out = self.segmill(&["run", "--as-of", as_of]);
        assert_eq!(out.code, expected, "{out:#?}");
        out
    }

    /// State files except the lock and the run reports (wall-clock durations).
    fn state_snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        snapshot(&self.state(), |rel| {
            rel == "lock" || rel.starts_with("runs/")
        })
    }

    fn run_report(&self, run: &str) -> serde_json::Value {
        read_json(&self.state().join("runs").join(format!("{run}.json")))
    }

    /// Every file the run wrote for people to read: stdout, stderr, receipts, run reports.
    fn all_output(&self, outs: &[&common::Out]) -> String {
        let mut text = String::new();
        for out in outs {
            text.push_str(&out.stdout);
            text.push_str(&out.stderr);
        }
        for (rel, bytes) in snapshot(&self.state(), |rel| {
            !(rel.starts_with("runs/") || rel.starts_with("receipts/"))
        }) {
            text.push_str(&rel);
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        text
    }
}

/// The drop run from a local folder (markers on): the reference the remote runs must equal.
fn local_reference() -> World {
    let local = World::new();
    local.config("inbound", "markers = true", &catalog("out/9", ""));
    local.put_local(&drop_files());
    local.run(AS_OF, 0);
    local
}

/// Asserts `remote` produced exactly what `local` did: receipts and state byte for byte, the
/// same files under destination 9, and no temporary folder left.
fn assert_same_as_local(
    local: &World,
    remote: &World,
    remote_out: &BTreeMap<String, Vec<u8>>,
    remote_markers: &[String],
) {
    assert_same_tree("state", &local.state_snapshot(), &remote.state_snapshot());
    let local_out = snapshot(&local.root().join("out/9"), |_| false);
    assert_eq!(
        local_out.len(),
        2,
        "one data file and its .info: {local_out:?}"
    );
    assert_same_tree("destination 9", &local_out, remote_out);
    let mut local_markers: Vec<String> = snapshot(&local.root().join("inbound"), |rel| {
        !rel.ends_with(".processed")
    })
    .into_keys()
    .collect();
    local_markers.sort();
    assert_eq!(
        local_markers,
        [
            "date=2026-11-21/adobe_id_0_21_1795219200.sync.processed",
            "date=2026-11-21/ftp_dpm_21_1795222800.sync.processed",
            "partnerA/date=2026-11-21/ftp_dpm_21_1795226400.sync.processed",
        ]
    );
    assert_eq!(remote_markers, local_markers.as_slice());
    assert!(!remote.state().join("tmp").join(run_id(1, AS_OF)).exists());
    let r = read_json(
        &local
            .state()
            .join("receipts")
            .join(run_id(1, AS_OF))
            .join("21.json"),
    );
    let c = common::counters(&r);
    assert_eq!(
        (
            c["records_received"],
            c["records_processed"],
            c["total_realized_traits"]
        ),
        (3, 3, 4)
    );
}

fn s3_store(moto: &common_servers::Moto, prefix: &str) -> Store {
    let settings = StorageSettings {
        access_key_id: Some(moto.access_key_id.clone()),
        secret_access_key: Some(moto.secret_access_key.clone()),
        endpoint: Some(moto.endpoint.clone()),
        allow_http: Some(true),
        ..StorageSettings::default()
    };
    let location = Location::S3 {
        bucket: moto.bucket.clone(),
        prefix: prefix.into(),
    };
    Store::open(&location, &settings).expect("open S3")
}

/// Every object under `store` with its bytes, except `.processed` markers.
fn fetch_all(store: &Store) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = BTreeMap::new();
    for (i, (rel, _)) in store.list().expect("list").into_iter().enumerate() {
        let dest = dir.path().join(i.to_string());
        store.fetch(&rel, &dest).expect("fetch");
        out.insert(rel, std::fs::read(&dest).unwrap());
    }
    out
}

fn markers(store: &Store) -> Vec<String> {
    let mut m: Vec<String> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|(rel, _)| rel)
        .filter(|rel| rel.ends_with(".processed"))
        .collect();
    m.sort();
    m
}

#[test]
fn s3_inbound_and_destination_equal_a_local_run() {
    let Some(moto) = common_servers::Moto::start() else {
        return;
    };
    let inbound = s3_store(&moto, "in");
    for (rel, bytes) in drop_files() {
        inbound.put_bytes(&rel, &bytes).expect("upload");
    }
    let local = local_reference();

    let mut remote = World::new();
    remote
        .envs
        .push(("SEGMILL_TEST_S3_SECRET".into(), S3_SECRET.into()));
    remote.config(
        &format!("s3://{}/in", moto.bucket),
        "markers = true",
        &format!(
            "[s3]\nregion = \"us-east-1\"\nendpoint = \"{}\"\naccess_key_id = \"{}\"\n\
             secret_access_key_env = \"SEGMILL_TEST_S3_SECRET\"\nallow_http = true\n\n{}",
            moto.endpoint,
            moto.access_key_id,
            catalog(&format!("s3://{}/out/9", moto.bucket), "")
        ),
    );
    let first = remote.run(AS_OF, 0);
    let out = fetch_all(&s3_store(&moto, "out/9"));
    assert_same_as_local(&local, &remote, &out, &markers(&inbound));

    // A second night: every file is a duplicate (not fetched), nothing new is exported.
    let second_as_of = "2026-11-22T23:59:59Z";
    let second = remote.run(second_as_of, 0);
    let report = remote.run_report(&run_id(2, second_as_of));
    let outcomes: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["duplicate", "duplicate", "duplicate"],
        "{report:#}"
    );
    let all = remote.all_output(&[&first, &second]);
    assert!(!all.contains(S3_SECRET), "the S3 secret leaked");
}

/// An inbound object replaced between two ranged parts of its fetch (default 8 MiB parts) fails
/// the run with exit 2 and a message naming the object; nothing is committed, no receipt is
/// written and the scratch folder is gone. The next run reads the new object.
#[test]
fn an_s3_object_replaced_while_fetched_fails_the_run_and_commits_nothing() {
    let Some(moto) = common_servers::Moto::start() else {
        return;
    };
    let Some(proxy) = common_servers::S3Proxy::start(&moto, 0) else {
        return;
    };
    let inbound = s3_store(&moto, "in");
    let trait_rel = "date=2026-11-21/ftp_dpm_21_1795222800.sync";
    inbound
        .put_bytes(
            "date=2026-11-21/adobe_id_0_21_1795219200.sync",
            format!("{}\tcust1\n", uuid(1)).as_bytes(),
        )
        .expect("upload");
    // 9 MiB: two ranged parts.
    inbound
        .put_bytes(trait_rel, &b"cust1\td_sid=101\n".repeat(9 << 16))
        .expect("upload");
    proxy.replace_after_first_part(
        &moto.bucket,
        &format!("in/{trait_rel}"),
        b"cust1\td_sid=102\n",
    );

    let mut w = World::new();
    w.envs
        .push(("SEGMILL_TEST_S3_SECRET".into(), S3_SECRET.into()));
    w.config(
        &format!("s3://{}/in", moto.bucket),
        "",
        &format!(
            "[s3]\nendpoint = \"{}\"\naccess_key_id = \"{}\"\n\
             secret_access_key_env = \"SEGMILL_TEST_S3_SECRET\"\nallow_http = true\n\n{}",
            proxy.endpoint,
            moto.access_key_id,
            catalog("out/9", "")
        ),
    );
    let out = w.run(AS_OF, 2);
    assert_eq!(
        out.stderr,
        format!(
            "segmill: error: cannot fetch inbound file s3://segmill-drop/in/{trait_rel}: \
             cannot fetch s3://segmill-drop/in/{trait_rel}: it changed while being read (its \
             ETag no longer matches); run again\n"
        )
    );
    let statuses: Vec<u16> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == format!("/segmill-drop/in/{trait_rel}"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(
        statuses.contains(&206) && statuses.contains(&412),
        "{statuses:?}"
    );
    assert!(!w.state().join("CURRENT").exists());
    assert!(!w.state().join("receipts").exists());
    assert!(!w.state().join("tmp").join(run_id(1, AS_OF)).exists());
    assert!(!w.root().join("out").exists());

    // Run again: the new object is read.
    let again = w.run(AS_OF, 0);
    assert!(!w.all_output(&[&out, &again]).contains(S3_SECRET));
    let r = read_json(
        &w.state()
            .join("receipts")
            .join(run_id(1, AS_OF))
            .join("21.json"),
    );
    assert_eq!(common::counters(&r)["records_received"], 1);
    assert_eq!(common::counters(&r)["total_realized_traits"], 1);
}

#[test]
fn ftp_inbound_and_destination_equal_a_local_run() {
    let Some(ftp) = common_servers::Ftp::start() else {
        return;
    };
    for (rel, bytes) in drop_files() {
        common::write_file(&ftp.home().join("in").join(rel), &bytes);
    }
    let local = local_reference();

    let mut remote = World::new();
    remote
        .envs
        .push(("SEGMILL_TEST_FTP_PASSWORD".into(), ftp.password.clone()));
    let url = |path: &str| format!("ftp://{}@127.0.0.1:{}/{path}", ftp.user, ftp.server.port);
    remote.config(
        &url("in"),
        "markers = true",
        &format!(
            "[ftp]\npassword_env = \"SEGMILL_TEST_FTP_PASSWORD\"\n\n{}",
            catalog(&url("out/9"), "")
        ),
    );
    let first = remote.run(AS_OF, 0);
    let out = snapshot(&ftp.home().join("out/9"), |_| false);
    let inbound_markers: Vec<String> = {
        let mut m: Vec<String> =
            snapshot(&ftp.home().join("in"), |rel| !rel.ends_with(".processed"))
                .into_keys()
                .collect();
        m.sort();
        m
    };
    assert_same_as_local(&local, &remote, &out, &inbound_markers);
    let all = remote.all_output(&[&first]);
    assert!(!all.contains(&ftp.password), "the FTP password leaked");
}

#[test]
fn markers_are_off_by_default_and_inputs_are_untouched() {
    let w = World::new();
    w.config("inbound", "", &catalog("out/9", ""));
    w.put_local(&drop_files());
    let before = snapshot(&w.root().join("inbound"), |_| false);
    w.run(AS_OF, 0);
    assert_same_tree(
        "inbound",
        &before,
        &snapshot(&w.root().join("inbound"), |_| false),
    );
    let with_markers = local_reference();
    let inbound = snapshot(&with_markers.root().join("inbound"), |_| false);
    assert_eq!(
        read_text(
            &with_markers
                .root()
                .join("inbound/date=2026-11-21/ftp_dpm_21_1795222800.sync.processed")
        ),
        format!("processed by segmill run {}\n", run_id(1, AS_OF))
    );
    for (rel, bytes) in &before {
        assert_eq!(&inbound[rel], bytes, "{rel} was modified");
    }
}

// ---------------------------------------------------------------------------------------------
// PGP

mod pgp_keys {
    use pgp::composed::{
        EncryptionCaps, KeyType, MessageBuilder, SecretKeyParamsBuilder, SignedPublicKey,
        SignedSecretKey, SubkeyParamsBuilder,
    };
    use pgp::crypto::ecc_curve::ECCCurve;
    use pgp::crypto::sym::SymmetricKeyAlgorithm;
    use pgp::ser::Serialize as _;
    use rand::thread_rng;

    /// An Ed25519 primary key with a Curve25519 encryption subkey, protected by `passphrase`.
    pub fn keygen(passphrase: &str) -> SignedSecretKey {
        let mut enc = SubkeyParamsBuilder::default();
        enc.key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
            .can_sign(false)
            .can_encrypt(EncryptionCaps::All)
            .can_authenticate(false)
            .passphrase(Some(passphrase.to_owned()));
        let mut params = SecretKeyParamsBuilder::default();
        params
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(false)
            .can_encrypt(EncryptionCaps::None)
            .primary_user_id("segmill test <test@example.com>".into())
            .passphrase(Some(passphrase.to_owned()))
            .subkeys(vec![enc.build().unwrap()]);
        params.build().unwrap().generate(thread_rng()).unwrap()
    }

    /// The secret key, binary.
    pub fn key_bytes(key: &SignedSecretKey) -> Vec<u8> {
        key.to_bytes().unwrap()
    }

    /// `payload` encrypted to `key` with AES-256.
    pub fn encrypt(key: &SignedSecretKey, payload: &[u8]) -> Vec<u8> {
        let public = SignedPublicKey::from(key.clone());
        let mut b = MessageBuilder::from_bytes("", payload.to_vec())
            .seipd_v1(thread_rng(), SymmetricKeyAlgorithm::AES256);
        b.encrypt_to_key(thread_rng(), &public.public_subkeys[0])
            .unwrap();
        b.to_vec(thread_rng()).unwrap()
    }
}

#[test]
fn pgp_files_are_decrypted_with_the_configured_key() {
    const PASS: &str = "pgp-Pass-phrase-123";
    let key = pgp_keys::keygen(PASS);
    let files = drop_files();
    // The same drop with both trait files encrypted.
    let encrypted: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(rel, bytes)| {
            if rel.contains("ftp_dpm_") {
                (format!("{rel}.pgp"), pgp_keys::encrypt(&key, bytes))
            } else {
                (rel.clone(), bytes.clone())
            }
        })
        .collect();
    let plain = World::new();
    plain.config("inbound", "", &catalog("out/9", ""));
    plain.put_local(&files);
    plain.run(AS_OF, 0);

    let mut w = World::new();
    w.envs.push(("SEGMILL_TEST_PGP_PASS".into(), PASS.into()));
    common::write_file(
        &w.root().join("keys/segmill.key"),
        &pgp_keys::key_bytes(&key),
    );
    w.config(
        "inbound",
        "",
        &format!(
            "[pgp]\nprivate_key = \"keys/segmill.key\"\npassphrase_env = \"SEGMILL_TEST_PGP_PASS\"\n\n{}",
            catalog("out/9", "")
        ),
    );
    w.put_local(&encrypted);
    let out = w.run(AS_OF, 0);
    let run = run_id(1, AS_OF);
    let receipt =
        |world: &World| read_json(&world.state().join("receipts").join(&run).join("21.json"));
    let (p, e) = (receipt(&plain), receipt(&w));
    assert_eq!(common::counters(&p), common::counters(&e));
    assert_eq!(
        common::receipt_files(&e),
        [
            (
                "date=2026-11-21/ftp_dpm_21_1795222800.sync.pgp".to_string(),
                "processed".to_string()
            ),
            (
                "partnerA/date=2026-11-21/ftp_dpm_21_1795226400.sync.pgp".to_string(),
                "processed".to_string()
            ),
        ]
    );
    assert_same_tree(
        "destination 9",
        &snapshot(&plain.root().join("out/9"), |_| false),
        &snapshot(&w.root().join("out/9"), |_| false),
    );
    assert!(!w.all_output(&[&out]).contains(PASS));
    assert!(!w.state().join("tmp").join(&run).exists());

    // Without a [pgp] table the encrypted files are rejected with a clear reason.
    let nokey = World::new();
    nokey.config("inbound", "", &catalog("out/9", ""));
    nokey.put_local(&encrypted);
    nokey.run(AS_OF, 1);
    let r = read_json(&nokey.state().join("receipts").join(&run).join("21.json"));
    let reasons: Vec<&str> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        reasons,
        [
            "PGP file but no [pgp] private_key configured",
            "PGP file but no [pgp] private_key configured"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// SMTP receipts and metrics

fn smtp_table(port: u16) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"segmill\"\n\
         password_env = \"SEGMILL_TEST_SMTP_PASSWORD\"\nfrom = \"segmill@example.com\"\n\n"
    )
}

#[test]
fn receipts_are_mailed_after_the_commit() {
    let Some(smtp) = common_servers::Smtp::start() else {
        return;
    };
    let mut w = World::new();
    w.envs
        .push(("SEGMILL_TEST_SMTP_PASSWORD".into(), "smtp-Secr3t".into()));
    // aiosmtpd offers no AUTH without TLS: log in only when offered is not lettre's way, so
    // this server runs without a user.
    let table = smtp_table(smtp.port()).replace("username = \"segmill\"\n", "");
    w.config(
        "inbound",
        "",
        &format!(
            "{table}{}",
            catalog("out/9", "\"ops@example.com\", \"crm@example.com\"")
        ),
    );
    w.put_local(&drop_files());
    let out = w.run(AS_OF, 0);
    let run = run_id(1, AS_OF);
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "one receipt, one message");
    let msg = &messages[0];
    assert_eq!(
        msg["rcpt_tos"],
        serde_json::json!(["ops@example.com", "crm@example.com"])
    );
    let text = read_text(&w.state().join("receipts").join(&run).join("21.txt"));
    let subject = text.lines().next().unwrap().trim_start_matches("Subject: ");
    assert_eq!(msg["subject"], subject);
    // The body is the receipt file after its subject line (CRLF on the wire).
    let body = msg["body"].as_str().unwrap().replace("\r\n", "\n");
    let expected_body = text.split_once('\n').unwrap().1;
    assert_eq!(
        body.trim_end_matches('\n'),
        expected_body.trim_end_matches('\n')
    );
    assert_eq!(msg["tls"], false);
    let report = w.run_report(&run);
    assert_eq!(
        report["mail"],
        serde_json::json!([{
            "job": "21",
            "recipients": ["ops@example.com", "crm@example.com"],
            "delivered": true,
            "attempts": 1
        }])
    );
    assert!(!w.all_output(&[&out]).contains("smtp-Secr3t"));
}

#[test]
fn a_failed_mail_changes_neither_exit_code_nor_data() {
    let plain = World::new();
    plain.config("inbound", "", &catalog("out/9", "\"ops@example.com\""));
    plain.put_local(&drop_files());
    plain.run(AS_OF, 0);

    let mut w = World::new();
    w.envs
        .push(("SEGMILL_TEST_SMTP_PASSWORD".into(), "smtp-Secr3t".into()));
    w.envs.push(("SEGMILL_SMTP_RETRY_MS".into(), "10".into()));
    // Nothing listens on this port.
    let port = common_servers::free_port();
    w.config(
        "inbound",
        "",
        &format!(
            "{}{}",
            smtp_table(port),
            catalog("out/9", "\"ops@example.com\"")
        ),
    );
    w.put_local(&drop_files());
    let out = w.run(AS_OF, 0);
    assert_same_tree("state", &plain.state_snapshot(), &w.state_snapshot());
    let report = w.run_report(&run_id(1, AS_OF));
    let mail = &report["mail"][0];
    assert_eq!(mail["job"], "21");
    assert_eq!(mail["delivered"], false);
    assert_eq!(mail["attempts"], 3);
    assert!(
        mail["last_error"].as_str().unwrap().starts_with(&format!(
            "receipt mail for job 21 to 127.0.0.1:{port} failed after 3 attempt(s): "
        )),
        "{mail:#}"
    );
    assert_eq!(report["exit_code"], 0);
    assert!(!w.all_output(&[&out]).contains("smtp-Secr3t"));
}

#[test]
fn metrics_file_is_written_after_the_commit() {
    let w = World::new();
    w.config(
        "inbound",
        "",
        &format!(
            "[metrics]\npath = \"metrics/segmill.prom\"\n\n{}",
            catalog("out/9", "")
        ),
    );
    std::fs::create_dir_all(w.root().join("metrics")).unwrap();
    w.put_local(&drop_files());
    w.run(AS_OF, 0);
    let text = read_text(&w.root().join("metrics/segmill.prom"));
    let report = w.run_report(&run_id(1, AS_OF));
    assert!(report.get("warnings").is_none(), "{report:#}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for expected in [
        "segmill_records_total{job=\"21\",category=\"stored\"} 3",
        "segmill_records_total{job=\"21\",category=\"no_matching_aam_id\"} 0",
        "segmill_rejected_files_total 0",
        "segmill_last_run_timestamp_seconds 1795305599",
        "segmill_last_run_exit_code 0",
    ] {
        assert!(lines.contains(&expected), "{expected} missing from\n{text}");
    }
    // Durations are wall-clock: their series are fixed, their values only well-formed.
    let durations: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| name.contains("_duration_seconds"))
        .map(|(name, value)| {
            let seconds: f64 = value.parse().unwrap_or_else(|e| panic!("{value}: {e}"));
            assert!(seconds >= 0.0, "{name} {value}");
            name
        })
        .collect();
    assert_eq!(
        durations,
        [
            "segmill_job_duration_seconds{job=\"21\"}",
            "segmill_run_duration_seconds",
            "segmill_stage_duration_seconds{stage=\"discover\"}",
            "segmill_stage_duration_seconds{stage=\"export\"}",
            "segmill_stage_duration_seconds{stage=\"idsync\"}",
            "segmill_stage_duration_seconds{stage=\"index\"}",
            "segmill_stage_duration_seconds{stage=\"merge\"}",
            "segmill_stage_duration_seconds{stage=\"parse\"}",
            "segmill_stage_duration_seconds{stage=\"receipts\"}",
            "segmill_stage_duration_seconds{stage=\"write\"}",
        ]
    );

    // A metrics folder that does not exist is a warning, not a failure.
    let w2 = World::new();
    w2.config(
        "inbound",
        "",
        &format!(
            "[metrics]\npath = \"missing/segmill.prom\"\n\n{}",
            catalog("out/9", "")
        ),
    );
    w2.put_local(&drop_files());
    w2.run(AS_OF, 0);
    let report = w2.run_report(&run_id(1, AS_OF));
    let warning = report["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("cannot write metrics file ") && warning.contains("missing"),
        "{warning}"
    );
}

// ---------------------------------------------------------------------------------------------
// Backfill

const DAYS: [&str; 3] = ["2026-11-01", "2026-11-02", "2026-11-03"];

/// Three days of drops: ID sync and traits on day 1, more traits on day 2 (one line for an ID
/// synced only on day 2), an overwrite on day 3.
fn backfill_days() -> Vec<Vec<(String, Vec<u8>)>> {
    vec![
        vec![
            (
                "date=2026-11-01/adobe_id_0_21_1761955200.sync".into(),
                format!("{}\tcust1\n{}\tcust2\n", uuid(1), uuid(2)).into_bytes(),
            ),
            (
                "date=2026-11-01/ftp_dpm_21_1761958800.sync".into(),
                b"cust1\td_sid=101\ncust2\td_sid=102\n".to_vec(),
            ),
        ],
        vec![
            (
                "partnerA/date=2026-11-02/adobe_id_0_21_1762041600.sync".into(),
                format!("{}\tcust3\n", uuid(3)).into_bytes(),
            ),
            (
                "partnerA/date=2026-11-02/ftp_dpm_21_1762045200.sync".into(),
                b"cust3\td_sid=101\ncust2\td_sid=101\n".to_vec(),
            ),
        ],
        vec![(
            "date=2026-11-03/ftp_dpm_21_1762131600.overwrite".into(),
            b"cust1\td_sid=102\n".to_vec(),
        )],
    ]
}

/// The reference: `segmill run --as-of <day end>` each day with only that day's folder present.
fn nightly_reference() -> World {
    let w = World::new();
    w.config("inbound", "", &catalog("out/9", ""));
    for (i, files) in backfill_days().iter().enumerate() {
        let _ = std::fs::remove_dir_all(w.root().join("inbound"));
        w.put_local(files);
        w.run(&format!("{}T23:59:59Z", DAYS[i]), 0);
    }
    w
}

fn backfill_world() -> World {
    let w = World::new();
    w.config("inbound", "", &catalog("out/9", ""));
    for files in backfill_days() {
        w.put_local(&files);
    }
    w
}

fn assert_same_result(nightly: &World, backfilled: &World) {
    assert_same_tree(
        "state",
        &nightly.state_snapshot(),
        &backfilled.state_snapshot(),
    );
    let out = |w: &World| snapshot(&w.root().join("out"), |_| false);
    assert_eq!(out(nightly).len(), 6, "three batches of data + .info");
    assert_same_tree("destinations", &out(nightly), &out(backfilled));
}

#[test]
fn backfill_equals_nightly_runs() {
    let nightly = nightly_reference();
    let w = backfill_world();
    let out = w.segmill(&["backfill", "--from", DAYS[0], "--to", DAYS[2]]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_same_result(&nightly, &w);
    let days: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("day "))
        .collect();
    assert_eq!(
        days,
        ["day 2026-11-01:", "day 2026-11-02:", "day 2026-11-03:"]
    );

    // Running it again does nothing.
    let again = w.segmill(&["backfill", "--from", DAYS[0], "--to", DAYS[2]]);
    assert_eq!(again.code, 0, "{again:#?}");
    assert_eq!(
        again.stdout,
        "day 2026-11-01: skipped, the state is already at 2026-11-03T23:59:59Z\n\
         day 2026-11-02: skipped, the state is already at 2026-11-03T23:59:59Z\n\
         day 2026-11-03: skipped, the state is already at 2026-11-03T23:59:59Z\n"
    );
    assert_same_result(&nightly, &w);
}

#[test]
fn backfill_resumes_after_a_killed_run() {
    let nightly = nightly_reference();
    let mut w = backfill_world();
    let first = w.segmill(&["backfill", "--from", DAYS[0], "--to", DAYS[0]]);
    assert_eq!(first.code, 0, "{first:#?}");
    w.envs
        .push(("SEGMILL_FAILPOINT".into(), "after-receipts:abort".into()));
    let killed = w.segmill(&["backfill", "--from", DAYS[0], "--to", DAYS[2]]);
    assert_ne!(killed.code, 0, "{killed:#?}");
    assert!(
        killed
            .stdout
            .starts_with("day 2026-11-01: skipped, the state is already at 2026-11-01T23:59:59Z\n"),
        "{killed:#?}"
    );
    w.envs.clear();
    let resumed = w.segmill(&["backfill", "--from", DAYS[0], "--to", DAYS[2]]);
    assert_eq!(resumed.code, 0, "{resumed:#?}");
    let days: Vec<&str> = resumed
        .stdout
        .lines()
        .filter(|l| l.starts_with("day "))
        .collect();
    assert_eq!(
        days,
        [
            "day 2026-11-01: skipped, the state is already at 2026-11-01T23:59:59Z",
            "day 2026-11-02:",
            "day 2026-11-03:"
        ]
    );
    assert_same_result(&nightly, &w);
}

#[test]
fn backfill_without_export_leaves_the_changes_due() {
    let w = backfill_world();
    let out = w.segmill(&[
        "backfill",
        "--from",
        DAYS[0],
        "--to",
        DAYS[1],
        "--no-export",
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(snapshot(&w.root().join("out"), |_| false).is_empty());
    let bad = w.segmill(&["backfill", "--from", DAYS[1], "--to", DAYS[0]]);
    assert_eq!(bad.code, 2);
    assert_eq!(
        bad.stderr,
        "segmill: error: --to 2026-11-01 is before --from 2026-11-02\n"
    );
}

// ---------------------------------------------------------------------------------------------
// validate --explain

#[test]
fn explain_says_why_an_id_did_not_match() {
    let w = World::new();
    w.config(
        "inbound",
        "",
        &format!(
            "{}\n[[data_source]]\nid = 33\nname = \"Loyalty\"\n",
            catalog("out/9", "")
        ),
    );
    w.put_local(&[
        (
            "date=2026-11-21/adobe_id_0_21_1795219200.sync".into(),
            format!("{}\tCust1\n", uuid(1)).into_bytes(),
        ),
        (
            "date=2026-11-21/adobe_id_0_33_1795219200.sync".into(),
            format!("{}\tloyal7\n", uuid(7)).into_bytes(),
        ),
    ]);
    w.run(AS_OF, 0);
    let file = w.root().join("check/ftp_dpm_21_1795230000.sync");
    common::write_file(&file, b"cust1\td_sid=101\n");
    let device = w.root().join("check/ftp_dpm_20914_21_1795230000.sync");
    common::write_file(&device, b"ABC\td_sid=101\n");
    let explain = |id: &str, f: &Path| {
        let out = w.segmill(&[
            "validate",
            "--as-of",
            AS_OF,
            "--explain",
            id,
            f.to_str().unwrap(),
        ]);
        assert!(out.code == 0 || out.code == 1, "{out:#?}");
        out.stdout
            .lines()
            .filter(|l| l.starts_with('"'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        explain("Cust1", &file),
        format!(
            "\"Cust1\" for data source 21 (CRM): synced to AAM UUID {}",
            uuid(1)
        )
    );
    assert_eq!(
        explain("cust1", &file),
        "\"cust1\" for data source 21 (CRM): differs only in case from the synced ID \"Cust1\" \
         (IDs match exactly)"
    );
    assert_eq!(
        explain("loyal7", &file),
        "\"loyal7\" for data source 21 (CRM): never synced for this data source, but synced \
         under data source 33 (Loyalty): the file's DPID may be wrong"
    );
    let sha1 = "a9993e364706816aba3e25717850c26c9cd0d89d";
    assert_eq!(
        explain(sha1, &file),
        format!(
            "\"{sha1}\" for data source 21 (CRM): never synced; it looks like a SHA-1 hash: the \
             ID-sync file must carry the same hashed form"
        )
    );
    assert_eq!(
        explain("nobody", &file),
        "\"nobody\" for data source 21 (CRM): never synced: no ID-sync file has mapped it; \
         counted as No Matching AAM ID"
    );
    assert_eq!(
        explain("ABC", &device),
        "\"ABC\" for DPID 20914 (GAID (Android)): wrong device-ID format for GAID (Android): \
         expected 36 characters, lowercase hex 8-4-4-4-12; counted as Invalid device ID"
    );
}

// ---------------------------------------------------------------------------------------------
// Logging

#[test]
fn logs_go_to_stderr_as_json_and_a_clean_run_is_silent() {
    let w = backfill_world();
    let out = w.segmill(&[
        "--log-format",
        "json",
        "--log-level",
        "info",
        "backfill",
        "--from",
        DAYS[0],
        "--to",
        DAYS[0],
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[0]["fields"]["message"], "backfill day");
    assert_eq!(lines[0]["fields"]["day"], "2026-11-01");

    // The default level shows warnings only: a clean run writes nothing on stderr.
    let quiet = w.segmill(&["backfill", "--from", DAYS[1], "--to", DAYS[1]]);
    assert_eq!(quiet.code, 0, "{quiet:#?}");
    assert_eq!(quiet.stderr, "");
    let bad = w.segmill(&["--log-level", "=[", "inspect", "stats"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .starts_with("segmill: error: --log-level \"=[\": "),
        "{}",
        bad.stderr
    );
}

/// Under a pseudo-terminal (util-linux `script`) the run draws a progress bar on stderr and
/// clears it at the end, with stdout unchanged; under a pipe stderr stays empty.
#[test]
fn a_progress_bar_is_drawn_on_a_terminal_and_never_under_a_pipe() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: the `script` utility (util-linux) is not installed");
        return;
    }
    let piped = World::new();
    piped.config("inbound", "", &catalog("out/9", ""));
    piped.put_local(&drop_files());
    let out = piped.run(AS_OF, 0);
    assert_eq!(out.stderr, "", "no bar under a pipe");

    let w = World::new();
    w.config("inbound", "", &catalog("out/9", ""));
    w.put_local(&drop_files());
    let stdout_file = w.root().join("stdout.txt");
    let quote = |p: &Path| {
        let text = p.display().to_string();
        assert!(!text.contains('\''), "{text}");
        format!("'{text}'")
    };
    // Only stderr reaches the terminal; stdout goes to a file.
    let command = format!(
        "{} --config {} run --as-of {AS_OF} > {}",
        quote(Path::new(env!("CARGO_BIN_EXE_segmill"))),
        quote(&w.root().join("segmill.toml")),
        quote(&stdout_file)
    );
    let term = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script");
    let screen = String::from_utf8_lossy(&term.stdout);
    assert_eq!(term.status.code(), Some(0), "{screen:?}");
    for drawn in [
        "discovering inbound files",
        "reading trait files",
        "2/2 files",
        "merging profiles",
    ] {
        assert!(screen.contains(drawn), "{drawn:?} not drawn in {screen:?}");
    }
    assert!(
        screen.ends_with("\r\u{1b}[2K"),
        "bar not cleared: {screen:?}"
    );
    // The same summary, the worlds' folders aside.
    let root = |w: &World| w.root().display().to_string();
    assert_eq!(
        read_text(&stdout_file).replace(&root(&w), "<root>"),
        out.stdout.replace(&root(&piped), "<root>")
    );
    assert_same_tree("state", &piped.state_snapshot(), &w.state_snapshot());
}

#[test]
fn a_refused_ftp_login_fails_the_run_without_printing_the_password() {
    let Some(ftp) = common_servers::Ftp::start() else {
        return;
    };
    let mut w = World::new();
    w.envs.push((
        "SEGMILL_TEST_FTP_PASSWORD".into(),
        "wrong-Passw0rd-xyz".into(),
    ));
    let url = format!("ftp://{}@127.0.0.1:{}/in", ftp.user, ftp.server.port);
    w.config(
        &url,
        "",
        &format!(
            "[ftp]\npassword_env = \"SEGMILL_TEST_FTP_PASSWORD\"\n\n{}",
            catalog("out/9", "")
        ),
    );
    let out = w.run(AS_OF, 2);
    assert!(out.stderr.starts_with("segmill: error: "), "{out:#?}");
    assert!(out.stderr.contains(&url), "{out:#?}");
    assert!(!w.all_output(&[&out]).contains("wrong-Passw0rd-xyz"));
    assert!(!w.state().join("CURRENT").exists());
}
