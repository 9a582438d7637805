//! What segmill asks of its allocator: mimalloc, the binary's global allocator (`main.rs`).
//!
//! mimalloc keeps freed memory for about 10 ms before it hands it back to the system (its
//! purge delay), so that memory freed and soon needed again is not returned and faulted in
//! anew. On a large night that saves much time (handing memory back at once made the issue's
//! first night 30% slower). On a small night it is most of the peak: a second night over 20M
//! profiles peaked at 38-40 MB with the delay and at 24 MB without. So a small night asks for
//! the memory back at once ([`purge_at_once`]).

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// mimalloc's `mi_option_purge_delay`, in the option enum of its version 2 (`mimalloc.h`).
/// `libmimalloc-sys` names the options on either side of it (`mi_option_eager_commit_delay`,
/// 14, and `mi_option_use_numa_nodes`, 16) but not this one; a test checks the number against
/// the environment variable mimalloc reads the option from.
const PURGE_DELAY: mi_option_t = 15;

/// Makes mimalloc hand freed memory back to the system at once from now on, instead of after
/// its purge delay. Harmless where mimalloc is not the global allocator (the library's tests).
pub fn purge_at_once() {
    // SAFETY: sets one of mimalloc's options, a plain integer it reads when it next purges;
    // safe to call at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        mi_option_set(PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a child process with `MIMALLOC_PURGE_DELAY=4321`, which mimalloc reads into
    /// the purge delay option when it is first asked for it.
    #[test]
    fn the_purge_delay_is_the_option_mimalloc_reads_from_its_variable() {
        const CHILD: &str = "SEGMILL_ALLOC_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            #[allow(unsafe_code)]
            // SAFETY: reads an option.
            let value = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
            assert_eq!(value, 4321);
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "alloc::tests::the_purge_delay_is_the_option_mimalloc_reads_from_its_variable",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("MIMALLOC_PURGE_DELAY", "4321")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
