#!/usr/bin/env bash
# The checks that need a GPU, as one command for a GPU machine that has the NVIDIA driver, CUDA
# and Python with PyTorch and transformers but none of mom's Debian libraries (docs/gpu.md):
#
#   jobs/device/check.sh [BUNDLE]     BUNDLE: a folder or .tar.xz from jobs/device/bundle.sh
#                                     (default .device/bundle.tar.xz, else .device/bundle)
#
# Steps, each bounded in time, bounded to 550 s in all (one device call):
#   1. the machine: nvidia-smi, the driver, nvcc, python3's torch and transformers; every
#      program's libraries resolve (run.sh --check-libraries: CUDA's from the node);
#   2. the bundle runs here: `mom --help` names its backends;
#   3. the CUDA tests: the conformance suites' CUDA targets (every op, whole models: dense,
#      MoM, MoE, SAS, AltUp), GPU determinism and resume, every test named for CUDA/GPU/NCCL;
#   4. the GPU communicators: NCCL on one rank, then two ranks (on one GPU: host staging),
#      each against MPI, and a peer that stops answering gives CommTimeout;
#   5. the Hugging Face transformers round trip that CPU machines skip
#      (HfConvert.TransformersRoundTrip: transformers' GPT-2 -> mom -> transformers, logits
#      within 1e-4);
#   6. the training benchmark: mom vs PyTorch + torch.compile, MoE and MoM per active FLOP.
# Writes the log to OUT/check.log when $OUT is set (the device tool's output folder) and a
# summary line per step; exits non-zero when a step that ran failed.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bundle="${1:-}"
if [ -z "$bundle" ]; then
  if [ -f "$repo/.device/bundle.tar.xz" ]; then bundle="$repo/.device/bundle.tar.xz"; else bundle="$repo/.device/bundle"; fi
fi
log="${OUT:-${TMPDIR:-/tmp}}/check.log"
: >"$log"
say() { echo "$*" | tee -a "$log"; }
failed=0
step() {  # step NAME SECONDS COMMAND...: runs it, bounded, and records pass/fail/skip (exit 77)
  local name=$1 secs=$2
  shift 2
  local t0=$SECONDS rc
  if declare -F "$1" >/dev/null; then  # a function of this script: timeout runs it in bash
    export -f "$1"
    timeout "$secs" bash -c "$*" >>"$log" 2>&1
  else
    timeout "$secs" "$@" >>"$log" 2>&1
  fi
  rc=$?
  local verdict=passed
  if ((rc == 77)); then verdict=skipped; elif ((rc == 124)); then verdict="TIMED OUT after ${secs}s"; failed=1
  elif ((rc != 0)); then verdict="FAILED (exit $rc)"; failed=1; fi
  say "check: $name: $verdict ($((SECONDS - t0)) s)"
}

if [[ "$bundle" == *.tar.xz ]]; then
  [ -f "$bundle" ] || { say "check: no bundle at $bundle (make it with jobs/device/bundle.sh and carry it)"; exit 2; }
  dest="$(dirname "$bundle")"
  tar -C "$dest" -xJf "$bundle" || { say "check: cannot unpack $bundle"; exit 2; }
  bundle="$dest/$(basename "$bundle" .tar.xz)"
fi
[ -x "$bundle/run.sh" ] || { say "check: no bundle folder at $bundle (jobs/device/bundle.sh makes it)"; exit 2; }
run="$bundle/run.sh"
export bundle run
export MOM_SOURCE_DIR="$repo" MOM_REFERENCE_PYTHON="${MOM_REFERENCE_PYTHON:-python3}"

machine() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return 1
  nvcc --version | tail -n 2
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "transformers", transformers.__version__)'
}
step "machine" 30 machine
step "libraries resolve (run.sh --check-libraries)" 20 "$run" --check-libraries
step "bundle runs (mom --help)" 20 "$run" mom --help
head -n 1 <("$run" mom --help 2>&1) | tee -a "$log"

# The conformance suites' CUDA targets (.../cuda_f32, .../cuda_f64) and every test named for
# CUDA, a GPU or NCCL (tests of the CPU-side behaviour avoid those words, so that on a machine
# without a GPU every test this step runs skips and the step says skipped).
gpu_filter='*cuda*:*Cuda*:*CUDA*:*Gpu*:*GPU*:*Nccl*:*NCCL*'
export gpu_filter
cuda_tests() {  # every binary runs, so one failing file does not hide the others' results
  local any=0 passed=0 bad=()
  for t in "$bundle"/bin/test_*; do
    local name list out n
    name="$(basename "$t")"
    list="$("$run" "$name" --gtest_list_tests --gtest_filter="$gpu_filter" | grep -c '^  ')" || true
    ((list > 0)) || continue
    any=1
    out="$("$run" "$name" --gtest_filter="$gpu_filter" --gtest_brief=1 2>&1)" || bad+=("$name")
    echo "$out"
    n="$(echo "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)"
    passed=$((passed + ${n:-0}))
  done
  if ((any == 0)); then
    echo "no CUDA tests in this bundle: its build has no CUDA backend"
    return 77
  fi
  ((${#bad[@]} == 0)) || { echo "CUDA tests failed in: ${bad[*]}" | tee -a /dev/stderr; return 1; }
  ((passed > 0)) || { echo "every CUDA test skipped (no usable GPU here: see the skip messages)"; return 77; }
}
step "CUDA tests" 180 cuda_tests

communicators() {  # one rank through NCCL itself, then two ranks (one GPU: the host-staged path)
  MOM_COMM=nccl "$run" mpi_test_nccl || return $?
  "$run" mpirun --allow-run-as-root --oversubscribe -np 2 "$bundle/bin/mpi_test_nccl"
}
step "communicators (mpi_test_nccl: NCCL on 1 rank, then 2 ranks)" 45 communicators

round_trip() {  # a gtest skip (no GPU or no transformers) is a skip here too
  local o
  o="$("$run" test_hf_convert --gtest_filter=HfConvert.TransformersRoundTrip 2>&1)"
  local rc=$?
  echo "$o"
  echo "$o" | grep -E "relative error" >&2
  ((rc == 0)) || return "$rc"
  ! echo "$o" | grep -q '\[  SKIPPED \]' || return 77
}
step "transformers round trip (HfConvert.TransformersRoundTrip)" 75 round_trip

# 6. GPU training throughput, side by side: mom vs PyTorch 2.11 + torch.compile on GPT-2 124M,
#    and MoE / MoM per active FLOP against mom's dense model (docs/benchmarks.md).
step "training benchmark (jobs/bench/gpu_train_vs_torch.py)" 180 \
  python3 "$repo/jobs/bench/gpu_train_vs_torch.py" --mom "$run mom" --steps 8 --warmup 2 --timeout 60
grep -A12 '^GPU training' "$log" | tail -n 12

say "check: log in $log"
exit "$failed"
