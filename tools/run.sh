#!/usr/bin/env bash
# The README's run command: set up, build, make the default model if it is missing, and run it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/setup.sh"
"$root/tools/build.sh"
model=${TROUPE_MODEL:-$root/models/qwen3-0.6b}
if [ ! -f "$model/config.json" ]; then
  "$root/build/troupe" make-model --preset qwen3-0.6b --out "$model"
fi
exec "$root/build/troupe" generate --model "$model" --prompt-ids 9707,11,1879,0 --max-tokens 16 "$@"
