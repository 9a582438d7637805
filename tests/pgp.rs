//! PGP inbound files: keys generated here with rpgp, sample text encrypted here, decrypted by
//! `segmill::inbound::pgp::decrypt_file`. Also, when `gpg` is on the PATH, a file encrypted by
//! GnuPG itself (the tool partners use, AAM-REFERENCE §1.7).

use std::path::{Path, PathBuf};
use std::process::Command;

use pgp::composed::{
    EncryptionCaps, KeyType, MessageBuilder, SecretKeyParamsBuilder, SignedPublicKey,
    SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::ecc_curve::ECCCurve;
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::ser::Serialize as _;
use pgp::types::CompressionAlgorithm;
use rand::thread_rng;
use segmill::inbound::pgp::{PgpError, PrivateKey, decrypt_file};

const SAMPLE: &[u8] = b"uuid-1\td_sid=24,tier=gold\nuuid-2\td_sid=25\n";

/// A v4 key: Ed25519 primary (certify) and a Curve25519 ECDH encryption subkey, optionally
/// protected with `passphrase`.
fn keygen(passphrase: Option<&str>) -> SignedSecretKey {
    let mut enc = SubkeyParamsBuilder::default();
    enc.key_type(KeyType::ECDH(ECCCurve::Curve25519Legacy))
        .can_sign(false)
        .can_encrypt(EncryptionCaps::All)
        .can_authenticate(false)
        .passphrase(passphrase.map(str::to_owned));
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(false)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id("segmill test <test@example.com>".into())
        .passphrase(passphrase.map(str::to_owned))
        .subkeys(vec![enc.build().unwrap()]);
    params.build().unwrap().generate(thread_rng()).unwrap()
}

fn builder(payload: &[u8]) -> MessageBuilder<'static> {
    MessageBuilder::from_bytes("", payload.to_vec())
}

/// Encrypts `payload` to `key`'s encryption subkey with `alg` (SEIPD v1, as gpg writes it).
fn encrypt(
    key: &SignedSecretKey,
    payload: &[u8],
    alg: SymmetricKeyAlgorithm,
    compression: Option<CompressionAlgorithm>,
    armor: bool,
) -> Vec<u8> {
    let public = SignedPublicKey::from(key.clone());
    let mut b = builder(payload);
    if let Some(c) = compression {
        b.compression(c);
    }
    let mut b = b.seipd_v1(thread_rng(), alg);
    b.encrypt_to_key(thread_rng(), &public.public_subkeys[0])
        .unwrap();
    if armor {
        b.to_armored_string(thread_rng(), Default::default())
            .unwrap()
            .into_bytes()
    } else {
        b.to_vec(thread_rng()).unwrap()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn key_file(&self, key: &SignedSecretKey, armor: bool) -> PathBuf {
        if armor {
            let text = key.to_armored_string(Default::default()).unwrap();
            self.write("key.asc", text.as_bytes())
        } else {
            self.write("key.gpg", &key.to_bytes().unwrap())
        }
    }
}

fn reason(err: &PgpError) -> String {
    err.rejection_reason()
        .unwrap_or_else(|| panic!("expected a file-level rejection, got {err}"))
}

#[test]
fn decrypts_binary_and_armored_aes_files() {
    let fx = Fixture::new();
    let key = keygen(None);
    let pk = PrivateKey::from_file(&fx.key_file(&key, true), None).unwrap();
    let cases = [
        (SymmetricKeyAlgorithm::AES256, None, false),
        (SymmetricKeyAlgorithm::AES128, None, true),
        (
            SymmetricKeyAlgorithm::AES192,
            Some(CompressionAlgorithm::ZLIB),
            false,
        ),
        (
            SymmetricKeyAlgorithm::AES256,
            Some(CompressionAlgorithm::ZIP),
            true,
        ),
    ];
    for (i, (alg, compression, armor)) in cases.into_iter().enumerate() {
        let src = fx.write(
            &format!("ftp_dpm_21_1234567890.sync.{i}.pgp"),
            &encrypt(&key, SAMPLE, alg, compression, armor),
        );
        let dest = fx.path(&format!("plain-{i}"));
        let n = decrypt_file(&src, &dest, &pk).unwrap();
        assert_eq!(n, SAMPLE.len() as u64, "case {i}");
        assert_eq!(std::fs::read(&dest).unwrap(), SAMPLE, "case {i}");
    }
}

#[test]
fn large_payload_streams_intact() {
    let fx = Fixture::new();
    let key = keygen(None);
    let pk = PrivateKey::from_file(&fx.key_file(&key, false), None).unwrap();
    // 1 MiB + 7 bytes: several read buffers and a partial last one.
    let payload: Vec<u8> = (0..(1 << 20) + 7).map(|i| b"abc\tdef\n"[i % 8]).collect();
    let src = fx.write(
        "big.gpg",
        &encrypt(&key, &payload, SymmetricKeyAlgorithm::AES256, None, false),
    );
    let dest = fx.path("big");
    assert_eq!(
        decrypt_file(&src, &dest, &pk).unwrap(),
        payload.len() as u64
    );
    assert!(std::fs::read(&dest).unwrap() == payload);

    // Streamed plaintext of a file damaged in the middle never reaches `dest`.
    let mut cipher = std::fs::read(&src).unwrap();
    let mid = cipher.len() / 2;
    cipher[mid] ^= 0x80;
    let src = fx.write("big-damaged.gpg", &cipher);
    let dest = fx.path("big-damaged");
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert!(matches!(err, PgpError::Undecryptable { .. }), "{err:?}");
    assert!(!dest.exists());
    let mut names: Vec<String> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["big", "big-damaged.gpg", "big.gpg", "key.gpg"],
        "no temp file left"
    );
}

