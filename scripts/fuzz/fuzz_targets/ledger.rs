//! `state::Ledger::from_bytes` on any bytes (a damaged or hand-edited ledger file).
//!
//! Properties beyond "no panic": an accepted ledger writes back (`to_bytes`) to bytes that parse
//! to the same ledger and write back identically; its lookups are consistent (every entry is
//! found by its name; a hash lookup returns a processed entry with that hash).
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmill::state::{Ledger, Outcome};

fuzz_target!(|data: &[u8]| {
    let Ok(ledger) = Ledger::from_bytes(data) else {
        return;
    };
    let bytes = ledger.to_bytes();
    let back = Ledger::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("to_bytes output fails to parse: {e}"));
    assert_eq!(back.to_bytes(), bytes, "to_bytes is not a fixed point");
    assert_eq!(back.len(), ledger.len());
    for entry in ledger.iter() {
        let found = ledger
            .by_name(&entry.name)
            .expect("entry not found by its own name");
        assert_eq!(found, entry);
        if let Some(first) = ledger.by_hash(entry.hash) {
            assert_eq!(first.hash, entry.hash);
            assert_eq!(first.outcome, Outcome::Processed);
        }
    }
});
