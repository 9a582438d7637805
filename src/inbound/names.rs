//! Inbound file names (CONTRACT §2, AAM-REFERENCE §1.1, §1.5 and §1.10).
//!
//! One pure function, [`classify`], sorts a bare file name (no folders) into a trait file, an
//! ID-sync file, a name segmill leaves alone, or a rejected name with its reason. It is a
//! hand-written byte parser: the grammar is small and every way a name can be wrong gets its
//! own reason, which a regex would not give.
//!
//! Grammar (exact, case-sensitive):
//!
//! ```text
//! ftp_dpm_[odc_]DPID[_OWNER]_TIMESTAMP(.sync|.overwrite)[.SPLIT][.gz][.pgp|.gpg]
//! adobe_id_MASTERDPID_DPID[_DPID...]_TIMESTAMP.sync[.SPLIT][.gz]
//! c2c_id_DPID_DPID_TIMESTAMP.sync[.SPLIT][.gz]
//! ```
//!
//! TIMESTAMP is exactly 10 digits; DPID, OWNER and SPLIT are unsigned decimals that fit a u32
//! (leading zeros allowed). The last `_`-separated number before the first `.` is always the
//! TIMESTAMP, so `ftp_dpm_21_1234567890.sync` is DPID 21 with no OWNER.
//!
//! Not decided here: whether a DPID is configured (see `inbound::discover`).

use std::fmt;

use crate::model::Dpid;

const TRAIT_PREFIX: &str = "ftp_dpm_";
const ADOBE_PREFIX: &str = "adobe_id_";
const C2C_PREFIX: &str = "c2c_id_";
const ODC_PREFIX: &str = "odc_";
/// Digits in a TIMESTAMP: a 10-digit Unix time in seconds (AAM-REFERENCE §1.2).
const TIMESTAMP_DIGITS: usize = 10;

/// How a trait file's instructions apply (CONTRACT §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// `.sync`: realize and remove, in order.
    Sync,
    /// `.overwrite`: each listed user's traits of the target data source are replaced.
    Overwrite,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sync => "sync",
            Mode::Overwrite => "overwrite",
        })
    }
}

/// The parts of a trait file name `ftp_dpm_...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraitName {
    /// The `odc_` (Oracle Data Cloud) variant: lines start with an ID-type column.
    pub odc: bool,
    /// The DPID whose IDs the file holds.
    pub dpid: Dpid,
    /// `_DPID_TARGET_DATA_OWNER`: the data source the traits are onboarded to, when given.
    pub owner: Option<Dpid>,
    /// The 10-digit TIMESTAMP.
    pub timestamp: u64,
    /// `.sync` or `.overwrite`.
    pub mode: Mode,
    /// `.SPLIT_NUMBER`, when the file is one part of a larger one.
    pub split: Option<u32>,
    /// `.gz`: gzip-compressed.
    pub gzip: bool,
    /// `.pgp` or `.gpg`: PGP-encrypted.
    pub pgp: bool,
}

/// Which kind of ID-sync file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdSyncKind {
    /// `adobe_id_`: device IDs and customer IDs mapped to a master column.
    Adobe,
    /// `c2c_id_`: customer IDs mapped to hashed e-mail addresses.
    C2c,
}

/// The parts of an ID-sync file name `adobe_id_...` or `c2c_id_...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdSyncName {
    /// `adobe_id_` or `c2c_id_`.
    pub kind: IdSyncKind,
    /// The DPID of each column, master first; at least 2 (exactly 2 for `c2c_id_`).
    pub dpids: Vec<Dpid>,
    /// The 10-digit TIMESTAMP.
    pub timestamp: u64,
    /// `.SPLIT_NUMBER`, when the file is one part of a larger one.
    pub split: Option<u32>,
    /// `.gz`: gzip-compressed.
    pub gzip: bool,
}

/// What a file name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// A trait (onboarding) file.
    Trait(TraitName),
    /// An ID-sync file.
    IdSync(IdSyncName),
    /// Not segmill's: a marker (`.processed`, `.info`) or a name without a known prefix.
    Ignored,
    /// Starts like a segmill name but does not match the grammar; the reason says why.
    Rejected(String),
}

