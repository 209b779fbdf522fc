#!/usr/bin/env bash
# The bare-GPU-node bundle (jobs/device/bundle.sh, docs/gpu.md), made here from this build:
# - every program's libraries resolve inside the bundle, except the C library's and the
#   NVIDIA/CUDA ones the node provides (ldd with the bundle's library path);
# - the bundle's run.sh starts `mom` and a test binary (the tokenizer tests, which need the
#   bundled tokenizer files) with nothing from the build tree on the paths, finds every
#   library (--check-libraries), and runs a 2-rank MPI test with the bundle's own mpirun and
#   OpenMPI plugins;
# - jobs/device/check.sh runs against it: the bundle step passes; without a GPU the CUDA and
#   communicator steps say skipped and the machine step fails (so check.sh exits non-zero).
# Usage: tests/device/bundle_check.sh BUILD_DIR SOURCE_DIR
set -uo pipefail
build=$1 src=$2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() {
  echo "bundle_check: $*" >&2
  exit 1
}
MOM_BUNDLE_NO_BUILD=1 MOM_BUNDLE_NO_ARCHIVE=1 MOM_BUILD_DIR="$build" bash "$src/jobs/device/bundle.sh" "$work/bundle" ||
  fail "bundle.sh failed"
b="$work/bundle"
[ -x "$b/bin/mom" ] && [ -x "$b/run.sh" ] && [ -f "$b/MANIFEST" ] && [ -f "$b/tokenizer/vocab.bpe" ] ||
  fail "the bundle lacks mom, run.sh, MANIFEST or the tokenizer"
n=0
for p in "$b"/bin/*; do
  n=$((n + 1))
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    [ "$path" != not ] || fail "$(basename "$p"): $name not found with the bundle's libraries"
    case "$path" in
      "$b"/lib/*) ;;
      */libc.so.* | */libm.so.* | */libmvec.so.* | */libpthread.so.* | */libdl.so.* | */librt.so.* | */libresolv.so.* | \
        */libcuda.so.* | /usr/local/cuda*) ;;
      *) fail "$(basename "$p") loads $path from the system, not from the bundle" ;;
    esac
  done < <(LD_LIBRARY_PATH="$b/lib" ldd "$p")
done
echo "bundle_check: $n programs, all libraries from the bundle or the node's C library / CUDA"
env -u MOM_TOKENIZER_DIR "$b/run.sh" mom --help | head -n 1 | grep -q "^mom: " || fail "run.sh mom --help"
out="$(env -u MOM_TOKENIZER_DIR MOM_SCRATCH_DIR="$work/scratch" "$b/run.sh" test_tokenizer 2>&1)" ||
  fail "run.sh test_tokenizer failed: $out"
echo "$out" | grep -q "PASSED" || fail "test_tokenizer did not pass: $out"
echo "$out" | grep -q "SKIPPED" && fail "test_tokenizer skipped tests (tokenizer files not found?): $out"
"$b/run.sh" --check-libraries || fail "run.sh --check-libraries"
# MPI from the bundle: its own launcher and plugins (run.sh points OpenMPI at them).
out="$(timeout 120 "$b/run.sh" mpirun --allow-run-as-root --oversubscribe -np 2 "$b/bin/mpi_test_token_exchange" 2>&1)" ||
  fail "run.sh mpirun -np 2 mpi_test_token_exchange: $out"
echo "$out" | grep -q "PASS" || fail "mpi_test_token_exchange from the bundle: $out"
check="$(MOM_REFERENCE_PYTHON=/usr/bin/python3 OUT="$work" bash "$src/jobs/device/check.sh" "$b" 2>&1)"
rc=$?
echo "$check"
echo "$check" | grep -q "check: bundle runs (mom --help): passed" || fail "check.sh: the bundle step did not pass"
if command -v nvidia-smi >/dev/null; then
  echo "$check" | grep -qE "check: CUDA tests: (passed|skipped)" || fail "check.sh: the CUDA step"
else
  echo "$check" | grep -q "check: CUDA tests: skipped" || fail "check.sh: without a GPU the CUDA step must say skipped"
  echo "$check" | grep -q "check: communicators .*: skipped" || fail "check.sh: without a GPU the communicators must skip"
fi
if ! command -v nvidia-smi >/dev/null; then
  echo "$check" | grep -q "check: machine: FAILED" || fail "check.sh: no GPU here, the machine step should fail"
  ((rc != 0)) || fail "check.sh exited 0 without a GPU"
fi
echo "bundle_check: ok"
