#!/usr/bin/env bash
# A small two-stage study on the local code corpus (MODELS.md §2's claim that two-stage beats
# training MoM from scratch), at tiny CPU scale:
#   stage 1      the tiny dense GPT-2, S1 steps;
#   two-stage    its layers become a MoM's module pools (dense-to-mom), then S2 steps;
#   dense cont.  the dense model continued S2 steps with the same stage-2 recipe;
#   MoM scratch  the same MoM trained from random initialisation for S1+S2 steps.
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
eval_every=$(( S2 / 4 ))
common=(--set train.eval_every=$eval_every --set train.eval_batches=8 --set train.save_every=0 --force)
stage2=(--set train.steps=$S2 --set train.warmup_steps=$(( S2 / 10 )) --set train.lr=5e-4 --set train.min_lr=5e-5)

$mom train --config jobs/configs/gpt2_tiny_cpu.json --set train.steps=$S1 --set train.warmup_steps=$(( S1 / 10 )) \
  --set run_dir=$out/dense_stage1 "${common[@]}"
dense_ckpt=$(ls $out/dense_stage1/ckpt_*.h5 | tail -n 1)

$mom train --config jobs/configs/gpt2_tiny_cpu.json "${stage2[@]}" --set run_dir=$out/dense_continued \
  --init-from "$dense_ckpt" "${common[@]}"

$mom convert dense-to-mom --config jobs/configs/mom_tiny_cpu.json "$dense_ckpt" $out/mom_init.h5 --force
$mom train --config jobs/configs/mom_tiny_cpu.json "${stage2[@]}" --set run_dir=$out/mom_two_stage \
  --init-from $out/mom_init.h5 "${common[@]}"

$mom train --config jobs/configs/mom_tiny_cpu.json --set train.steps=$(( S1 + S2 )) \
  --set train.warmup_steps=$(( (S1 + S2) / 10 )) --set train.lr=1e-3 --set train.min_lr=1e-4 \
  --set run_dir=$out/mom_scratch "${common[@]}"

/usr/bin/python3 jobs/study/plot_two_stage.py "$out" "$S1" docs/study