/// Classifies a bare file name (no folder part). Never panics.
///
/// ```
/// use segmill::inbound::names::{classify, Classified, Mode};
/// let Classified::Trait(name) = classify("ftp_dpm_478_567_1366545717.sync.gz") else {
///     panic!("not a trait file");
/// };
/// assert_eq!((name.dpid, name.owner, name.mode, name.gzip), (478, Some(567), Mode::Sync, true));
/// ```
pub fn classify(file_name: &str) -> Classified {
    if file_name.ends_with(".processed") || file_name.ends_with(".info") {
        return Classified::Ignored;
    }
    let result = if let Some(rest) = file_name.strip_prefix(TRAIT_PREFIX) {
        parse_trait(rest).map(Classified::Trait)
    } else if let Some(rest) = file_name.strip_prefix(ADOBE_PREFIX) {
        parse_idsync(rest, IdSyncKind::Adobe).map(Classified::IdSync)
    } else if let Some(rest) = file_name.strip_prefix(C2C_PREFIX) {
        parse_idsync(rest, IdSyncKind::C2c).map(Classified::IdSync)
    } else {
        return Classified::Ignored;
    };
    result.unwrap_or_else(|reason| Classified::Rejected(reason.to_string()))
}

/// Why a name that starts like a segmill name is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    /// The `DPID[_OWNER]_TIMESTAMP` part has the wrong number of fields.
    TraitFields,
    /// An `adobe_id_` name with fewer than 2 DPIDs.
    IdSyncFields,
    /// A `c2c_id_` name without exactly 2 DPIDs.
    C2cFields,
    /// A field that should be a number is empty or has non-digits.
    NotDecimal(Field),
    /// A number that does not fit a u32.
    OutOfRange(Field),
    /// The TIMESTAMP is not exactly 10 digits.
    Timestamp,
    /// No `.sync`/`.overwrite` after the stem.
    MissingMode,
    UnknownMode,
    IdSyncMode,
    IdSyncOverwrite,
    IdSyncPgp,
    Zip,
    OtherCompression,
    GzipInPgp,
    PgpInGzip,
    SplitAfterGz,
    Unexpected,
}

/// A numeric field of a name, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Dpid,
    Owner,
    Split,
    Timestamp,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Dpid => "DPID",
            Field::Owner => "OWNER",
            Field::Split => "SPLIT",
            Field::Timestamp => "timestamp",
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::TraitFields => {
                f.write_str("expected ftp_dpm_[odc_]DPID[_OWNER]_TIMESTAMP before the mode")
            }
            Reason::IdSyncFields => f.write_str("adobe_id_ names take at least 2 DPIDs"),
            Reason::C2cFields => f.write_str("c2c_id_ names take exactly 2 DPIDs"),
            Reason::NotDecimal(field) => write!(f, "{field} must be decimal digits"),
            Reason::OutOfRange(field) => write!(f, "{field} out of range"),
            Reason::Timestamp => f.write_str("timestamp must be exactly 10 digits"),
            Reason::MissingMode => f.write_str("missing mode (expected .sync or .overwrite)"),
            Reason::UnknownMode => f.write_str("unknown mode (expected .sync or .overwrite)"),
            Reason::IdSyncMode => f.write_str("unknown mode (ID-sync files take .sync)"),
            Reason::IdSyncOverwrite => f.write_str("ID-sync files have no .overwrite"),
            Reason::IdSyncPgp => f.write_str("ID-sync files cannot be PGP-encrypted"),
            Reason::Zip => f.write_str("zip compression is not supported"),
            Reason::OtherCompression => f.write_str("only gzip (.gz) compression is supported"),
            Reason::GzipInPgp => f.write_str("gzip inside PGP is rejected"),
            Reason::PgpInGzip => f.write_str("PGP inside gzip is rejected"),
            Reason::SplitAfterGz => f.write_str("the split number must come before .gz"),
            Reason::Unexpected => f.write_str("unexpected suffix after the name"),
        }
    }
}

/// `DPID[_OWNER]_TIMESTAMP` or `DPID_DPID..._TIMESTAMP`: the part before the first `.`,
/// split into the numbers before the timestamp and the timestamp.
struct Stem<'a> {
    /// The `_`-separated fields before the timestamp.
    ids: &'a str,
    timestamp: u64,
}

/// Splits `stem` at its last `_` and parses the timestamp after it.
fn split_stem(stem: &str) -> Result<Option<Stem<'_>>, Reason> {
    let Some((ids, ts)) = stem.rsplit_once('_') else {
        return Ok(None);
    };
    if ts.len() != TIMESTAMP_DIGITS || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::Timestamp);
    }
    let timestamp = parse_decimal(ts, Field::Timestamp)?;
    Ok(Some(Stem { ids, timestamp }))
}

