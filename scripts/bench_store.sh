#!/usr/bin/env bash
# A second night against a store of N and of 2N profiles (issue 4: "a second night costs time
# proportional to that night's input" and "memory grows with the night's ops, not with the
# profile store: show it with a 2x larger store").
#
#   scripts/bench_store.sh [--ids N] [--night2 LINES] [--threads T] [--repeat R] [--iter-only]
#                          [--changed] [--nights K]
#
# For each store size S in (N, 2N): `segmill gen --ids S --lines 1.2*S --files 1` (cached under
# target/bench-data/store-S), night 1 on a fresh state, then night 2 R times (default 3), each
# from a copy of night 1's state and exports: the first LINES lines of night 1's trait file
# (default 20,000: the same for both sizes) under a later timestamp. Prints each night 2's wall
# time, peak RSS and stage times, and the ratios of the medians.
#
# gen's destination 7002 is a `full` export, which writes every member of every profile every
# night (CONTRACT §7): that part of night 2 follows the store by definition. --iter-only makes
# it an `iter` destination, to see what the rest of the night costs. Night 2 repeats lines
# night 1 already applied, which changes few memberships; --changed moves each of its `d_sid`
# to the next trait of the same data source, so its users' traits and segments do change.
# --nights K goes on from the last night 2 with nights 3..K, one run each, each the next
# LINES lines of night 1's file a day later: how the nights fare as the deltas grow.
# Defaults: N = 2,000,000 (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

ids=2000000
night2=20000
threads=2
repeat=3
iter_only=0
changed=0
nights=2
while [ $# -gt 0 ]; do
  case "$1" in
    --ids) ids=${2:?--ids needs a number}; shift ;;
    --night2) night2=${2:?--night2 needs a number}; shift ;;
    --threads) threads=${2:?--threads needs a number}; shift ;;
    --repeat) repeat=${2:?--repeat needs a number}; shift ;;
    --iter-only) iter_only=1 ;;
    --changed) changed=1 ;;
    --nights) nights=${2:?--nights needs a number}; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_store.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench_store.sh: %s\n' "$*" >&2; exit 1; }
[ -x /usr/bin/time ] || die "needs GNU time (apt-get install time)"
[ "$repeat" -ge 1 ] || die "--repeat needs at least 1"

target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release/segmill
say "building segmill (release)"
cargo build --release --quiet --bin segmill

