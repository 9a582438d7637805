//! The S3 store against a real moto server on 127.0.0.1 (started and killed by the test).
//! Skipped, with a notice, when `SEGMILL_TEST_PYTHON` is not set.

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
inbound = "s3://segmill-drop/in"
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

fn settings(moto: &common_servers::Moto) -> StorageSettings {
    StorageSettings {
        access_key_id: Some(moto.access_key_id.clone()),
        secret_access_key: Some(moto.secret_access_key.clone()),
        endpoint: Some(moto.endpoint.clone()),
        allow_http: Some(true),
        ..StorageSettings::default()
    }
}

fn open(moto: &common_servers::Moto, prefix: &str, settings: &StorageSettings) -> Store {
    let location = Location::S3 {
        bucket: moto.bucket.clone(),
        prefix: prefix.to_owned(),
    };
    Store::open(&location, settings).expect("open the S3 store")
}

/// Deterministic bytes that differ at every offset modulo a large prime, so a misplaced range
/// cannot compare equal.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

#[test]
fn s3_store_lists_fetches_and_puts_against_moto() {
    let Some(moto) = common_servers::Moto::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // Uploads above 5 MiB are multipart with 5 MiB parts; fetches use 1 MiB ranges, 3 in flight.
    let upload_settings = StorageSettings {
        part_bytes: Some(5 << 20),
        ..settings(&moto)
    };
    let store = open(&moto, "in", &upload_settings);

    // The drop folder, written through the store itself.
    let files: [(&str, &[u8]); 6] = [
        ("ftp_dpm_21_1000000001.sync", b"u1\td_sid=24\n"),
        ("date=2026-11-21/ftp_dpm_21_1000000002.sync", b"u2\n"),
        (
            "partnerA/date=2026-11-21/ftp_dpm_33_1000000003.sync",
            b"u3\n",
        ),
        ("partnerA/notes.txt", b"hello"),
        ("archive/old/ftp_dpm_21_1000000000.sync", b"x\n"),
        ("date=2026-11-21/ftp_dpm_21_1000000004.sync", b""),
    ];
    for (rel, bytes) in files {
        store.put_bytes(rel, bytes).unwrap();
    }
    // An object beside the prefix must not show up in its listing.
    open(&moto, "", &settings(&moto))
        .put_bytes("inbox/ftp_dpm_21_1000000009.sync", b"no\n")
        .unwrap();

    let large_len = (11 << 20) + 12_345;
    let large = pattern(large_len);
    let src = work.path().join("large.sync");
    fs::write(&src, &large).unwrap();
    store
        .put(&src, "date=2026-11-22/ftp_dpm_33_1000000005.sync")
        .unwrap();

    let listing = store.list().unwrap();
    let expected: Vec<(String, u64)> = vec![
        ("archive/old/ftp_dpm_21_1000000000.sync".into(), 2),
        ("date=2026-11-21/ftp_dpm_21_1000000002.sync".into(), 3),
        ("date=2026-11-21/ftp_dpm_21_1000000004.sync".into(), 0),
        (
            "date=2026-11-22/ftp_dpm_33_1000000005.sync".into(),
            large_len as u64,
        ),
        ("ftp_dpm_21_1000000001.sync".into(), 12),
        (
            "partnerA/date=2026-11-21/ftp_dpm_33_1000000003.sync".into(),
            3,
        ),
        ("partnerA/notes.txt".into(), 5),
    ];
    assert_eq!(listing, expected);

    // Discovery over the listing: same rules as a local folder.
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
            "date=2026-11-22/ftp_dpm_33_1000000005.sync",
        ]
    );
    assert_eq!(
        found.trait_files[0].path,
        Path::new("s3://segmill-drop/in/ftp_dpm_21_1000000001.sync")
    );
    assert_eq!(found.ignored, ["archive/", "partnerA/notes.txt"]);
    let rejected: Vec<(&str, &str)> = found
        .rejected
        .iter()
        .map(|r| (r.display.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [("date=2026-11-21/ftp_dpm_21_1000000004.sync", "empty file")]
    );
    let day = storage::discover_day(&store, "2026-11-22", &config()).unwrap();
    assert_eq!(day.trait_files.len(), 1);

    // Small fetch: one GET, byte-exact.
    let fetch_settings = StorageSettings {
        part_bytes: Some(1 << 20),
        concurrency: Some(3),
        ..settings(&moto)
    };
    let reader = open(&moto, "in", &fetch_settings);
    let dest = work.path().join("small");
    assert_eq!(
        reader.fetch("ftp_dpm_21_1000000001.sync", &dest).unwrap(),
        12
    );
    assert_eq!(fs::read(&dest).unwrap(), b"u1\td_sid=24\n");

    // Large fetch: 12 ranged GETs written at their offsets, byte-exact.
    let dest = work.path().join("large.copy");
    fs::write(&dest, b"stale content that must be truncated").unwrap();
    let n = reader
        .fetch("date=2026-11-22/ftp_dpm_33_1000000005.sync", &dest)
        .unwrap();
    assert_eq!(n, large_len as u64);
    assert!(fs::read(&dest).unwrap() == large, "large copy differs");

    // An empty object fetches as an empty file.
    let dest = work.path().join("empty");
    assert_eq!(
        reader
            .fetch("date=2026-11-21/ftp_dpm_21_1000000004.sync", &dest)
            .unwrap(),
        0
    );
    assert_eq!(fs::read(&dest).unwrap(), b"");

    // A marker beside an inbound object leaves the object alone.
    reader
        .put_bytes("ftp_dpm_21_1000000001.sync.processed", b"run-1\n")
        .unwrap();
    let dest = work.path().join("marker");
    reader
        .fetch("ftp_dpm_21_1000000001.sync.processed", &dest)
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"run-1\n");
    let dest = work.path().join("again");
    reader.fetch("ftp_dpm_21_1000000001.sync", &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"u1\td_sid=24\n");

    // A small put replaces an existing object whole.
    let small_src = work.path().join("small.src");
    fs::write(&small_src, b"replaced\n").unwrap();
    reader.put(&small_src, "partnerA/notes.txt").unwrap();
    reader.fetch("partnerA/notes.txt", &dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"replaced\n");

    // Missing object: a clear error naming it.
    let err = reader
        .fetch("date=2026-11-21/ftp_dpm_21_1000000099.sync", &dest)
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot fetch s3://segmill-drop/in/date=2026-11-21/ftp_dpm_21_1000000099.sync: not found"
    );

    // A prefix with nothing under it lists empty.
    assert_eq!(
        open(&moto, "nothing/here", &settings(&moto))
            .list()
            .unwrap(),
        []
    );

    // Settings problems are caught when opening, without secrets.
    let half = StorageSettings {
        access_key_id: None,
        ..settings(&moto)
    };
    let err = Store::open(
        &Location::S3 {
            bucket: moto.bucket.clone(),
            prefix: "in".into(),
        },
        &half,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "s3://segmill-drop/in: a secret access key is set but no access key ID (AWS_ACCESS_KEY_ID)"
    );
}

