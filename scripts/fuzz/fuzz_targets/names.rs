//! `inbound::names::classify` on any file name.
//!
//! Properties beyond "no panic": classification is deterministic; a parsed trait or ID-sync
//! name, written back in canonical form (no leading zeros), classifies to the same parts; a
//! rejected name always carries a reason; names without a segmill prefix are ignored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmill::inbound::names::{Classified, IdSyncKind, IdSyncName, Mode, TraitName, classify};

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let got = classify(name);
    assert_eq!(
        got,
        classify(name),
        "classify is not deterministic on {name:?}"
    );
    match &got {
        Classified::Trait(parts) => {
            assert!(
                name.starts_with("ftp_dpm_"),
                "{name:?} classified as a trait file"
            );
            let canonical = trait_name(parts);
            assert_eq!(classify(&canonical), got, "{name:?} → {canonical:?}");
        }
        Classified::IdSync(parts) => {
            assert!(
                name.starts_with("adobe_id_") || name.starts_with("c2c_id_"),
                "{name:?} classified as an ID-sync file"
            );
            assert!(parts.dpids.len() >= 2, "{name:?}: fewer than 2 DPIDs");
            if parts.kind == IdSyncKind::C2c {
                assert_eq!(
                    parts.dpids.len(),
                    2,
                    "{name:?}: c2c with other than 2 DPIDs"
                );
            }
            let canonical = idsync_name(parts);
            assert_eq!(classify(&canonical), got, "{name:?} → {canonical:?}");
        }
        Classified::Rejected(reason) => {
            assert!(!reason.is_empty(), "{name:?} rejected without a reason");
        }
        Classified::Ignored => {}
    }
    let known = ["ftp_dpm_", "adobe_id_", "c2c_id_"];
    if !known.iter().any(|p| name.starts_with(p)) {
        assert_eq!(got, Classified::Ignored, "{name:?} has no segmill prefix");
    }
});

fn trait_name(p: &TraitName) -> String {
    let mut s = String::from("ftp_dpm_");
    if p.odc {
        s.push_str("odc_");
    }
    s.push_str(&p.dpid.to_string());
    if let Some(owner) = p.owner {
        s.push('_');
        s.push_str(&owner.to_string());
    }
    s.push_str(&format!("_{:010}", p.timestamp));
    s.push_str(match p.mode {
        Mode::Sync => ".sync",
        Mode::Overwrite => ".overwrite",
    });
    if let Some(split) = p.split {
        s.push_str(&format!(".{split}"));
    }
    if p.gzip {
        s.push_str(".gz");
    }
    if p.pgp {
        s.push_str(".pgp");
    }
    s
}

fn idsync_name(p: &IdSyncName) -> String {
    let mut s = String::from(match p.kind {
        IdSyncKind::Adobe => "adobe_id_",
        IdSyncKind::C2c => "c2c_id_",
    });
    for dpid in &p.dpids {
        s.push_str(&dpid.to_string());
        s.push('_');
    }
    s.push_str(&format!("{:010}.sync", p.timestamp));
    if let Some(split) = p.split {
        s.push_str(&format!(".{split}"));
    }
    if p.gzip {
        s.push_str(".gz");
    }
    s
}