as_of1=2026-11-22T02:00:00Z
as_of2=2026-11-23T02:00:00Z
medians=()
for size in "$ids" $((2 * ids)); do
  lines=$((size * 6 / 5))
  data=$target/bench-data/store-$size
  if [ ! -f "$data/.done" ]; then
    say "generating a store of $size IDs, $lines lines"
    rm -rf "$data"
    "$bin" --threads "$threads" gen --out "$data" --ids "$size" --lines "$lines" --seed 42 --files 1 >&2
    touch "$data/.done"
  fi
  run=$target/bench-run/store-$size
  rm -rf "$run"
  mkdir -p "$run/inbound1" "$run/inbound2/date=2026-11-23"
  cp "$data/segmill.toml" "$run/"
  if [ "$iter_only" = 1 ]; then
    sed -i 's/^mode = "full"$/mode = "iter"/' "$run/segmill.toml"
  fi
  for f in "$data"/inbound/*/*; do ln "$f" "$run/inbound1/$(basename "$f")" 2>/dev/null || cp "$f" "$run/inbound1/"; done
  trait=$(ls "$data"/inbound/*/ftp_dpm_* | head -1)
  stamp=$(basename "$trait" | sed -E 's/.*_([0-9]{10})\.sync$/\1/')
  dpid=$(basename "$trait" | sed -E 's/^ftp_dpm_([0-9]+)_.*/\1/')
  # Night k's file: the k-1th slice of $night2 lines of night 1's trait file, a day later each.
  night_file() {
    local k=$1 day
    day=$(date -u -d "2026-11-21 + $k days" +%Y-%m-%d)
    mkdir -p "$run/inbound$k/date=$day"
    local out="$run/inbound$k/date=$day/$(basename "$trait" | sed "s/$stamp/$((stamp + 86400 * (k - 1)))/")"
    local from=$(( (k - 2) * night2 + 1 )) to=$(( (k - 1) * night2 ))
    slice() { sed -n "${from},${to}p;${to}q" "$trait"; }
    if [ "$changed" = 1 ]; then
      slice | python3 -c "
import re, sys, tomllib
catalog = tomllib.load(open('$run/segmill.toml', 'rb'))
ids = sorted(t['id'] for t in catalog['trait'] if t['data_source'] == $dpid)
following = {a: b for a, b in zip(ids, ids[1:] + ids[:1])}
move = lambda m: 'd_sid=' + str(following.get(int(m.group(1)), int(m.group(1))))
for line in sys.stdin:
    sys.stdout.write(re.sub(r'd_sid=([0-9]+)', move, line))
" > "$out"
    else
      slice > "$out"
    fi
  }
  for k in $(seq 2 "$nights"); do night_file "$k"; done
  cd "$run"
  say "store of $size: night 1"
  sed -i 's#^inbound = .*#inbound = "inbound1"#' segmill.toml
  /usr/bin/time -f "%e %M" -o night1.time "$bin" --threads "$threads" run --as-of "$as_of1" >/dev/null 2>night1.err || [ $? -eq 1 ] || die "night 1 failed: $(tail -3 night1.err)"
  read -r w1 m1 < <(tail -1 night1.time)
  printf 'store %9d profiles: night 1 %6.1f s %6d MB\n' "$size" "$w1" $((m1 / 1024))
  mv state state.night1
  mv out out.night1
  sed -i 's#^inbound = .*#inbound = "inbound2"#' segmill.toml
  times=()
  for r in $(seq "$repeat"); do
    rm -rf state out
    cp -a state.night1 state
    cp -a out.night1 out
    # The copy (and night 1) must reach the disk first, so night 2's time is its own.
    sync
    say "store of $size: night 2 ($night2 lines), run $r of $repeat"
    /usr/bin/time -f "%e %M" -o night2.time "$bin" --threads "$threads" run --as-of "$as_of2" >/dev/null 2>night2.err || [ $? -eq 1 ] || die "night 2 failed: $(tail -3 night2.err)"
    stages=$(python3 -c "import json,glob; r=json.load(open(sorted(glob.glob('state/runs/*.json'))[-1])); print(' '.join(f'{k}={v:.2f}' for k,v in sorted(r['durations_seconds'].items())))")
    read -r w2 m2 < <(tail -1 night2.time)
    printf 'store %9d profiles: night 2 %5.2f s %5d MB | %s\n' "$size" "$w2" $((m2 / 1024)) "$stages"
    times+=("$w2 $m2")
  done
  medians+=("$(printf '%s\n' "${times[@]}" | python3 -c "import sys,statistics as s; r=[l.split() for l in sys.stdin]; print(s.median(float(a) for a,_ in r), s.median(int(b) for _,b in r))")")
  # Nights 3.. go on from the last night 2, one run each.
  for k in $(seq 3 "$nights"); do
    sed -i "s#^inbound = .*#inbound = \"inbound$k\"#" segmill.toml
    as_of=$(date -u -d "2026-11-21 + $k days" +%Y-%m-%dT02:00:00Z)
    /usr/bin/time -f "%e %M" -o nightk.time "$bin" --threads "$threads" run --as-of "$as_of" >/dev/null 2>nightk.err || [ $? -eq 1 ] || die "night $k failed: $(tail -3 nightk.err)"
    stages=$(python3 -c "import json,glob; r=json.load(open(sorted(glob.glob('state/runs/*.json'))[-1])); print(' '.join(f'{k}={v:.2f}' for k,v in sorted(r['durations_seconds'].items())))")
    read -r wk mk < <(tail -1 nightk.time)
    printf 'store %9d profiles: night %d %5.2f s %5d MB | %s\n' "$size" "$k" "$wk" $((mk / 1024)) "$stages"
  done
  rm -rf state.night1 out.night1
  cd "$root"
done
read -r a_w a_m <<<"${medians[0]}"
read -r b_w b_m <<<"${medians[1]}"
python3 -c "print(f'night 2 medians: {$a_w:.2f} s, {$a_m/1024:.0f} MB and {$b_w:.2f} s, {$b_m/1024:.0f} MB; store 2x larger: time x{$b_w/$a_w:.2f}, peak RSS x{$b_m/$a_m:.2f} (proportional to the night: x1.00; to the store: x2.00)')"
