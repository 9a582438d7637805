#!/usr/bin/env bash
# The whole test suite: what CI runs and what the README tells a new user to run.
# Everything runs locally; no server is needed yet.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
# Doc tests (cargo test --all-targets skips them).
cargo test --doc "$@"
