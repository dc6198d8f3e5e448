// Plain MLX 4-bit GEMM in f32 for many activation rows, tiled in workgroup memory (issue 5,
// steps 99-101): Y (M x R) = X (M x K) W^T, for devices without cooperative matrices (Apple's
// GPUs through wgpu, lavapipe, NVIDIA without the experimental feature) where the layers
// otherwise run launches of 16 rows of qgemv4_many.wgsl, which read the weights once per 16
// rows, or qgemm.wgsl, which reads each activation from memory for every four weight rows.
//
// A workgroup of 256 invocations computes a tile of 64 (ROW_TILE_SHIFT 6) or 128 (7) matrix
// rows x 64 activation rows. Per step of 16 columns, invocations 0..2 x tile rows - 1 stage
// the weight tile (one packed word each: row lid / 2, columns 8 (lid % 2) ..; w = scale q +
// bias in f32, as qgemm.wgsl dequantizes) and every invocation one vec4 of the activation
// tile (row lid / 4, columns 4 (lid % 4) ..: four invocations read a row's 64 bytes), both
// row-major in workgroup memory with rows of 20 f32 (16 + 4, so that the rows eight
// invocations read at once start 20 banks apart). Then invocation (tr, tc) = (lid % 16,
// lid / 16) accumulates the outputs of matrix rows tr + 16 i (i < 4 or 8) and activation
// rows tc + 16 j (j < 4) column by column as fused multiply-adds (a dot product of four
// columns plus a sum would compile to a multiply, three multiply-adds and an add). The next step's
// words, scales and activations are loaded from memory before the multiply. 15 KiB of
// workgroup memory (the weight tile sized for 128 rows) and 256 invocations: WebGPU's default
// limits. The wide tile reads each activation tile once for twice the weights and has twice
// the multiply-adds a step per invocation; the narrow one gives a grid of few workgroups
// twice as many (BENCHMARKS.md issue 5, step 100).
//
// Split-K (`main_split`, for grids too small to fill a GPU): the workgroups of split s take
// steps [s P.split_steps, (s + 1) P.split_steps) of every tile; split 0 writes y, split s > 0
// its partial sums into part (rows of R, P.part_stride values a split), and
// wgsl/split_k_sum.wgsl adds them to y in split order.
//
// Needs K % 16 == 0 and MLX groups of at least 16 (all of 32, 64, 128); matrix rows and
// activation rows past the shapes stage zeros and write nothing
// (`GpuQuantizedMatrix::gemm_tiled_dispatch` checks the buffers against the shapes).
// Results: the f32 GEMM's, summed in another order than the CPU reference's.
//
// Indices: weights, (scale, bias) and outputs of matrix rows below P.rows, activations and
// outputs of activation rows below P.m, columns below P.cols, partial sums of splits below
// P.total_wg / P.tiles; the tiles by the invocation and constant loop counters (the registry
// builds it without naga's bounds checks and loop counters, see
// `Kernel::indices_in_range_by_construction`).
// import: side

struct Params {
    rows: u32,            // R, matrix rows (outputs)
    cols: u32,            // K
    m: u32,               // activation rows of the launch
    groups_per_row: u32,  // K / group size
    row_tiles: u32,       // ceil(R / tile rows)
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,        // tiles * splits
    y_stride: u32,        // outputs between activation rows in y
    tiles: u32,           // row_tiles * ceil(m / 64): the workgroups of one split
    split_steps: u32,     // steps of 16 columns a split takes (main_split)
    part_stride: u32,     // m * R: the partial sums of one split (main_split)
    _pad: u32,
}

// log2 of the MLX group size (4 or more).
override GSHIFT: u32 = 6u;
// log2 of the matrix rows of a tile: 6 or 7.
override ROW_TILE_SHIFT: u32 = 6u;
// Matrix rows an invocation accumulates: 4 or 8.
override RI: u32 = 1u << (ROW_TILE_SHIFT - 4u);
const MAX_RI: u32 = 8u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;          // packed 4-bit weights
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;    // M x K
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;  // main_split only

// Tile row stride in vec4: 20 f32.
const TS: u32 = 5u;

var<workgroup> wt: array<vec4<f32>, 640>;  // 64 or 128 matrix rows x 16 columns
var<workgroup> xt: array<vec4<f32>, 320>;  // 64 activation rows x 16 columns

// What an invocation loads of step s from memory: its packed word and the word's (scale,
// bias) (invocations below twice the tile's rows; zeros past the matrix's rows) and its vec4
// of activations (zeros past the launch's rows).
struct StepLoads {
    pw: u32,
    sv: vec2<f32>,
    xv: vec4<f32>,
}

fn step_loads(s: u32, row0: u32, tok0: u32, lid: u32) -> StepLoads {
    var o: StepLoads;
    let row = row0 + (lid >> 1u);
    if (lid < (2u << ROW_TILE_SHIFT) && row < P.rows) {
        let c = (s << 4u) + ((lid & 1u) << 3u);
        o.pw = w[row * (P.cols >> 3u) + (c >> 3u)];
        o.sv = side(row * P.groups_per_row + (c >> GSHIFT));
    }
    let tok = tok0 + (lid >> 2u);
    if (tok < P.m) {
        o.xv = x[tok * (P.cols >> 2u) + (s << 2u) + (lid & 3u)];
    }
    return o;
}

// Four weights, nibbles 0..3 of n, dequantized with (scale, bias) p.
fn dequant(n: u32, p: vec2<f32>) -> vec4<f32> {
    let q = vec4<f32>(vec4<u32>(n, n >> 4u, n >> 8u, n >> 12u) & vec4<u32>(15u));
    return q * p.x + p.y;
}

