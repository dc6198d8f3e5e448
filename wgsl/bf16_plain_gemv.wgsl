// Plain bf16 (or f16) GEMV, the baseline of the lossless kernels: y = W x for one f32 activation
// vector, W stored row-major as 16-bit patterns (two per u32, low half first: the little-endian
// bytes of the tensor), f32 accumulation.
//
// One workgroup = 8 warps of 32 threads (wgsl/lib/gemv_rows.wgsl shares out the rows). With one
// row per warp, each thread reads vec4<u32> (8 weights, 16 bytes) per load, two loads in flight
// per iteration (32 lanes x 2 x 16 = 1 KiB of a row per iteration), with the matching x as two
// vec4<f32>; with two rows, one 8-weight chunk of each per iteration and x loaded once for
// both. The partial sums of a row are reduced by a tree in workgroup memory. K must be a
// multiple of 8 (the host checks); rows past R compute nothing.

// import: f16
// import: gemv_rows

struct Params {
    rows: u32,
    cols: u32,
    wg_x: u32,
    total_wg: u32,
}

override F16: bool = false;   // false: bf16, true: IEEE f16
// Diagnostics (BENCHMARKS.md, issue 7), never used for results: 1 = the same loads, next to
// no arithmetic; 2 = every row reads row 0's weights (cache-resident: what the arithmetic alone
// costs).
override DIAG: u32 = 0u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;   // R * K / 8
@group(0) @binding(2) var<storage, read> xv: array<vec4<f32>>;  // K / 4
@group(0) @binding(3) var<storage, read_write> y: array<f32>;   // R

fn pair(v: u32) -> vec2<f32> {
    if (F16) {
        return vec2<f32>(f16_to_f32(v & 0xFFFFu), f16_to_f32(v >> 16u));
    }
    return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xFFFF0000u));
}

fn dot8(wv: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
    if (DIAG == 1u) {
        return bitcast<f32>((wv.x ^ wv.y ^ wv.z ^ wv.w) & 0x3FFFFFFFu) * (x0.x + x1.w);
    }
    let a = pair(wv.x);
    let b = pair(wv.y);
    let c = pair(wv.z);
    let d = pair(wv.w);
    return dot(vec4<f32>(a, b), x0) + dot(vec4<f32>(c, d), x1);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let rs = warp_rows(wg, lid);
    let row = rs.x;
    let n8 = P.cols / 8u;
    var acc0 = 0.0;
    var acc1 = 0.0;
    if (ROWS == 2u || SPLIT) {
        // row and row + 1 (when it exists); x loaded once for both
        let base0 = select(row * n8, 0u, DIAG == 2u);
        let base1 = select((row + 1u) * n8, 0u, DIAG == 2u);
        let has1 = row + 1u < P.rows;
        if (row < P.rows) {
            for (var i = rs.y; i < n8; i += rs.z) {
                let x0 = xv[2u * i];
                let x1 = xv[2u * i + 1u];
                acc0 += dot8(w[base0 + i], x0, x1);
                if (has1) {
                    acc1 += dot8(w[base1 + i], x0, x1);
                }
            }
        }
    } else if (row < P.rows) {
        let base = select(row * n8, 0u, DIAG == 2u);
        var i = rs.y;
        for (; i + TPR < n8; i += 2u * TPR) {
            let w0 = w[base + i];
            let w1 = w[base + i + TPR];
            acc0 += dot8(w0, xv[2u * i], xv[2u * i + 1u]);
            acc1 += dot8(w1, xv[2u * (i + TPR)], xv[2u * (i + TPR) + 1u]);
        }
        if (i < n8) {
            acc0 += dot8(w[base + i], xv[2u * i], xv[2u * i + 1u]);
        }
        acc0 += acc1;
        acc1 = 0.0;
    }
    reduce_rows_into_y(wg, lid, row, acc0, acc1);
}
