#!/usr/bin/env bash
# The main job on the built-in default data: fetch all-MiniLM-L6-v2 (once), quantize it MLX
# affine 4-bit g64, entropy-code it, verify the byte-exact round trip and print the size table.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip --version >/dev/null 2>&1 || scripts/need-debian-packages.sh python3-pip
scripts/fetch-model.sh
cargo run --release -- demo "$@"
