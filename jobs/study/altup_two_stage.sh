#!/usr/bin/env bash
# Two-stage + AltUp (MODELS.md §2, §5): a dense GPT-2 (6 x 256) trained S1 steps, then for S2
# more steps on the same schedule's tail
#   dense          the same run resumed (same optimizer state and schedule);
#   dense restart  the stage-1 weights restarted like the conversions below (fresh AdamW
#                  moments, the same short warmup): the control that separates the optimizer
#                  restart from the conversion;
#   dense+AltUp    widened by Recycled-AltUp K = 2 (mom convert dense-to-altup), trained on;
#   MoM            its layers made a MoM's pools (bottom 1, a chunk of 4+4 modules with SKIP,
#                  top-2, 3 steps, GRU routers, anchor 1), trained on;
#   MoM+AltUp      that MoM widened by Recycled-AltUp K = 2, trained on.
# Continuing runs start from the schedule's learning rate at step S1 (fresh AdamW moments, a
# short warmup) down to 1e-4. Writes docs/study/altup_two_stage.{png,md}.
#
#   S1 (200), S2 (150), STUDY_DIR (runs/study): see jobs/study/common.sh
source "$(dirname "$0")/common.sh"
S1="${S1:-200}"
S2="${S2:-150}"
total=$(( S1 + S2 ))
d="$out/two_stage_altup"
mkdir -p "$d"
dense=("${shape[@]}" $(schedule $total) --set model.n_layer=6 --set run_dir="$d/dense")
$mom train "${dense[@]}" --until-step "$S1" --force
stage1="$d/dense/ckpt_$(printf %08d "$S1").h5"
cp "$stage1" "$d/stage1.h5"
$mom train "${dense[@]}" --resume
lr_at_s1=$(/usr/bin/python3 -c "import math; w=$total//10; p=($S1-w)/($total-w); print(1e-4+0.5*(1e-3-1e-4)*(1+math.cos(math.pi*p)))")
mom_stack='[{"type":"dense","count":1},{"type":"mom","attn_modules":4,"ffn_modules":4,"skip":true,"steps":3,"top_k":2,"router":"gru","router_dim":64,"anchor":true,"balance_coef":0.01}]'
printf '{"model": {"n_embd": 256, "n_head": 4, "n_ctx": 128, "stack": %s}}\n' "$mom_stack" > "$d/mom.json"
$mom convert dense-to-mom "$d/stage1.h5" "$d/mom_init.h5" --config "$d/mom.json" --set train.seq_len=128 --force
$mom convert dense-to-altup --k 2 "$d/stage1.h5" "$d/dense_altup_init.h5" --force
$mom convert dense-to-altup --k 2 "$d/mom_init.h5" "$d/mom_altup_init.h5" --force
# Each continuing run's model comes from its checkpoint's stored config (--init-from reads
# the weights; the config must describe the same model, so it is passed whole).
tail_schedule=(--set train.steps=$S2 --set train.warmup_steps=$(( S2 / 16 )) --set train.lr="$lr_at_s1"
               --set train.min_lr=1e-4 --set train.eval_every=$(( S2 / 3 )))
cont() {
  local name=$1 init=$2; shift 2
  $mom train "${shape[@]}" "${tail_schedule[@]}" --set run_dir="$d/$name" --init-from "$init" --force "$@"
}
cont dense_restart "$d/stage1.h5" --set model.n_layer=6
cont dense_altup "$d/dense_altup_init.h5" --set model.n_layer=6 --set 'model.altup={"k":2}'
cont mom "$d/mom_init.h5" --set "model.stack=$mom_stack"
cont mom_altup "$d/mom_altup_init.h5" --set "model.stack=$mom_stack" --set 'model.altup={"k":2}'
tokens=$(( S1 * 8 * 128 ))
/usr/bin/python3 jobs/study/plot_runs.py --title "Two-stage + AltUp from a dense GPT-2 (6 x 256)" \
  --png docs/study/altup_two_stage.png --table docs/study/altup_two_stage.md \
  "dense, continued=$d/dense" "dense, restarted (fresh AdamW)=$d/dense_restart@$tokens" \
  "dense + Recycled-AltUp K=2=$d/dense_altup@$tokens" \
  "two-stage MoM=$d/mom@$tokens" "two-stage MoM + Recycled-AltUp K=2=$d/mom_altup@$tokens"