/// An unsigned decimal that fits a u32.
fn parse_u32(text: &str, field: Field) -> Result<u32, Reason> {
    let value = parse_decimal(text, field)?;
    u32::try_from(value).map_err(|_| Reason::OutOfRange(field))
}

/// An unsigned decimal: one or more ASCII digits, no sign.
fn parse_decimal(text: &str, field: Field) -> Result<u64, Reason> {
    if text.is_empty() {
        return Err(Reason::NotDecimal(field));
    }
    let mut value: u64 = 0;
    for b in text.bytes() {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return Err(Reason::NotDecimal(field));
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(Reason::OutOfRange(field))?;
    }
    Ok(value)
}

/// The dot-separated suffixes after the mode: `[.SPLIT][.gz][.pgp|.gpg]`.
#[derive(Default)]
struct Suffixes {
    split: Option<u32>,
    gzip: bool,
    pgp: bool,
}

/// Parses the suffixes after the mode, in their one allowed order.
fn parse_suffixes(mut parts: std::str::Split<'_, char>) -> Result<Suffixes, Reason> {
    let mut out = Suffixes::default();
    let mut next = parts.next();
    if let Some(part) = next.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        out.split = Some(parse_u32(part, Field::Split)?);
        next = parts.next();
    }
    if next == Some("gz") {
        out.gzip = true;
        next = parts.next();
    }
    if let Some("pgp" | "gpg") = next {
        if out.gzip {
            return Err(Reason::GzipInPgp);
        }
        out.pgp = true;
        next = parts.next();
    }
    match next {
        None => Ok(out),
        Some(part) => Err(misplaced(part, &out)),
    }
}

/// The reason for a suffix found where it does not belong.
fn misplaced(part: &str, seen: &Suffixes) -> Reason {
    match part {
        "zip" => Reason::Zip,
        "bz2" | "xz" | "zst" | "7z" | "tar" | "tgz" | "lz4" | "lzma" | "Z" => {
            Reason::OtherCompression
        }
        "gz" if seen.pgp => Reason::PgpInGzip,
        p if seen.gzip && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Reason::SplitAfterGz
        }
        _ => Reason::Unexpected,
    }
}

