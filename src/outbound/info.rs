//! Transfer-control (`.info`) files (CONTRACT §6, AAM-REFERENCE §5.4).
//!
//! Owns the bytes of a batch's `.info` file: strict JSON with AAM's key names, a fixed key
//! order (AAM's, which is also ASCII order) and fixed formatting (two-space indent, LF, a final
//! LF), so a re-run writes identical bytes. Does not own: computing sizes, line counts or MD5
//! digests (the file writer knows them as it writes), naming the file
//! ([`super::names::OutboundName::info_name`]) or writing it (last, after every data file).
//!
//! Decisions on what the docs leave open:
//! - Strict JSON (quoted keys, lower-case hex MD5), where AAM's sample has unquoted keys.
//! - `FileSequenceNumber` is 1-based and follows the order of `files`, matching split part
//!   numbers `001`, `002`, ...; an unsplit batch lists its one file as number 1.
//! - Totals are computed here from `files` and exclude the `.info` file itself.
//!
//! ```text
//! {
//!   "Files": [
//!     {
//!       "FileByteSize": 10,
//!       "FileLineCount": 2,
//!       "FileName": "s3_1234_iter_1486140844000001.sync",
//!       "FileSequenceNumber": 1,
//!       "md5": "0123456789abcdef0123456789abcdef"
//!     }
//!   ],
//!   "Totals": {
//!     "FileName": "s3_1234_iter_1486140844000.sync",
//!     "TotalByteSize": 10,
//!     "TotalNumberFiles": 1,
//!     "TotalNumberLines": 2
//!   }
//! }
//! ```

use thiserror::Error;

use super::template::push_u64;

/// One data file of a batch, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoFile<'a> {
    /// The file name, without folders.
    pub name: &'a str,
    /// Size in bytes as written (compressed when gzipped), header and blank lines included.
    pub byte_size: u64,
    /// Lines in the file, header and blank lines included.
    pub line_count: u64,
    /// MD5 of the file's bytes as written: 32 hex digits, either case (written lower case).
    pub md5_hex: &'a str,
}

/// Why a `.info` file cannot be formed. Each message names the batch and, where there is one,
/// the data file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InfoError {
    /// The digest is not 32 hexadecimal digits.
    #[error(
        "control file for {batch}: file {file}: md5 {md5:?} is not 32 hexadecimal digits \
         (pass the hex MD5 of the bytes as written)"
    )]
    Md5 {
        /// The batch's total file name.
        batch: String,
        /// The data file.
        file: String,
        /// The rejected digest.
        md5: String,
    },
    /// Byte or line totals do not fit 64 bits.
    #[error("control file for {batch}: total byte size or line count overflows 64 bits")]
    Overflow {
        /// The batch's total file name.
        batch: String,
    },
}

/// Appends the `.info` JSON of a batch to `out`. `total_name` is the batch's whole-file name
/// (`Totals.FileName`, normally `OutboundName::unsplit().file_name()`); `files` are the data
/// files in part order. On error nothing is appended.
pub fn write_info(
    out: &mut Vec<u8>,
    total_name: &str,
    files: &[InfoFile<'_>],
) -> Result<(), InfoError> {
    let mut total_bytes: u64 = 0;
    let mut total_lines: u64 = 0;
    for f in files {
        let is_md5 = f.md5_hex.len() == 32 && f.md5_hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_md5 {
            return Err(InfoError::Md5 {
                batch: total_name.to_owned(),
                file: f.name.to_owned(),
                md5: f.md5_hex.to_owned(),
            });
        }
        let overflow = || InfoError::Overflow {
            batch: total_name.to_owned(),
        };
        total_bytes = total_bytes.checked_add(f.byte_size).ok_or_else(overflow)?;
        total_lines = total_lines.checked_add(f.line_count).ok_or_else(overflow)?;
    }

    out.extend_from_slice(b"{\n  \"Files\": [");
    for (i, f) in files.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
        out.extend_from_slice(b"    {\n      \"FileByteSize\": ");
        push_u64(out, f.byte_size);
        out.extend_from_slice(b",\n      \"FileLineCount\": ");
        push_u64(out, f.line_count);
        out.extend_from_slice(b",\n      \"FileName\": ");
        push_json_string(out, f.name);
        out.extend_from_slice(b",\n      \"FileSequenceNumber\": ");
        push_u64(out, i as u64 + 1);
        out.extend_from_slice(b",\n      \"md5\": \"");
        out.extend(f.md5_hex.bytes().map(|b| b.to_ascii_lowercase()));
        out.extend_from_slice(b"\"\n    }");
    }
    if !files.is_empty() {
        out.extend_from_slice(b"\n  ");
    }
    out.extend_from_slice(b"],\n  \"Totals\": {\n    \"FileName\": ");
    push_json_string(out, total_name);
    out.extend_from_slice(b",\n    \"TotalByteSize\": ");
    push_u64(out, total_bytes);
    out.extend_from_slice(b",\n    \"TotalNumberFiles\": ");
    push_u64(out, files.len() as u64);
    out.extend_from_slice(b",\n    \"TotalNumberLines\": ");
    push_u64(out, total_lines);
    out.extend_from_slice(b"\n  }\n}\n");
    Ok(())
}