// The sums of tile t (matrix rows (t % P.row_tiles) 2^ROW_TILE_SHIFT.., activation rows
// (t / P.row_tiles) 64..) over steps [s0, s1), s0 < s1 (the host makes every split hold a
// step): acc[i][j] for matrix row tr + 16 i and activation row tc + 16 j, (tr, tc) =
// (lid % 16, lid / 16). `main` keeps its own copy of this loop: through this function the
// NVIDIA driver's schedule of the unsplit GEMM took 1.07-1.18x as long on an H200
// (BENCHMARKS.md issue 5, step 101).
fn tile_sums(t: u32, lid: u32, s0: u32, s1: u32) -> array<vec4<f32>, MAX_RI> {
    let row0 = (t % P.row_tiles) << ROW_TILE_SHIFT;
    let tok0 = (t / P.row_tiles) << 6u;
    let tr = lid & 15u;
    let tc = lid >> 4u;
    var acc: array<vec4<f32>, MAX_RI>;
    var next = step_loads(s0, row0, tok0, lid);
    for (var s = s0; s < s1; s++) {
        let cur = next;
        if (lid < (2u << ROW_TILE_SHIFT)) {
            let at = (lid >> 1u) * TS + ((lid & 1u) << 1u);
            wt[at] = dequant(cur.pw, cur.sv);
            wt[at + 1u] = dequant(cur.pw >> 16u, cur.sv);
        }
        xt[(lid >> 2u) * TS + (lid & 3u)] = cur.xv;
        workgroupBarrier();
        if (s + 1u < s1) {
            next = step_loads(s + 1u, row0, tok0, lid);
        }
        for (var k4 = 0u; k4 < 4u; k4++) {
            var wv: array<vec4<f32>, MAX_RI>;
            var xv: array<vec4<f32>, 4>;
            for (var i = 0u; i < RI; i++) {
                wv[i] = wt[(tr + (i << 4u)) * TS + k4];
            }
            for (var j = 0u; j < 4u; j++) {
                xv[j] = xt[(tc + (j << 4u)) * TS + k4];
            }
            for (var c = 0u; c < 4u; c++) {
                let xc = vec4<f32>(xv[0][c], xv[1][c], xv[2][c], xv[3][c]);
                for (var i = 0u; i < RI; i++) {
                    acc[i] = fma(vec4<f32>(wv[i][c]), xc, acc[i]);
                }
            }
        }
        workgroupBarrier();
    }
    return acc;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let row0 = (wg % P.row_tiles) << ROW_TILE_SHIFT;
    let tok0 = (wg / P.row_tiles) << 6u;
    let tr = lid & 15u;
    let tc = lid >> 4u;
    let steps = P.cols >> 4u;
    var acc: array<vec4<f32>, MAX_RI>;
    var next = step_loads(0u, row0, tok0, lid);
    for (var s = 0u; s < steps; s++) {
        let cur = next;
        if (lid < (2u << ROW_TILE_SHIFT)) {
            let at = (lid >> 1u) * TS + ((lid & 1u) << 1u);
            wt[at] = dequant(cur.pw, cur.sv);
            wt[at + 1u] = dequant(cur.pw >> 16u, cur.sv);
        }
        xt[(lid >> 2u) * TS + (lid & 3u)] = cur.xv;
        workgroupBarrier();
        if (s + 1u < steps) {
            next = step_loads(s + 1u, row0, tok0, lid);
        }
        for (var k4 = 0u; k4 < 4u; k4++) {
            var wv: array<vec4<f32>, MAX_RI>;
            var xv: array<vec4<f32>, 4>;
            for (var i = 0u; i < RI; i++) {
                wv[i] = wt[(tr + (i << 4u)) * TS + k4];
            }
            for (var j = 0u; j < 4u; j++) {
                xv[j] = xt[(tc + (j << 4u)) * TS + k4];
            }
            for (var c = 0u; c < 4u; c++) {
                let xc = vec4<f32>(xv[0][c], xv[1][c], xv[2][c], xv[3][c]);
                for (var i = 0u; i < RI; i++) {
                    acc[i] = fma(vec4<f32>(wv[i][c]), xc, acc[i]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let tok = tok0 + tc + (j << 4u);
        if (tok < P.m) {
            for (var i = 0u; i < RI; i++) {
                let r = row0 + tr + (i << 4u);
                if (r < P.rows) {
                    y[tok * P.y_stride + r] = acc[i][j];
                }
            }
        }
    }
}

@compute @workgroup_size(256)
fn main_split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let split = wg / P.tiles;
    let t = wg % P.tiles;
    let s0 = split * P.split_steps;
    let acc = tile_sums(t, lid, s0, min(s0 + P.split_steps, P.cols >> 4u));
    let row0 = (t % P.row_tiles) << ROW_TILE_SHIFT;
    let tok0 = (t / P.row_tiles) << 6u;
    for (var j = 0u; j < 4u; j++) {
        let tok = tok0 + (lid >> 4u) + (j << 4u);
        if (tok < P.m) {
            for (var i = 0u; i < RI; i++) {
                let r = row0 + (lid & 15u) + (i << 4u);
                if (r < P.rows) {
                    if (split == 0u) {
                        y[tok * P.y_stride + r] = acc[i][j];
                    } else {
                        part[(split - 1u) * P.part_stride + tok * P.rows + r] = acc[i][j];
                    }
                }
            }
        }
    }
}
