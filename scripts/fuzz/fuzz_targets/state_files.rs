//! `profile::decode`, `profile::in_current_layout` (a format-1 partition read for its upgrade)
//! and `idsync::store::decode` on any payload (a partition file whose checksum happened to
//! match, or a bug in a writer).
//!
//! The first byte picks the decoder. An upgraded format-1 payload must decode in the current
//! layout. Properties beyond "no panic": an accepted payload
//! re-encodes to exactly the same bytes (the formats have one encoding), so nothing is silently
//! dropped or invented; decoding never allocates beyond what the payload can hold (a huge
//! count in a short payload fails fast, checked by libFuzzer's RSS limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmill::codec::Writer;
use segmill::{idsync, profile};

fuzz_target!(|data: &[u8]| {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    let mut w = Writer::default();
    if which % 3 == 0 {
        let Ok(profiles) = profile::decode(payload) else {
            return;
        };
        for p in &profiles {
            profile::encode_into(&mut w, p.key, p.events, &p.entries, &p.segments);
        }
    } else if which % 3 == 1 {
        if let Ok(upgraded) = profile::in_current_layout(1, payload.to_vec()) {
            assert!(
                profile::decode(&upgraded).is_ok(),
                "an upgraded format-1 partition does not decode"
            );
        }
        return;
    } else {
        let Ok(records) = idsync::store::decode(payload) else {
            return;
        };
        w.buf = idsync::store::encode(&records);
    }
    assert_eq!(w.buf, payload, "decode → encode changed the payload");
});