/// Bad credentials: access denied, naming the object, never the secret. (moto checks
/// signatures only in this mode, and then mishandles keys with `=`, so no `date=` folders here.)
#[test]
fn s3_bad_credentials_are_denied_without_printing_secrets() {
    let Some(moto) = common_servers::Moto::start_with_auth() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("copy");
    // The bucket root: moto also miscomputes signatures of list requests with a prefix.
    let good = open(&moto, "", &settings(&moto));
    good.put_bytes("ftp_dpm_21_1000000001.sync", b"u1\n")
        .unwrap();
    assert_eq!(
        good.list().unwrap(),
        [("ftp_dpm_21_1000000001.sync".to_owned(), 3)]
    );
    let wrong_secret = "Wr0ngSecretKeyThatMustNeverBePrinted";
    let bad = StorageSettings {
        secret_access_key: Some(wrong_secret.to_owned()),
        ..settings(&moto)
    };
    let bad_store = open(&moto, "", &bad);
    let debug = format!("{bad_store:?} {bad:?}");
    assert!(!debug.contains(wrong_secret), "{debug}");
    for err in [
        bad_store.list().unwrap_err(),
        bad_store
            .fetch("ftp_dpm_21_1000000001.sync", &dest)
            .unwrap_err(),
        bad_store.put_bytes("x.processed", b"x").unwrap_err(),
    ] {
        assert!(matches!(err, StorageError::Denied { .. }), "{err:?}");
        let text = format!("{err} {err:?} {err:#}");
        assert!(!text.contains(wrong_secret), "{text}");
        assert!(!text.contains(&moto.secret_access_key), "{text}");
        assert!(text.contains("s3://segmill-drop/"), "{text}");
        assert!(text.contains("access denied"), "{text}");
    }
    let err = bad_store
        .fetch("ftp_dpm_21_1000000001.sync", &dest)
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "cannot fetch s3://segmill-drop/ftp_dpm_21_1000000001.sync: access denied ("
        ),
        "{err}"
    );
}

