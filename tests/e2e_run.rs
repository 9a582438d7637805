//! End-to-end tests of the nightly run through the real binary (issue "Core: the nightly run").
//!
//! Each test builds a temp folder with an inbound root and a config, runs `segmill` as a child
//! process and checks receipts, rejects, run reports, `inspect` output and exit codes against
//! exact numbers worked out by hand from the inbound lines (the comments show the working).

mod common;
mod common_servers;

use common::*;
use serde_json::json;

/// A 38-digit AAM UUID.
fn uuid(n: u64) -> String {
    format!("{n:038}")
}

const CRM: &str = r#"
[[data_source]]
id = 21
name = "CRM"

[[trait]]
id = 101
data_source = 21

[[trait]]
id = 102
data_source = 21

[[trait]]
id = 103
data_source = 21

[[trait]]
id = 104
data_source = 21

[[trait]]
id = 105
data_source = 21
"#;

// ---------------------------------------------------------------------------------------------
// 1. AAM-REFERENCE §2.9 use cases.

const DAY1: &str = "2026-11-01T02:00:00Z";
const DAY2: &str = "2026-11-02T02:00:00Z";
const DAY3: &str = "2026-11-03T02:00:00Z";

/// Day 1 of both §2.9 use cases: `visitor123` is ID-synced and gets a,b,c = 101,102,103.
fn aam_day1(env: &Env) {
    env.config(4, CRM);
    env.put(
        "date=2026-11-01/adobe_id_0_21_1761955200.sync",
        format!("{}\tvisitor123\n", uuid(123)).as_bytes(),
    );
    env.put(
        "date=2026-11-01/ftp_dpm_21_1761958800.sync",
        b"visitor123\td_sid=101,d_sid=102,d_sid=103\n",
    );
    env.run_ok(DAY1, 0);
    let r = env.receipt(&run_id(1, DAY1), "21");
    assert_counters(
        &r,
        &[
            ("records_received", 1),
            ("records_processed", 1),
            ("stored_records", 1),
            ("total_devices", 1),
            ("total_signals", 3),
            ("total_realized_traits", 3),
        ],
    );
    let idsync = env.idsync_receipt(&run_id(1, DAY1));
    assert_eq!(
        idsync,
        json!({"files": [{
            "name": "date=2026-11-01/adobe_id_0_21_1761955200.sync",
            "status": "processed",
            "rows": 1,
            "rejected_rows": 0,
            "mappings": 1,
            "mappings_stored": 1,
            "rejected": []
        }]})
    );
}

#[test]
fn aam_incremental_then_full() {
    let env = Env::new();
    aam_day1(&env);
    env.put(
        "date=2026-11-02/ftp_dpm_21_1762045200.overwrite",
        b"visitor123\td_sid=103,d_sid=104,d_sid=105\n",
    );
    env.run_ok(DAY2, 0);
    let r = env.receipt(&run_id(2, DAY2), "21");
    // c is realized again (used), d and e are new; a and b are dropped by the overwrite.
    assert_counters(
        &r,
        &[
            ("records_received", 1),
            ("records_processed", 1),
            ("stored_records", 1),
            ("total_devices", 1),
            ("total_signals", 3),
            ("total_realized_traits", 3),
            ("total_removed_traits", 2),
        ],
    );
    assert_eq!(
        receipt_files(&r),
        [
            (
                "date=2026-11-01/ftp_dpm_21_1761958800.sync".into(),
                "duplicate".into()
            ),
            (
                "date=2026-11-02/ftp_dpm_21_1762045200.overwrite".into(),
                "processed".into()
            ),
        ]
    );
    env.run_ok(DAY3, 0);
    let text = env.inspect_profile("visitor123", Some(21));
    assert_eq!(
        text,
        format!(
            "customer ID \"visitor123\" of DPID 21 is synced to AAM UUID {u}\n\
             profile {u}: 3 trait(s) (state as of 2026-11-03T02:00:00Z)\n  segments: none\n\
             \x20 trait      103  data source       21  realized 2026-11-02T02:00:00Z  expires 2027-03-02T02:00:00Z\n\
             \x20 trait      104  data source       21  realized 2026-11-02T02:00:00Z  expires 2027-03-02T02:00:00Z\n\
             \x20 trait      105  data source       21  realized 2026-11-02T02:00:00Z  expires 2027-03-02T02:00:00Z\n\
             profile customer 21:visitor123: no traits\n",
            u = uuid(123)
        )
    );
}

