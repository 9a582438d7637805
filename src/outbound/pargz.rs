//! gzip on the run's threads, the way pigz does it: the text arrives in blocks, each block is
//! deflated on its own (in parallel, a batch at a time) with the 32 KiB of text before it as its
//! dictionary, and the raw deflate pieces are joined, each ended by a sync flush at a byte
//! boundary, into one ordinary gzip member. Any gzip reader decodes it; the bytes depend only
//! on the text and where its blocks end, never on the thread count.
//!
//! A full batch is handed to the thread pool and the writer returns, so the caller makes the
//! next batch's text while this one is deflated; the next full batch first waits for it (and
//! helps with the pool's work meanwhile). Pieces are written in order.
//!
//! (`gzp` does this too, but its dictionary mode needs C zlib, which would replace the zlib-rs
//! backend the read path uses.)

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rayon::prelude::*;
use std::io::{self, Write};
use std::sync::mpsc;

/// Deflate's window: how far back a match can reach.
const WINDOW: usize = 32 * 1024;

/// Blocks compressed together, in parallel.
const BATCH: usize = 16;

/// A gzip member written to `out` from blocks of text.
pub struct ParGzWriter<W: Write> {
    out: W,
    level: Compression,
    pending: Vec<Vec<u8>>,
    /// The last [`WINDOW`] bytes of the text compressed so far: the next block's dictionary.
    tail: Vec<u8>,
    crc: Crc,
    /// The batch being deflated on the pool: its pieces, in order, when done.
    in_flight: Option<mpsc::Receiver<Pieces>>,
}

/// A batch's deflated pieces.
type Pieces = io::Result<Vec<Vec<u8>>>;

impl<W: Write> ParGzWriter<W> {
    /// Writes the gzip header (no name, mtime 0, OS unknown: the same text gives the same
    /// bytes) to `out`.
    pub fn new(mut out: W, level: Compression) -> io::Result<ParGzWriter<W>> {
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        Ok(ParGzWriter {
            out,
            level,
            pending: Vec::with_capacity(BATCH),
            tail: Vec::new(),
            crc: Crc::new(),
            in_flight: None,
        })
    }

    /// Adds one block of text. Where blocks end is part of the output bytes, so callers cut
    /// them by the text alone (the export writer: at the first line end past 128 KiB).
    pub fn write_block(&mut self, block: Vec<u8>) -> io::Result<()> {
        if block.is_empty() {
            return Ok(());
        }
        self.pending.push(block);
        if self.pending.len() >= BATCH {
            self.compress_pending(false)?;
        }
        Ok(())
    }

    /// Compresses what is pending, ends the deflate stream and writes the trailer; returns
    /// the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.compress_pending(true)?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        // ISIZE: the text's length modulo 2^32.
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.out)
    }

    /// Hands the pending blocks to the pool (see the module docs), after writing the batch
    /// before them; the last batch is deflated and written before this returns.
    fn compress_pending(&mut self, last: bool) -> io::Result<()> {
        let mut blocks = std::mem::take(&mut self.pending);
        if last && blocks.is_empty() {
            // The stream still needs its final (empty) block.
            blocks.push(Vec::new());
        }
        // Each block's dictionary: the text just before it, up to a window.
        let mut dicts = Vec::with_capacity(blocks.len());
        for block in &blocks {
            dicts.push(self.tail.clone());
            self.tail.extend_from_slice(block);
            let excess = self.tail.len().saturating_sub(WINDOW);
            self.tail.drain(..excess);
            self.crc.update(block);
        }
        if let Some(batch) = self.in_flight.take() {
            self.write_pieces(wait(&batch))?;
        }
        let level = self.level;
        if last {
            return self.write_pieces(deflate_batch(&blocks, &dicts, level, true));
        }
        let (done, batch) = mpsc::sync_channel(1);
        rayon::spawn(move || {
            // A panic here would abort the process (a spawned task has no caller to unwind
            // into): it becomes the batch's error instead.
            let pieces = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                deflate_batch(&blocks, &dicts, level, false)
            }))
            .unwrap_or_else(|_| Err(io::Error::other("deflating a gzip batch panicked")));
            // The writer may be gone (an error on its way out): then nobody wants the pieces.
            let _ = done.send(pieces);
        });
        self.in_flight = Some(batch);
        Ok(())
    }

    fn write_pieces(&mut self, pieces: Pieces) -> io::Result<()> {
        for piece in pieces? {
            self.out.write_all(&piece)?;
        }
        Ok(())
    }
}

/// Deflates `blocks` in parallel, each primed with its dictionary; `last` ends the stream
/// with the last block.
fn deflate_batch(blocks: &[Vec<u8>], dicts: &[Vec<u8>], level: Compression, last: bool) -> Pieces {
    let count = blocks.len();
    blocks
        .par_iter()
        .zip(dicts)
        .enumerate()
        .map_init(
            || Compress::new(level, false),
            |deflate, (i, (block, dict))| {
                deflate_block(deflate, block, dict, last && i + 1 == count)
            },
        )
        .collect()
}

