//! The FTP store against a real pyftpdlib server on 127.0.0.1 (started and killed by the
//! test). Skipped, with a notice, when `SEGMILL_TEST_PYTHON` is not set.

mod common_servers;

use std::fs;
use std::path::Path;

use segmill::config::{Config, Location};
use segmill::storage::{self, StorageError, StorageSettings, Store};

fn config() -> Config {
    Config::parse(
        Path::new("segmill.toml"),
        r#"
[paths]
inbound = "in"
state = "state"
outbound = "out"
[[data_source]]
id = 21
name = "CRM"
[[data_source]]
id = 33
name = "Loyalty"
"#,
    )
    .expect("test config")
}

fn open(url: String) -> Store {
    Store::open(&Location::Ftp { url }, &StorageSettings::default()).expect("open the FTP store")
}

/// Writes `rel` under `root` on disk, folders included.
fn put_local(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn ftp_store_lists_fetches_and_puts_against_pyftpdlib() {
    let Some(ftp) = common_servers::Ftp::start() else {
        return;
    };
    let home = ftp.home();
    let work = tempfile::tempdir().unwrap();
    // Bytes an ASCII-mode transfer would alter: CRLF, lone CR and LF, NUL, high bytes.
    let binary: Vec<u8> = (0..300_000u32)
        .map(|i| [b'\r', b'\n', 0, 0xff, b'a'][(i % 5) as usize] ^ (i / 5 % 3) as u8)
        .collect();
    let files: [(&str, &[u8]); 7] = [
        ("in/ftp_dpm_21_1000000001.sync", b"u1\td_sid=24\r\n"),
        ("in/date=2026-11-21/ftp_dpm_21_1000000002.sync", b"u2\n"),
        (
            "in/partnerA/date=2026-11-21/ftp_dpm_33_1000000003.sync",
            b"u3\n",
        ),
        ("in/partnerA/notes.txt", b"hello"),
        ("in/archive/old/ftp_dpm_21_1000000000.sync", b"x\n"),
        ("in/date=2026-11-21/ftp_dpm_21_1000000004.sync", b""),
        ("in/date=2026-11-22/ftp_dpm_33_1000000005.sync.gz", &binary),
    ];
    for (rel, bytes) in files {
        put_local(&home, rel, bytes);
    }
    put_local(&home, "elsewhere/ftp_dpm_21_1000000009.sync", b"no\n");

    let store = open(ftp.url("in"));
    let listing = store.list().unwrap();
    let expected: Vec<(String, u64)> = vec![
        ("archive/old/ftp_dpm_21_1000000000.sync".into(), 2),
        ("date=2026-11-21/ftp_dpm_21_1000000002.sync".into(), 3),
        ("date=2026-11-21/ftp_dpm_21_1000000004.sync".into(), 0),
        (
            "date=2026-11-22/ftp_dpm_33_1000000005.sync.gz".into(),
            binary.len() as u64,
        ),
        ("ftp_dpm_21_1000000001.sync".into(), 13),
        (
            "partnerA/date=2026-11-21/ftp_dpm_33_1000000003.sync".into(),
            3,
        ),
        ("partnerA/notes.txt".into(), 5),
    ];
    assert_eq!(listing, expected);

    let found = storage::discover(&store, &config()).unwrap();
    let displays: Vec<&str> = found
        .trait_files
        .iter()
        .map(|f| f.display.as_str())
        .collect();
    assert_eq!(
        displays,
        [
            "ftp_dpm_21_1000000001.sync",
            "date=2026-11-21/ftp_dpm_21_1000000002.sync",
            "partnerA/date=2026-11-21/ftp_dpm_33_1000000003.sync",
            "date=2026-11-22/ftp_dpm_33_1000000005.sync.gz",
        ]
    );
    let root_url = format!("ftp://segmill@127.0.0.1:{}/in", ftp.server.port);
    assert_eq!(
        found.trait_files[0].path,
        Path::new(&format!("{root_url}/ftp_dpm_21_1000000001.sync"))
    );
    assert_eq!(found.ignored, ["archive/", "partnerA/notes.txt"]);
    assert_eq!(found.rejected.len(), 1);
    assert_eq!(found.rejected[0].reason, "empty file");

    // Fetches are binary and byte-exact.
    let dest = work.path().join("small");
    assert_eq!(
        store.fetch("ftp_dpm_21_1000000001.sync", &dest).unwrap(),
        13
    );
    assert_eq!(fs::read(&dest).unwrap(), b"u1\td_sid=24\r\n");
    let dest = work.path().join("binary");
    let n = store
        .fetch("date=2026-11-22/ftp_dpm_33_1000000005.sync.gz", &dest)
        .unwrap();
    assert_eq!(n, binary.len() as u64);
    assert!(fs::read(&dest).unwrap() == binary, "binary copy differs");

    // Put: binary, into new folders, through a temporary name that does not stay behind.
    let src = work.path().join("export.sync");
    fs::write(&src, &binary).unwrap();
    let out = open(ftp.url("out"));
    out.put(&src, "1234/SYNC_1234_iter_1763683200000.sync")
        .unwrap();
    let written = home.join("out/1234/SYNC_1234_iter_1763683200000.sync");
    assert!(
        fs::read(&written).unwrap() == binary,
        "uploaded bytes differ"
    );
    let names: Vec<_> = fs::read_dir(home.join("out/1234"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["SYNC_1234_iter_1763683200000.sync"]);
    // Replacing an existing object.
    fs::write(&src, b"second\n").unwrap();
    out.put(&src, "1234/SYNC_1234_iter_1763683200000.sync")
        .unwrap();
    assert_eq!(fs::read(&written).unwrap(), b"second\n");

    // A marker beside an inbound file; the file itself is untouched.
    store
        .put_bytes("ftp_dpm_21_1000000001.sync.processed", b"run-1\n")
        .unwrap();
    assert_eq!(
        fs::read(home.join("in/ftp_dpm_21_1000000001.sync.processed")).unwrap(),
        b"run-1\n"
    );
    assert_eq!(
        fs::read(home.join("in/ftp_dpm_21_1000000001.sync")).unwrap(),
        b"u1\td_sid=24\r\n"
    );

    // Missing object and missing root: clear errors naming them, without the password.
    let err = store.fetch("nope.sync", &dest).unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot fetch {root_url}/nope.sync: not found")
    );
    let err = open(ftp.url("missing")).list().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot list ftp://segmill@127.0.0.1:{}/missing: not found",
            ftp.server.port
        )
    );

    // Bad credentials.
    let wrong = "Wr0ng-ftp-password";
    let bad_url = format!(
        "ftp://{}:{wrong}@127.0.0.1:{}/in",
        ftp.user, ftp.server.port
    );
    let bad = open(bad_url.clone());
    for err in [
        bad.list().unwrap_err(),
        bad.fetch("ftp_dpm_21_1000000001.sync", &dest).unwrap_err(),
        bad.put_bytes("x.processed", b"x").unwrap_err(),
    ] {
        assert!(matches!(err, StorageError::Denied { .. }), "{err:?}");
        let text = format!("{err} {err:?} {err:#} {bad:?}");
        assert!(!text.contains(wrong), "{text}");
        assert!(!text.contains(&ftp.password), "{text}");
        assert!(text.contains(&root_url), "{text}");
    }
    let err = bad.list().unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot list {root_url}: access denied (530 ")),
        "{err}"
    );
    // The configured location itself never shows the password either.
    let location = Location::Ftp { url: bad_url };
    assert!(!format!("{location} {location:?}").contains(wrong));

    // Nobody listening: a clear connection error.
    let closed = common_servers::free_port();
    let err = open(format!("ftp://u:{wrong}@127.0.0.1:{closed}/in"))
        .list()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot list ftp://u@127.0.0.1:{closed}/in: cannot connect: "
        )),
        "{text}"
    );
    assert!(!text.contains(wrong), "{text}");
}
