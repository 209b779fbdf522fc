#!/usr/bin/env bash
# Pre-LN vs SAS vs SAS-P (RMSNorm) vs SAS-P without norm (MODELS.md §4) at equal depth (6
# blocks) and width (256), on the local code corpus, same tokens, same schedule. Writes
# docs/study/simplified_blocks.{png,md}; docs/study.md reads them.
#
#   STEPS (300), STUDY_DIR (runs/study): see jobs/study/common.sh
source "$(dirname "$0")/common.sh"
s=$(schedule "$STEPS")
run() { $mom train "${shape[@]}" $s --set run_dir="$out/$1" --force "${@:2}"; }
run pre_ln --set model.n_layer=6
run sas --set 'model.stack=[{"type":"sas","count":6}]'
run sas_p --set 'model.stack=[{"type":"sas_p","count":6}]'
run sas_p_no_norm --set 'model.stack=[{"type":"sas_p","count":6,"norm":"none"}]'
/usr/bin/python3 jobs/study/plot_runs.py --title "Pre-LN vs SAS vs SAS-P (6 x 256, Python stdlib corpus)" \
  --png docs/study/simplified_blocks.png --table docs/study/simplified_blocks.md \
  "Pre-LN=$out/pre_ln" "SAS=$out/sas" "SAS-P=$out/sas_p" "SAS-P, no norm=$out/sas_p_no_norm"
