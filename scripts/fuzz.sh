#!/usr/bin/env bash
# Fuzz segmill's parsers and readers with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh                 every target for SECONDS_PER_TARGET seconds (default 6; 10
#                                   targets, about a minute of fuzzing); scripts/test.sh runs
#                                   it as the CI smoke with SANITIZER=none FUZZ_DEV=1
#   scripts/fuzz.sh TARGET [SECS]   one target, e.g. `scripts/fuzz.sh trait_rule 3600`
#   scripts/fuzz.sh --list          the targets
#
# Targets (scripts/fuzz/fuzz_targets/, each asserts properties beyond "no panic"):
#   names          inbound::names::classify; canonical re-rendering classifies the same
#   line           parse::{lines, parse_line}; lines rebuild the chunk, verdicts per CONTRACT §3
#   items          parse::items; keys, ic values, quotes and piece counts
#   trait_rule     trait_rule::Expr parse/Display round trip; TraitRules::qualify vs a naive
#                  evaluation of the AST
#   segment_rule   segment_rule::parse round trip; compiled code vs the AST; touching() and
#                  empty_qualifies() are sound
#   template       outbound::template::Template parse/render; plain text renders to itself
#   read_chunks    inbound::read::read_chunks (gzip and plain) vs flate2 and the raw bytes
#   ledger         state::Ledger::from_bytes; to_bytes round trip
#   state_files    profile::decode, profile::in_current_layout (format 1) and
#                  idsync::store::decode; decode → encode is the identity
#   generation     state::StateDir::current + Generation reads of a damaged state folder:
#                  never returns damaged bytes
#
# Toolchain: cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, -Cpasses=sancov-module).
# This machine has stable Rust only; RUSTC_BOOTSTRAP=1 makes stable rustc accept them, which
# this script sets. Install the runner once with `cargo install cargo-fuzz` (and a C++ compiler
# for libFuzzer itself). The fuzz crate lives in scripts/fuzz (its own workspace and lock file;
# the project layout allows no top-level fuzz/), so every command passes --fuzz-dir.
#
# Seeds: each run (re)writes seed inputs built from testdata/ (inbound files, names, rules and
# templates of the configs, a state written by `segmill run` on the sample) into
# target/fuzz/corpus/TARGET, next to what earlier runs found there. Crashes land in
# target/fuzz/artifacts/TARGET; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir scripts/fuzz TARGET target/fuzz/artifacts/TARGET/crash-...
# and turn it into a regression test in tests/hostile.rs (ignored with "BUG: ..." until fixed).
#
# Longer runs (nightly, or before a release), e.g. an hour per target on all cores:
#   for t in $(scripts/fuzz.sh --list); do scripts/fuzz.sh "$t" 3600; done
#   JOBS=4 scripts/fuzz.sh trait_rule 3600          # 4 libFuzzer workers (-fork)
# The build uses AddressSanitizer and debug assertions (overflow checks) in release mode;
# SANITIZER=none drops ASan (libFuzzer still gets coverage, and panics and debug assertions still
# fail): what the CI smoke in scripts/test.sh uses, as the ASan build of every dependency is slow.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_DIR=scripts/fuzz
TARGETS=(names line items trait_rule segment_rule template read_chunks ledger state_files generation)
SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-6}
JOBS=${JOBS:-1}
SANITIZER=${SANITIZER:-address}
# FUZZ_DEV=1: an unoptimized build (half the build time, a few times fewer runs per second).
FUZZ_DEV=${FUZZ_DEV:-0}
BUILD_FLAGS=(--fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" --debug-assertions)
if [ "$FUZZ_DEV" = 1 ]; then
  BUILD_FLAGS+=(--dev)
fi
CORPUS_ROOT=target/fuzz/corpus
ARTIFACTS_ROOT=target/fuzz/artifacts
MAIN_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export RUSTC_BOOTSTRAP=1
# The instrumented build gets its own target folder (its flags differ from the main build's),
# one per sanitizer so that switching does not rebuild everything.
if [ "$SANITIZER" = address ] && [ "$FUZZ_DEV" != 1 ]; then
  default_build=$PWD/target/fuzz/build
else
  default_build=$PWD/target/fuzz/build-$SANITIZER$([ "$FUZZ_DEV" = 1 ] && echo -dev)
fi
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$default_build}

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${TARGETS[@]}"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: cargo-fuzz is missing; install it with: cargo install cargo-fuzz" >&2
  exit 2
fi

# seed TARGET NAME FORMAT ARGS...: writes one seed file (printf format).
seed() {
  local target=$1 name=$2
  shift 2
  printf "$@" >"$CORPUS_ROOT/$target/seed-$name"
}

# seed_file TARGET NAME PREFIX FILE: a seed made of PREFIX (printf format) then FILE's bytes.
seed_file() {
  local target=$1 name=$2 prefix=$3 file=$4
  { printf "$prefix"; cat "$file"; } >"$CORPUS_ROOT/$target/seed-$name"
}

