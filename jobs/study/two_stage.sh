#!/usr/bin/env bash
# A small two-stage study on the local code corpus (MODELS.md §2's claim that two-stage beats
# training MoM from scratch), at tiny CPU scale. One learning-rate schedule (warmup, then
# cosine from 1e-3 to 1e-4 over S1+S2 steps) serves every run, so that the comparison is of
# models, not of schedules:
#   stage 1      the tiny dense GPT-2 on that schedule, stopped after S1 steps;
#   dense cont.  the same run resumed to S1+S2 (same optimizer state and schedule);
#   two-stage    the stage-1 checkpoint's layers become a MoM's module pools (dense-to-mom),
#                trained S2 steps from the schedule's learning rate at step S1 down to 1e-4
#                (a short warmup for the fresh routers);
#   MoM scratch  the same MoM from random initialisation on the full S1+S2 schedule.
# Every run sees the same batches per step, so the runs compare at equal tokens. Writes
# docs/study/val_loss.png and docs/study/results.md.
#
#   S1, S2: steps (default 120 and 80); STUDY_DIR: where runs go (default runs/study)
set -euo pipefail
cd "$(dirname "$0")/../.."
mom=./build/mom
S1="${S1:-120}"
S2="${S2:-80}"
out="${STUDY_DIR:-runs/study}"
[ -x "$mom" ] || bash jobs/setup.sh
[ -f data/pystdlib/meta.json ] || $mom data prepare --out data/pystdlib
/usr/bin/python3 -c "import matplotlib" 2>/dev/null || {
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-matplotlib >/dev/null
}
total=$(( S1 + S2 ))
warmup=$(( total / 10 ))
eval_every=$(( S2 / 4 ))
common=(--set train.eval_every=$eval_every --set train.eval_batches=8 --set train.save_every=0)
schedule=(--set train.steps=$total --set train.warmup_steps=$warmup --set train.lr=1e-3 --set train.min_lr=1e-4)

dense=(--config jobs/configs/gpt2_tiny_cpu.json "${schedule[@]}" --set run_dir=$out/dense "${common[@]}")
$mom train "${dense[@]}" --until-step "$S1" --force
dense_ckpt=$out/dense/ckpt_$(printf %08d "$S1").h5
# The schedule's learning rate at step S1, where the two-stage run picks up.
lr_at_s1=$(/usr/bin/python3 -c "import math; p=($S1-$warmup)/($total-$warmup); print(1e-4+0.5*(1e-3-1e-4)*(1+math.cos(math.pi*p)))")
$mom train "${dense[@]}" --resume

$mom convert dense-to-mom --config jobs/configs/mom_tiny_cpu.json "$dense_ckpt" $out/mom_init.h5 --force
$mom train --config jobs/configs/mom_tiny_cpu.json --set train.steps=$S2 --set train.warmup_steps=$(( S2 / 16 )) \
  --set train.lr="$lr_at_s1" --set train.min_lr=1e-4 --set run_dir=$out/mom_two_stage \
  --init-from $out/mom_init.h5 "${common[@]}" --force

$mom train --config jobs/configs/mom_tiny_cpu.json "${schedule[@]}" --set run_dir=$out/mom_scratch "${common[@]}" --force

/usr/bin/python3 jobs/study/plot_two_stage.py "$out" "$S1" docs/study
