#!/usr/bin/env bash
# The main job: set up, prepare a code corpus from this machine's Python standard library,
# train the tiny GPT-2 on CPU for a few minutes (validation loss falls), checkpoint, resume
# from the checkpoint for a few more steps, and print a generated sample.
#
#   MOM_DEMO_STEPS   steps of the first run (default 200); the resume adds 20 more
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
mom=./build/mom
steps="${MOM_DEMO_STEPS:-200}"
run=runs/demo

[ -f data/pystdlib/meta.json ] || $mom data prepare --out data/pystdlib
# The schedule spans steps+20, and the first run stops at `steps`: the resume then continues
# the very same run, as a preempted job would.
total=$((steps + 20))
common=(--config jobs/configs/gpt2_tiny_cpu.json --set train.steps=$total --set run_dir=$run)
$mom train "${common[@]}" --until-step "$steps" --force
echo "== resuming from the checkpoint for 20 more steps"
$mom train "${common[@]}" --resume
ckpt=$(ls $run/ckpt_*.h5 | tail -n 1)
$mom eval "$ckpt" --batches 20
echo "== sample (temperature 0.8, top-k 40)"
$mom generate "$ckpt" --prompt $'import os\n\ndef ' --max-tokens 120 --temperature 0.8 --top-k 40 --seed 7
