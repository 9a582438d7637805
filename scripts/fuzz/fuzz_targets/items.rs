//! `parse::items` on any ITEMS text.
//!
//! Properties beyond "no panic": the iterator ends and is deterministic; items borrow the
//! input; signal keys are never empty nor `d_sid`/`d_unsid`/`ic`; `ic` values are never empty;
//! an unbalanced quote is always the last item; with no double quote in the text, the number
//! of items never exceeds the number of non-empty comma-separated pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmill::parse::{Item, Malformed, items};

fuzz_target!(|data: &[u8]| {
    let got: Vec<Item<'_>> = items(data).collect();
    let again: Vec<Item<'_>> = items(data).collect();
    assert_eq!(got, again, "items is not deterministic");
    for (i, item) in got.iter().enumerate() {
        match *item {
            Item::Signal { key, value } => {
                assert!(!key.is_empty(), "empty key in {data:?}");
                assert!(
                    key != b"d_sid" && key != b"d_unsid" && key != b"ic",
                    "reserved key as a signal in {data:?}"
                );
                assert!(within(key, data) && within(value, data));
            }
            Item::Ic(value) => {
                assert!(!value.is_empty(), "empty ic value in {data:?}");
                assert!(within(value, data));
            }
            Item::Malformed(Malformed::UnbalancedQuote) => {
                assert_eq!(
                    i + 1,
                    got.len(),
                    "items after an unbalanced quote in {data:?}"
                );
            }
            Item::Realize(_) | Item::Remove(_) | Item::Malformed(_) => {}
        }
    }
    if !data.contains(&b'"') {
        let pieces = data
            .split(|&b| b == b',')
            .filter(|p| p.iter().any(|&b| b != b' '))
            .count();
        assert_eq!(got.len(), pieces, "items of an unquoted text {data:?}");
    }
});

/// Whether `part` lies inside `whole` (pointer range). Empty parts may point anywhere.
fn within(part: &[u8], whole: &[u8]) -> bool {
    if part.is_empty() {
        return true;
    }
    let w = whole.as_ptr_range();
    let p = part.as_ptr_range();
    p.start >= w.start && p.end <= w.end
}