make_seeds() {
  local n=0 f t
  for t in "${TARGETS[@]}"; do
    mkdir -p "$CORPUS_ROOT/$t"
  done
  # Inbound files of the sample and the bad-input corpus.
  while IFS= read -r -d '' f; do
    n=$((n + 1))
    seed names "$n" '%s' "$(basename "$f")"
    case "$f" in
      *.gz)
        seed_file read_chunks "$n" '\x07' "$f"
        ;;
      *)
        if [ "$(stat -c %s "$f")" -lt 200000 ]; then
          seed_file line "$n" '' "$f"
          seed_file read_chunks "$n" '\x05' "$f"
          cut -s -f2- "$f" | head -c 4096 >"$CORPUS_ROOT/items/seed-$n"
        fi
        ;;
    esac
  done < <(find testdata -type f \( -path '*inbound*' -o -path '*bad-inputs/*/run*' \) -print0)
  # Rules and templates of every config in testdata/.
  local rules segs templates
  rules=$(grep -h "^rule = '" testdata/*/segmill.toml testdata/*/*.toml 2>/dev/null | sed "s/^rule = '//; s/'\$//" || true)
  segs=$(grep -h '^rule = "' testdata/*/segmill.toml testdata/*/*.toml 2>/dev/null | sed 's/^rule = "//; s/"$//' || true)
  templates=$(grep -h '^template = ' testdata/*/segmill.toml 2>/dev/null | sed 's/^template = "//; s/"$//; s/\\"/"/g' || true)
  seed trait_rule sample '%s\0product=tablet\nic=777\nproduct=PHONE\n' "$rules"
  seed trait_rule numbers 'n > 9 AND NOT (n == 10.0 OR n <= -1)\ns contains "AB" OR s matchesregex "^x+$"\n\0n=10\ns=xab\nn=-1.5\n'
  seed segment_rule sample '%s\0\x00\x01\x01\x80\x02\xff' "$segs"
  seed segment_rule frequency 'FREQUENCY([24T,25T] <= 7D) >= 1\nFREQUENCY([24T]) == 0 AND NOT (25T OR 26T)\n\0\x00\x10\x01\x30'
  seed template sample '%s' "$templates"
  seed template full '<UUID><TAB><if(SEGMENT_LIST)><SEGMENT_LIST:{s|<s.sid>,<s.lastUpdateTime>}; separator=";"><else>none<endif> <TIMESTAMP; format="YYYYMMDDhhmmss">'
  seed generation none ''
  seed generation flip '\x02\x00\x03\x01\x01\x05\x00\x00'
  seed state_files empty '\x00'
  # A state written by the binary on the sample: its ledger and partition payloads (footer off).
  local segmill="$MAIN_TARGET_DIR/debug/segmill"
  if [ ! -x "$segmill" ]; then
    env -u RUSTC_BOOTSTRAP CARGO_TARGET_DIR="$MAIN_TARGET_DIR" cargo build --quiet --bin segmill
  fi
  if "$segmill" --config testdata/sample/segmill.toml run --as-of 2026-11-22T02:00:00Z \
      >/dev/null 2>&1 || [ -d target/sample-state ]; then
    local gen
    gen=$(find target/sample-state -maxdepth 1 -name 'gen-*' -type d | sort | tail -n 1)
    if [ -n "$gen" ]; then
      if [ -f "$gen/ledger" ]; then
        head -c -24 "$gen/ledger" >"$CORPUS_ROOT/ledger/seed-sample"
      fi
      n=0
      while IFS= read -r -d '' f; do
        n=$((n + 1))
        { printf '\x00'; head -c -24 "$f"; } >"$CORPUS_ROOT/state_files/seed-profile-$n"
      done < <(find "$gen/profiles" -type f -print0 2>/dev/null)
      while IFS= read -r -d '' f; do
        n=$((n + 1))
        { printf '\x01'; head -c -24 "$f"; } >"$CORPUS_ROOT/state_files/seed-idsync-$n"
      done < <(find "$gen/idsync" -type f -print0 2>/dev/null)
    fi
  fi
}

run_target() {
  local target=$1 secs=$2
  mkdir -p "$CORPUS_ROOT/$target" "$ARTIFACTS_ROOT/$target"
  echo "== fuzz $target for ${secs}s" >&2
  cargo fuzz run "${BUILD_FLAGS[@]}" "$target" \
    "$CORPUS_ROOT/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
    -artifact_prefix="$ARTIFACTS_ROOT/$target/" \
    $([ "$JOBS" -gt 1 ] && echo "-fork=$JOBS")
}

make_seeds
cargo fuzz build "${BUILD_FLAGS[@]}"
if [ $# -ge 1 ]; then
  run_target "$1" "${2:-60}"
else
  for t in "${TARGETS[@]}"; do
    run_target "$t" "$SECONDS_PER_TARGET"
  done
fi
# cargo-fuzz creates its default artifact folders even though -artifact_prefix points elsewhere.
find "$FUZZ_DIR/artifacts" -type d -empty -delete 2>/dev/null || true
