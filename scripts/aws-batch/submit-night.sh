#!/usr/bin/env bash
# Submits one segmill night to AWS Batch as five jobs chained with --depends-on:
# plan -> map (array of M) -> resolve (array of N) -> merge (array of N) -> finalize.
# README, "Scale-out: stages under a scheduler", explains the stages and how to size them.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/aws-batch/submit-night.sh --queue QUEUE [options]

Submits the night's five stages with `aws batch submit-job`, each depending on
the previous one's job ID (an array job counts as done when all its children
are); a failed stage fails every later one, so nothing after it runs. Array
children read their task index from AWS_BATCH_JOB_ARRAY_INDEX.

  --queue QUEUE       job queue (required)
  --definition DEF    job definition name[:revision] (default segmill), registered
                      from job-definition.json in this folder:
                      aws batch register-job-definition --cli-input-json file://job-definition.json
  --as-of T           the night's as-of time, RFC 3339 UTC to the second
                      (default: now). To re-run a failed night, submit it again
                      with the same as-of: tasks already committed exit at once.
  -m, --map M         map tasks (default 10; 1 to 10000)
  -n, --tasks N       resolve tasks and merge tasks (default 10; 1 to 10000, at most P)
  --config PATH       segmill.toml inside the container (default /segmill/segmill.toml)
  --work-store URL    keep the work on S3, in URL (s3://bucket/prefix):
                      map, resolve and merge then need no EFS volume, only the job
                      role's access to the bucket
  --wait              wait for finalize and exit with the night's outcome
  -h, --help          this text

The night's work folder is /segmill/work/<as-of as YYYYMMDDTHHMMSSZ> on the EFS
volume; remove it once the night is committed. With --work-store, URL itself is
the work store of every night (finalize empties it but for the state mirror,
which the next night's plan reuses).

Exit codes: 0 submitted (with --wait: committed, nothing rejected); with --wait,
1 committed but something was rejected (finalize exited 1), 2 a stage failed
and nothing was committed. 2 also for bad arguments or a failed submission.
EOF
}

die() {
  echo "submit-night: $*" >&2
  exit 2
}

queue=
definition=segmill
as_of=$(date -u +%Y-%m-%dT%H:%M:%SZ)
map_tasks=10
tasks=10
config=/segmill/segmill.toml
wait_for_it=0
work_store=

while [ $# -gt 0 ]; do
  case "$1" in
    --queue) queue=${2:?--queue needs a name}; shift ;;
    --definition) definition=${2:?--definition needs a name}; shift ;;
    --as-of) as_of=${2:?--as-of needs a time}; shift ;;
    -m | --map) map_tasks=${2:?--map needs a number}; shift ;;
    -n | --tasks) tasks=${2:?--tasks needs a number}; shift ;;
    --config) config=${2:?--config needs a path}; shift ;;
    --wait) wait_for_it=1 ;;
    --work-store) work_store=${2:?--work-store needs an s3:// URL}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

[ -n "$queue" ] || { usage >&2; die "--queue is required"; }
for pair in "map:$map_tasks" "tasks:$tasks"; do
  name=${pair%%:*}
  value=${pair#*:}
  if ! [[ $value =~ ^[1-9][0-9]*$ ]] || [ "$value" -gt 10000 ]; then
    die "--$name must be an integer from 1 to 10000, not '$value'"
  fi
done
[[ $as_of =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] ||
  die "--as-of must be RFC 3339 UTC to the second (2026-11-22T02:00:00Z), not '$as_of'"
# Values are spliced into JSON below: keep them to characters that need no escaping.
[[ $config =~ ^[A-Za-z0-9./_-]+$ ]] || die "--config has unexpected characters: '$config'"

[[ -z $work_store || $work_store =~ ^s3://[A-Za-z0-9._/-]+$ ]] ||
  die "--work-store must be an s3://bucket/prefix URL, not '$work_store'"

night=${as_of//[-:]/}
if [ -n "$work_store" ]; then
  # One prefix for every night: its state/ mirror is reused (plan uploads only what changed),
  # and plan clears what a finalized night left there.
  work=${work_store%/}
else
  work=/segmill/work/$night
fi
prev=

# Submits stage $1 as $2 tasks with $3 MiB of memory; the rest are the stage's own arguments.
submit() {
  local stage=$1 count=$2 memory=$3
  shift 3
  local args=("$@")
  local opts=(--job-name "segmill-$night-$stage" --job-queue "$queue"
    --job-definition "$definition" --query jobId --output text)
  if [ -n "$prev" ]; then
    opts+=(--depends-on "jobId=$prev")
  fi
  if [ "$count" -gt 1 ]; then
    opts+=(--array-properties "size=$count")
    args+=(--of "$count")
  elif [ "$count" -eq 1 ]; then
    # An array needs at least 2 children: one task is a plain job, with its index given.
    args+=(--task 0 --of 1)
  fi
  local command="\"segmill\",\"--config\",\"$config\",\"--threads\",\"2\",\"--log-format\",\"json\""
  local arg
  for arg in "${args[@]}"; do
    command+=",\"$arg\""
  done
  opts+=(--container-overrides "{\"command\":[$command],\"resourceRequirements\":[{\"type\":\"VCPU\",\"value\":\"2\"},{\"type\":\"MEMORY\",\"value\":\"$memory\"}]}")
  local id
  id=$(aws batch submit-job "${opts[@]}") ||
    die "$stage: submit-job failed${prev:+; the stages before it were submitted and will run (harmless: nothing is current before finalize), last job $prev}"
  prev=$id
  printf -v "job_$stage" %s "$prev"
  echo "submit-night: $stage: job $prev, $((count > 0 ? count : 1)) task(s)"
}

echo "submit-night: night $night (as-of $as_of), work folder $work, M=$map_tasks, N=$tasks"
# Memory per task in MiB: the 10-machine row of the README's sizing table.
submit plan 0 4096 plan --work "$work" --as-of "$as_of"
submit map "$map_tasks" 3072 map --work "$work"
submit resolve "$tasks" 2048 resolve --work "$work"
submit merge "$tasks" 2048 merge --work "$work"
submit finalize 0 4096 finalize --work "$work"

[ "$wait_for_it" = 1 ] || exit 0

# $prev is finalize's job ID now.

while :; do
  if ! out=$(aws batch describe-jobs --jobs "$prev" \
    --query 'jobs[0].[status, container.exitCode]' --output text); then
    echo "submit-night: describe-jobs failed; trying again in 30 s" >&2
    sleep 30
    continue
  fi
  read -r status code <<<"$out"
  case "$status" in
    SUCCEEDED)
      echo "submit-night: night $night committed"
      exit 0
      ;;
    FAILED)
      if [ "$code" = 1 ]; then
        echo "submit-night: finalize: committed, but something was rejected (exit 1);" \
          "see the night's runs/<run_id>.json and receipts" >&2
        exit 1
      fi
      for stage in plan map resolve merge finalize; do
        job="job_$stage"
        aws batch describe-jobs --jobs "${!job}" \
          --query 'jobs[0].[jobName, status, statusReason]' --output text >&2
      done
      die "night $night failed, nothing was committed; re-submit with --as-of $as_of"
      ;;
  esac
  sleep 30
done
