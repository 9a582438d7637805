//! Fetches a few lines of an inbound file by number, for receipt samples of lines whose
//! outcome is only known after the merge (No Trait Realized, over the per-user limit).
//!
//! Reads sequentially and stops after the last wanted line, so samples near the start of a
//! large (even gzip) file cost little.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// The physical lines `wanted` (1-based, any order) of `path`, without their LF, each cut to
/// at most `max_bytes`. Lines past the end are absent from the result.
pub fn lines_at(
    path: &Path,
    gzip: bool,
    wanted: &[u64],
    max_bytes: usize,
) -> std::io::Result<BTreeMap<u64, Vec<u8>>> {
    let mut wanted: Vec<u64> = wanted.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let mut cursor = LineCursor::open(path, gzip)?;
    for n in wanted {
        match cursor.line(n, max_bytes)? {
            Some(text) => {
                out.insert(n, text.to_vec());
            }
            None => break,
        }
    }
    Ok(out)
}

/// Reads a file's physical lines forward, one wanted line at a time, holding only the current
/// one: for the rejects file, which may need every line of a large file.
pub struct LineCursor {
    reader: BufReader<Box<dyn Read>>,
    /// The number of the line in `kept` (0 before the first).
    number: u64,
    kept: Vec<u8>,
    eof: bool,
}

impl LineCursor {
    /// Opens `path` (gzip when `gzip`), skipping a UTF-8 BOM.
    pub fn open(path: &Path, gzip: bool) -> std::io::Result<LineCursor> {
        let file = File::open(path)?;
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
                128 * 1024,
                file,
            )))
        } else {
            Box::new(file)
        };
        let mut reader = BufReader::with_capacity(128 * 1024, reader);
        if reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
            reader.consume(3);
        }
        Ok(LineCursor {
            reader,
            number: 0,
            kept: Vec::new(),
            eof: false,
        })
    }

    /// Line `n` (1-based) without its LF, cut to at most `max_bytes`; `None` past the end.
    /// `n` must not be below a line asked for before (the cursor only moves forward); asking
    /// for the same line again returns it again.
    pub fn line(&mut self, n: u64, max_bytes: usize) -> std::io::Result<Option<&[u8]>> {
        while self.number < n {
            if self.eof || !self.next_line(max_bytes)? {
                self.eof = true;
                return Ok(None);
            }
        }
        Ok((self.number == n).then_some(self.kept.as_slice()))
    }

    /// Reads the next line into `kept`; `false` at the end of the text.
    fn next_line(&mut self, max_bytes: usize) -> std::io::Result<bool> {
        // A hostile file may hold one enormous line: read it in bounded steps and keep only
        // the prefix we need.
        self.kept.clear();
        let mut any = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            any = true;
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = max_bytes.saturating_sub(self.kept.len());
            self.kept.extend_from_slice(&buf[..take.min(room)]);
            self.reader.consume(take);
            if done {
                break;
            }
        }
        if !any {
            return Ok(false);
        }
        self.number += 1;
        if self.kept.last() == Some(&b'\n') {
            self.kept.pop();
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fetches_plain_and_gzip_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = b"\xEF\xBB\xBFfirst\nsecond\r\n\nfourth-is-long";
        let plain = dir.path().join("a");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("a.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(text).unwrap();
        enc.finish().unwrap();
        for (path, gzip) in [(&plain, false), (&gz, true)] {
            let got = lines_at(path, gzip, &[4, 1, 2, 9], 6).unwrap();
            let want: BTreeMap<u64, Vec<u8>> = [
                (1, b"first".to_vec()),
                (2, b"second".to_vec()),
                (4, b"fourth".to_vec()),
            ]
            .into_iter()
            .collect();
            assert_eq!(got, want);
        }
    }
}
