//! Outbound file names and the default line layout (CONTRACT §6, AAM-REFERENCE §5.1 and §5.2).
//!
//! Owns two pure formatters: [`OutboundName`] (the name of one exported file, of its whole
//! batch and of the batch's `.info` control file) and [`default_line`] (one user's line when a
//! destination has no template). Inputs are plain values the integrator maps from the
//! `[[destination]]` config; outputs are strings and bytes. Nothing here touches the disk.
//!
//! Name grammar (CONTRACT §6):
//!
//! ```text
//! SYNC_TYPE_DID[_MASTER_DPID][_PID_ALIAS]_(iter|full)_TIMESTAMP13[NNN].sync[.gz]
//! ```
//!
//! Decisions on what the docs leave open:
//! - `SYNC_TYPE` is lower case (`s3`, `ftp`, `http`), as the config spells it and as the macro
//!   page lists it; AAM's examples also show `S3_`.
//! - `MASTER_DPID` is printed exactly when it is `Some`, `Some(0)` included. AAM's examples
//!   print it only for destinations that set it (`S3_1234_20914_...`, `ftp_215_888_...`), so
//!   the integrator should map the config's default `master_dpid = 0` (unset) to `None`.
//! - `TIMESTAMP` is 13 digits of Unix milliseconds (the file-name page, the API and the
//!   delivery-timeframe page agree; only the macro page shows 10 digits).
//! - Split parts are numbered from 1, zero-padded to 3 digits and printed in full past 999
//!   (`...0001000.sync`); the unsplit file has no number.

use std::fmt::Write as _;

use thiserror::Error;

use super::template::push_u64;
use crate::config::{ExportMode, SyncType};

/// Smallest 13-digit millisecond timestamp (2001-09-09T01:46:40Z).
const MIN_TIMESTAMP_MS: i64 = 1_000_000_000_000;
/// Largest 13-digit millisecond timestamp (2286-11-20T17:46:39.999Z).
const MAX_TIMESTAMP_MS: i64 = 9_999_999_999_999;

/// Why an outbound name cannot be formed. Each message names the destination (DID).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// `sync_type` is not one of `s3`, `ftp`, `http`.
    #[error(
        "destination {did}: sync type {sync_type:?} is not one of \"s3\", \"ftp\", \"http\" \
         (lower case, as in the config)"
    )]
    SyncType {
        /// The destination ID.
        did: u32,
        /// The rejected value.
        sync_type: String,
    },
    /// `pid_alias` is empty or holds a character that cannot sit in a file name.
    #[error(
        "destination {did}: PID alias {alias:?} cannot be part of a file name \
         (it must be non-empty, without '/', '\\', '.', whitespace or control characters)"
    )]
    PidAlias {
        /// The destination ID.
        did: u32,
        /// The rejected alias.
        alias: String,
    },
    /// The timestamp does not have exactly 13 digits.
    #[error(
        "destination {did}: timestamp {timestamp_ms} ms does not have 13 digits \
         (Unix milliseconds between 2001-09-09 and 2286-11-20 UTC)"
    )]
    Timestamp {
        /// The destination ID.
        did: u32,
        /// The rejected timestamp.
        timestamp_ms: i64,
    },
    /// Part numbers start at 1 (`001`); 0 has no meaning.
    #[error("destination {did}: split part numbers start at 1, got 0")]
    PartZero {
        /// The destination ID.
        did: u32,
    },
}

/// The name of one outbound file (or, with `part: None`, of the unsplit batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundName<'a> {
    /// `s3`, `ftp` or `http` (see [`sync_type_str`]).
    pub sync_type: &'a str,
    /// The destination ID (DID, `ORDER_ID` in templates).
    pub did: u32,
    /// `MASTER_DPID`; `None` omits the field (see the module docs for the config mapping).
    pub master_dpid: Option<u32>,
    /// `PID_ALIAS`; `None` omits the field.
    pub pid_alias: Option<&'a str>,
    /// `iter` or `full`.
    pub mode: ExportMode,
    /// The batch's time, Unix milliseconds UTC; must have exactly 13 digits.
    pub timestamp_ms: i64,
    /// `None` for an unsplit file; `Some(n)` (n ≥ 1) for part n, printed as `NNN`.
    pub part: Option<u32>,
    /// Appends `.gz`.
    pub gzip: bool,
}

