#!/usr/bin/env bash
# The whole test suite: what CI runs and what the README tells a new user to run.
#
# Creates (and caches) a Python virtual environment with the local servers some tests start on
# 127.0.0.1 (moto for S3, pyftpdlib for FTP, aiosmtpd for SMTP), then runs every test. Tests
# that need a server find its Python through SEGMILL_TEST_PYTHON; plain `cargo test` (without
# it) skips only those and runs everything else. Then a short fuzz smoke (see the end).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/requirements-test.txt "$stamp"; then
  echo "scripts/test.sh: creating the test servers' virtual environment in $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt "$stamp"
fi
export SEGMILL_TEST_PYTHON="$PWD/$venv/bin/python"

cargo test --all-targets "$@"
# Doc tests (cargo test --all-targets skips them).
cargo test --doc "$@"

# Fuzz smoke (issue 6): every fuzz target for 6 s, about a minute and a half in all. An
# unoptimized build without sanitizer, in its own cached folder (target/fuzz/build-none-dev):
# about 6 minutes the first time, seconds after a source change. SEGMILL_SKIP_FUZZ=1 skips it
# locally. cargo-fuzz is installed into ~/.cargo/bin once if missing.
if [ "${SEGMILL_SKIP_FUZZ:-0}" != 1 ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/test.sh: installing cargo-fuzz (once) for the fuzz smoke" >&2
    cargo install cargo-fuzz --locked
  fi
  SANITIZER=none FUZZ_DEV=1 SECONDS_PER_TARGET=6 scripts/fuzz.sh
fi
