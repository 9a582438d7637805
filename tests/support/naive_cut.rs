// The long-line rule of `Chunk::bytes`, written naively: the oracle the reader's unit tests,
// `tests/read_props.rs` and the `read_chunks` fuzz target compare against. Included with
// `#[path]` by each; the includer has `KEPT_LINE_BYTES` in scope.

use super::KEPT_LINE_BYTES;

/// What is kept of one line (without its `\n`).
pub fn naive_kept(line: &[u8]) -> Vec<u8> {
    let k = KEPT_LINE_BYTES;
    if line.len() <= k {
        return line.to_vec();
    }
    let prefix = &line[..k];
    let looks_blank =
        prefix[..k - 1].iter().all(|&b| b == b' ') && matches!(prefix[k - 1], b' ' | b'\r');
    let content = line.strip_suffix(b"\r").unwrap_or(line);
    if !looks_blank || content.iter().all(|&b| b == b' ') {
        return prefix.to_vec();
    }
    let at = line
        .iter()
        .position(|&b| b != b' ')
        .expect("a byte that is not a space");
    let mut out = vec![b' '; k - 1];
    out.push(line[at]);
    if line[at] == b'\r' {
        out.push(line[at + 1]);
    }
    out
}

/// `text` with every line cut by [`naive_kept`].
pub fn naive_cut(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut lines = text.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        out.extend(naive_kept(line));
        if lines.peek().is_some() {
            out.push(b'\n');
        }
    }
    out
}
