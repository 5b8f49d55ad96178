#!/usr/bin/env bash
# The GPU-labelled tests on the device machine, where the build folder does not travel.
#   here:    tools/gpu_smoke.sh bundle   copies build/tests/*_gpu_test (TROUPE_BUILD_DIR overrides the
#            build folder) and the shared libraries they need into .gpu/ (git-ignored) — all but glibc's,
#            libstdc++ and CUDA's, which the GPU machine has
#   there:   tools/gpu_smoke.sh          (carry [".gpu"]) runs every bundled test and prints the results;
#            a test that skips for want of a device counts as a failure there
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=$root/.gpu

if [ "${1:-run}" = bundle ]; then
  build=${TROUPE_BUILD_DIR:-$root/build}
  rm -rf "$bundle" && mkdir -p "$bundle/lib"
  for t in "$build"/tests/*_gpu_test; do
    strip --strip-debug -o "$bundle/$(basename "$t")" "$t"
    ldd "$t" | awk '$3 ~ /^\// {print $3}' |
      grep -vE '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+)\.so|/ld-linux|/libcu' |
      xargs -r cp -L -t "$bundle/lib"
  done
  du -sh "$bundle" && ls "$bundle"
  exit 0
fi

export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
failed=0
for t in "$bundle"/*_gpu_test; do
  [ -x "$t" ] || { echo "no test binaries in $bundle: run 'tools/gpu_smoke.sh bundle' first"; exit 2; }
  echo "=== $(basename "$t")"
  log=$(mktemp)
  "$t" --gtest_color=no 2>&1 | tee "$log"
  if [ "${PIPESTATUS[0]}" -ne 0 ] || grep -q "no CUDA device" "$log"; then failed=$((failed + 1)); fi
  rm -f "$log"
done
echo "=== gpu smoke: $failed test binaries failed"
[ "$failed" -eq 0 ]
