#!/usr/bin/env python3
"""Golden vectors for ecq's MLX-exact affine quantization, made by the real MLX.

Requires MLX and numpy (on Linux: `pip install "mlx[cpu]" numpy`). Run from the repository root:

    python3 scripts/make_golden.py

For every dtype (float32, float16, bfloat16) and bits (2, 3, 4, 5, 6, 8) it writes
`tests/golden/affine_<dtype>_b<bits>.safetensors` holding

    w                      the input matrix (ROWS x COLS, in <dtype>)
    g<gs>.wq               mx.quantize(w, gs, bits) packed words (uint32)
    g<gs>.scales, .biases  its scales and biases (<dtype>)
    g<gs>.dequant          mx.dequantize(wq, scales, biases, gs, bits) (<dtype>)

for group sizes 32, 64 and 128, computed on MLX's CPU device. `tests/quant_golden.rs` checks
ecq against these byte for byte without Python. The rows are seeded random matrices plus edge
cases: constant rows, all-negative, all-zero, exact half-way ties, tiny and huge magnitudes,
groups where q0 == 0 (the eps path), outliers.
"""

import os
import sys

import mlx.core as mx
import numpy as np

SEED = 20261126
COLS = 256
BITS = [2, 3, 4, 5, 6, 8]
GROUP_SIZES = [32, 64, 128]
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden")


def tie_row(rng, bits, sign):
    """Half-integer values with each 32-group spanning [0, n_bins]: then scale = -1 (or 1),
    bias = +-n_bins and (w - bias) / scale lands exactly on .5 for many weights."""
    n_bins = 2**bits - 1
    row = rng.integers(0, 2 * n_bins + 1, size=COLS).astype(np.float32) / 2
    row[0::32] = 0.0
    row[1::32] = n_bins
    return sign * row


def make_input(rng, bits, dtype_name):
    huge = 3.0e4 if dtype_name == "float16" else 1.0e30
    rows = [
        rng.standard_normal(COLS) * 0.02,  # typical weights
        rng.uniform(-1.0, 1.0, COLS),
        rng.laplace(0.0, 0.05, COLS),  # heavy tails
        rng.standard_normal(COLS) * 0.1 + 0.3,  # offset mean, mostly positive
        np.full(COLS, 0.3),  # constant
        np.repeat(rng.standard_normal(COLS // 32), 32),  # constant per 32-group, varying signs
        -np.abs(rng.standard_normal(COLS)) - 0.01,  # all negative
        np.zeros(COLS),  # all zero
        tie_row(rng, bits, 1.0),
        tie_row(rng, bits, -1.0),
        rng.standard_normal(COLS) * 1e-6,  # tiny (f16 subnormals)
        rng.standard_normal(COLS) * 1e-9,  # below eps: q0 == 0 in places
        np.full(COLS, 3.0e-8),  # constant below eps
        np.clip(rng.standard_normal(COLS), -2.0, 2.0) * huge,  # huge
    ]
    outlier = rng.standard_normal(COLS) * 0.01
    outlier[5::64] = 4.0
    outlier[40::64] = -6.0
    rows.append(outlier)
    w = np.stack(rows).astype(np.float32)
    return mx.array(w).astype(DTYPES[dtype_name])


def main():
    cpu = mx.cpu
    mx.set_default_device(cpu)
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for d_index, dtype_name in enumerate(DTYPES):
        for bits in BITS:
            rng = np.random.default_rng([SEED, d_index, bits])
            w = make_input(rng, bits, dtype_name)
            arrays = {"w": w}
            for gs in GROUP_SIZES:
                wq, scales, biases = mx.quantize(w, group_size=gs, bits=bits, stream=cpu)
                deq = mx.dequantize(wq, scales, biases, group_size=gs, bits=bits, stream=cpu)
                arrays[f"g{gs}.wq"] = wq
                arrays[f"g{gs}.scales"] = scales
                arrays[f"g{gs}.biases"] = biases
                arrays[f"g{gs}.dequant"] = deq
            mx.eval(arrays)
            path = os.path.join(OUT_DIR, f"affine_{dtype_name}_b{bits}.safetensors")
            metadata = {
                "generator": "scripts/make_golden.py",
                "mlx_version": mx.__version__,
                "device": "cpu",
                "seed": str(SEED),
                "dtype": dtype_name,
                "bits": str(bits),
            }
            mx.save_safetensors(path, arrays, metadata=metadata)
            total += os.path.getsize(path)
    print(f"wrote {len(DTYPES) * len(BITS)} files, {total} bytes, to {os.path.normpath(OUT_DIR)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
