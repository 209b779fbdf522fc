#!/usr/bin/env bash
# The main job: set up, prepare a code corpus from this machine's Python standard library,
# then the two-stage MoM recipe on CPU:
#   stage 1: train the tiny dense GPT-2 for a few minutes (validation loss falls), checkpoint,
#            resume from the checkpoint for a few more steps (as a preempted job would);
#   stage 2: turn the dense checkpoint into a MoM (its layers become the module pools), train
#            it, and show how tokens were routed;
# print a generated sample, and serve the MoM for one completion with its routing (mom serve).
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

echo "== the MoM behind the routing service: a completion and how its tokens were routed (docs/serving.md)"
serve_log="$(mktemp)"
$mom serve "$mom_ckpt" --port 0 --max-requests 1 >"$serve_log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 300); do grep -q "mom serve: ready" "$serve_log" && break; sleep 0.1; done
port="$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$serve_log")"
[ -n "$port" ] && grep -q "mom serve: ready" "$serve_log" || { cat "$serve_log"; echo "demo: mom serve did not start" >&2; exit 1; }
curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
  -d '{"prompt": "import os\n", "max_tokens": 8, "temperature": 0, "routing": "summary"}' |
  /usr/bin/python3 -c '
import json, sys
c = json.load(sys.stdin)["choices"][0]
print("completion of \"import os\\n\":", json.dumps(c["text"]))
for stage, s in c["routing"]["summary"].items():
    for h, step in enumerate(s["steps"]):
        print(f"  {stage} step {h}: " + "; ".join(
            f"{r} " + " ".join(f"{m}:{n}" for m, n in sorted(counts.items())) for r, counts in step.items()))'
wait "$serve_pid"
rm -f "$serve_log"

echo "== plots of both runs (loss, learning rate, gradient norm, tokens/s; routing for the MoM)"
/usr/bin/python3 jobs/analysis/plot_run.py runs/demo_dense --out runs/demo_dense.png
/usr/bin/python3 jobs/analysis/plot_run.py runs/demo_mom --out runs/demo_mom.png
echo "open runs/demo_dense.png and runs/demo_mom.png to see them"
