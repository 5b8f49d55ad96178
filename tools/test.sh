#!/usr/bin/env bash
# The README's test command: set up, build, run the whole suite. Tests that need a GPU skip with a
# message when there is none. `tools/test.sh -L gpu` runs only those (on the GPU machine).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/setup.sh"
"$root/tools/build.sh"
cd "${TROUPE_BUILD_DIR:-$root/build}"
ctest --output-on-failure --parallel "${TROUPE_JOBS:-$(nproc)}" "$@"
