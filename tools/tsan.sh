#!/usr/bin/env bash
# Runs the actor runtime's tests under ThreadSanitizer. Debian's CAF is not instrumented, so the
# sanitizer would see every message handed between actor threads as a race (the synchronisation is
# inside the uninstrumented library): this builds CAF 0.17.6 from Debian's source package with
# -fsanitize=thread first (once, into build-caf-tsan/), then troupe's tests against it.
#   tools/tsan.sh [gtest filter]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
caf=$root/build-caf-tsan
if [ ! -f "$caf/install/lib/libcaf_core.so" ]; then
  mkdir -p "$caf" && cd "$caf"
  if [ ! -d actor-framework-0.17.6 ]; then
    if ! ls /etc/apt/sources.list.d/*src* >/dev/null 2>&1; then
      sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/debian-src.sources
      apt-get update -qq
    fi
    apt-get source -qq --download-only actor-framework || true  # the orig tarball is what we need
    tar xzf actor-framework_0.17.6.orig.tar.gz
  fi
  cmake -S actor-framework-0.17.6 -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="-fsanitize=thread -std=c++17" -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread \
    -DCAF_NO_IO=yes -DCAF_NO_EXAMPLES=yes -DCAF_NO_UNIT_TESTS=yes -DCAF_NO_OPENSSL=yes -DCAF_NO_OPENCL=yes \
    -DCAF_NO_PYTHON=yes -DCAF_NO_TOOLS=yes -DCAF_NO_STATIC=yes -DCAF_NO_SUMMARY=yes \
    -DCMAKE_INSTALL_PREFIX="$caf/install" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
  cmake --build build
  cmake --install build
fi
build=$root/build-tsan
cmake -S "$root" -B "$build" -G Ninja -DTROUPE_SANITIZE=thread -DTROUPE_CAF_ROOT="$caf/install"
tests=(thread_communicator_test runtime_layouts_test runtime_behaviour_test runtime_client_test)
cmake --build "$build" --target "${tests[@]}"
status=0
for t in "${tests[@]}"; do
  echo "== $t"
  TSAN_OPTIONS="halt_on_error=0 exitcode=66 second_deadlock_stack=1" "$build/tests/$t" --gtest_filter="${1:-*}" || status=1
done
exit $status
