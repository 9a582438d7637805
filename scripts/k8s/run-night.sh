#!/usr/bin/env bash
# Runs one segmill night as Kubernetes Indexed Jobs, one stage after another:
# plan -> map (M tasks) -> resolve (N) -> merge (N) -> finalize.
# README, "Scale-out: stages under a scheduler", explains the stages and how to size them.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/k8s/run-night.sh [options]

Creates the Jobs of scripts/k8s/ one stage at a time and waits for each with
`kubectl wait --for=condition=complete`; stops at the first stage that fails.

  --as-of T         the night's as-of time, RFC 3339 UTC to the second
                    (default: now). To re-run a failed night, give its as-of
                    again: stages already complete for it are skipped, and a
                    re-created stage redoes only the tasks not committed.
  -m, --map M       map tasks (default 10)
  -n, --tasks N     resolve tasks and merge tasks (default 10; at most P)
  --image IMAGE     container image (default: the manifests' own)
  --namespace NS    namespace (default: kubectl's current one)
  --timeout SEC     longest wait for one stage, in seconds (default 21600)
  --setup           first apply configmap.yaml and pvc.yaml from this folder
  --work-store URL  keep the work on S3, in URL
                    (s3://bucket/prefix): map, resolve and merge then need no
                    shared volume, only S3 credentials (AWS_* in the ConfigMap
                    or the pod's service account)
  -h, --help        this text

The night's work folder is /segmill/work/<as-of as YYYYMMDDTHHMMSSZ> on the
shared volume; remove it once the night is committed. With --work-store, URL
itself is the work store of every night (finalize empties it but for the
state mirror, which the next night's plan reuses).

Exit codes: 0 committed, nothing rejected; 1 committed, but something was
rejected (finalize exited 1; see the run report); 2 a stage failed, nothing
was committed; 3 a segmill Job is still running (another night?).
EOF
}

die() {
  local code=$1
  shift
  echo "run-night: $*" >&2
  exit "$code"
}

here=$(cd "$(dirname "$0")" && pwd)
as_of=$(date -u +%Y-%m-%dT%H:%M:%SZ)
map_tasks=10
tasks=10
image=
timeout=21600
setup=0
work_store=
kc=(kubectl)

while [ $# -gt 0 ]; do
  case "$1" in
    --as-of) as_of=${2:?--as-of needs a time}; shift ;;
    -m | --map) map_tasks=${2:?--map needs a number}; shift ;;
    -n | --tasks) tasks=${2:?--tasks needs a number}; shift ;;
    --image) image=${2:?--image needs an image}; shift ;;
    --namespace) kc+=(--namespace "${2:?--namespace needs a name}"); shift ;;
    --timeout) timeout=${2:?--timeout needs seconds}; shift ;;
    --setup) setup=1 ;;
    --work-store) work_store=${2:?--work-store needs an s3:// URL}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die 2 "unknown argument: $1" ;;
  esac
  shift
done

for pair in "map:$map_tasks" "tasks:$tasks" "timeout:$timeout"; do
  name=${pair%%:*}
  value=${pair#*:}
  [[ $value =~ ^[1-9][0-9]*$ ]] || die 2 "--$name must be a positive integer, not '$value'"
done
[[ -z $image || $image =~ ^[A-Za-z0-9./:@_-]+$ ]] || die 2 "--image has unexpected characters: '$image'"
[[ $as_of =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] ||
  die 2 "--as-of must be RFC 3339 UTC to the second (2026-11-22T02:00:00Z), not '$as_of'"

[[ -z $work_store || $work_store =~ ^s3://[A-Za-z0-9._/-]+$ ]] ||
  die 2 "--work-store must be an s3://bucket/prefix URL, not '$work_store'"

night=${as_of//[-:]/}
if [ -n "$work_store" ]; then
  # One prefix for every night: its state/ mirror is reused (plan uploads only what changed),
  # and plan clears what a finalized night left there.
  work=${work_store%/}
else
  work=/segmill/work/$night
fi

# The Job's condition of `type` (Complete, Failed): True, False or empty.
condition() {
  "${kc[@]}" get job "$1" --ignore-not-found \
    -o jsonpath="{.status.conditions[?(@.type==\"$2\")].status}"
}

# "index exit-code" of every terminated pod of Job $1, one a line.
exit_codes() {
  "${kc[@]}" get pods -l "batch.kubernetes.io/job-name=$1" \
    -o jsonpath='{range .items[*]}{.metadata.annotations.batch\.kubernetes\.io/job-completion-index}{" "}{.status.containerStatuses[0].state.terminated.exitCode}{"\n"}{end}'
}

# Runs stage $1 with $2 tasks (0: the manifest's single task) and waits for it.
run_stage() {
  local stage=$1 count=$2 job="segmill-$1" seen tasks_seen
  seen=$("${kc[@]}" get job "$job" --ignore-not-found \
    -o jsonpath='{.metadata.labels.segmill\.io/night}')
  tasks_seen=$("${kc[@]}" get job "$job" --ignore-not-found -o jsonpath='{.spec.completions}')
  if [ -n "$("${kc[@]}" get job "$job" --ignore-not-found -o name)" ]; then
    # A task's share depends on the task count: a night must keep the count it started with.
    if [ "$seen" = "$night" ] && [ "$count" -gt 0 ] && [ "$tasks_seen" != "$count" ]; then
      die 2 "$stage: night $night already ran $tasks_seen $stage tasks; re-run it with the same count"
    fi
    if [ "$seen" = "$night" ] && [ "$(condition "$job" Complete)" = True ]; then
      echo "run-night: $stage: already complete for night $night, skipped"
      return 0
    fi
    if [ "$(condition "$job" Complete)" != True ] && [ "$(condition "$job" Failed)" != True ]; then
      die 3 "$stage: Job $job (night ${seen:-unknown}) is still running; not starting another"
    fi
    "${kc[@]}" delete job "$job" --cascade=foreground --wait=true >/dev/null
  fi

  # One strategic-merge patch (env entries merge by name): the night, the task count, the image.
  local env="{\"name\":\"SEGMILL_WORK\",\"value\":\"$work\"},{\"name\":\"SEGMILL_AS_OF\",\"value\":\"$as_of\"}"
  local spec=""
  if [ "$count" -gt 0 ]; then
    env+=",{\"name\":\"SEGMILL_OF\",\"value\":\"$count\"}"
    spec="\"completions\":$count,\"parallelism\":$count,"
  fi
  local container="{\"name\":\"segmill\",${image:+\"image\":\"$image\",}\"env\":[$env]}"
  local patch="{\"metadata\":{\"labels\":{\"segmill.io/night\":\"$night\"}},\"spec\":{$spec\"template\":{\"spec\":{\"containers\":[$container]}}}}"
  kubectl patch --local -f "$here/$stage.yaml" --type strategic -o yaml -p "$patch" |
    "${kc[@]}" create -f - >/dev/null
  echo "run-night: $stage: started $([ "$count" -gt 0 ] && echo "$count tasks" || echo "1 task")"

  local deadline=$((SECONDS + timeout))
  until "${kc[@]}" wait --for=condition=complete --timeout=60s "job/$job" >/dev/null 2>&1; do
    if [ "$(condition "$job" Failed)" = True ]; then
      local codes
      codes=$(exit_codes "$job")
      if [ "$stage" = finalize ] && grep -qx '[0-9]* 1' <<<"$codes"; then
        echo "run-night: finalize: committed, but something was rejected (exit 1);" \
          "see the night's runs/<run_id>.json and receipts" >&2
        exit 1
      fi
      echo "run-night: $stage: failed; exit codes by task index:" >&2
      sort -n <<<"$codes" | sed 's/^/  task /' >&2
      die 2 "nothing of night $night was committed; logs: kubectl logs -l batch.kubernetes.io/job-name=$job --tail=50; re-run with --as-of $as_of"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      die 2 "$stage: not complete after ${timeout}s; Job $job left running"
    fi
  done
  echo "run-night: $stage: complete"
}

if [ "$setup" = 1 ]; then
  "${kc[@]}" apply -f "$here/configmap.yaml" -f "$here/pvc.yaml"
fi
echo "run-night: night $night (as-of $as_of), work folder $work, M=$map_tasks, N=$tasks"
run_stage plan 0
run_stage map "$map_tasks"
run_stage resolve "$tasks"
run_stage merge "$tasks"
run_stage finalize 0
echo "run-night: night $night committed"