impl OutboundName<'_> {
    /// The file name, e.g. `s3_1234_20914_XYZCustomer_iter_1486140844000001.sync.gz`.
    pub fn file_name(&self) -> Result<String, NameError> {
        let mut name = self.batch_root()?;
        if let Some(part) = self.part {
            if part == 0 {
                return Err(NameError::PartZero { did: self.did });
            }
            // `write!` into a String cannot fail.
            let _ = write!(name, "{part:03}");
        }
        name.push_str(".sync");
        if self.gzip {
            name.push_str(".gz");
        }
        Ok(name)
    }

    /// The root of the batch: the name without part number and extension, e.g.
    /// `s3_1234_20914_XYZCustomer_iter_1486140844000`. `part` and `gzip` are ignored.
    pub fn batch_root(&self) -> Result<String, NameError> {
        self.check()?;
        let mut root = String::with_capacity(64);
        root.push_str(self.sync_type);
        let _ = write!(root, "_{}", self.did);
        if let Some(master) = self.master_dpid {
            let _ = write!(root, "_{master}");
        }
        if let Some(alias) = self.pid_alias {
            root.push('_');
            root.push_str(alias);
        }
        root.push('_');
        root.push_str(mode_str(self.mode));
        let _ = write!(root, "_{}", self.timestamp_ms);
        Ok(root)
    }

    /// The batch's transfer-control file name, `<batch_root>.info` (AAM-REFERENCE §5.4).
    pub fn info_name(&self) -> Result<String, NameError> {
        let mut name = self.batch_root()?;
        name.push_str(".info");
        Ok(name)
    }

    /// The same name without a part number: the batch's whole file, used as the `.info`
    /// `Totals.FileName`.
    pub fn unsplit(&self) -> Self {
        OutboundName {
            part: None,
            ..*self
        }
    }

    fn check(&self) -> Result<(), NameError> {
        if !matches!(self.sync_type, "s3" | "ftp" | "http") {
            return Err(NameError::SyncType {
                did: self.did,
                sync_type: self.sync_type.to_owned(),
            });
        }
        if let Some(alias) = self.pid_alias {
            let bad =
                |c: char| matches!(c, '/' | '\\' | '.') || c.is_whitespace() || c.is_control();
            if alias.is_empty() || alias.chars().any(bad) {
                return Err(NameError::PidAlias {
                    did: self.did,
                    alias: alias.to_owned(),
                });
            }
        }
        if !(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&self.timestamp_ms) {
            return Err(NameError::Timestamp {
                did: self.did,
                timestamp_ms: self.timestamp_ms,
            });
        }
        Ok(())
    }
}

/// `iter` or `full`, as names, default lines and the `SYNC_MODE` macro print it.
pub fn mode_str(mode: ExportMode) -> &'static str {
    match mode {
        ExportMode::Iter => "iter",
        ExportMode::Full => "full",
    }
}

/// `s3`, `ftp` or `http`, as names and the `SYNC_TYPE` macro print it.
pub fn sync_type_str(sync_type: SyncType) -> &'static str {
    match sync_type {
        SyncType::S3 => "s3",
        SyncType::Ftp => "ftp",
        SyncType::Http => "http",
    }
}

/// Appends one user's default line (AAM-REFERENCE §5.2), without the line terminator: the
/// file writer ends every row, default or templated, with one LF.
///
/// - `iter`: `UUID<SP>SEGMENTS<SP>REMOVED`, always exactly two spaces so the columns stay
///   positional. A user with no current segments gets an empty middle field
///   (`UUID<SP><SP>25,28`, AAM open question §10.15) and one with no removals a trailing space
///   (`UUID<SP>24,26<SP>`).
/// - `full`: `UUID<SP>SEGMENTS`; removals are not written (a full file lists every current
///   segment, so `removed` is ignored).
///
/// Segment IDs are written in the order given; the caller sorts them.
///
/// ```
/// use segmill::config::ExportMode;
/// use segmill::outbound::names::default_line;
/// let mut out = Vec::new();
/// default_line(&mut out, "59767559181262060060278870901087098252", &[24, 26, 27], &[25, 28], ExportMode::Iter);
/// assert_eq!(out, b"59767559181262060060278870901087098252 24,26,27 25,28");
/// ```
pub fn default_line(
    out: &mut Vec<u8>,
    uuid: &str,
    segments: &[u32],
    removed: &[u32],
    mode: ExportMode,
) {
    out.extend_from_slice(uuid.as_bytes());
    out.push(b' ');
    push_id_list(out, segments);
    if mode == ExportMode::Iter {
        out.push(b' ');
        push_id_list(out, removed);
    }
}