/// The pieces of a batch handed to the pool. A pool thread runs the pool's tasks while it
/// waits (the batch's own among them: with one thread, it deflates the batch itself).
fn wait(batch: &mpsc::Receiver<Pieces>) -> Pieces {
    let gone = || Err(io::Error::other("a gzip batch ended without its output"));
    loop {
        match batch.try_recv() {
            Ok(pieces) => return pieces,
            Err(mpsc::TryRecvError::Disconnected) => return gone(),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            match batch.recv_timeout(std::time::Duration::from_micros(200)) {
                Ok(pieces) => return pieces,
                Err(mpsc::RecvTimeoutError::Disconnected) => return gone(),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Raw deflate of `text` primed with `dict`, ended by a sync flush (at a byte boundary, so
/// pieces can be joined) or, for the last block, by the end of the stream.
fn deflate_block(
    deflate: &mut Compress,
    text: &[u8],
    dict: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    deflate.reset();
    if !dict.is_empty() {
        deflate.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let start_in = deflate.total_in();
    let mut out = Vec::with_capacity(text.len() + text.len() / 16 + 64);
    loop {
        let consumed = (deflate.total_in() - start_in) as usize;
        let status = deflate
            .compress_vec(&text[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = (deflate.total_in() - start_in) as usize == text.len();
        // A flush is complete when it had room to spare; the end, when the stream says so.
        let done = match status {
            Status::StreamEnd => true,
            _ => !last && all_in && out.len() < out.capacity(),
        };
        if done {
            return Ok(out);
        }
        out.reserve(out.capacity().max(4096));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn compress(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut w = ParGzWriter::new(Vec::new(), Compression::new(6)).unwrap();
        for b in blocks {
            w.write_block(b.clone()).unwrap();
        }
        w.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut text = Vec::new();
        // A single-member reader: the output must be one gzip member.
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut text)
            .unwrap();
        text
    }

    /// Text with repeats across block edges (so matches reach into the dictionary).
    fn text(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        let words: Vec<String> = (0..500)
            .map(|i| format!("user{i:05}\tseg{}\n", i * 7))
            .collect();
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            out.extend_from_slice(words[(state >> 33) as usize % words.len()].as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn round_trips_through_a_single_member_reader() {
        for (len, block) in [
            (0, 1),
            (1, 1),
            (5000, 7000),
            (300_000, 100_000),
            (3 << 20, 131_072),
        ] {
            let t = text(len, len as u64);
            let blocks: Vec<Vec<u8>> = t.chunks(block).map(<[u8]>::to_vec).collect();
            let gz = compress(&blocks);
            assert_eq!(gunzip(&gz), t, "len {len}, blocks of {block}");
        }
    }

    #[test]
    fn bytes_do_not_depend_on_the_thread_count_and_the_dictionary_pays() {
        let t = text(2 << 20, 9);
        let blocks: Vec<Vec<u8>> = t.chunks(128 * 1024).map(<[u8]>::to_vec).collect();
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| compress(&blocks))
        };
        let one = on(1);
        assert_eq!(one, on(2));
        assert_eq!(one, on(5));
        // Without dictionaries, every block would restart its matches: larger.
        let mut independent = 0;
        for b in &blocks {
            let mut c = Compress::new(Compression::new(6), false);
            independent += deflate_block(&mut c, b, &[], false).unwrap().len();
        }
        assert!(one.len() < independent, "{} vs {independent}", one.len());
    }

    #[test]
    fn writers_inside_the_pool_wait_for_their_batches_on_any_thread_count() {
        // Three writers of 45 blocks each (batches in flight when the next fills), run as
        // the exports run them: in parallel, on the pool their batches go to.
        let texts: Vec<Vec<u8>> = (0..3).map(|i| text(45 * 4096, 20 + i)).collect();
        let blocks = |t: &Vec<u8>| t.chunks(4096).map(<[u8]>::to_vec).collect::<Vec<_>>();
        let alone: Vec<Vec<u8>> = texts.iter().map(|t| compress(&blocks(t))).collect();
        for threads in [1, 2, 3] {
            let together: Vec<Vec<u8>> = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| texts.par_iter().map(|t| compress(&blocks(t))).collect());
            assert_eq!(together, alone, "{threads} threads");
        }
        for (gz, t) in alone.iter().zip(&texts) {
            assert_eq!(&gunzip(gz), t);
        }
    }

    #[test]
    fn matches_what_gzip_tools_read() {
        // Decoded by flate2's multi-member reader too, and the trailer holds CRC and length.
        let t = text(400_000, 3);
        let gz = compress(&t.chunks(150_000).map(<[u8]>::to_vec).collect::<Vec<_>>());
        let mut again = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_end(&mut again)
            .unwrap();
        assert_eq!(again, t);
        let n = gz.len();
        let mut crc = Crc::new();
        crc.update(&t);
        assert_eq!(gz[n - 8..n - 4], crc.sum().to_le_bytes());
        assert_eq!(gz[n - 4..], (t.len() as u32).to_le_bytes());
    }
}
