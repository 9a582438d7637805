//! Golden tests of the outbound template engine against every example of AAM's macro pages
//! (AAM-REFERENCE §5.3, from `[OUT]outbound-macro-examples.md` and
//! `[OUT]outbound-template-macros.md`).
//!
//! Each test builds the batch and row that produce the documented output and asserts the exact
//! bytes. The docs render TAB as a space; where an example is otherwise inconsistent with its
//! own template, the test asserts what the template means and says why in a comment.
//!
//! This test binary counts heap allocations per thread, to check that rendering a row into a
//! warmed-up buffer allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use segmill::outbound::template::{
    Batch, Row, SegmentRef, TRAIT_TYPE_ONBOARDED, Template, TemplateErrorKind, TraitRef,
};

struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is a thread-local counter that never allocates (const-initialised `Cell`).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const UUID: &str = "07955261652886032950143702505894272138";

/// A batch with the values the examples print; each test overrides what it needs.
const BATCH: Batch<'static> = Batch {
    order_id: 888,
    dpid: 215,
    master_dpid: None,
    pid: 1159,
    pid_alias: None,
    sync_mode: "full",
    sync_type: "ftp",
    timestamp_s: 1_449_756_724,
};

fn seg(sid: u32) -> SegmentRef {
    SegmentRef {
        sid,
        last_update_ms: 0,
        last_realization_ms: 0,
    }
}

