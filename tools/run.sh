#!/usr/bin/env bash
# The README's run command: set up, build, make the default model if it is missing, and serve it
# (OpenAI API, WebSocket chat, the chat page at http://127.0.0.1:8000/). Extra arguments go to
# `troupe serve` (e.g. --port, --tensor-parallel-size).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/setup.sh"
"$root/tools/build.sh"
model=${TROUPE_MODEL:-$root/models/qwen3-0.6b}
if [ ! -f "$model/config.json" ]; then
  "$root/build/troupe" make-model --preset qwen3-0.6b --out "$model"
fi
exec "$root/build/troupe" serve --model "$model" --port "${TROUPE_PORT:-8000}" "$@"