/// Large objects are fetched in ranged GETs of the part size, `concurrency` in flight, each
/// carrying `If-Match` with the ETag seen by the HEAD; an object replaced between two parts
/// fails the fetch with a message naming it, and leaves no partial copy. Counted by a recording
/// proxy between the store and moto.
#[test]
fn s3_large_fetch_uses_parallel_ranged_gets_guarded_by_if_match() {
    let Some(moto) = common_servers::Moto::start() else {
        return;
    };
    let Some(proxy) = common_servers::S3Proxy::start(&moto, 150) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    const PART: usize = 512 << 10;
    // Eleven whole parts and a short twelfth; uploaded straight to moto.
    let large = pattern(11 * PART + 12_345);
    let direct = open(&moto, "in", &settings(&moto));
    direct.put_bytes("large.sync", &large).unwrap();
    let changing = pattern(3 * PART);
    direct.put_bytes("changing.sync", &changing).unwrap();

    let through_proxy = StorageSettings {
        endpoint: Some(proxy.endpoint.clone()),
        part_bytes: Some(PART as u64),
        concurrency: Some(3),
        ..settings(&moto)
    };
    let reader = open(&moto, "in", &through_proxy);
    let dest = work.path().join("large.copy");
    assert_eq!(
        reader.fetch("large.sync", &dest).unwrap(),
        large.len() as u64
    );
    assert!(fs::read(&dest).unwrap() == large, "large copy differs");

    let requests = proxy.requests();
    let of = |method: &str, path: &str| -> Vec<&common_servers::ProxiedRequest> {
        requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    };
    assert_eq!(of("HEAD", "/segmill-drop/in/large.sync").len(), 1);
    let gets = of("GET", "/segmill-drop/in/large.sync");
    let mut ranges: Vec<String> = gets
        .iter()
        .map(|r| r.range.clone().expect("every GET is ranged"))
        .collect();
    ranges.sort_by_key(|r| {
        r.trim_start_matches("bytes=")
            .split('-')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
    });
    let expected: Vec<String> = (0..12)
        .map(|i| {
            let start = i * PART;
            let end = ((i + 1) * PART).min(large.len()) - 1;
            format!("bytes={start}-{end}")
        })
        .collect();
    assert_eq!(ranges, expected);
    assert!(gets.iter().all(|r| r.status == 206), "{gets:#?}");
    let e_tag = gets[0].if_match.clone().expect("GETs carry If-Match");
    assert!(e_tag.len() > 2, "{e_tag:?}");
    assert!(gets.iter().all(|r| r.if_match.as_ref() == Some(&e_tag)));
    // Exactly the configured concurrency: never more, and the 150 ms hold makes it reached.
    assert_eq!(common_servers::max_in_flight(&gets), 3, "{gets:#?}");

    // The object is replaced once its first part has been answered.
    let replacement = b"a different object\n".repeat(100_000);
    proxy.replace_after_first_part(&moto.bucket, "in/changing.sync", &replacement);
    let dest = work.path().join("changing.copy");
    let err = reader.fetch("changing.sync", &dest).unwrap_err();
    assert!(matches!(err, StorageError::Changed { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "cannot fetch s3://segmill-drop/in/changing.sync: it changed while being read \
         (its ETag no longer matches); run again"
    );
    assert!(!dest.exists(), "a partial copy was left behind");
    let requests = proxy.requests();
    let gets: Vec<&common_servers::ProxiedRequest> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/segmill-drop/in/changing.sync")
        .collect();
    let first: Vec<u16> = gets
        .iter()
        .filter(|r| r.range.as_deref() == Some(&format!("bytes=0-{}", PART - 1)))
        .map(|r| r.status)
        .collect();
    assert_eq!(first, [206], "{gets:#?}");
    assert!(
        gets.iter().any(|r| r.status == 412),
        "a later part must meet the new ETag: {gets:#?}"
    );

    // Running again fetches the new object whole.
    assert_eq!(
        reader.fetch("changing.sync", &dest).unwrap(),
        replacement.len() as u64
    );
    assert!(
        fs::read(&dest).unwrap() == replacement,
        "replacement differs"
    );
}

/// What a staged run's S3 work store relies on: a create-once put that only the first writer
/// wins, small reads, listing under a folder and deletes, on S3 and on a local folder alike.
#[test]
fn s3_create_once_puts_lists_and_deletes() {
    let Some(moto) = common_servers::Moto::start() else {
        return;
    };
    let local = tempfile::tempdir().unwrap();
    let stores = [
        open(&moto, "work", &settings(&moto)),
        Store::Local(local.path().to_path_buf()),
    ];
    for store in &stores {
        let root = store.describe_root();
        assert!(
            store.put_bytes_once("map/0/task.json", b"first").unwrap(),
            "{root}"
        );
        assert!(
            !store.put_bytes_once("map/0/task.json", b"second").unwrap(),
            "{root}"
        );
        assert_eq!(
            store.get_bytes("map/0/task.json").unwrap().as_deref(),
            Some(&b"first"[..]),
            "{root}: the first writer wins"
        );
        assert_eq!(store.get_bytes("map/1/task.json").unwrap(), None, "{root}");
        store.put_bytes("map/0/a/ops-0001", b"ops").unwrap();
        store.put_bytes("mapping/x", b"not under map/").unwrap();
        let names = |under: &str| -> Vec<String> {
            store
                .list_under(under)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            names("map"),
            ["map/0/a/ops-0001", "map/0/task.json"],
            "{root}"
        );
        assert!(names("nothing").is_empty(), "{root}");
        store.put_bytes("map/1/task.json", b"x").unwrap();
        assert_eq!(store.list_folders("map").unwrap(), ["0", "1"], "{root}");
        assert_eq!(store.list_folders("map/0").unwrap(), ["a"], "{root}");
        assert!(store.list_folders("nothing").unwrap().is_empty(), "{root}");
        store.delete(&names("map")).unwrap();
        store.delete(&["map/0/never-written".to_owned()]).unwrap();
        assert!(names("map").is_empty(), "{root}");
        assert_eq!(names(""), ["mapping/x"], "{root}");
    }
}