#[test]
fn passphrase_protected_key() {
    let fx = Fixture::new();
    let key = keygen(Some("s3cret"));
    let key_path = fx.key_file(&key, true);
    let src = fx.write(
        "f.pgp",
        &encrypt(&key, SAMPLE, SymmetricKeyAlgorithm::AES256, None, false),
    );

    let pk = PrivateKey::from_file(&key_path, Some("s3cret")).unwrap();
    assert!(!format!("{pk:?}").contains("s3cret"));
    assert_eq!(
        decrypt_file(&src, &fx.path("ok"), &pk).unwrap(),
        SAMPLE.len() as u64
    );

    let wrong = PrivateKey::from_file(&key_path, Some("nope")).unwrap();
    let err = decrypt_file(&src, &fx.path("bad"), &wrong).unwrap_err();
    assert!(
        reason(&err).starts_with(
            "undecryptable PGP: cannot unlock the private key (wrong or missing passphrase?)"
        ),
        "{err}"
    );
    assert!(!fx.path("bad").exists());
}

#[test]
fn non_aes_cipher_is_rejected() {
    let fx = Fixture::new();
    let key = keygen(None);
    let pk = PrivateKey::from_file(&fx.key_file(&key, false), None).unwrap();
    let src = fx.write(
        "cast5.pgp",
        &encrypt(&key, SAMPLE, SymmetricKeyAlgorithm::CAST5, None, false),
    );
    let dest = fx.path("plain");
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert_eq!(
        reason(&err),
        "undecryptable PGP: cipher CAST5 is not AES; AAM accepts AES only (encrypt with --cipher-algo AES256)"
    );
    assert_eq!(
        err.to_string(),
        format!("{}: {}", src.display(), reason(&err))
    );
    assert!(!dest.exists());
}

