# Shared set-up of the block studies (sourced by jobs/study/*.sh): the mom binary, the code
# corpus, matplotlib, the study shape and one learning-rate schedule.
#
#   STEPS: optimizer steps of a run (default 300); STUDY_DIR: where runs go (default runs/study)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mom=./build/mom
STEPS="${STEPS:-300}"
out="${STUDY_DIR:-runs/study}"
[ -x "$mom" ] || bash jobs/setup.sh
[ -f data/pystdlib/meta.json ] || $mom data prepare --out data/pystdlib
/usr/bin/python3 -c "import matplotlib" 2>/dev/null || {
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-matplotlib >/dev/null
}
# The shape every run shares: 6 blocks of width 256, 4 heads, context 128, batch 8 x 128
# tokens; the data order is the same for every run (same seed).
shape=(--set model.n_embd=256 --set model.n_head=4 --set model.n_ctx=128 --set train.seq_len=128
       --set train.batch_size=8 --set train.seed=1337 --set train.eval_batches=8 --set train.save_every=0)
# warmup, then cosine from 1e-3 to 1e-4 over `total` steps
schedule() {
  local total=$1
  echo --set train.steps="$total" --set train.warmup_steps=$(( total / 10 )) --set train.lr=1e-3 \
       --set train.min_lr=1e-4 --set train.eval_every=$(( total / 6 ))
}