fn push_id_list(out: &mut Vec<u8>, ids: &[u32]) {
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_u64(out, u64::from(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(
        sync_type: &'static str,
        did: u32,
        master: Option<u32>,
        alias: Option<&'static str>,
    ) -> OutboundName<'static> {
        OutboundName {
            sync_type,
            did,
            master_dpid: master,
            pid_alias: alias,
            mode: ExportMode::Iter,
            timestamp_ms: 1_486_140_844_000,
            part: None,
            gzip: true,
        }
    }

    #[test]
    fn formats_all_fields_and_parts() {
        let n = name("s3", 1234, Some(20914), Some("XYZCustomer"));
        assert_eq!(
            n.file_name().unwrap(),
            "s3_1234_20914_XYZCustomer_iter_1486140844000.sync.gz"
        );
        assert_eq!(
            n.batch_root().unwrap(),
            "s3_1234_20914_XYZCustomer_iter_1486140844000"
        );
        assert_eq!(
            n.info_name().unwrap(),
            "s3_1234_20914_XYZCustomer_iter_1486140844000.info"
        );
        let p = OutboundName {
            part: Some(2),
            gzip: false,
            ..n
        };
        assert_eq!(
            p.file_name().unwrap(),
            "s3_1234_20914_XYZCustomer_iter_1486140844000002.sync"
        );
        assert_eq!(p.batch_root().unwrap(), n.batch_root().unwrap());
        assert_eq!(
            p.unsplit().file_name().unwrap(),
            "s3_1234_20914_XYZCustomer_iter_1486140844000.sync"
        );
        let big = OutboundName {
            part: Some(1000),
            ..n
        };
        assert_eq!(
            big.file_name().unwrap(),
            "s3_1234_20914_XYZCustomer_iter_14861408440001000.sync.gz"
        );
    }

    /// Every example name of AAM-REFERENCE §5.1 that fits the contract's grammar. The docs
    /// print `S3_` in some; the contract fixes lower case, so those compare case-insensitively
    /// and exactly in lower case.
    #[test]
    fn aam_examples() {
        use ExportMode::{Full, Iter};
        let ex = |sync_type, master, alias, mode, timestamp_ms, part| OutboundName {
            sync_type,
            did: 1234,
            master_dpid: Some(master),
            pid_alias: alias,
            mode,
            timestamp_ms,
            part,
            gzip: true,
        };
        let xyz = Some("XYZCustomer");
        let (t0, t1, t2) = (1_486_140_844_000, 1_486_140_843_000, 1_486_140_843_200);
        let cases = [
            (
                "S3_1234_20914_XYZCustomer_iter_1486140844000.sync.gz",
                ex("s3", 20914, xyz, Iter, t0, None),
            ),
            (
                "S3_1234_20914_XYZCustomer_iter_1486140844000001.sync.gz",
                ex("s3", 20914, xyz, Iter, t0, Some(1)),
            ),
            (
                "S3_1234_20914_XYZCustomer_iter_1486140844000002.sync.gz",
                ex("s3", 20914, xyz, Iter, t0, Some(2)),
            ),
            (
                "S3_1234_20914_XYZCustomer_full_1486140844000.sync.gz",
                ex("s3", 20914, xyz, Full, t0, None),
            ),
            (
                "S3_1234_20914_XYZCustomer_full_1486140844000001.sync.gz",
                ex("s3", 20914, xyz, Full, t0, Some(1)),
            ),
            (
                "ftp_1234_20915_iter_1486140843000.sync.gz",
                ex("ftp", 20915, None, Iter, t1, None),
            ),
            (
                "ftp_1234_20915_iter_1486140843000001.sync.gz",
                ex("ftp", 20915, None, Iter, t1, Some(1)),
            ),
            (
                "ftp_1234_20915_full_1486140843000.sync.gz",
                ex("ftp", 20915, None, Full, t1, None),
            ),
            (
                "ftp_1234_45454_XYZCustomer_iter_1486140843000.sync.gz",
                ex("ftp", 45454, xyz, Iter, t1, None),
            ),
            (
                "ftp_1234_45454_XYZCustomer_full_1486140843200.sync.gz",
                ex("ftp", 45454, xyz, Full, t2, None),
            ),
            (
                "ftp_1234_45454_XYZCustomer_full_1486140843200001.sync.gz",
                ex("ftp", 45454, xyz, Full, t2, Some(1)),
            ),
        ];
        for (doc, n) in cases {
            let got = n.file_name().unwrap();
            assert!(got.eq_ignore_ascii_case(doc), "{got} vs {doc}");
            assert_eq!(got, doc.replacen("S3_", "s3_", 1));
        }
        // Not in the grammar as printed: `s3_123456_9999_full_1566906141001.csv` (template
        // extension) and `ftp_215_888[_20915]_iter_1449756724.sync` (10-digit seconds, CONFLICT
        // §9.4). With the contract's 13-digit milliseconds the latter reads:
        let n = OutboundName {
            sync_type: "ftp",
            did: 215,
            master_dpid: Some(888),
            pid_alias: None,
            mode: ExportMode::Iter,
            timestamp_ms: 1_449_756_724_000,
            part: None,
            gzip: false,
        };
        assert_eq!(
            n.file_name().unwrap(),
            "ftp_215_888_iter_1449756724000.sync"
        );
        // The `.info` example's batch (`ftp_12345_67890_..._1500727351632`): root and control
        // file name of the same batch always agree on the mode, unlike the docs' example.
        let n = OutboundName {
            sync_type: "ftp",
            did: 12345,
            master_dpid: Some(67890),
            pid_alias: None,
            mode: ExportMode::Full,
            timestamp_ms: 1_500_727_351_632,
            part: Some(1),
            gzip: true,
        };
        assert_eq!(
            n.file_name().unwrap(),
            "ftp_12345_67890_full_1500727351632001.sync.gz"
        );
        assert_eq!(
            n.info_name().unwrap(),
            "ftp_12345_67890_full_1500727351632.info"
        );
        assert_eq!(
            n.unsplit().file_name().unwrap(),
            "ftp_12345_67890_full_1500727351632.sync.gz"
        );
    }

    #[test]
    fn optional_fields_are_omitted_and_zero_master_is_printed() {
        let n = OutboundName {
            mode: ExportMode::Full,
            ..name("http", 7, None, None)
        };
        assert_eq!(n.file_name().unwrap(), "http_7_full_1486140844000.sync.gz");
        let zero = OutboundName {
            master_dpid: Some(0),
            ..n
        };
        assert_eq!(
            zero.file_name().unwrap(),
            "http_7_0_full_1486140844000.sync.gz"
        );
    }

    #[test]
    fn rejects_bad_values_with_the_destination() {
        let n = name("s3", 1234, None, None);
        let upper = OutboundName {
            sync_type: "S3",
            ..n
        };
        assert_eq!(
            upper.file_name().unwrap_err().to_string(),
            "destination 1234: sync type \"S3\" is not one of \"s3\", \"ftp\", \"http\" (lower case, as in the config)"
        );
        let alias = OutboundName {
            pid_alias: Some("a b"),
            ..n
        };
        assert!(matches!(
            alias.file_name(),
            Err(NameError::PidAlias { did: 1234, .. })
        ));
        let empty = OutboundName {
            pid_alias: Some(""),
            ..n
        };
        assert!(matches!(
            empty.batch_root(),
            Err(NameError::PidAlias { .. })
        ));
        for ts in [
            0,
            999_999_999_999,
            10_000_000_000_000,
            -1_486_140_844_000,
            i64::MIN,
        ] {
            let t = OutboundName {
                timestamp_ms: ts,
                ..n
            };
            assert_eq!(
                t.file_name(),
                Err(NameError::Timestamp {
                    did: 1234,
                    timestamp_ms: ts
                })
            );
        }
        let zero = OutboundName { part: Some(0), ..n };
        assert_eq!(zero.file_name(), Err(NameError::PartZero { did: 1234 }));
        assert_eq!(
            NameError::PartZero { did: 9 }.to_string(),
            "destination 9: split part numbers start at 1, got 0"
        );
    }

    #[test]
    fn default_lines() {
        let uuid = "59767559181262060060278870901087098252";
        let mut out = Vec::new();
        default_line(&mut out, uuid, &[24, 26, 27], &[25, 28], ExportMode::Iter);
        assert_eq!(
            out,
            b"59767559181262060060278870901087098252 24,26,27 25,28"
        );
        out.clear();
        default_line(&mut out, uuid, &[], &[25, 28], ExportMode::Iter);
        assert_eq!(out, b"59767559181262060060278870901087098252  25,28");
        out.clear();
        default_line(&mut out, uuid, &[24], &[], ExportMode::Iter);
        assert_eq!(out, b"59767559181262060060278870901087098252 24 ");
        out.clear();
        default_line(&mut out, uuid, &[24, 26, 27], &[25, 28], ExportMode::Full);
        assert_eq!(out, b"59767559181262060060278870901087098252 24,26,27");
        // Appends: the buffer is reused across rows.
        out.clear();
        out.extend_from_slice(b"x\n");
        default_line(&mut out, "1", &[u32::MAX, 0], &[], ExportMode::Full);
        assert_eq!(out, b"x\n1 4294967295,0");
    }

    #[test]
    fn string_helpers() {
        assert_eq!(mode_str(ExportMode::Iter), "iter");
        assert_eq!(mode_str(ExportMode::Full), "full");
        assert_eq!(sync_type_str(SyncType::S3), "s3");
        assert_eq!(sync_type_str(SyncType::Ftp), "ftp");
        assert_eq!(sync_type_str(SyncType::Http), "http");
    }
}