#[test]
fn gzip_inside_pgp_is_rejected() {
    let fx = Fixture::new();
    let key = keygen(None);
    let pk = PrivateKey::from_file(&fx.key_file(&key, false), None).unwrap();
    let gz = [
        0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0xff, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let src = fx.write(
        "ftp_dpm_21_1234567890.sync.pgp",
        &encrypt(&key, &gz, SymmetricKeyAlgorithm::AES256, None, true),
    );
    let dest = fx.path("plain");
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert!(matches!(err, PgpError::GzipInside { .. }), "{err:?}");
    assert_eq!(reason(&err), "gzip inside PGP is rejected");
    assert_eq!(
        err.to_string(),
        format!("{}: gzip inside PGP is rejected", src.display())
    );
    assert!(!dest.exists());

    // A damaged gzip-inside file is undecryptable: the verdict waits for the integrity check.
    let mut cipher = encrypt(&key, &gz, SymmetricKeyAlgorithm::AES256, None, false);
    let last = cipher.len() - 2;
    cipher[last] ^= 0x01;
    let src = fx.write("damaged.pgp", &cipher);
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert!(matches!(err, PgpError::Undecryptable { .. }), "{err:?}");

    // One byte of the magic is not gzip.
    let src = fx.write(
        "one.pgp",
        &encrypt(&key, &[0x1f], SymmetricKeyAlgorithm::AES256, None, false),
    );
    assert_eq!(decrypt_file(&src, &dest, &pk).unwrap(), 1);
}

#[test]
fn wrong_key_damaged_and_plain_files_are_undecryptable() {
    let fx = Fixture::new();
    let key = keygen(None);
    let other = keygen(None);
    let pk_other = PrivateKey::from_file(&fx.key_file(&other, false), None).unwrap();
    let pk = PrivateKey::from_file(&fx.key_file(&key, true), None).unwrap();
    let cipher = encrypt(&key, SAMPLE, SymmetricKeyAlgorithm::AES256, None, false);
    let src = fx.write("f.pgp", &cipher);
    let dest = fx.path("plain");

    let err = decrypt_file(&src, &dest, &pk_other).unwrap_err();
    assert_eq!(
        reason(&err),
        "undecryptable PGP: the file is not encrypted to the configured private key"
    );

    // A flipped byte in the last cipher block fails the integrity check.
    let mut damaged = cipher.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x55;
    let src = fx.write("damaged.pgp", &damaged);
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert!(reason(&err).starts_with("undecryptable PGP: "), "{err}");
    assert!(!dest.exists());

    // Truncated.
    let src = fx.write("cut.pgp", &cipher[..cipher.len() / 2]);
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert!(reason(&err).starts_with("undecryptable PGP: "), "{err}");
    assert!(!dest.exists());

    // Not PGP at all.
    let src = fx.write("plain.pgp", SAMPLE);
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert!(reason(&err).starts_with("undecryptable PGP: "), "{err}");

    // Signed-only or literal data is not an encrypted message.
    let mut literal = Vec::new();
    builder(SAMPLE)
        .to_writer(thread_rng(), &mut literal)
        .unwrap();
    let src = fx.write("literal.pgp", &literal);
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert_eq!(
        reason(&err),
        "undecryptable PGP: the file is not an encrypted OpenPGP message"
    );
    assert!(!dest.exists());
}

#[test]
fn key_and_io_errors_are_run_problems() {
    let fx = Fixture::new();
    let missing = fx.path("missing.asc");
    let err = PrivateKey::from_file(&missing, None).unwrap_err();
    assert!(err.rejection_reason().is_none());
    assert!(
        err.to_string().starts_with(&format!(
            "cannot read PGP private key {}: ",
            missing.display()
        )),
        "{err}"
    );

    let junk = fx.write("junk.asc", b"not a key");
    let err = PrivateKey::from_file(&junk, None).unwrap_err();
    assert!(matches!(err, PgpError::BadKey { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "PGP private key {} is not usable: ",
            junk.display()
        )),
        "{err}"
    );

    let key = keygen(None);
    let pk = PrivateKey::from_file(&fx.key_file(&key, false), None).unwrap();
    let src = fx.write(
        "f.pgp",
        &encrypt(&key, SAMPLE, SymmetricKeyAlgorithm::AES256, None, false),
    );
    let dest = fx.path("no/such/dir/plain");
    let err = decrypt_file(&src, &dest, &pk).unwrap_err();
    assert!(matches!(err, PgpError::Write { .. }), "{err:?}");
    assert!(err.rejection_reason().is_none());

    let err = decrypt_file(&fx.path("absent.pgp"), &fx.path("x"), &pk).unwrap_err();
    assert!(matches!(err, PgpError::OpenInput { .. }), "{err:?}");
}

/// Stops the gpg-agent that gpg started for a test home folder.
struct AgentGuard(PathBuf);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.0)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// Runs gpg in its own home folder; `None` when gpg is not installed.
fn gpg(home: &Path, args: &[&str]) -> Option<std::process::Output> {
    let out = Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ])
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "gpg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

#[test]
fn gnupg_encrypted_file_interoperates() {
    let fx = Fixture::new();
    let home = fx.path("gnupg");
    std::fs::create_dir(&home).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let uid = "segmill gpg test <gpg@example.com>";
    let _agent = AgentGuard(home.clone());
    if gpg(
        &home,
        &["--quick-gen-key", uid, "future-default", "default", "never"],
    )
    .is_none()
    {
        println!("skipped: gpg is not installed");
        return;
    }
    let secret = gpg(&home, &["--armor", "--export-secret-keys", uid]).unwrap();
    let key_path = fx.write("gpg-key.asc", &secret.stdout);
    let pk = PrivateKey::from_file(&key_path, None).unwrap();
    let input = fx.write("in.txt", SAMPLE);

    for (name, extra) in [
        ("aes.gpg", vec!["--cipher-algo", "AES256"]),
        ("aes-armor.asc", vec!["--cipher-algo", "AES128", "--armor"]),
    ] {
        let out = fx.path(name);
        let mut args = vec!["--trust-model", "always", "--recipient", uid, "--output"];
        let out_s = out.to_str().unwrap().to_owned();
        args.push(&out_s);
        args.extend(extra);
        args.extend(["--encrypt", input.to_str().unwrap()]);
        gpg(&home, &args).unwrap();
        let dest = fx.path(&format!("{name}.plain"));
        assert_eq!(
            decrypt_file(&out, &dest, &pk).unwrap(),
            SAMPLE.len() as u64,
            "{name}"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), SAMPLE, "{name}");
    }

    let out = fx.path("cast5.gpg");
    let out_s = out.to_str().unwrap().to_owned();
    gpg(
        &home,
        &[
            "--trust-model",
            "always",
            "--recipient",
            uid,
            "--cipher-algo",
            "CAST5",
            "--output",
            &out_s,
            "--encrypt",
            input.to_str().unwrap(),
        ],
    )
    .unwrap();
    let err = decrypt_file(&out, &fx.path("cast5.plain"), &pk).unwrap_err();
    assert_eq!(
        reason(&err),
        "undecryptable PGP: cipher CAST5 is not AES; AAM accepts AES only (encrypt with --cipher-algo AES256)"
    );
}