fn render(template: &str, batch: &Batch<'_>, row: &Row<'_>) -> String {
    let t = Template::parse(template).unwrap_or_else(|e| panic!("{template}: {e}"));
    let mut out = Vec::new();
    t.render(batch, row, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn dp_uuid_tab_uuid() {
    let row = Row {
        uuid: UUID,
        dp_uuids: &["123456"],
        ..Row::EMPTY
    };
    assert_eq!(
        render("<DP_UUID><TAB><UUID>", &BATCH, &row),
        "123456\t07955261652886032950143702505894272138"
    );
}

#[test]
fn uuid_and_dp_uuid_list_separated_by_tab() {
    let row = Row {
        uuid: UUID,
        dp_uuids: &["DP_UUID1", "DP_UUID2", "DP_UUID3"],
        ..Row::EMPTY
    };
    assert_eq!(
        render("<UUID><TAB><DP_UUID_LIST;separator=TAB>", &BATCH, &row),
        "07955261652886032950143702505894272138\tDP_UUID1\tDP_UUID2\tDP_UUID3"
    );
}

#[test]
fn segment_and_removed_segment_lists_separated_by_space() {
    let segs = [seg(105955), seg(101183), seg(101180), seg(101179)];
    let current = Row {
        uuid: UUID,
        dp_uuids: &["123456"],
        segments: &segs,
        ..Row::EMPTY
    };
    assert_eq!(
        render(
            r#"<DP_UUID> <SEGMENT_LIST;separator=" ">"#,
            &BATCH,
            &current
        ),
        "123456 105955 101183 101180 101179"
    );
    let removed = Row {
        uuid: UUID,
        dp_uuids: &["123456"],
        removed: &segs,
        ..Row::EMPTY
    };
    assert_eq!(
        render(
            r#"<DP_UUID> <REMOVED_SEGMENT_LIST;separator=" ">"#,
            &BATCH,
            &removed
        ),
        "123456 105955 101183 101180 101179"
    );
    // Each list reads only its own segments.
    assert_eq!(
        render(
            r#"<DP_UUID> <REMOVED_SEGMENT_LIST;separator=" ">"#,
            &BATCH,
            &current
        ),
        "123456 "
    );
}

#[test]
fn segment_list_with_attributes_and_static_macros() {
    let segs = [
        SegmentRef {
            sid: 103714,
            last_update_ms: 1_344_114_661_000,
            last_realization_ms: 0,
        },
        SegmentRef {
            sid: 103713,
            last_update_ms: 1_343_250_661_000,
            last_realization_ms: 0,
        },
    ];
    let row = Row {
        uuid: "00088008579683653741516297509717335000",
        dp_uuids: &["17t0aj01b120hp"],
        segments: &segs,
        ..Row::EMPTY
    };
    let batch = Batch { pid: 1159, ..BATCH };
    // The docs print `...1344114661000&5,103713,1,1343250661000`, without a final `&`. The
    // body ends with `&` and the list has no separator, so every item, the last included, ends
    // with `&`: that is what the template says, and what segmill writes.
    assert_eq!(
        render(
            "<PID><TAB><UUID><TAB><DP_UUID><TAB><SET_ATTRIBUTES><TAB><OPT_OUT><TAB>\
             <SEGMENT_LIST:{seg|<seg.type>,<seg.alias>,<OUTPUT_ATTRIBUTE_VALUE>,<seg.lastUpdateTime>&}>",
            &batch,
            &row
        ),
        "1159\t00088008579683653741516297509717335000\t17t0aj01b120hp\t1\t0\t\
         5,103714,1,1344114661000&5,103713,1,1343250661000&"
    );
}

#[test]
fn trait_list_separated_by_pipe() {
    let traits = [123, 456, 789].map(|id| TraitRef {
        id,
        last_realized_ms: 0,
        kind: TRAIT_TYPE_ONBOARDED,
    });
    let row = Row {
        uuid: UUID,
        dp_uuids: &["12345"],
        traits: &traits,
        ..Row::EMPTY
    };
    let batch = Batch { pid: 1131, ..BATCH };
    assert_eq!(
        render(
            r#"<PID><TAB><DP_UUID><TAB><SET_ATTRIBUTES><TAB><TRAIT_LIST;separator="|">"#,
            &batch,
            &row
        ),
        "1131\t12345\t1\t123|456|789"
    );
}

#[test]
fn header_order_id_and_sync_type() {
    // The docs print `888 full.sync` for `<ORDER_ID> <TAB><SYNC_TYPE>`. `full.sync` is no
    // SYNC_TYPE value (the same page lists ftp, http and s3) and the literal space before
    // <TAB> is lost. The template means ORDER_ID, a space, a TAB and the sync type.
    let batch = Batch {
        order_id: 888,
        sync_type: "ftp",
        ..BATCH
    };
    assert_eq!(
        render("<ORDER_ID> <TAB><SYNC_TYPE>", &batch, &Row::EMPTY),
        "888 \tftp"
    );
}

#[test]
fn file_name_template_with_splitnum() {
    // `s3_123456_9999_full_1566906141001.csv` from
    // `<SYNC_TYPE>_<ORDER_ID>_<DPID>_<SYNC_MODE>_<TIMESTAMP>SPLITNUM.csv`: TIMESTAMP is the
    // macro page's 10-digit seconds and SPLITNUM (bare text, no `<>`) becomes `001`. The
    // engine leaves bare text alone; replacing SPLITNUM is the file namer's job.
    let batch = Batch {
        order_id: 123456,
        dpid: 9999,
        sync_type: "s3",
        sync_mode: "full",
        timestamp_s: 1_566_906_141,
        ..BATCH
    };
    let name = render(
        "<SYNC_TYPE>_<ORDER_ID>_<DPID>_<SYNC_MODE>_<TIMESTAMP>SPLITNUM.csv",
        &batch,
        &Row::EMPTY,
    );
    assert_eq!(name, "s3_123456_9999_full_1566906141SPLITNUM.csv");
    assert_eq!(
        name.replace("SPLITNUM", "001"),
        "s3_123456_9999_full_1566906141001.csv"
    );
    // `ftp_215_888_iter_1449756724.sync` and its MASTER_DPID variant.
    let batch = Batch {
        order_id: 215,
        dpid: 888,
        master_dpid: Some(20915),
        sync_mode: "iter",
        ..BATCH
    };
    for (sync_type, expected) in [
        ("ftp", "ftp_215_888_iter_1449756724.sync"),
        ("http", "http_215_888_iter_1449756724.sync"),
        ("s3", "s3_215_888_iter_1449756724.sync"),
    ] {
        let batch = Batch { sync_type, ..batch };
        assert_eq!(
            render(
                "<SYNC_TYPE>_<ORDER_ID>_<DPID>_<SYNC_MODE>_<TIMESTAMP>.sync",
                &batch,
                &Row::EMPTY
            ),
            expected
        );
    }
    assert_eq!(
        render(
            "<SYNC_TYPE>_<ORDER_ID>_<DPID>_<MASTER_DPID>_<SYNC_MODE>_<TIMESTAMP>.sync",
            &batch,
            &Row::EMPTY
        ),
        "ftp_215_888_20915_iter_1449756724.sync"
    );
}

#[test]
fn timestamp_and_its_date_format() {
    // `TIMESTAMP`: "A 10-digit, UTC, Unix timestamp", example 1449756724; with
    // `format="YYYYMMDDhhmmss"` the same instant, 2015-12-10T14:12:04Z.
    assert_eq!(render("<TIMESTAMP>", &BATCH, &Row::EMPTY), "1449756724");
    assert_eq!(
        render(
            r#"<TIMESTAMP; format="YYYYMMDDhhmmss">"#,
            &BATCH,
            &Row::EMPTY
        ),
        "20151210141204"
    );
}

#[test]
fn macro_page_list_examples() {
    let segs = [seg(24), seg(26)];
    let traits = [
        TraitRef {
            id: 123,
            last_realized_ms: 1_449_756_724_000,
            kind: TRAIT_TYPE_ONBOARDED,
        },
        TraitRef {
            id: 456,
            last_realized_ms: 1_449_756_725_000,
            kind: 3,
        },
    ];
    let row = Row {
        uuid: UUID,
        segments: &segs,
        traits: &traits,
        ..Row::EMPTY
    };
    assert_eq!(
        render(
            r#"<SEGMENT_LIST:{seg|<seg.type>,<seg.sid>}; separator=",">"#,
            &BATCH,
            &row
        ),
        "5,24,5,26"
    );
    // The docs write `<TRAIT_LIST:{trait|<trait.Id>,<trait.lastRealized>};separator=","`
    // without the closing `>`: as printed it is an unclosed tag ...
    let e =
        Template::parse(r##"<TRAIT_LIST:{trait|<trait.Id>,<trait.lastRealized>};separator=",""##)
            .unwrap_err();
    assert_eq!(e.kind, TemplateErrorKind::UnclosedTag);
    // ... and closed it renders each trait's ID and last realization (Unix ms).
    assert_eq!(
        render(
            r#"<TRAIT_LIST:{trait|<trait.Id>,<trait.lastRealized>};separator=",">"#,
            &BATCH,
            &row
        ),
        "123,1449756724000,456,1449756725000"
    );
    assert_eq!(
        render(
            r#"<TRAIT_LIST:{trait|<trait.Id>,<trait.traitId>,<trait.type>,<trait.lastRealized>}; separator=",">"#,
            &BATCH,
            &row
        ),
        "123,123,10,1449756724000,456,456,3,1449756725000"
    );
}

const JSON_TEMPLATE: &str = r#"{"AdvertiserId":"<PIDALIAS>", "DataCenterId": 2,"TDID":"<DP_UUID>", "Data":[<SEGMENT_LIST:{seg|<OPEN_CURLY_BRACKET>"Name":"<seg.alias>"<CLOSE_CURLY_BRACKET>}; separator=","><if(SEGMENT_LIST && REMOVED_SEGMENT_LIST)><COMMA><endif> <REMOVED_SEGMENT_LIST:{seg|<OPEN_CURLY_BRACKET>"Name":"<seg.alias>", "TtlInMinutes":0<CLOSE_CURLY_BRACKET>}; separator=",">]}"#;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {e}: {text}"))
}

#[test]
fn conditional_json_without_removals() {
    let segs = [seg(4321)];
    let row = Row {
        uuid: UUID,
        dp_uuids: &["dfd215e4-8d6b-4fdb-90b9-fab4456f2c9d"],
        segments: &segs,
        ..Row::EMPTY
    };
    let batch = Batch {
        pid_alias: Some("12345"),
        ..BATCH
    };
    let out = render(JSON_TEMPLATE, &batch, &row);
    // The docs' output differs from its template in white space only (`2, "TDID"`,
    // `","Data"`, no space before `]`); the template's bytes are what it means.
    assert_eq!(
        out,
        r#"{"AdvertiserId":"12345", "DataCenterId": 2,"TDID":"dfd215e4-8d6b-4fdb-90b9-fab4456f2c9d", "Data":[{"Name":"4321"} ]}"#
    );
    assert_eq!(
        json(&out),
        json(
            r#"{"AdvertiserId":"12345", "DataCenterId": 2, "TDID":"dfd215e4-8d6b-4fdb-90b9-fab4456f2c9d","Data":[{"Name":"4321"}]}"#
        )
    );
}

#[test]
fn conditional_json_with_removals() {
    let segs = [seg(4321)];
    let removed = [seg(987), seg(654)];
    let row = Row {
        uuid: UUID,
        dp_uuids: &["9099e8fe-abab-5114-abaa-28bdaa0539ca"],
        segments: &segs,
        removed: &removed,
        ..Row::EMPTY
    };
    let batch = Batch {
        pid_alias: Some("12345"),
        ..BATCH
    };
    let out = render(JSON_TEMPLATE, &batch, &row);
    // White space differs from the docs' output as above, and the docs move the space after
    // the <COMMA> to after the first removed item; the template's bytes are what it means.
    assert_eq!(
        out,
        r#"{"AdvertiserId":"12345", "DataCenterId": 2,"TDID":"9099e8fe-abab-5114-abaa-28bdaa0539ca", "Data":[{"Name":"4321"}, {"Name":"987", "TtlInMinutes":0},{"Name":"654", "TtlInMinutes":0}]}"#
    );
    assert_eq!(
        json(&out),
        json(
            r#"{"AdvertiserId":"12345", "DataCenterId": 2,"TDID":"9099e8fe-abab-5114-abaa-28bdaa0539ca","Data":[{"Name":"4321"},{"Name":"987","TtlInMinutes":0}, {"Name":"654","TtlInMinutes":0}]}"#
        )
    );
}

#[test]
fn conditional_json_with_only_removals_has_no_leading_comma() {
    let removed = [seg(987)];
    let row = Row {
        uuid: UUID,
        dp_uuids: &["x"],
        removed: &removed,
        ..Row::EMPTY
    };
    let batch = Batch {
        pid_alias: Some("12345"),
        ..BATCH
    };
    let out = render(JSON_TEMPLATE, &batch, &row);
    assert_eq!(
        out,
        r#"{"AdvertiserId":"12345", "DataCenterId": 2,"TDID":"x", "Data":[ {"Name":"987", "TtlInMinutes":0}]}"#
    );
    json(&out);
}

#[test]
fn rendering_a_row_into_a_warm_buffer_does_not_allocate() {
    let t = Template::parse(JSON_TEMPLATE).unwrap();
    let f = Template::parse(
        r#"<TIMESTAMP; format="yyyy-MM-dd HH:mm:ss"><TAB><TRAIT_LIST:{t|<t.Id>:<t.lastRealized>}; separator=TAB>"#,
    )
    .unwrap();
    let segs = [seg(4321), seg(1), seg(u32::MAX)];
    let removed = [seg(987), seg(654)];
    let traits = [TraitRef {
        id: 7,
        last_realized_ms: -5,
        kind: TRAIT_TYPE_ONBOARDED,
    }];
    let row = Row {
        uuid: UUID,
        dp_uuids: &["9099e8fe-abab-5114-abaa-28bdaa0539ca"],
        segments: &segs,
        removed: &removed,
        traits: &traits,
    };
    let batch = Batch {
        pid_alias: Some("12345"),
        ..BATCH
    };
    let mut out = Vec::with_capacity(4096);
    let before = allocations();
    for _ in 0..1000 {
        out.clear();
        t.render(&batch, &row, &mut out);
        f.render(&batch, &row, &mut out);
    }
    assert_eq!(allocations() - before, 0);
    assert!(out.ends_with(b"2015-12-10 14:12:04\t7:-5"));
}