fn parse_trait(rest: &str) -> Result<TraitName, Reason> {
    let (odc, rest) = match rest.strip_prefix(ODC_PREFIX) {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let mut parts = rest.split('.');
    let stem = parts.next().unwrap_or("");
    let mode = parts.next();
    let Some(Stem { ids, timestamp }) = split_stem(stem)? else {
        return Err(Reason::TraitFields);
    };
    let (dpid, owner) = match ids.split_once('_') {
        None => (parse_u32(ids, Field::Dpid)?, None),
        Some((_, owner)) if owner.contains('_') => return Err(Reason::TraitFields),
        Some((dpid, owner)) => (
            parse_u32(dpid, Field::Dpid)?,
            Some(parse_u32(owner, Field::Owner)?),
        ),
    };
    let mode = match mode {
        Some("sync") => Mode::Sync,
        Some("overwrite") => Mode::Overwrite,
        Some("zip") => return Err(Reason::Zip),
        Some(_) => return Err(Reason::UnknownMode),
        None => return Err(Reason::MissingMode),
    };
    let suffixes = parse_suffixes(parts)?;
    Ok(TraitName {
        odc,
        dpid,
        owner,
        timestamp,
        mode,
        split: suffixes.split,
        gzip: suffixes.gzip,
        pgp: suffixes.pgp,
    })
}

fn parse_idsync(rest: &str, kind: IdSyncKind) -> Result<IdSyncName, Reason> {
    let wrong_count = match kind {
        IdSyncKind::Adobe => Reason::IdSyncFields,
        IdSyncKind::C2c => Reason::C2cFields,
    };
    let mut parts = rest.split('.');
    let stem = parts.next().unwrap_or("");
    let mode = parts.next();
    let Some(Stem { ids, timestamp }) = split_stem(stem)? else {
        return Err(wrong_count);
    };
    let dpids = ids
        .split('_')
        .map(|id| parse_u32(id, Field::Dpid))
        .collect::<Result<Vec<_>, _>>()?;
    let count_ok = match kind {
        IdSyncKind::Adobe => dpids.len() >= 2,
        IdSyncKind::C2c => dpids.len() == 2,
    };
    if !count_ok {
        return Err(wrong_count);
    }
    match mode {
        Some("sync") => {}
        Some("overwrite") => return Err(Reason::IdSyncOverwrite),
        Some("zip") => return Err(Reason::Zip),
        Some(_) | None => return Err(Reason::IdSyncMode),
    }
    let suffixes = parse_suffixes(parts)?;
    if suffixes.pgp {
        return Err(Reason::IdSyncPgp);
    }
    Ok(IdSyncName {
        kind,
        dpids,
        timestamp,
        split: suffixes.split,
        gzip: suffixes.gzip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trait_name(
        dpid: Dpid,
        owner: Option<Dpid>,
        timestamp: u64,
        mode: Mode,
        split: Option<u32>,
        gzip: bool,
    ) -> Classified {
        Classified::Trait(TraitName {
            odc: false,
            dpid,
            owner,
            timestamp,
            mode,
            split,
            gzip,
            pgp: false,
        })
    }

    fn idsync(
        kind: IdSyncKind,
        dpids: &[Dpid],
        timestamp: u64,
        split: Option<u32>,
        gzip: bool,
    ) -> Classified {
        Classified::IdSync(IdSyncName {
            kind,
            dpids: dpids.to_vec(),
            timestamp,
            split,
            gzip,
        })
    }

    fn rejected(reason: &str) -> Classified {
        Classified::Rejected(reason.to_owned())
    }

    #[test]
    fn documented_trait_examples() {
        use Mode::*;
        let cases = [
            (
                "ftp_dpm_478_1366545717.sync.1.gz",
                trait_name(478, None, 1366545717, Sync, Some(1), true),
            ),
            (
                "ftp_dpm_478_1366545717.sync.2.gz",
                trait_name(478, None, 1366545717, Sync, Some(2), true),
            ),
            (
                "ftp_dpm_478_1366545717.sync",
                trait_name(478, None, 1366545717, Sync, None, false),
            ),
            (
                "ftp_dpm_478_567_1366545717.sync.gz",
                trait_name(478, Some(567), 1366545717, Sync, None, true),
            ),
            (
                "ftp_dpm_478_1366545717.overwrite",
                trait_name(478, None, 1366545717, Overwrite, None, false),
            ),
            (
                "ftp_dpm_1234_1445374061.overwrite",
                trait_name(1234, None, 1445374061, Overwrite, None, false),
            ),
            (
                "ftp_dpm_7_901_1368806402.sync",
                trait_name(7, Some(901), 1368806402, Sync, None, false),
            ),
            (
                "ftp_dpm_21_1234567890.sync",
                trait_name(21, None, 1234567890, Sync, None, false),
            ),
            (
                "ftp_dpm_33_21_1234567890.sync",
                trait_name(33, Some(21), 1234567890, Sync, None, false),
            ),
            (
                "ftp_dpm_20914_21_1234567890.sync",
                trait_name(20914, Some(21), 1234567890, Sync, None, false),
            ),
            (
                "ftp_dpm_20915_21_1234567890.sync",
                trait_name(20915, Some(21), 1234567890, Sync, None, false),
            ),
            (
                "ftp_dpm_121963_21_1234567890.sync",
                trait_name(121963, Some(21), 1234567890, Sync, None, false),
            ),
            (
                "ftp_dpm_999999_123_1560431657.sync.gz",
                trait_name(999999, Some(123), 1560431657, Sync, None, true),
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(classify(name), expected, "{name}");
        }
    }

    #[test]
    fn odc_and_pgp_variants() {
        assert_eq!(
            classify("ftp_dpm_odc_12345_1556223815.sync"),
            Classified::Trait(TraitName {
                odc: true,
                dpid: 12345,
                owner: None,
                timestamp: 1556223815,
                mode: Mode::Sync,
                split: None,
                gzip: false,
                pgp: false,
            })
        );
        assert_eq!(
            classify("ftp_dpm_odc_1_2_1556223815.overwrite.3.gpg"),
            Classified::Trait(TraitName {
                odc: true,
                dpid: 1,
                owner: Some(2),
                timestamp: 1556223815,
                mode: Mode::Overwrite,
                split: Some(3),
                gzip: false,
                pgp: true,
            })
        );
        for name in [
            "ftp_dpm_100_1234567890.sync.pgp",
            "ftp_dpm_100_1234567890.overwrite.gpg",
        ] {
            let Classified::Trait(parsed) = classify(name) else {
                panic!("{name} should parse");
            };
            assert!(parsed.pgp && !parsed.gzip, "{name}");
        }
        // The documented PGP examples have 9-digit timestamps: the contract's 10 digits win.
        assert_eq!(
            classify("ftp_dpm_100_123456789.sync.pgp"),
            rejected("timestamp must be exactly 10 digits")
        );
    }

    #[test]
    fn documented_idsync_examples() {
        use IdSyncKind::*;
        let cases = [
            (
                "adobe_id_111_222_333_444_1454442149.sync",
                idsync(Adobe, &[111, 222, 333, 444], 1454442149, None, false),
            ),
            (
                "adobe_id_123_898_456_1454442149.sync.1.gz",
                idsync(Adobe, &[123, 898, 456], 1454442149, Some(1), true),
            ),
            (
                "adobe_id_123_898_456_1454442149.sync.2.gz",
                idsync(Adobe, &[123, 898, 456], 1454442149, Some(2), true),
            ),
            (
                "c2c_id_123_898_1454442149.sync.gz",
                idsync(C2c, &[123, 898], 1454442149, None, true),
            ),
            (
                "adobe_id_0_12345_1476312152.sync",
                idsync(Adobe, &[0, 12345], 1476312152, None, false),
            ),
            (
                "adobe_id_12345_67890_1477846458.sync",
                idsync(Adobe, &[12345, 67890], 1477846458, None, false),
            ),
            (
                "c2c_id_999999_987654_1560431657.sync",
                idsync(C2c, &[999999, 987654], 1560431657, None, false),
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(classify(name), expected, "{name}");
        }
    }

    #[test]
    fn ignored_names() {
        for name in [
            "ftp_dpm_21_1234567890.sync.processed",
            "ftp_dpm_21_1234567890.sync.info",
            "adobe_id_0_21_1234567890.sync.info",
            "S3_1234_iter_1234567890123.info",
            "readme.txt",
            ".DS_Store",
            "",
            "FTP_DPM_21_1234567890.sync",
            "ftp_dpm",
            "c2c_i_1_2_1234567890.sync",
        ] {
            assert_eq!(classify(name), Classified::Ignored, "{name}");
        }
    }

    #[test]
    fn every_reject_reason() {
        let cases = [
            (
                "ftp_dpm_21_1234567890.sync.zip",
                "zip compression is not supported",
            ),
            (
                "ftp_dpm_21_1234567890.zip",
                "zip compression is not supported",
            ),
            (
                "ftp_dpm_21_1234567890.sync.1.zip",
                "zip compression is not supported",
            ),
            (
                "adobe_id_0_21_1234567890.sync.zip",
                "zip compression is not supported",
            ),
            (
                "ftp_dpm_21_1234567890.sync.bz2",
                "only gzip (.gz) compression is supported",
            ),
            (
                "ftp_dpm_21_1234567890.sync.gz.pgp",
                "gzip inside PGP is rejected",
            ),
            (
                "ftp_dpm_21_1234567890.sync.1.gz.gpg",
                "gzip inside PGP is rejected",
            ),
            (
                "ftp_dpm_21_1234567890.sync.pgp.gz",
                "PGP inside gzip is rejected",
            ),
            (
                "ftp_dpm_21_1234567890.sync.gz.1",
                "the split number must come before .gz",
            ),
            (
                "ftp_dpm_21_1234567890.sync.gz.gz",
                "unexpected suffix after the name",
            ),
            (
                "ftp_dpm_21_1234567890.sync.",
                "unexpected suffix after the name",
            ),
            (
                "ftp_dpm_21_1234567890.sync.txt",
                "unexpected suffix after the name",
            ),
            (
                "ftp_dpm_21_1234567890.sync.1.2",
                "unexpected suffix after the name",
            ),
            (
                "ftp_dpm_21_123456789.sync",
                "timestamp must be exactly 10 digits",
            ),
            (
                "ftp_dpm_21_12345678901.sync",
                "timestamp must be exactly 10 digits",
            ),
            (
                "ftp_dpm_21_12345x7890.sync",
                "timestamp must be exactly 10 digits",
            ),
            (
                "ftp_dpm_21_1234567890.SYNC",
                "unknown mode (expected .sync or .overwrite)",
            ),
            (
                "ftp_dpm_21_1234567890.update",
                "unknown mode (expected .sync or .overwrite)",
            ),
            (
                "ftp_dpm_21_1234567890",
                "missing mode (expected .sync or .overwrite)",
            ),
            (
                "adobe_id_0_21_1234567890.overwrite",
                "ID-sync files have no .overwrite",
            ),
            (
                "adobe_id_0_21_1234567890.txt",
                "unknown mode (ID-sync files take .sync)",
            ),
            (
                "adobe_id_0_21_1234567890",
                "unknown mode (ID-sync files take .sync)",
            ),
            (
                "adobe_id_0_21_1234567890.sync.pgp",
                "ID-sync files cannot be PGP-encrypted",
            ),
            (
                "c2c_id_1_2_3_1234567890.sync",
                "c2c_id_ names take exactly 2 DPIDs",
            ),
            (
                "c2c_id_1_1234567890.sync",
                "c2c_id_ names take exactly 2 DPIDs",
            ),
            (
                "c2c_id_1234567890.sync",
                "c2c_id_ names take exactly 2 DPIDs",
            ),
            (
                "adobe_id_21_1234567890.sync",
                "adobe_id_ names take at least 2 DPIDs",
            ),
            (
                "adobe_id_1234567890.sync",
                "adobe_id_ names take at least 2 DPIDs",
            ),
            (
                "ftp_dpm_1234567890.sync",
                "expected ftp_dpm_[odc_]DPID[_OWNER]_TIMESTAMP before the mode",
            ),
            (
                "ftp_dpm_1_2_3_1234567890.sync",
                "expected ftp_dpm_[odc_]DPID[_OWNER]_TIMESTAMP before the mode",
            ),
            (
                "ftp_dpm_odc_1234567890.sync",
                "expected ftp_dpm_[odc_]DPID[_OWNER]_TIMESTAMP before the mode",
            ),
            (
                "ftp_dpm_",
                "expected ftp_dpm_[odc_]DPID[_OWNER]_TIMESTAMP before the mode",
            ),
            ("ftp_dpm__1234567890.sync", "DPID must be decimal digits"),
            ("ftp_dpm_+21_1234567890.sync", "DPID must be decimal digits"),
            ("ftp_dpm_abc_1234567890.sync", "DPID must be decimal digits"),
            (
                "ftp_dpm_21__1234567890.sync",
                "OWNER must be decimal digits",
            ),
            (
                "ftp_dpm_21_x1_1234567890.sync",
                "OWNER must be decimal digits",
            ),
            ("adobe_id_0__1234567890.sync", "DPID must be decimal digits"),
            ("ftp_dpm_4294967296_1234567890.sync", "DPID out of range"),
            (
                "ftp_dpm_21_4294967296_1234567890.sync",
                "OWNER out of range",
            ),
            (
                "ftp_dpm_99999999999999999999999_1234567890.sync",
                "DPID out of range",
            ),
            (
                "ftp_dpm_21_1234567890.sync.4294967296",
                "SPLIT out of range",
            ),
            ("adobe_id_0_4294967296_1234567890.sync", "DPID out of range"),
        ];
        for (name, reason) in cases {
            assert_eq!(classify(name), rejected(reason), "{name}");
        }
    }

    #[test]
    fn edge_values_parse() {
        assert_eq!(
            classify("ftp_dpm_4294967295_0_0000000000.sync.4294967295"),
            trait_name(4294967295, Some(0), 0, Mode::Sync, Some(4294967295), false)
        );
        assert_eq!(
            classify("ftp_dpm_021_1234567890.sync.007"),
            trait_name(21, None, 1234567890, Mode::Sync, Some(7), false)
        );
        // A 10-digit DPID followed by a timestamp: the last number is always the timestamp.
        assert_eq!(
            classify("ftp_dpm_1234567890_1234567891.sync"),
            trait_name(1234567890, None, 1234567891, Mode::Sync, None, false)
        );
        assert_eq!(
            classify("ftp_dpm_0_21_9999999999.overwrite.gz"),
            trait_name(0, Some(21), 9999999999, Mode::Overwrite, None, true)
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        for name in [
            "ftp_dpm_é_1234567890.sync",
            "ftp_dpm_21_123456789é.sync",
            "c2c_id_",
            "adobe_id_.",
            "ftp_dpm_.",
            "ftp_dpm_21_1234567890.sync.é",
        ] {
            assert!(matches!(classify(name), Classified::Rejected(_)), "{name}");
        }
    }
}
