//! `outbound::template::Template::{parse, render}` on any template text.
//!
//! Properties beyond "no panic": parsing is deterministic; a template without `<`, `>` or `\`
//! is plain text and renders to itself; rendering appends (the buffer's previous content is
//! kept) and is deterministic, with full rows and with the empty header row; an error's
//! line and column point inside (or just past) the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmill::outbound::template::{Batch, Row, SegmentRef, Template, TraitRef};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Template::parse(text);
    assert_eq!(parsed, Template::parse(text), "parse is not deterministic");
    let plain = !text.contains(['<', '>', '\\']);
    let template = match parsed {
        Ok(t) => t,
        Err(e) => {
            assert!(!plain, "plain text {text:?} rejected: {e}");
            assert!(e.offset <= text.len(), "error offset past the end: {e:?}");
            assert!(e.line >= 1 && e.column >= 1, "error position: {e:?}");
            assert!(e.line <= text.lines().count() + 1, "error line: {e:?}");
            return;
        }
    };
    let segments = [
        SegmentRef {
            sid: 1001,
            last_update_ms: 1_795_312_800_000,
            last_realization_ms: -1,
        },
        SegmentRef {
            sid: u32::MAX,
            last_update_ms: i64::MIN,
            last_realization_ms: i64::MAX,
        },
    ];
    let removed = [SegmentRef {
        sid: 7,
        last_update_ms: 0,
        last_realization_ms: 0,
    }];
    let traits = [TraitRef {
        id: 24,
        last_realized_ms: 1,
        kind: 10,
    }];
    let dp = ["cust-001", "", "x\ty"];
    let row = Row {
        uuid: "00000000000000000000000000000000000042",
        dp_uuids: &dp,
        segments: &segments,
        removed: &removed,
        traits: &traits,
    };
    for timestamp_s in [0, 1_795_312_800, i64::MIN, i64::MAX, -62_135_596_801] {
        let batch = Batch {
            order_id: 7001,
            dpid: 21,
            master_dpid: if timestamp_s == 0 { None } else { Some(20914) },
            pid: 5,
            pid_alias: if timestamp_s == 0 {
                None
            } else {
                Some("Sample<DSP>")
            },
            sync_mode: "iter",
            sync_type: "s3",
            timestamp_s,
        };
        for r in [&row, &Row::EMPTY] {
            let mut out = b"prefix".to_vec();
            template.render(&batch, r, &mut out);
            assert!(out.starts_with(b"prefix"), "render must append");
            let mut again = Vec::new();
            template.render(&batch, r, &mut again);
            assert_eq!(&out[6..], &again[..], "render is not deterministic");
            if plain {
                assert_eq!(again, text.as_bytes(), "plain text must render to itself");
            }
        }
    }
});
