#!/usr/bin/env bash
# Dense GPT-2 vs Recycled-AltUp (K = 2) vs wide AltUp (K = 2) around the same 6 dense blocks
# (MODELS.md §5), on the local code corpus, same tokens, same schedule. Writes
# docs/study/altup.{png,md}; docs/study.md reads them.
#
#   STEPS (300), STUDY_DIR (runs/study): see jobs/study/common.sh
source "$(dirname "$0")/common.sh"
s=$(schedule "$STEPS")
run() { $mom train "${shape[@]}" $s --set model.n_layer=6 --set run_dir="$out/$1" --force "${@:2}"; }
run dense
run altup_recycled --set 'model.altup={"k":2}'
run altup_wide --set 'model.altup={"k":2,"mode":"wide"}'
/usr/bin/python3 jobs/study/plot_runs.py --title "Dense vs Recycled-AltUp vs wide AltUp, K = 2 (6 x 256)" \
  --png docs/study/altup.png --table docs/study/altup.md \
  "dense=$out/dense" "Recycled-AltUp K=2=$out/altup_recycled" "wide AltUp K=2=$out/altup_wide"
