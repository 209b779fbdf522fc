#!/usr/bin/env bash
# Sets everything up (jobs/setup.sh) and runs the whole test suite through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash jobs/setup.sh
build="${MOM_BUILD_DIR:-build}"
ctest --test-dir "$build" --output-on-failure -j 2 --timeout 1200
