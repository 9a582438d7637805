//! Fault injection for crash-safety tests: `SEGMILL_FAILPOINT=<name>` makes the named point
//! fail like a write error; `SEGMILL_FAILPOINT=<name>:abort` kills the process there without
//! any cleanup, as `kill -9` would. Unset (always, in production) it costs one load of a
//! cached value.

use std::sync::OnceLock;

/// Every point a run passes, in order; tests iterate over them.
pub const POINTS: &[&str] = &[
    "after-idsync",
    "spill-ops",
    "after-parse",
    "after-merge",
    "mid-receipts",
    "after-receipts",
    "mid-export",
    "after-exports",
    "mid-state-files",
    "after-state-files",
    "before-commit",
    "commit-renamed",
];

fn configured() -> Option<&'static (String, bool)> {
    static POINT: OnceLock<Option<(String, bool)>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            let value = std::env::var("SEGMILL_FAILPOINT").ok()?;
            Some(match value.strip_suffix(":abort") {
                Some(name) => (name.to_string(), true),
                None => (value, false),
            })
        })
        .as_ref()
}

/// Fails (or aborts the process) when `name` is the configured failpoint.
pub fn hit(name: &str) -> std::io::Result<()> {
    match configured() {
        Some((point, abort)) if point == name => {
            if *abort {
                std::process::abort();
            }
            Err(std::io::Error::other(format!("injected failure at {name}")))
        }
        _ => Ok(()),
    }
}
