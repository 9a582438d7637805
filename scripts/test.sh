#!/usr/bin/env bash
# The whole test suite: what CI runs and what the README tells a new user to run.
#
# Creates (and caches) a Python virtual environment with the local servers some tests start on
# 127.0.0.1 (moto for S3, pyftpdlib for FTP, aiosmtpd for SMTP), then runs every test. Tests
# that need a server find its Python through SEGMILL_TEST_PYTHON; plain `cargo test` (without
# it) skips only those and runs everything else.
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