#[test]
fn aam_incremental_only() {
    let env = Env::new();
    aam_day1(&env);
    env.put(
        "date=2026-11-02/ftp_dpm_21_1762045200.sync",
        b"visitor123\td_sid=103,d_sid=104,d_sid=105\n",
    );
    env.run_ok(DAY2, 0);
    let r = env.receipt(&run_id(2, DAY2), "21");
    assert_counters(
        &r,
        &[
            ("records_received", 1),
            ("records_processed", 1),
            ("stored_records", 1),
            ("total_devices", 1),
            ("total_signals", 3),
            ("total_realized_traits", 3),
        ],
    );
    env.run_ok(DAY3, 0);
    assert_eq!(
        env.inspect_profile("visitor123", Some(21)),
        format!(
            "customer ID \"visitor123\" of DPID 21 is synced to AAM UUID {u}\n\
             profile {u}: 5 trait(s) (state as of 2026-11-03T02:00:00Z)\n  segments: none\n\
             \x20 trait      101  data source       21  realized 2026-11-01T02:00:00Z  expires 2027-03-01T02:00:00Z\n\
             \x20 trait      102  data source       21  realized 2026-11-01T02:00:00Z  expires 2027-03-01T02:00:00Z\n\
             \x20 trait      103  data source       21  realized 2026-11-02T02:00:00Z  expires 2027-03-02T02:00:00Z\n\
             \x20 trait      104  data source       21  realized 2026-11-02T02:00:00Z  expires 2027-03-02T02:00:00Z\n\
             \x20 trait      105  data source       21  realized 2026-11-02T02:00:00Z  expires 2027-03-02T02:00:00Z\n\
             profile customer 21:visitor123: no traits\n",
            u = uuid(123)
        )
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A receipt with every counter non-zero.

const CRM_AND_OTHER: &str = r#"
[[data_source]]
id = 22
name = "Other partner"

[[trait]]
id = 201
data_source = 22
"#;

/// Job 21 = a customer `.sync` file (format errors, no match, no trait realized, failed
/// validation, malformed items, removals, the per-user cap) plus an ODC file of the same
/// (DPID, OWNER), whose device IDs can be invalid. A customer file alone cannot have an invalid
/// ID, and a UUID or device file cannot have an unmatched one.
#[test]
fn receipt_with_every_counter() {
    let env = Env::new();
    env.config(4, &format!("{CRM}{CRM_AND_OTHER}"));
    env.put(
        "adobe_id_0_21_1763683200.sync",
        format!(
            "{}\tcust-1\n{}\tcust-2\n{}\tcust-3\n",
            uuid(1),
            uuid(2),
            uuid(3)
        )
        .as_bytes(),
    );
    let mut a = String::from(
        "cust-1\td_sid=101,d_sid=102\n\
         cust-1\td_unsid=101,color=red\n\
         cust-2\td_sid=201,x=\"bad\n\
         nobody\td_sid=101\n\
         a\tb\tc\n\
         \n",
    );
    // Lines 7..=208: cust-3 202 times; line 57 is a Format Error (not counted by the cap), so
    // line 208 is cust-3's 201st record and over the limit.
    for line in 7..=208 {
        if line == 57 {
            a.push_str("cust-3\tbad\ttabs\n");
        } else {
            a.push_str("cust-3\td_sid=103\n");
        }
    }
    env.put("ftp_dpm_21_1763700000.sync", a.as_bytes());
    env.put(
        "ftp_dpm_odc_21_1763700001.sync",
        b"idfa\tAEBE52E7-03EE-455A-B3C4-E57283966239\td_sid=104\n\
          idfa\taebe52e7-03ee-455a-b3c4-e57283966239\td_sid=104\n",
    );
    // Exit 1: format errors, an invalid device ID and a line over the cap were rejected.
    env.run_ok("2026-11-22T02:00:00Z", 1);
    let id = run_id(1, "2026-11-22T02:00:00Z");
    let r = env.receipt(&id, "21");
    // File A, by line: 1 Stored (realizes 101,102: 2 signals); 2 Stored (removes 101, which
    // cust-1 holds since line 1; color=red unused); 3 NTR (201 belongs to DPID 22: failed
    // validation; x="bad is malformed: 2 unused); 4 No Match; 5 Format Error; 6 blank (not a
    // record); 7..=208 cust-3: 200 Stored realizing 103, line 57 a Format Error, line 208 over
    // the cap. Received 5 + 202 = 207, processed 206, stored 2 + 200 = 202, signals
    // 2 + 2 + 2 + 200 = 206, unused 1 + 2 = 3, realized 2 + 200 = 202, devices cust-1, cust-3.
    // File B (ODC): line 1 a valid IDFA realizing 104, line 2 a lowercase IDFA: invalid.
    let file_a = json!({
        "name": "ftp_dpm_21_1763700000.sync",
        "status": "processed",
        "records_received": 207,
        "format_errors": 2,
        "invalid_aam_id": 0,
        "invalid_device_id": 0,
        "no_matching_aam_id": 1,
        "no_trait_realized": 1,
        "records_processed": 206,
        "stored_records": 202,
        "total_devices": 2,
        "total_signals": 206,
        "total_unused_signals": 3,
        "total_realized_traits": 202,
        "total_removed_traits": 1,
        "total_traits_failed_validation": 1,
        "total_users_with_failed_traits": 1,
        "lines_over_user_limit": 1,
        "malformed_items": 1
    });
    let file_b = json!({
        "name": "ftp_dpm_odc_21_1763700001.sync",
        "status": "processed",
        "records_received": 2,
        "format_errors": 0,
        "invalid_aam_id": 0,
        "invalid_device_id": 1,
        "no_matching_aam_id": 0,
        "no_trait_realized": 0,
        "records_processed": 2,
        "stored_records": 1,
        "total_devices": 1,
        "total_signals": 1,
        "total_unused_signals": 0,
        "total_realized_traits": 1,
        "total_removed_traits": 0,
        "total_traits_failed_validation": 0,
        "total_users_with_failed_traits": 0,
        "lines_over_user_limit": 0,
        "malformed_items": 0
    });
    assert_eq!(r["files"], json!([file_a, file_b]));
    assert_counters(
        &r,
        &[
            ("records_received", 209),
            ("format_errors", 2),
            ("invalid_device_id", 1),
            ("no_matching_aam_id", 1),
            ("no_trait_realized", 1),
            ("records_processed", 208),
            ("stored_records", 203),
            ("total_devices", 3),
            ("total_signals", 207),
            ("total_unused_signals", 3),
            ("total_realized_traits", 203),
            ("total_removed_traits", 1),
            ("total_traits_failed_validation", 1),
            ("total_users_with_failed_traits", 1),
            ("lines_over_user_limit", 1),
            ("malformed_items", 1),
        ],
    );
    assert_identity(&r);
    assert_identity(&file_a);
    assert_identity(&file_b);
    assert_eq!(r["job_start_time"], "2026-11-22 02:00:00");
    assert_eq!(r["job_end_time"], "2026-11-22 02:00:00");

    let tabs = "wrong number of TABs: a record is ID or ID<TAB>ITEMS (ODC files: \
                IDTYPE<TAB>ID<TAB>ITEMS)";
    let idfa = "not a valid IDFA (iOS) ID (36 characters, uppercase hex 8-4-4-4-12)";
    let a = "ftp_dpm_21_1763700000.sync";
    let b = "ftp_dpm_odc_21_1763700001.sync";
    let sample = |file: &str, line: u64, reason: &str, text: &str| json!({"file": file, "line": line, "reason": reason, "text": text});
    assert_eq!(
        r["error_samples"],
        json!({
            "format_errors": [
                sample(a, 5, tabs, "a\tb\tc"),
                sample(a, 57, tabs, "cust-3\tbad\ttabs"),
            ],
            "invalid_device_id": [
                sample(b, 2, idfa, "idfa\taebe52e7-03ee-455a-b3c4-e57283966239\td_sid=104"),
            ],
            "no_matching_aam_id": [
                sample(a, 4, "ID not synced for DPID 21", "nobody\td_sid=101"),
            ],
            "no_trait_realized": [
                sample(a, 3, "no trait realized: no item realized or removed a trait",
                       "cust-2\td_sid=201,x=\"bad"),
            ],
            "lines_over_user_limit": [
                sample(a, 208, "over the limit of 200 lines per user ID per file",
                       "cust-3\td_sid=103"),
            ],
        })
    );
    assert_eq!(
        env.rejects(&id, "21"),
        format!(
            "{a}\t4\tID not synced for DPID 21\tnobody\\td_sid=101\n\
             {a}\t5\t{tabs}\ta\\tb\\tc\n\
             {a}\t57\t{tabs}\tcust-3\\tbad\\ttabs\n\
             {a}\t208\tover the limit of 200 lines per user ID per file\tcust-3\\td_sid=103\n\
             {b}\t2\t{idfa}\tidfa\\taebe52e7-03ee-455a-b3c4-e57283966239\\td_sid=104\n"
        )
    );
    let text = env.receipt_text(&id, "21");
    let body: Vec<&str> = text.lines().skip(3).collect();
    assert_eq!(
        body,
        [
            "File name:",
            a,
            b,
            "Records received: 209",
            "Format Errors: 2",
            "Invalid AAM ID: 0",
            "Invalid Device ID: 1",
            "No Matching AAM ID: 1",
            "No Trait Realized: 1",
            "Records processed: 208",
            "Stored Records: 203",
            "Total devices: 3",
            "Total signals: 207",
            "Total unused signals: 3",
            "Total realized traits: 203",
            "Total removed traits: 1",
            "Total traits failed validation: 1",
            "Total users that have traits which failed validation: 1",
            "Lines over the per-user limit: 1",
            "Malformed items: 1",
            "Job start time: 2026-11-22 02:00:00",
            "Job end time: 2026-11-22 02:00:00",
        ]
    );
    // cust-1 ends with 102 only (101 removed on line 2); the IDFA device holds 104.
    let at = "2026-11-22T02:00:00Z";
    assert_eq!(
        env.inspect_profile(&uuid(1), None),
        format!(
            "profile {}: 1 trait(s) (state as of {at})\n  segments: none\n{}",
            uuid(1),
            trait_line(102, 21, at, "expires 2027-03-22T02:00:00Z")
        )
    );
    assert_eq!(
        env.inspect_profile("AEBE52E7-03EE-455A-B3C4-E57283966239", Some(20915)),
        format!(
            "profile device 20915:AEBE52E7-03EE-455A-B3C4-E57283966239: 1 trait(s) (state as of \
             {at})\n  segments: none\n{}",
            trait_line(104, 21, at, "expires 2027-03-22T02:00:00Z")
        )
    );
}

/// One trait line of `inspect profile`.
fn trait_line(trait_id: u32, data_source: u32, realized: &str, expiry: &str) -> String {
    format!("  trait {trait_id:>8}  data source {data_source:>8}  realized {realized}  {expiry}\n")
}

// ---------------------------------------------------------------------------------------------
// 3. Determinism across thread counts and chunk sizes.

const XDEVICE: &str = r#"
[[data_source]]
id = 33
name = "Loyalty"
cross_device = true

[[trait]]
id = 301
data_source = 33

[[trait]]
id = 302
data_source = 33
"#;

/// A lowercase GAID built from `n`.
fn gaid(n: u32) -> String {
    format!("{n:08x}-caa0-47b6-908d-ffba3fa184f2")
}

/// Day 1 of the determinism drop: ID sync, a customer `.sync` with a BOM, CRLF lines, quoted
/// items and one user over the 200-line cap, a gzip device file, a UUID overwrite and a
/// cross-device file. Returns how many of the customer file's lines are over the cap.
fn determinism_day1(env: &Env) -> u64 {
    let mut sync = String::new();
    for n in 1..=40u64 {
        sync.push_str(&format!("{}\tc{n}\n", uuid(1000 + n)));
    }
    env.put(
        "date=2026-11-21/adobe_id_0_21_1763683200.sync",
        sync.as_bytes(),
    );
    env.put(
        "date=2026-11-21/adobe_id_0_33_1763683201.sync",
        format!("{}\tl1\n{}\tl2\n", uuid(1001), uuid(2002)).as_bytes(),
    );
    let mut a = String::from("\u{feff}");
    let mut c7_records = 0;
    for i in 0..400u32 {
        let n = i % 50; // c41..c49 and c0 are unsynced
        let case = i % 13;
        if (n == 7 && matches!(case, 0 | 1 | 4)) || case >= 5 {
            c7_records += 1;
        }
        match case {
            0 => a.push_str(&format!(
                "c{n}\td_sid=10{},d_unsid=10{}\r\n",
                i % 5 + 1,
                i % 3 + 1
            )),
            1 => a.push_str(&format!(
                "c{n}\t\"k,{i}\"=\"v=1,2\", 10{}:0, ,\n",
                i % 5 + 1
            )),
            2 => a.push_str("broken\tline\there\n"),
            3 => a.push('\n'),
            4 => a.push_str(&format!("c{n}\td_sid=201,d_sid=999,ic=7\n")),
            _ => a.push_str(&format!("c7\td_sid=10{}\n", i % 5 + 1)),
        }
    }
    env.put("date=2026-11-21/ftp_dpm_21_1763700000.sync", a.as_bytes());
    let mut g = String::new();
    for i in 0..30u32 {
        g.push_str(&format!("{}\td_sid=10{}\n", gaid(i % 7), i % 5 + 1));
    }
    g.push_str("NOT-A-GAID\td_sid=101\n");
    env.put_gz(
        "date=2026-11-21/ftp_dpm_20914_21_1763700001.sync.gz",
        g.as_bytes(),
    );
    env.put(
        "date=2026-11-21/ftp_dpm_0_21_1763700002.overwrite",
        format!(
            "{}\td_sid=104\n{}\n{}\td_sid=105,d_unsid=101\n123\td_sid=101\n",
            uuid(1003),
            uuid(1004),
            uuid(1005)
        )
        .as_bytes(),
    );
    env.put(
        "date=2026-11-21/ftp_dpm_33_1763700003.sync",
        b"l1\td_sid=301\nl2\td_sid=302\nl-unsynced\td_sid=301,d_sid=302\n",
    );
    c7_records - 200
}

/// Day 2: an overwrite of customer IDs and a gzip file with one device over the cap.
fn determinism_day2(env: &Env) {
    let mut o = String::new();
    for n in 1..=20u32 {
        o.push_str(&format!("c{n}\td_sid=10{}\n", n % 5 + 1));
    }
    o.push_str("c21\n");
    env.put(
        "date=2026-11-22/ftp_dpm_21_1763786400.overwrite",
        o.as_bytes(),
    );
    let mut g = String::new();
    for i in 0..230u32 {
        g.push_str(&format!(
            "{}\td_sid=10{},d_unsid=10{}\n",
            gaid(1),
            i % 5 + 1,
            i % 4 + 1
        ));
    }
    env.put_gz(
        "date=2026-11-22/ftp_dpm_20914_21_1763786401.sync.gz",
        g.as_bytes(),
    );
}

#[test]
fn output_does_not_depend_on_threads_chunk_size_or_op_budget() {
    let env = Env::new();
    let catalog = format!("{CRM}{CRM_AND_OTHER}{XDEVICE}");
    // (threads, chunk bytes, op budget in bytes: 1 spills every chunk's ops to disk, where
    // customer IDs are looked up: in the parse, or after it a few ID-sync partitions at a time)
    let mut variants: Vec<(&str, Option<&str>, Option<&str>, &str)> = ["1", "2"]
        .into_iter()
        .flat_map(|t| {
            [None, Some("1"), Some("7"), Some("4096")]
                .into_iter()
                .map(move |c| (t, c, None, "auto"))
        })
        .collect();
    variants.extend([
        ("1", None, Some("1"), "auto"),
        ("2", Some("7"), Some("1"), "auto"),
        ("2", None, Some("3000"), "auto"),
        ("2", None, None, "fused"),
        ("2", Some("7"), None, "deferred"),
        ("1", None, Some("1"), "deferred"),
        ("2", None, Some("3000"), "deferred"),
    ]);
    let day = |as_of: &str, expected_code: i32| {
        let mut reference: Option<std::collections::BTreeMap<String, Vec<u8>>> = None;
        for (threads, chunk, budget, lookups) in &variants {
            let state = format!(
                "state-t{threads}-c{}-b{}-{lookups}",
                chunk.unwrap_or("default"),
                budget.unwrap_or("default")
            );
            env.config_with_state(&state, 8, &catalog);
            if let Some(b) = budget {
                let text = std::fs::read_to_string(env.config_path()).expect("config");
                let text = text.replace("[run]\n", &format!("[run]\nops_memory_bytes = {b}\n"));
                std::fs::write(env.config_path(), text).expect("config");
            }
            let mut args = vec!["--threads", threads, "run", "--as-of", as_of];
            args.extend_from_slice(&["--lookups", lookups]);
            if let Some(c) = chunk {
                args.extend_from_slice(&["--chunk-bytes", c]);
            }
            if budget == &Some("1") {
                args.extend_from_slice(&["--log-level", "segmill=info"]);
            }
            let out = env.segmill(&args);
            assert_eq!(out.code, expected_code, "{state}: {out:#?}");
            if budget == &Some("1") {
                assert!(out.stderr.contains("spilled to disk"), "{state}: {out:#?}");
            }
            let tree = snapshot(&env.root().join(&state), |rel| {
                rel == "lock" || rel.starts_with("runs/")
            });
            match &reference {
                None => reference = Some(tree),
                Some(r) => assert_same_tree(&state, r, &tree),
            }
        }
        reference.expect("at least one variant")
    };
    let over = determinism_day1(&env);
    let t1 = day("2026-11-22T02:00:00Z", 1);
    determinism_day2(&env);
    let t2 = day("2026-11-23T02:00:00Z", 1);

    // The inputs did reach the cap and the gzip reader, and both runs wrote every job.
    let receipt = |tree: &std::collections::BTreeMap<String, Vec<u8>>, name: &str| {
        let bytes = tree.get(name).unwrap_or_else(|| panic!("{name} missing"));
        serde_json::from_slice::<serde_json::Value>(bytes).expect("receipt JSON")
    };
    assert_eq!(over, 46);
    let r = receipt(&t1, "receipts/000001-20261122T020000Z/21.json");
    assert_eq!(r["lines_over_user_limit"], over);
    assert_eq!(r["records_received"], 400 - 31); // 31 blank lines (i % 13 == 3)
    let r = receipt(&t1, "receipts/000001-20261122T020000Z/20914_21.json");
    assert_eq!(r["records_received"], 31);
    assert_eq!(r["invalid_device_id"], 1);
    let r = receipt(&t2, "receipts/000002-20261123T020000Z/20914_21.json");
    assert_eq!(r["records_received"], 230);
    assert_eq!(r["lines_over_user_limit"], 30);
    for job in ["0_21", "20914_21", "21", "33"] {
        for run in ["000001-20261122T020000Z", "000002-20261123T020000Z"] {
            for ext in ["json", "txt", "rejects.tsv"] {
                let name = format!("receipts/{run}/{job}.{ext}");
                assert!(t2.contains_key(&name), "{name} missing");
            }
        }
    }
    assert!(
        t2.keys()
            .any(|k| k.starts_with("gen-000002/profiles/part-"))
    );
    assert!(t2.keys().any(|k| k.starts_with("gen-000002/idsync/")));
}

// ---------------------------------------------------------------------------------------------
// 4. Exit codes and the lock.

const AS_OF: &str = "2026-11-22T02:00:00Z";

/// A drop whose only trait file is clean: exit 0.
fn clean_drop(env: &Env) {
    env.config(4, CRM);
    env.put(
        "adobe_id_0_21_1763683200.sync",
        format!("{}\tcust-1\n", uuid(1)).as_bytes(),
    );
    // An unmatched ID and a line that realizes nothing are normal outcomes: still exit 0.
    env.put(
        "ftp_dpm_21_1763700000.sync",
        b"cust-1\td_sid=101\nnobody\td_sid=101\ncust-1\tcolor=red\n",
    );
}

#[test]
fn exit_0_for_a_clean_run() {
    let env = Env::new();
    clean_drop(&env);
    let out = env.run_ok(AS_OF, 0);
    assert!(
        out.stdout
            .starts_with("run 000001-20261122T020000Z (exit 0)\n"),
        "{out:#?}"
    );
    let r = env.receipt(&run_id(1, AS_OF), "21");
    assert_counters(
        &r,
        &[
            ("records_received", 3),
            ("records_processed", 3),
            ("no_matching_aam_id", 1),
            ("no_trait_realized", 1),
            ("stored_records", 1),
            ("total_devices", 1),
            ("total_signals", 2),
            ("total_unused_signals", 1),
            ("total_realized_traits", 1),
        ],
    );
    assert_eq!(env.run_report(&run_id(1, AS_OF))["exit_code"], 0);
}

#[test]
fn exit_1_for_a_rejected_line() {
    let env = Env::new();
    clean_drop(&env);
    env.put("ftp_dpm_21_1763700001.sync", b"cust-1\td_sid=102\tx\n");
    env.run_ok(AS_OF, 1);
    assert_eq!(env.run_report(&run_id(1, AS_OF))["exit_code"], 1);
}

#[test]
fn exit_1_for_a_rejected_file() {
    for (name, content) in [
        ("ftp_dpm_21_1763700001.sync.zip", &b"PK"[..]),
        ("ftp_dpm_999_1763700001.sync", &b"cust-1\td_sid=101\n"[..]),
        ("ftp_dpm_21_1763700001.sync", &b""[..]),
        ("ftp_dpm_21_1763700001.sync.gz", &b"not gzip"[..]),
    ] {
        let env = Env::new();
        clean_drop(&env);
        env.put(name, content);
        let out = env.run(AS_OF, &[]);
        assert_eq!(out.code, 1, "{name}: {out:#?}");
        let report = env.run_report(&run_id(1, AS_OF));
        let rejected = report["rejected_files"].as_array().expect("rejected_files");
        assert_eq!(rejected.len(), 1, "{name}: {report:#}");
        assert_eq!(rejected[0]["name"], name);
        // The clean file was still applied.
        assert_eq!(env.receipt(&run_id(1, AS_OF), "21")["stored_records"], 1);
    }
}

#[test]
fn exit_1_for_a_rejected_idsync_row() {
    let env = Env::new();
    clean_drop(&env);
    env.put(
        "adobe_id_0_21_1763683201.sync",
        format!("{}\tcust-2 \n", uuid(2)).as_bytes(),
    );
    env.run_ok(AS_OF, 1);
    let idsync = env.idsync_receipt(&run_id(1, AS_OF));
    assert_eq!(idsync["files"][1]["rejected_rows"], 1, "{idsync:#}");
}

#[test]
fn exit_2_for_a_bad_config_names_file_and_key() {
    let env = Env::new();
    env.config(
        4,
        "[[data_source]]\nid = 21\nname = \"CRM\"\n\n[[trait]]\nid = 24\ndata_source = 99\n",
    );
    let out = env.run(AS_OF, &[]);
    assert_eq!(out.code, 2, "{out:#?}");
    let config = env.config_path();
    assert_eq!(
        out.stderr,
        format!(
            "segmill: error: {}: trait 24: data_source 99 is not a defined data source\n",
            config.display()
        )
    );
    assert!(!env.state().join("CURRENT").exists());

    env.config(0, "");
    let out = env.run(AS_OF, &[]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert_eq!(
        out.stderr,
        format!(
            "segmill: error: {}: run.partitions: 0 is out of range (allowed: 1..=65536)\n",
            config.display()
        )
    );
}

#[test]
fn exit_2_for_an_unreadable_state_commits_nothing() {
    let env = Env::new();
    clean_drop(&env);
    env.run_ok(AS_OF, 0);
    // Corrupt the current generation's manifest: its checksum in CURRENT no longer matches.
    let manifest = env.state().join("gen-000001/manifest.json");
    let mut bytes = std::fs::read(&manifest).expect("manifest");
    bytes.push(b' ');
    std::fs::write(&manifest, bytes).expect("write manifest");
    env.put("ftp_dpm_21_1763700001.sync", b"cust-1\td_sid=102\n");
    let before = env.state_snapshot_all();
    let out = env.run("2026-11-23T02:00:00Z", &[]);
    assert_eq!(out.code, 2, "{out:#?}");
    let expected = format!(
        "segmill: error: cannot read the current state generation: state file {} is corrupt: \
         checksum is ",
        manifest.display()
    );
    assert!(out.stderr.starts_with(&expected), "{}", out.stderr);
    assert_same_tree(
        "state after a failed run",
        &before,
        &env.state_snapshot_all(),
    );
}

#[test]
fn exit_3_while_another_process_holds_the_lock() {
    let env = Env::new();
    clean_drop(&env);
    env.run_ok(AS_OF, 0);
    env.put("ftp_dpm_21_1763700001.sync", b"cust-1\td_sid=102\n");
    let state = segmill::state::StateDir::open(&env.state()).expect("open state");
    let guard = state.lock().expect("take the lock");
    let before = env.state_snapshot_all();
    let out = env.run("2026-11-23T02:00:00Z", &[]);
    assert_eq!(out.code, 3, "{out:#?}");
    assert_eq!(
        out.stderr,
        format!(
            "segmill: another segmill run holds the lock on {}\n",
            env.state().display()
        )
    );
    assert_same_tree(
        "state after a locked run",
        &before,
        &env.state_snapshot_all(),
    );
    drop(guard);
    // Once the lock is free, the same run goes through.
    env.run_ok("2026-11-23T02:00:00Z", 0);
    assert_eq!(
        env.receipt(&run_id(2, "2026-11-23T02:00:00Z"), "21")["total_realized_traits"],
        1
    );
}

// ---------------------------------------------------------------------------------------------
// 5. The ledger: duplicates, re-sends, --reprocess, rejected files.

#[test]
fn ledger_skips_duplicates_and_tracks_resends() {
    let env = Env::new();
    clean_drop(&env);
    let day1 = "2026-11-22T02:00:00Z";
    let day2 = "2026-11-23T02:00:00Z";
    let day3 = "2026-11-24T02:00:00Z";
    let day4 = "2026-11-25T02:00:00Z";
    let run1 = run_id(1, day1);
    env.run_ok(day1, 0);

    // Same folder again: nothing new, every file a duplicate of run 1, exit 0.
    env.run_ok(day2, 0);
    let run2 = run_id(2, day2);
    let already = format!("already processed by run {run1}");
    assert_eq!(
        report_files(&env.run_report(&run2)),
        files(&[
            ("adobe_id_0_21_1763683200.sync", "duplicate", Some(&already)),
            ("ftp_dpm_21_1763700000.sync", "duplicate", Some(&already)),
        ])
    );
    let r = env.receipt(&run2, "21");
    assert_counters(&r, &[]);
    assert_eq!(
        r["files"][0],
        json!({
            "name": "ftp_dpm_21_1763700000.sync",
            "status": "duplicate",
            "processed_by_run": run1,
            "records_received": 0, "format_errors": 0, "invalid_aam_id": 0,
            "invalid_device_id": 0, "no_matching_aam_id": 0, "no_trait_realized": 0,
            "records_processed": 0, "stored_records": 0, "total_devices": 0,
            "total_signals": 0, "total_unused_signals": 0, "total_realized_traits": 0,
            "total_removed_traits": 0, "total_traits_failed_validation": 0,
            "total_users_with_failed_traits": 0, "lines_over_user_limit": 0,
            "malformed_items": 0
        })
    );
    assert_eq!(
        env.idsync_receipt(&run2)["files"][0]["status"],
        "duplicate",
        "the ID-sync file is a duplicate too"
    );

    // A new name with the same bytes is processed (a re-send refreshes TTLs) and says so.
    let content = std::fs::read(env.inbound().join("ftp_dpm_21_1763700000.sync")).expect("read");
    env.put("ftp_dpm_21_1763790000.sync", &content);
    env.run_ok(day3, 0);
    let run3 = run_id(3, day3);
    let r = env.receipt(&run3, "21");
    assert_eq!(
        receipt_files(&r),
        [
            ("ftp_dpm_21_1763700000.sync".into(), "duplicate".into()),
            ("ftp_dpm_21_1763790000.sync".into(), "processed".into()),
        ]
    );
    assert_eq!(r["files"][1]["duplicate_of"], "ftp_dpm_21_1763700000.sync");
    assert_eq!(r["total_realized_traits"], 1);
    assert_eq!(
        env.inspect_profile(&uuid(1), None),
        format!(
            "profile {}: 1 trait(s) (state as of {day3})\n  segments: none\n{}",
            uuid(1),
            trait_line(101, 21, day3, "expires 2027-03-24T02:00:00Z")
        )
    );

    // --reprocess forces a name the ledger has.
    let out = env.run(day4, &["--reprocess", "ftp_dpm_21_1763700000.sync"]);
    assert_eq!(out.code, 0, "{out:#?}");
    let run4 = run_id(4, day4);
    let r = env.receipt(&run4, "21");
    assert_eq!(
        receipt_files(&r),
        [
            ("ftp_dpm_21_1763700000.sync".into(), "processed".into()),
            ("ftp_dpm_21_1763790000.sync".into(), "duplicate".into()),
        ]
    );
    assert_counters(
        &r,
        &[
            ("records_received", 3),
            ("records_processed", 3),
            ("no_matching_aam_id", 1),
            ("no_trait_realized", 1),
            ("stored_records", 1),
            ("total_devices", 1),
            ("total_signals", 2),
            ("total_unused_signals", 1),
            ("total_realized_traits", 1),
        ],
    );
}

#[test]
fn ledger_does_not_reexamine_an_unchanged_rejected_file() {
    let env = Env::new();
    clean_drop(&env);
    env.put("ftp_dpm_21_1763700001.sync", b"");
    env.put("ftp_dpm_21_1763700002.sync.zip", b"PK");
    let day1 = "2026-11-22T02:00:00Z";
    let day2 = "2026-11-23T02:00:00Z";
    let day3 = "2026-11-24T02:00:00Z";
    env.run_ok(day1, 1);
    let run1 = run_id(1, day1);
    let r = env.receipt(&run1, "21");
    assert_eq!(r["files"][1]["status"], "rejected");
    assert_eq!(r["files"][1]["name"], "ftp_dpm_21_1763700001.sync");
    let empty_reason = r["files"][1]["reason"]
        .as_str()
        .expect("reason")
        .to_string();
    let zip_reason = "zip compression is not supported";

    // Unchanged: not examined again, no receipt entry, listed as previously rejected, exit 0.
    env.run_ok(day2, 0);
    let run2 = run_id(2, day2);
    let already = format!("already processed by run {run1}");
    assert_eq!(
        report_files(&env.run_report(&run2)),
        files(&[
            ("adobe_id_0_21_1763683200.sync", "duplicate", Some(&already)),
            ("ftp_dpm_21_1763700000.sync", "duplicate", Some(&already)),
            (
                "ftp_dpm_21_1763700001.sync",
                "previously_rejected",
                Some("empty file")
            ),
            (
                "ftp_dpm_21_1763700002.sync.zip",
                "previously_rejected",
                Some(zip_reason)
            ),
        ])
    );
    assert_eq!(env.run_report(&run2)["rejected_files"], json!([]));
    assert_eq!(
        receipt_files(&env.receipt(&run2, "21")),
        [("ftp_dpm_21_1763700000.sync".into(), "duplicate".into())]
    );

    // Changed content: examined again and processed.
    env.put("ftp_dpm_21_1763700001.sync", b"cust-1\td_sid=102\n");
    env.run_ok(day3, 0);
    let run3 = run_id(3, day3);
    let r = env.receipt(&run3, "21");
    assert_eq!(
        receipt_files(&r),
        [
            ("ftp_dpm_21_1763700000.sync".into(), "duplicate".into()),
            ("ftp_dpm_21_1763700001.sync".into(), "processed".into()),
        ]
    );
    assert_eq!(r["total_realized_traits"], 1);
    assert_eq!(empty_reason, "empty file");
}

// ---------------------------------------------------------------------------------------------
// 6. validate, idsync import, inspect stats.

#[test]
fn validate_changes_nothing_and_idsync_import_feeds_later_runs() {
    let env = Env::new();
    env.config(4, CRM);
    env.put(
        "adobe_id_0_21_1763683200.sync",
        format!("{}\tx\n", uuid(7)).as_bytes(),
    );
    env.put("ftp_dpm_21_1763700000.sync", b"x\td_sid=101\n");
    env.run_ok("2026-11-22T02:00:00Z", 0);

    // validate: the would-be receipt against the real ID-sync table (x is synced, y is not).
    let other = env.root().join("other");
    let trait_file = other.join("ftp_dpm_21_1763800000.sync");
    write_file(&trait_file, b"x\td_sid=102\ny\td_sid=102\nbad\ta\tb\n");
    let bad_name = other.join("ftp_dpm_21_123.sync");
    write_file(&bad_name, b"x\td_sid=102\n");
    let everything = |env: &Env| snapshot(&env.state(), |_| false);
    let before = everything(&env);
    let trait_path = trait_file.to_str().expect("utf-8");
    let bad_path = bad_name.to_str().expect("utf-8");
    let out = env.segmill(&[
        "validate",
        trait_path,
        bad_path,
        "--as-of",
        "2026-11-23T02:00:00Z",
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert_eq!(
        out.stdout,
        format!(
            "Subject: segmill Server-To-Server Processing Result: job 21 run \
             000002-20261123T020000Z\n\
             Dear Partner: (ID:21)\n\
             We have received your Server-To-Server file delivery\n\
             File name:\n\
             {trait_path}\n\
             Records received: 3\n\
             Format Errors: 1\n\
             Invalid AAM ID: 0\n\
             Invalid Device ID: 0\n\
             No Matching AAM ID: 1\n\
             No Trait Realized: 0\n\
             Records processed: 3\n\
             Stored Records: 1\n\
             Total devices: 1\n\
             Total signals: 1\n\
             Total unused signals: 0\n\
             Total realized traits: 1\n\
             Total removed traits: 0\n\
             Total traits failed validation: 0\n\
             Total users that have traits which failed validation: 0\n\
             Lines over the per-user limit: 0\n\
             Malformed items: 0\n\
             Job start time: 2026-11-23 02:00:00\n\
             Job end time: 2026-11-23 02:00:00\n\
             Files not processed:\n\
             {bad_path} (rejected: timestamp must be exactly 10 digits)\n\
             \n\
             rejected: {bad_path} (timestamp must be exactly 10 digits)\n"
        )
    );
    assert_same_tree("state after validate", &before, &everything(&env));

    // idsync import: y is synced from now on, and the import is a run of its own.
    let idsync_file = other.join("adobe_id_0_21_1763800001.sync");
    write_file(
        &idsync_file,
        format!("{}\ty\n{}\tz \n", uuid(8), uuid(9)).as_bytes(),
    );
    let idsync_path = idsync_file.to_str().expect("utf-8");
    let out = env.segmill(&[
        "idsync",
        "import",
        idsync_path,
        "--as-of",
        "2026-11-23T02:00:00Z",
    ]);
    // The row with a trailing space is rejected: exit 1.
    assert_eq!(out.code, 1, "{out:#?}");
    let run2 = run_id(2, "2026-11-23T02:00:00Z");
    let idsync = env.idsync_receipt(&run2);
    assert_eq!(idsync["files"][0]["name"], idsync_path);
    assert_eq!(idsync["files"][0]["status"], "processed");
    assert_eq!(idsync["files"][0]["rows"], 2);
    assert_eq!(idsync["files"][0]["rejected_rows"], 1);
    assert_eq!(idsync["files"][0]["mappings_stored"], 1);
    assert_eq!(idsync["files"][0]["rejected"][0]["line"], 2);
    assert_eq!(env.receipt_jobs(&run2), Vec::<String>::new());

    // The next run matches y through the imported mapping.
    env.put("ftp_dpm_21_1763800002.sync", b"y\td_sid=102\n");
    env.run_ok("2026-11-24T02:00:00Z", 0);
    let r = env.receipt(&run_id(3, "2026-11-24T02:00:00Z"), "21");
    assert_eq!(r["stored_records"], 1);
    assert_eq!(r["no_matching_aam_id"], 0);
    assert_eq!(
        env.inspect_profile("y", Some(21)),
        format!(
            "customer ID \"y\" of DPID 21 is synced to AAM UUID {u}\n\
             profile {u}: 1 trait(s) (state as of 2026-11-24T02:00:00Z)\n  segments: none\n{}\
             profile customer 21:y: no traits\n",
            trait_line(
                102,
                21,
                "2026-11-24T02:00:00Z",
                "expires 2027-03-24T02:00:00Z"
            ),
            u = uuid(8)
        )
    );
    let out = env.segmill(&["inspect", "stats"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(
        out.stdout,
        "generation 3 (run 000003-20261124T020000Z, as of 2026-11-24T02:00:00Z)\n\
         partitions 4\n\
         profiles 2\n\
         \x20 aam_uuid 2\n\
         trait memberships 2\n\
         idsync mappings for DPID 21: 2\n\
         ledger files 4\n"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Golden receipts for testdata/sample.

const SAMPLE_AS_OF: &str = "2026-11-22T02:00:00Z";

/// Runs `testdata/sample` into a temp state: the sample's catalog with `[paths]` pointing at
/// the shipped inbound folder and a temp state.
fn run_sample() -> Env {
    let env = Env::new();
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample");
    let config = read_text(&sample.join("segmill.toml"));
    let inbound = sample.join("inbound");
    let mut text = String::new();
    for line in config.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "inbound" => text.push_str(&format!("inbound = {:?}\n", inbound.display().to_string())),
            "state" => text.push_str("state = \"state\"\n"),
            "outbound" => text.push_str("outbound = \"out\"\n"),
            // Destinations write under the test's folder: out/<destination id>.
            "location" => {
                let value = line
                    .split('=')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .trim_matches('"');
                let id = value.rsplit('/').next().unwrap_or(value);
                text.push_str(&format!("location = \"out/{id}\"\n"));
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    std::fs::write(env.config_path(), text).expect("write config");
    env.run_ok(SAMPLE_AS_OF, 1);
    env
}

/// Every receipt file of the sample run equals `testdata/sample/expected/receipts/...`, and
/// the run report equals `expected/run-report.json` without its wall-clock durations. With
/// `SEGMILL_UPDATE_GOLDEN=1` the expected files are rewritten instead (review the diff!).
#[test]
fn sample_golden_receipts() {
    let env = run_sample();
    let run = run_id(1, SAMPLE_AS_OF);
    let expected_root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample/expected");
    let got_receipts = snapshot(&env.receipts_dir(&run), |_| false);
    let mut report = env.run_report(&run);
    let obj = report.as_object_mut().expect("report object");
    assert!(obj.remove("durations_seconds").is_some());
    assert!(obj.remove("total_seconds").is_some());
    let mut report_text = serde_json::to_string_pretty(&report).expect("json");
    report_text.push('\n');

    let got_exports = snapshot(&env.root().join("out"), |_| false);
    let receipts_dir = expected_root.join("receipts").join(&run);
    if std::env::var_os("SEGMILL_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(expected_root.join("receipts"));
        let _ = std::fs::remove_dir_all(expected_root.join("exports"));
        for (name, bytes) in &got_receipts {
            write_file(&receipts_dir.join(name), bytes);
        }
        for (name, bytes) in &got_exports {
            write_file(&expected_root.join("exports").join(name), bytes);
        }
        write_file(
            &expected_root.join("run-report.json"),
            report_text.as_bytes(),
        );
        return;
    }
    let want_receipts = snapshot(&receipts_dir, |_| false);
    assert!(
        !want_receipts.is_empty(),
        "no golden receipts; run with SEGMILL_UPDATE_GOLDEN=1"
    );
    assert_same_tree("sample receipts", &want_receipts, &got_receipts);
    let want_exports = snapshot(&expected_root.join("exports"), |_| false);
    assert_same_tree("sample exports", &want_exports, &got_exports);
    assert_eq!(
        read_text(&expected_root.join("run-report.json")),
        report_text
    );
}

// ---------------------------------------------------------------------------------------------
// 8. TTL.

#[test]
fn ttl_expires_at_realization_plus_days_and_zero_never_expires() {
    let env = Env::new();
    env.config(
        4,
        r#"
[[data_source]]
id = 21
name = "CRM"

[[trait]]
id = 101
data_source = 21
ttl_days = 1

[[trait]]
id = 102
data_source = 21
ttl_days = 0
"#,
    );
    env.put(
        "adobe_id_0_21_1763683200.sync",
        format!("{}\tv\n", uuid(5)).as_bytes(),
    );
    env.put("ftp_dpm_21_1763700000.sync", b"v\td_sid=101,d_sid=102\n");
    let t0 = "2026-11-01T00:00:00Z";
    env.run_ok(t0, 0);
    let both = |at: &str| {
        format!(
            "profile {}: 2 trait(s) (state as of {at})\n  segments: none\n{}{}",
            uuid(5),
            trait_line(101, 21, t0, "expires 2026-11-02T00:00:00Z"),
            trait_line(102, 21, t0, "never expires"),
        )
    };
    let only_102 = |at: &str| {
        format!(
            "profile {}: 1 trait(s) (state as of {at})\n  segments: none\n{}",
            uuid(5),
            trait_line(102, 21, t0, "never expires"),
        )
    };
    assert_eq!(env.inspect_profile(&uuid(5), None), both(t0));

    // One second before t0 + 1 day: still there.
    let before = "2026-11-01T23:59:59Z";
    env.run_ok(before, 0);
    assert_eq!(env.run_report(&run_id(2, before))["expired_traits"], 0);
    assert_eq!(env.inspect_profile(&uuid(5), None), both(before));

    // Day 2 + 1 s, a run with no new files: 101 is gone and counted as expired.
    let after = "2026-11-02T00:00:01Z";
    env.run_ok(after, 0);
    assert_eq!(env.run_report(&run_id(3, after))["expired_traits"], 1);
    assert_eq!(env.inspect_profile(&uuid(5), None), only_102(after));

    // Years later: ttl_days = 0 never expires, nothing more to expire.
    let later = "2031-01-01T00:00:00Z";
    env.run_ok(later, 0);
    assert_eq!(env.run_report(&run_id(4, later))["expired_traits"], 0);
    assert_eq!(env.inspect_profile(&uuid(5), None), only_102(later));
}

#[test]
fn ttl_expiry_at_exactly_realization_plus_days() {
    let env = Env::new();
    env.config(
        4,
        "[[data_source]]\nid = 21\nname = \"CRM\"\n\n[[trait]]\nid = 101\ndata_source = 21\n\
         ttl_days = 1\n",
    );
    env.put(
        "adobe_id_0_21_1763683200.sync",
        format!("{}\tv\n", uuid(5)).as_bytes(),
    );
    env.put("ftp_dpm_21_1763700000.sync", b"v\td_sid=101\n");
    env.run_ok("2026-11-01T00:00:00Z", 0);
    // "expired in every run whose as-of >= t + d x 86,400 s".
    let exact = "2026-11-02T00:00:00Z";
    env.run_ok(exact, 0);
    assert_eq!(env.run_report(&run_id(2, exact))["expired_traits"], 1);
    assert_eq!(
        env.inspect_profile(&uuid(5), None),
        format!("profile {}: no traits\n", uuid(5))
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Cross-device data sources.

#[test]
fn unsynced_ids_are_kept_only_for_cross_device_sources() {
    let env = Env::new();
    env.config(4, &format!("{CRM}{XDEVICE}"));
    env.put(
        "ftp_dpm_33_1763700000.sync",
        b"loyal-1\td_sid=301,d_sid=302\n",
    );
    env.put("ftp_dpm_21_1763700001.sync", b"cust-1\td_sid=101\n");
    env.run_ok(AS_OF, 0);
    let run = run_id(1, AS_OF);
    assert_counters(
        &env.receipt(&run, "33"),
        &[
            ("records_received", 1),
            ("records_processed", 1),
            ("stored_records", 1),
            ("total_devices", 1),
            ("total_signals", 2),
            ("total_realized_traits", 2),
        ],
    );
    assert_counters(
        &env.receipt(&run, "21"),
        &[
            ("records_received", 1),
            ("records_processed", 1),
            ("no_matching_aam_id", 1),
        ],
    );
    assert_eq!(
        env.rejects(&run, "21"),
        "ftp_dpm_21_1763700001.sync\t1\tID not synced for DPID 21\tcust-1\\td_sid=101\n"
    );
    assert_eq!(env.rejects(&run, "33"), "");
    let expires = "expires 2027-03-22T02:00:00Z";
    assert_eq!(
        env.inspect_profile("loyal-1", Some(33)),
        format!(
            "customer ID \"loyal-1\" of DPID 33 is not synced\n\
             profile customer 33:loyal-1: 2 trait(s) (state as of {AS_OF})\n  segments: none\n{}{}",
            trait_line(301, 33, AS_OF, expires),
            trait_line(302, 33, AS_OF, expires),
        )
    );
    assert_eq!(
        env.inspect_profile("cust-1", Some(21)),
        "customer ID \"cust-1\" of DPID 21 is not synced\n\
         profile customer 21:cust-1: no traits\n"
    );
    let out = env.segmill(&["inspect", "stats"]);
    assert_eq!(
        out.stdout,
        "generation 1 (run 000001-20261122T020000Z, as of 2026-11-22T02:00:00Z)\n\
         partitions 4\n\
         profiles 1\n\
         \x20 customer (cross-device, unsynced) 1\n\
         trait memberships 2\n\
         ledger files 2\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Leftovers of a killed run and known bugs.

/// A run killed after writing receipts and part of its generation leaves the previous
/// generation current; the re-run sweeps the leftovers and ends byte-identical to a clean run.
#[test]
fn rerun_after_a_killed_run_matches_a_clean_run() {
    let day2 = "2026-11-23T02:00:00Z";
    let make = || {
        let env = Env::new();
        clean_drop(&env);
        env.run_ok(AS_OF, 0);
        env.put("ftp_dpm_21_1763790000.sync", b"cust-1\td_sid=102\n");
        env
    };
    let clean = make();
    clean.run_ok(day2, 0);

    let killed = make();
    let state = killed.state();
    write_file(
        &state.join("gen-000002.partial/profiles/part-0000"),
        b"half",
    );
    write_file(&state.join("gen-000003/manifest.json"), b"{}");
    write_file(
        &state.join("receipts/000002-20261123T020000Z/21.json"),
        b"{",
    );
    write_file(
        &state.join("receipts/000002-20261123T010000Z/21.json"),
        b"{",
    );
    write_file(&state.join("runs/000002-20261123T010000Z.json"), b"{");
    // The leftovers do not change what the current generation says.
    assert!(
        killed
            .inspect_profile(&uuid(1), None)
            .contains(": 1 trait(s)")
    );
    killed.run_ok(day2, 0);
    assert_same_tree("state", &clean.state_snapshot(), &killed.state_snapshot());
    let runs = |env: &Env| -> Vec<String> {
        snapshot(&env.state().join("runs"), |_| false)
            .into_keys()
            .collect()
    };
    assert_eq!(runs(&killed), runs(&clean));
}

/// CONTRACT §2: "File-level rejections (...; a receipt says why): ..., `.zip`, ...". The job's
/// receipt should list the `.zip` file as rejected; only the run report mentions it.
#[test]

fn zip_file_is_listed_in_its_job_receipt() {
    let env = Env::new();
    clean_drop(&env);
    env.put("ftp_dpm_21_1763700001.sync.zip", b"PK");
    env.run_ok(AS_OF, 1);
    let r = env.receipt(&run_id(1, AS_OF), "21");
    assert_eq!(
        receipt_files(&r),
        [
            ("ftp_dpm_21_1763700000.sync".into(), "processed".into()),
            ("ftp_dpm_21_1763700001.sync.zip".into(), "rejected".into()),
        ]
    );
    assert_eq!(r["files"][1]["reason"], "zip compression is not supported");
}

/// `duplicate_of` names the earlier file as receipts name files (with its `date=` folder)
/// within one run, but by its bare ledger name across runs.
#[test]

fn duplicate_of_names_the_earlier_file_the_same_way_across_runs() {
    let env = Env::new();
    clean_drop(&env);
    env.put(
        "date=2026-11-21/ftp_dpm_21_1763700005.sync",
        b"cust-1\td_sid=102\n",
    );
    env.run_ok(AS_OF, 0);
    env.put(
        "date=2026-11-22/ftp_dpm_21_1763790000.sync",
        b"cust-1\td_sid=102\n",
    );
    let day2 = "2026-11-23T02:00:00Z";
    env.run_ok(day2, 0);
    let r = env.receipt(&run_id(2, day2), "21");
    assert_eq!(
        r["files"][2]["name"],
        "date=2026-11-22/ftp_dpm_21_1763790000.sync"
    );
    assert_eq!(
        r["files"][2]["duplicate_of"],
        "date=2026-11-21/ftp_dpm_21_1763700005.sync"
    );
}

/// A missing inbound folder is a run problem (exit 2) whose message names the folder once and
/// the OS error once.
#[test]
fn missing_inbound_folder_is_exit_2() {
    let env = Env::new();
    env.config(4, CRM);
    std::fs::remove_dir(env.inbound()).expect("remove inbound");
    let out = env.run(AS_OF, &[]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.starts_with(&format!(
            "segmill: error: cannot list inbound folder {}: ",
            env.inbound().display()
        )),
        "{}",
        out.stderr
    );
    assert!(!env.state().join("CURRENT").exists());
}

#[test]

fn missing_inbound_folder_message_says_the_os_error_once() {
    let env = Env::new();
    env.config(4, CRM);
    std::fs::remove_dir(env.inbound()).expect("remove inbound");
    let out = env.run(AS_OF, &[]);
    assert_eq!(
        out.stderr,
        format!(
            "segmill: error: cannot list inbound folder {}: No such file or directory (os error \
             2)\n",
            env.inbound().display()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// 8. The staged run (issue #7): the same night as separate processes, byte for byte.

/// Segments over the determinism drop's traits and two destinations, one of them exporting
/// the cross-device data source's profiles through their mappings. `{OUT}` is replaced by the
/// variant's outbound folder.
const STAGED_EXPORTS: &str = r#"
[[segment]]
id = 1
rule = "101T OR 102T"

[[segment]]
id = 2
rule = "(103T AND NOT 104T) OR 301T"

[[destination]]
id = 1234
sync_type = "s3"
location = "{OUT}/1234"
mode = "iter"
segments = [1, 2]
gzip = true
split_bytes = 300

[[destination]]
id = 1235
sync_type = "ftp"
location = "{OUT}/1235"
master_dpid = 20914
mode = "full"
segments = [2]
gzip = false
"#;

/// `plan`, 3 `map` tasks, 4 `resolve` and 4 `merge` tasks (out of order, one retried) and
/// `finalize`, each its own process, give the state, receipts and exports `run` gives, night
/// after night; with a work folder beside the state.
#[test]
fn staged_run_matches_run_byte_for_byte() {
    staged_matches_run(None);
}

/// The same with the work store on S3 (moto): the map, resolve and merge tasks run as if on
/// other machines, with a config whose state folder does not exist; they read the parent
/// generation from the work store's mirror. A task killed after uploading its files but
/// before its commit is retried.
#[test]
fn staged_run_over_s3_matches_run_byte_for_byte() {
    let Some(moto) = common_servers::Moto::start() else {
        return;
    };
    staged_matches_run(Some(&moto));
}

/// The moto bucket's prefix `prefix` as a store.
fn s3_store(m: &common_servers::Moto, prefix: &str) -> segmill::storage::Store {
    segmill::storage::Store::open(
        &segmill::config::Location::S3 {
            bucket: m.bucket.clone(),
            prefix: prefix.into(),
        },
        &segmill::storage::StorageSettings {
            access_key_id: Some(m.access_key_id.clone()),
            secret_access_key: Some(m.secret_access_key.clone()),
            endpoint: Some(m.endpoint.clone()),
            allow_http: Some(true),
            ..Default::default()
        },
    )
    .expect("open the S3 store")
}

fn staged_matches_run(moto: Option<&common_servers::Moto>) {
    let env = Env::new();
    let tmp = env.root().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut vars: Vec<(&str, String)> = vec![("TMPDIR", tmp.display().to_string())];
    let mut work: Vec<String> = Vec::new();
    if let Some(m) = moto {
        work = vec!["--work".into(), format!("s3://{}/night", m.bucket)];
        vars.extend([
            ("AWS_ACCESS_KEY_ID", m.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", m.secret_access_key.clone()),
            ("AWS_ENDPOINT_URL", m.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]);
    }
    let catalog = |out: &str| {
        format!(
            "{CRM}{CRM_AND_OTHER}{XDEVICE}{}",
            STAGED_EXPORTS.replace("{OUT}", out)
        )
    };
    let task_config = env.root().join("task.toml");
    let command = |config: &std::path::Path, args: &[&str], failpoint: Option<&str>| -> Out {
        let config = config.display().to_string();
        let mut full: Vec<&str> = vec!["--config", &config];
        full.extend_from_slice(args);
        let mut env_vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(fp) = failpoint {
            env_vars.push(("SEGMILL_FAILPOINT", fp));
        }
        segmill_with(&full, &env_vars)
    };
    // One stage command; `task`: a map, resolve or merge task, which with the work on S3 gets a
    // config without the state folder.
    let stage = |args: &[&str], failpoint: Option<&str>, task: bool| -> Out {
        let config = match (task, moto) {
            (true, Some(_)) => task_config.clone(),
            _ => env.config_path(),
        };
        let mut full = args.to_vec();
        full.extend(work.iter().map(String::as_str));
        command(&config, &full, failpoint)
    };
    // With S3, the inbound files are there too: the drop is copied to `in-<name>/` (one copy
    // for `run`, one for the stages, as each writes its `.processed` markers there).
    let configure = |state: &str, out: &str| {
        env.config_with_state(state, 8, &catalog(out));
        if let Some(m) = moto {
            let name = state.trim_start_matches("state-");
            let store = s3_store(m, &format!("in-{name}"));
            for (rel, bytes) in snapshot(&env.inbound(), |_| false) {
                store.put_bytes(&rel, &bytes).unwrap();
            }
            let text = std::fs::read_to_string(env.config_path()).unwrap();
            let text = text.replace(
                "inbound = \"inbound\"",
                &format!("inbound = \"s3://{}/in-{name}\"", m.bucket),
            );
            std::fs::write(env.config_path(), text).unwrap();
        }
    };
    let tree = |state: &str, out: &str| {
        let mut t = snapshot(&env.root().join(state), |rel| {
            rel == "lock" || rel.starts_with("runs/") || rel.starts_with("stage/")
        });
        for (k, v) in snapshot(&env.root().join(out), |_| false) {
            t.insert(format!("out/{k}"), v);
        }
        t
    };
    let expect_code = |out: Out, code: i32, what: &str| {
        assert_eq!(out.code, code, "{what}: {out:#?}");
        out
    };
    // `kill_finalize`: where the first attempt of finalize is killed: before its commit, or
    // after it, before the work folder says so.
    let night = |as_of: &str, code: i32, kill_finalize: &str| {
        configure("state-run", "out-run");
        let run = command(
            &env.config_path(),
            &["run", "--as-of", as_of, "--chunk-bytes", "7"],
            None,
        );
        expect_code(run, code, "run");
        let reference = tree("state-run", "out-run");

        configure("state-staged", "out-staged");
        let text = std::fs::read_to_string(env.config_path()).unwrap();
        std::fs::write(
            &task_config,
            text.replace("state = \"state-staged\"", "state = \"no-state-here\""),
        )
        .unwrap();
        if moto.is_some() && as_of.starts_with("2026") {
            let out = stage(&["map", "--task", "0", "--of", "3"], None, true);
            assert_eq!(out.code, 2, "{out:#?}");
            assert!(
                out.stderr
                    .contains("s3://segmill-drop/night holds no plan: run `segmill plan` first"),
                "{out:#?}"
            );
        }
        let out = stage(
            &["plan", "--as-of", as_of, "--chunk-bytes", "7"],
            None,
            false,
        );
        let out = expect_code(out, 0, "plan");
        assert!(out.stderr.contains("planned night"), "{out:#?}");
        let again = expect_code(
            stage(&["plan", "--as-of", as_of], None, false),
            0,
            "plan again",
        );
        assert!(again.stderr.contains("already planned"), "{again:#?}");
        for (name, tasks, of) in [
            ("map", ["2", "0", "1", "1"].as_slice(), "3"),
            ("resolve", &["3", "1", "0", "2"], "4"),
            ("merge", &["1", "3", "2", "0", "3"], "4"),
        ] {
            // The first attempt of map and resolve task 0 is killed while it writes its ops;
            // the scheduler retries it.
            // With the work on S3, the first attempt of merge task 1 is killed after uploading
            // its files, before its commit.
            let kill = match (name, moto) {
                ("merge", None) => None,
                ("merge", Some(_)) => Some(("1", "stage-uploaded:abort")),
                _ => Some(("0", "spill-ops:abort")),
            };
            if let Some((t, failpoint)) = kill {
                let killed = stage(&[name, "--task", t, "--of", of], Some(failpoint), true);
                assert_eq!(killed.code, -1, "{name} {t} was not killed: {killed:#?}");
            }
            let mut seen = std::collections::BTreeSet::new();
            for t in tasks {
                let out = expect_code(
                    stage(
                        &["--threads", "2", name, "--task", t, "--of", of],
                        None,
                        true,
                    ),
                    0,
                    name,
                );
                // A task run again finds its outputs and does nothing.
                assert_eq!(
                    out.stderr.contains("already done"),
                    !seen.insert(*t),
                    "{name} {t}: {out:#?}"
                );
            }
        }
        let failpoint = format!("{kill_finalize}:abort");
        let killed = stage(&["finalize"], Some(&failpoint), false);
        assert_eq!(killed.code, -1, "finalize was not killed: {killed:#?}");
        if kill_finalize == "finalize-committed" {
            let out = expect_code(
                stage(&["finalize"], None, false),
                0,
                "finalize after its commit",
            );
            assert!(out.stderr.contains("already committed"), "{out:#?}");
        } else {
            expect_code(stage(&["finalize"], None, false), code, "finalize");
        }
        let again = expect_code(stage(&["finalize"], None, false), 0, "finalize again");
        assert!(again.stderr.contains("already finalized"), "{again:#?}");
        let staged = tree("state-staged", "out-staged");
        assert_same_tree("staged run", &reference, &staged);
        assert!(
            !env.root().join("no-state-here").exists(),
            "a task opened the state folder of its config"
        );
        if let Some(m) = moto {
            // What stays on S3 between nights: the plan, the finalized mark and the mirror of
            // the generation just committed is not there yet (the next plan uploads it).
            let left: Vec<String> = s3_store(m, "night")
                .list_under("")
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| !k.starts_with("state/"))
                .collect();
            assert_eq!(left, ["finalized.json", "plan.json"]);
        }
        let scratch: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // Local copies are removed when a task ends, and those of killed tasks by the next.
        assert!(scratch.is_empty(), "{scratch:?}");
        reference
    };
    determinism_day1(&env);
    let t1 = night("2026-11-22T02:00:00Z", 1, "before-commit");
    determinism_day2(&env);
    // Far enough on that traits expire: every partition is merged, exports carry removals.
    let t2 = night("2027-04-01T02:00:00Z", 1, "finalize-committed");
    // The drop did reach every stage: unmatched IDs, capped lines, exports on both nights.
    let receipt = |t: &std::collections::BTreeMap<String, Vec<u8>>, name: &str| {
        serde_json::from_slice::<serde_json::Value>(&t[name]).expect("receipt JSON")
    };
    let r = receipt(&t1, "receipts/000001-20261122T020000Z/21.json");
    assert!(r["no_matching_aam_id"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["lines_over_user_limit"], 46);
    assert!(
        t1.keys().any(|k| k.starts_with("out/1234/")),
        "{:?}",
        t1.keys()
    );
    assert!(
        t2.keys().filter(|k| k.starts_with("out/1234/")).count()
            > t1.keys().filter(|k| k.starts_with("out/1234/")).count()
    );
    assert!(t2.keys().any(|k| k.starts_with("gen-000002/profiles/")));
}

/// A task of a stage that is not done yet, or a plan made on a state that moved on, is refused
/// with a message that says what to do.
#[test]
fn staged_run_refuses_tasks_out_of_order_and_stale_plans() {
    let env = Env::new();
    env.config(4, CRM);
    env.put(
        "adobe_id_0_21_1763683200.sync",
        format!("{}\tcust-1\n", uuid(1)).as_bytes(),
    );
    env.put("ftp_dpm_21_1763700000.sync", b"cust-1\td_sid=101\n");
    let out = env.segmill(&["map", "--task", "0", "--of", "1"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("run `segmill plan` first"), "{out:#?}");
    assert_eq!(env.segmill(&["plan", "--as-of", AS_OF]).code, 0);
    let out = env.segmill(&["resolve", "--task", "0", "--of", "2"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.contains("no `segmill map` task has finished"),
        "{out:#?}"
    );
    assert_eq!(env.segmill(&["map", "--task", "0", "--of", "2"]).code, 0);
    let out = env.segmill(&["resolve", "--task", "0", "--of", "2"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.contains("task 1 of 2 has not finished"),
        "{out:#?}"
    );
    let out = env.segmill(&["map", "--task", "2", "--of", "2"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(out.stderr.contains("must be below the count"), "{out:#?}");
    let out = env.segmill(&["map", "--task", "1", "--of", "2", "--work", "ftp://h/w"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr
            .contains("a work store must be a folder or s3://"),
        "{out:#?}"
    );
    // Another run commits in between: the staged night cannot finish on top of it.
    env.run_ok(AS_OF, 0);
    let out = env.segmill(&["map", "--task", "1", "--of", "2"]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(
        out.stderr.contains("moved on since `segmill plan`"),
        "{out:#?}"
    );
    // Planning again starts over on the new state.
    let out = env.segmill(&["plan", "--as-of", "2026-11-23T02:00:00Z"]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stderr.contains("0 trait files to read"), "{out:#?}");
}