/// Appends `s` as a JSON string: `"` and `\` escaped, control characters as `\u00XX`.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECTED: &str = r#"{
  "Files": [
    {
      "FileByteSize": 293029329,
      "FileLineCount": 36893908,
      "FileName": "ftp_12345_67890_full_1500727351632001.sync.gz",
      "FileSequenceNumber": 1,
      "md5": "983f634be2ad5263c6a6c4958bf61d9f"
    },
    {
      "FileByteSize": 17,
      "FileLineCount": 3,
      "FileName": "ftp_12345_67890_full_1500727351632002.sync.gz",
      "FileSequenceNumber": 2,
      "md5": "d41d8cd98f00b204e9800998ecf8427e"
    }
  ],
  "Totals": {
    "FileName": "ftp_12345_67890_full_1500727351632.sync.gz",
    "TotalByteSize": 293029346,
    "TotalNumberFiles": 2,
    "TotalNumberLines": 36893911
  }
}
"#;

    fn files() -> [InfoFile<'static>; 2] {
        [
            InfoFile {
                name: "ftp_12345_67890_full_1500727351632001.sync.gz",
                byte_size: 293_029_329,
                line_count: 36_893_908,
                md5_hex: "983F634BE2AD5263C6A6C4958BF61D9F",
            },
            InfoFile {
                name: "ftp_12345_67890_full_1500727351632002.sync.gz",
                byte_size: 17,
                line_count: 3,
                md5_hex: "d41d8cd98f00b204e9800998ecf8427e",
            },
        ]
    }

    #[test]
    fn exact_bytes_and_strict_json() {
        let mut out = b"keep".to_vec();
        write_info(
            &mut out,
            "ftp_12345_67890_full_1500727351632.sync.gz",
            &files(),
        )
        .unwrap();
        assert_eq!(out.get(..4), Some(b"keep".as_slice()));
        let json = std::str::from_utf8(&out[4..]).unwrap();
        assert_eq!(json, EXPECTED);
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["Totals"]["TotalNumberFiles"], 2);
        assert_eq!(v["Files"][1]["FileSequenceNumber"], 2);
    }

    #[test]
    fn empty_batch() {
        let mut out = Vec::new();
        write_info(&mut out, "s3_1_iter_1486140844000.sync", &[]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\n  \"Files\": [],\n  \"Totals\": {\n    \"FileName\": \"s3_1_iter_1486140844000.sync\",\n    \
             \"TotalByteSize\": 0,\n    \"TotalNumberFiles\": 0,\n    \"TotalNumberLines\": 0\n  }\n}\n"
        );
    }

    #[test]
    fn escapes_names() {
        let mut out = Vec::new();
        push_json_string(&mut out, "a\"b\\c\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\u0001é\"".as_bytes());
    }

    #[test]
    fn rejects_bad_md5_and_overflow_without_writing() {
        let mut bad = files();
        bad[1].md5_hex = "983g634be2ad5263c6a6c4958bf61d9f";
        let mut out = Vec::new();
        let e = write_info(&mut out, "T.sync", &bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            "control file for T.sync: file ftp_12345_67890_full_1500727351632002.sync.gz: md5 \
             \"983g634be2ad5263c6a6c4958bf61d9f\" is not 32 hexadecimal digits (pass the hex MD5 \
             of the bytes as written)"
        );
        assert!(out.is_empty());
        bad[1].md5_hex = "abc";
        assert!(matches!(
            write_info(&mut out, "T.sync", &bad),
            Err(InfoError::Md5 { .. })
        ));
        let mut big = files();
        big[0].byte_size = u64::MAX;
        assert_eq!(
            write_info(&mut out, "T.sync", &big),
            Err(InfoError::Overflow {
                batch: "T.sync".into()
            })
        );
        assert!(out.is_empty());
    }
}
