#!/usr/bin/env bash
# The staged run (issue #7) against `segmill run` on one machine: the same night, once as
# `segmill run` and once as plan, M map, N resolve, N merge tasks and finalize run one after
# another, each stage's tasks at once. Prints each command's wall time and peak RSS, the sum
# of the stages, and checks that both leave byte-identical state, receipts and exports.
#
#   scripts/bench_stages.sh [--ids N] [--lines L] [--files F] [--maps M] [--groups N] [--threads T]
#                           [--work URL | --moto]
#
# Defaults: 2,000,000 synced IDs, 2,400,000 lines in 4 trait files (cached under
# target/bench-data/stages-...), M = 2, N = 2, 1 thread per task (2 tasks at once = 2 cores).
# --work URL: the stages' work store (s3://bucket/prefix, credentials from the AWS variables).
# --moto: the work store on a local moto S3 server (from scripts/test.sh's venv), started and
# stopped here: every object crosses HTTP to a Python server, so it shows the stages' request
# overhead at its worst, not S3's speed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

ids=2000000
lines=2400000
files=4
maps=2
groups=2
threads=1
work=
moto=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ids) ids=${2:?--ids needs a number}; shift ;;
    --lines) lines=${2:?--lines needs a number}; shift ;;
    --files) files=${2:?--files needs a number}; shift ;;
    --maps) maps=${2:?--maps needs a number}; shift ;;
    --groups) groups=${2:?--groups needs a number}; shift ;;
    --threads) threads=${2:?--threads needs a number}; shift ;;
    --work) work=${2:?--work needs a URL}; shift ;;
    --moto) moto=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_stages.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench_stages.sh: %s\n' "$*" >&2; exit 1; }
[ -x /usr/bin/time ] || die "needs GNU time (apt-get install time)"

target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release/segmill
say "building segmill (release)"
cargo build --release --quiet --bin segmill

data=$target/bench-data/stages-$ids-$lines-$files
if [ ! -f "$data/.done" ]; then
  say "generating $ids IDs, $lines lines in $files files"
  rm -rf "$data"
  "$bin" gen --out "$data" --ids "$ids" --lines "$lines" --files "$files" --seed 7 >&2
  touch "$data/.done"
fi
run=$target/bench-run/stages
rm -rf "$run"
mkdir -p "$run"
as_of=2026-11-22T02:00:00Z
if [ "$moto" = 1 ]; then
  py=$root/target/test-venv/bin/python
  [ -x "$py" ] || die "--moto needs scripts/test.sh's venv (run scripts/test.sh once)"
  port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$py" -m moto.server -H 127.0.0.1 -p "$port" > "$run/moto.log" 2>&1 &
  moto_pid=$!
  trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
  for _ in $(seq 50); do
    "$py" -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='bench')" \
      2>/dev/null && break
    sleep 0.2
  done
  work=s3://bench/work
fi
work_args=()
[ -z "$work" ] || work_args=(--work "$work")
# Two copies of the config, each with its own state and outbound folders (destinations write
# under out/), one inbound folder.
for variant in run staged; do
  mkdir -p "$run/$variant"
  sed -e "s#^inbound = .*#inbound = \"$data/inbound\"#" \
      -e "s#^state = .*#state = \"state\"#" \
      -e "s#^outbound = .*#outbound = \"out\"#" \
      "$data/segmill.toml" > "$run/$variant/segmill.toml"
done

# timed NAME CMD...: runs CMD under GNU time, appends "NAME seconds peak_kB" to $run/times.
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$run/$name.time" "$@" > "$run/$name.out" 2> "$run/$name.err" || {
    local code=$?
    # Exit 1: the night committed with rejected lines (the generated data has a few).
    [ "$code" -eq 1 ] || die "$name failed with exit $code (see $run/$name.err)"
  }
  printf '%s %s\n' "$name" "$(tail -1 "$run/$name.time")" >> "$run/times"
}
# stage NAME COUNT ARGS...: COUNT tasks of a stage at once; records the slowest and the peak.
stage() {
  local name=$1 count=$2; shift 2
  local pids=() start end
  start=$(date +%s.%N)
  for ((i = 0; i < count; i++)); do
    /usr/bin/time -f "%e %M" -o "$run/$name-$i.time" \
      "$bin" --config "$run/staged/segmill.toml" --threads "$threads" "$name" "${work_args[@]}" --task "$i" --of "$count" \
      > "$run/$name-$i.out" 2> "$run/$name-$i.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || die "$name task failed (see $run/$name-*.err)"; done
  end=$(date +%s.%N)
  local peak
  peak=$(for ((i = 0; i < count; i++)); do tail -1 "$run/$name-$i.time" | cut -d' ' -f2; done | sort -n | tail -1)
  printf '%s %.2f %s\n' "$name" "$(echo "$end - $start" | bc)" "$peak" >> "$run/times"
}

: > "$run/times"
say "segmill run"
timed run "$bin" --config "$run/run/segmill.toml" --threads 2 run --as-of "$as_of"
say "staged: plan, $maps map, $groups resolve, $groups merge, finalize"
say "work store: ${work:-$run/staged/state/stage}"
timed plan "$bin" --config "$run/staged/segmill.toml" --threads 2 plan "${work_args[@]}" --as-of "$as_of"
stage map "$maps"
stage resolve "$groups"
stage merge "$groups"
timed finalize "$bin" --config "$run/staged/segmill.toml" --threads 2 finalize "${work_args[@]}"

say "comparing outputs"
if diff -r -x lock -x runs -x stage -x tmp "$run/run/state" "$run/staged/state" > "$run/diff.txt" \
   && diff -r "$run/run/out" "$run/staged/out" >> "$run/diff.txt"; then
  same=yes
else
  same="NO (see $run/diff.txt)"
fi
printf '%-10s %10s %12s\n' step seconds "peak RSS MB"
while read -r name secs kb; do
  printf '%-10s %10.2f %12.0f\n' "$name" "$secs" "$((kb / 1024))"
done < "$run/times"
awk '$1 != "run" { s += $2 } END { printf "%-10s %10.2f\n", "stages", s }' "$run/times"
echo "byte-identical state, receipts and exports: $same"
[ "$same" = yes ]
