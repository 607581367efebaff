#!/usr/bin/env bash
# Installs missing packages, builds eplb and runs the main demo. Extra arguments go to the demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >/dev/null
build=${EPLB_BUILD_DIR:-$root/build}
exec "$build/examples/eplb-plan" --load "$root/examples/data/v2lite_8layers.csv" \
  --num-slots 72 --num-gpus 8 "$@"
