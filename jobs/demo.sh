#!/usr/bin/env bash
# The main job: set up, prepare a code corpus from this machine's Python standard library,
# then the two-stage MoM recipe on CPU:
#   stage 1: train the tiny dense GPT-2 for a few minutes (validation loss falls), checkpoint,
#            resume from the checkpoint for a few more steps (as a preempted job would);
#   stage 2: turn the dense checkpoint into a MoM (its layers become the module pools), train
#            it, and show how tokens were routed;
# and print a generated sample.
#
#   MOM_DEMO_STEPS       stage-1 steps before the interruption (default 150; +20 after resume)
#   MOM_DEMO_MOM_STEPS   stage-2 steps (default 40)
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
mom=./build/mom
steps="${MOM_DEMO_STEPS:-150}"
mom_steps="${MOM_DEMO_MOM_STEPS:-40}"

[ -f data/pystdlib/meta.json ] || $mom data prepare --out data/pystdlib

echo "== stage 1: dense GPT-2 (4 layers, width 256, context 256)"
# The schedule spans steps+20 and the first run stops at `steps`: the resume then continues
# the very same run.
total=$((steps + 20))
dense=(--config jobs/configs/gpt2_tiny_cpu.json --set train.steps=$total --set run_dir=runs/demo_dense)
$mom train "${dense[@]}" --until-step "$steps" --force
echo "== resuming stage 1 from its checkpoint for 20 more steps"
$mom train "${dense[@]}" --resume
dense_ckpt=$(ls runs/demo_dense/ckpt_*.h5 | tail -n 1)
$mom eval "$dense_ckpt" --batches 20

echo "== stage 2: the dense layers become a MoM's module pools (two-stage init)"
mom_cfg=(--config jobs/configs/mom_tiny_cpu.json)
$mom convert dense-to-mom "${mom_cfg[@]}" "$dense_ckpt" runs/demo_mom_init.h5 --force
$mom train "${mom_cfg[@]}" --set train.steps="$mom_steps" --set train.eval_every=$((mom_steps / 2)) \
  --set run_dir=runs/demo_mom --init-from runs/demo_mom_init.h5 --force
mom_ckpt=$(ls runs/demo_mom/ckpt_*.h5 | tail -n 1)
$mom eval "$mom_ckpt" --batches 20

echo "== sample from the MoM (temperature 0.8, top-k 40)"
$mom generate "$mom_ckpt" --prompt $'import os\n\ndef ' --max-tokens 80 --temperature 0.8 --top-k 40 --seed 7

echo "== plots of both runs (loss, learning rate, gradient norm, tokens/s; routing for the MoM)"
/usr/bin/python3 jobs/analysis/plot_run.py runs/demo_dense --out runs/demo_dense.png
/usr/bin/python3 jobs/analysis/plot_run.py runs/demo_mom --out runs/demo_mom.png
echo "open runs/demo_dense.png and runs/demo_mom.png to see them"
