// Plain MLX 4-bit GEMM on cooperative matrices (tensor cores) for many activation rows
// (issue 5, step 97): Y (M x R) = X (M x K) W^T, W the packed matrix dequantized to f16 as it
// is staged, X the rows x_rows_f16.wgsl writes (f16, each row scaled by a power of two),
// the sums f32 in the multiply's accumulators over the whole of K, each output then scaled
// back by its row's 2^-e. A workgroup computes a tile of 128 matrix rows x 64 activation
// rows (128 with WIDE): per step of 64 columns its 256 invocations stage the weight tile (128 x 64, each
// invocation two 16-column pieces of a row: one vec2 of packed words and the group's (scale,
// bias), w = scale q + bias in f32 then rounded to f16, as MLX's quantized matmul stages its
// weights in the activations' type) and the activation tile (64 x 64: four 4-column pieces
// each, sixteen invocations a row; 128 x 64 with WIDE: two 16-column pieces each), the
// pieces loaded from memory one step ahead, then group g of 32 lanes multiplies its 32 matrix rows x 32 activation rows, four 16x16
// accumulators, 16 16x16x16 multiply-adds a step. Where the cooperative GEMV of 16 vectors
// (qgemv4_coop.wgsl) stages 16 vectors a block for 16 rows and flushes every group's sums
// through workgroup memory, this stages 64 for 128 and flushes once.
// Split-K (`main_split`, for grids too small to fill a GPU; issue 5, step 103): the
// workgroups of split s take steps [s P.split_steps, (s + 1) P.split_steps) of every tile;
// split 0 writes y, split s > 0 its partial sums into part (rows of R, P.part_stride values a
// split), each scaled back by its row's 2^-e (exact), and wgsl/split_k_sum.wgsl adds them to
// y in split order. `main_split` keeps a copy of `main`'s loop rather than sharing it
// through a function: the NVIDIA driver's schedule of the tiled f32 GEMM's loop changed by
// 7-18% with such a change (step 101), and `main` stays as it was measured.
// Needs K % 64 == 0 and MLX groups of at least 16 (all of 32, 64, 128); rows and activation
// rows past the matrix and the launch stage zeros and write nothing
// (`GpuQuantizedMatrix::gemm_coop_dispatch` checks the buffers against the shapes).
// Results: the f32 GEMM's within about 2^-10 of the sum of the terms' magnitudes (weights
// and activations each rounded to f16 once), not bit for bit.
// import: side

// requires: SUBGROUP (32-wide subgroups: the cooperative matrices' layout across lanes)
// requires: COOPERATIVE_MATRIX (wgpu Features::EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16)

enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    rows: u32,            // R, matrix rows (outputs)
    cols: u32,            // K
    m: u32,               // activation rows of the launch
    groups_per_row: u32,  // K / group size
    row_tiles: u32,       // ceil(R / 128)
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,        // tiles * splits
    y_stride: u32,        // outputs between activation rows in y
    tiles: u32,           // row_tiles * ceil(m / tile rows): the workgroups of one split
    split_steps: u32,     // steps of 64 columns a split takes (main_split)
    part_stride: u32,     // m * R: the partial sums of one split (main_split)
    _pad: u32,
}

// log2 of the MLX group size (5, 6 or 7).
override GSHIFT: u32 = 6u;
// 1: tiles of 128 activation rows (each group 32 matrix rows x 64 activation rows, eight
// accumulators, the weights staged once for twice the rows), for launches of many rows;
// 0: 64.
override WIDE: u32 = 0u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;    // packed 4-bit weights
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(3) var<storage, read> xh: array<vec4<f16>>;   // M x K, x_rows_f16.wgsl
@group(0) @binding(4) var<storage, read> xinv: array<f32>;       // M scalings back
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> part: array<f32>;  // main_split only

// Tile row stride in vec4<f16>: 72 f16 (64 columns + 8), a multiple of 16 bytes (the
// cooperative loads' alignment) whose rows start 4 banks apart, so that the eight rows a
// 16-byte load phase reads fall in different banks.
const TS: u32 = 18u;

// One struct led by a vec4<f32> array, so that every tile sits at a multiple of 16 bytes from
// a 16-byte-aligned base: the NVIDIA driver (580) aligns a workgroup variable only to its
// element type, and its cooperative loads and stores need 16 bytes (BENCHMARKS.md issue 5,
// step 90). Both operands come from workgroup memory (loads from storage compile to one
// 16-bit load an element there).
struct GemmTiles {
    // Group g's 16x16 f32 accumulator on its way out (row-major, 64 vec4 at 64 g).
    d: array<vec4<f32>, 512>,
    // The step's weights: 128 rows x 64 columns, row-major, stride TS.
    w: array<vec4<f16>, 2304>,
    // The step's activations: 64 (128 where WIDE) activation rows x 64 columns, row-major,
    // stride TS (the multiply's B operand column-major: one activation row a column).
    x: array<vec4<f16>, 2304>,
}
var<workgroup> t: GemmTiles;

// Four weights, nibbles 0..3 of n, dequantized with (scale, bias) p and rounded to f16.
fn dequant(n: u32, p: vec2<f32>) -> vec4<f16> {
    let q = vec4<f32>(vec4<u32>(n, n >> 4u, n >> 8u, n >> 12u) & vec4<u32>(15u));
    return vec4<f16>(q * p.x + p.y);
}

// Group g's accumulator, stored at t.d[64 g] by the caller, out to y: lane l writes activation
// row t0 + l / 2's outputs r0 + 8 (l % 2) .. + 7, scaled back. Barriers before and after, so
// every invocation must call it in uniform control flow.
fn write_tile(g: u32, l: u32, r0: u32, t0: u32) {
    workgroupBarrier();
    let j = l >> 1u;
    let tok = t0 + j;
    let rr = (l & 1u) << 3u;
    if (tok < P.m) {
        let s = xinv[tok];
        for (var i = 0u; i < 8u; i++) {
            let r = r0 + rr + i;
            if (r < P.rows) {
                y[tok * P.y_stride + r] = t.d[(g << 6u) + ((rr + i) << 2u) + (j >> 2u)][j & 3u] * s;
            }
        }
    }
    workgroupBarrier();
}

// `write_tile` for `main_split`: split 0 writes y, split s > 0 its partial sums.
fn write_tile_split(g: u32, l: u32, r0: u32, t0: u32, split: u32) {
    workgroupBarrier();
    let j = l >> 1u;
    let tok = t0 + j;
    let rr = (l & 1u) << 3u;
    if (tok < P.m) {
        let s = xinv[tok];
        for (var i = 0u; i < 8u; i++) {
            let r = r0 + rr + i;
            if (r < P.rows) {
                let v = t.d[(g << 6u) + ((rr + i) << 2u) + (j >> 2u)][j & 3u] * s;
                if (split == 0u) {
                    y[tok * P.y_stride + r] = v;
                } else {
                    part[(split - 1u) * P.part_stride + tok * P.rows + r] = v;
                }
            }
        }
    }
    workgroupBarrier();
}

// What an invocation loads of step s from memory: its two weight pieces (packed words and
// their group's (scale, bias); zeros past the matrix's rows) and its activation piece (zeros
// past the launch's rows).
struct StepLoads {
    pw: array<vec2<u32>, 2>,
    sv: array<vec2<f32>, 2>,
    // WIDE: 16 columns of activation rows lid / 4 and 64 + lid / 4 (four vec4 each); else 4
    // columns of activation rows lid / 16 + 16 h, h < 4
    xv: array<vec4<f16>, 8>,
}

fn step_loads(s: u32, row0: u32, lid: u32, tok: u32) -> StepLoads {
    var o: StepLoads;
    for (var h = 0u; h < 2u; h++) {
        let p = lid + (h << 8u);
        let c = p & 3u;
        let row = row0 + (p >> 2u);
        if (row < P.rows) {
            o.pw[h] = w[row * (P.cols >> 4u) + (s << 2u) + c];
            o.sv[h] = side(row * P.groups_per_row + (((s << 6u) + (c << 4u)) >> GSHIFT));
        }
    }
    if (WIDE == 1u) {
        for (var h = 0u; h < 2u; h++) {
            let tk = tok + (h << 6u);
            if (tk < P.m) {
                let xb = (tk * P.cols + (s << 6u) + ((lid & 3u) << 4u)) >> 2u;
                for (var j = 0u; j < 4u; j++) {
                    o.xv[4u * h + j] = xh[xb + j];
                }
            }
        }
    } else {
        // (sixteen invocations read a row's 128 bytes of the step, so that a load touches
        // eight whole sectors, not 32 a quarter each: 1.15-1.19x faster with 64-row tiles
        // (step 98); with 128-row tiles it made the GEMM 1.1-1.4x slower)
        for (var h = 0u; h < 4u; h++) {
            let tk = tok + (h << 4u);
            if (tk < P.m) {
                o.xv[h] = xh[tk * (P.cols >> 2u) + (s << 4u) + (lid & 15u)];
            }
        }
    }
    return o;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let row0 = (wg % P.row_tiles) << 7u;
    let tok0 = (wg / P.row_tiles) << (6u + WIDE);
    let g = lid >> 5u;
    let l = sg_id & 31u;
    // group g's 32 rows and 32 (64 where WIDE) activation rows of the tile
    let gr = (g & 3u) << 5u;
    let gt = (g >> 2u) << (5u + WIDE);
    let steps = P.cols >> 6u;
    // the invocation's activation pieces: WIDE, tile rows xr and xr + 64, columns 16 xc ..
    // 16 xc + 15; else tile rows xr + 16 h, columns 4 xc .. 4 xc + 3
    let xr = select(lid >> 4u, lid >> 2u, WIDE == 1u);
    let xc = select(lid & 15u, lid & 3u, WIDE == 1u);
    let tok = tok0 + xr;
    var a00 = coop_mat16x16<f32, C>();
    var a01 = coop_mat16x16<f32, C>();
    var a10 = coop_mat16x16<f32, C>();
    var a11 = coop_mat16x16<f32, C>();
    // (activation rows gt + 32 .. gt + 63, where WIDE)
    var a02 = coop_mat16x16<f32, C>();
    var a03 = coop_mat16x16<f32, C>();
    var a12 = coop_mat16x16<f32, C>();
    var a13 = coop_mat16x16<f32, C>();
    // (each step's global loads are issued before the step before it multiplies, so that
    // their latency passes meanwhile)
    var next = step_loads(0u, row0, lid, tok);
    for (var s = 0u; s < steps; s++) {
        let cur = next;
        // weight pieces lid and lid + 256: tile row p / 4, columns 16 (p % 4) ..
        for (var h = 0u; h < 2u; h++) {
            let p = lid + (h << 8u);
            let at = (p >> 2u) * TS + ((p & 3u) << 2u);
            let pw = cur.pw[h];
            let sv = cur.sv[h];
            t.w[at] = dequant(pw.x, sv);
            t.w[at + 1u] = dequant(pw.x >> 16u, sv);
            t.w[at + 2u] = dequant(pw.y, sv);
            t.w[at + 3u] = dequant(pw.y >> 16u, sv);
        }
        if (WIDE == 1u) {
            for (var h = 0u; h < 2u; h++) {
                let xat = (xr + (h << 6u)) * TS + (xc << 2u);
                for (var j = 0u; j < 4u; j++) {
                    t.x[xat + j] = cur.xv[4u * h + j];
                }
            }
        } else {
            for (var h = 0u; h < 4u; h++) {
                t.x[(xr + (h << 4u)) * TS + xc] = cur.xv[h];
            }
        }
        workgroupBarrier();
        if (s + 1u < steps) {
            next = step_loads(s + 1u, row0, lid, tok);
        }
        for (var kk = 0u; kk < 4u; kk++) {
            let c4 = kk << 2u;
            let w0 = coopLoadT<coop_mat16x16<f16, A>>(&t.w[gr * TS + c4], TS);
            let w1 = coopLoadT<coop_mat16x16<f16, A>>(&t.w[(gr + 16u) * TS + c4], TS);
            let x0 = coopLoad<coop_mat16x16<f16, B>>(&t.x[gt * TS + c4], TS);
            let x1 = coopLoad<coop_mat16x16<f16, B>>(&t.x[(gt + 16u) * TS + c4], TS);
            a00 = coopMultiplyAdd(w0, x0, a00);
            a01 = coopMultiplyAdd(w0, x1, a01);
            a10 = coopMultiplyAdd(w1, x0, a10);
            a11 = coopMultiplyAdd(w1, x1, a11);
            if (WIDE == 1u) {
                let x2 = coopLoad<coop_mat16x16<f16, B>>(&t.x[(gt + 32u) * TS + c4], TS);
                let x3 = coopLoad<coop_mat16x16<f16, B>>(&t.x[(gt + 48u) * TS + c4], TS);
                a02 = coopMultiplyAdd(w0, x2, a02);
                a03 = coopMultiplyAdd(w0, x3, a03);
                a12 = coopMultiplyAdd(w1, x2, a12);
                a13 = coopMultiplyAdd(w1, x3, a13);
            }
        }
        workgroupBarrier();
    }
    // (stride 4 vec4: 16 f32 a row of each accumulator)
    coopStoreT(a00, &t.d[g << 6u], 4u);
    write_tile(g, l, row0 + gr, tok0 + gt);
    coopStoreT(a01, &t.d[g << 6u], 4u);
    write_tile(g, l, row0 + gr, tok0 + gt + 16u);
    coopStoreT(a10, &t.d[g << 6u], 4u);
    write_tile(g, l, row0 + gr + 16u, tok0 + gt);
    coopStoreT(a11, &t.d[g << 6u], 4u);
    write_tile(g, l, row0 + gr + 16u, tok0 + gt + 16u);
    if (WIDE == 1u) {
        coopStoreT(a02, &t.d[g << 6u], 4u);
        write_tile(g, l, row0 + gr, tok0 + gt + 32u);
        coopStoreT(a03, &t.d[g << 6u], 4u);
        write_tile(g, l, row0 + gr, tok0 + gt + 48u);
        coopStoreT(a12, &t.d[g << 6u], 4u);
        write_tile(g, l, row0 + gr + 16u, tok0 + gt + 32u);
        coopStoreT(a13, &t.d[g << 6u], 4u);
        write_tile(g, l, row0 + gr + 16u, tok0 + gt + 48u);
    }
}

@compute @workgroup_size(256)
fn main_split(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let split = wg / P.tiles;
    let tile = wg % P.tiles;
    let row0 = (tile % P.row_tiles) << 7u;
    let tok0 = (tile / P.row_tiles) << (6u + WIDE);
    let g = lid >> 5u;
    let l = sg_id & 31u;
    // group g's 32 rows and 32 (64 where WIDE) activation rows of the tile
    let gr = (g & 3u) << 5u;
    let gt = (g >> 2u) << (5u + WIDE);
    // (every split holds a step: the host sizes them so)
    let s0 = split * P.split_steps;
    let s1 = min(s0 + P.split_steps, P.cols >> 6u);
    // the invocation's activation pieces: WIDE, tile rows xr and xr + 64, columns 16 xc ..
    // 16 xc + 15; else tile rows xr + 16 h, columns 4 xc .. 4 xc + 3
    let xr = select(lid >> 4u, lid >> 2u, WIDE == 1u);
    let xc = select(lid & 15u, lid & 3u, WIDE == 1u);
    let tok = tok0 + xr;
    var a00 = coop_mat16x16<f32, C>();
    var a01 = coop_mat16x16<f32, C>();
    var a10 = coop_mat16x16<f32, C>();
    var a11 = coop_mat16x16<f32, C>();
    // (activation rows gt + 32 .. gt + 63, where WIDE)
    var a02 = coop_mat16x16<f32, C>();
    var a03 = coop_mat16x16<f32, C>();
    var a12 = coop_mat16x16<f32, C>();
    var a13 = coop_mat16x16<f32, C>();
    // (each step's global loads are issued before the step before it multiplies, so that
    // their latency passes meanwhile)
    var next = step_loads(s0, row0, lid, tok);
    for (var s = s0; s < s1; s++) {
        let cur = next;
        // weight pieces lid and lid + 256: tile row p / 4, columns 16 (p % 4) ..
        for (var h = 0u; h < 2u; h++) {
            let p = lid + (h << 8u);
            let at = (p >> 2u) * TS + ((p & 3u) << 2u);
            let pw = cur.pw[h];
            let sv = cur.sv[h];
            t.w[at] = dequant(pw.x, sv);
            t.w[at + 1u] = dequant(pw.x >> 16u, sv);
            t.w[at + 2u] = dequant(pw.y, sv);
            t.w[at + 3u] = dequant(pw.y >> 16u, sv);
        }
        if (WIDE == 1u) {
            for (var h = 0u; h < 2u; h++) {
                let xat = (xr + (h << 6u)) * TS + (xc << 2u);
                for (var j = 0u; j < 4u; j++) {
                    t.x[xat + j] = cur.xv[4u * h + j];
                }
            }
        } else {
            for (var h = 0u; h < 4u; h++) {
                t.x[(xr + (h << 4u)) * TS + xc] = cur.xv[h];
            }
        }
        workgroupBarrier();
        if (s + 1u < s1) {
            next = step_loads(s + 1u, row0, lid, tok);
        }
        for (var kk = 0u; kk < 4u; kk++) {
            let c4 = kk << 2u;
            let w0 = coopLoadT<coop_mat16x16<f16, A>>(&t.w[gr * TS + c4], TS);
            let w1 = coopLoadT<coop_mat16x16<f16, A>>(&t.w[(gr + 16u) * TS + c4], TS);
            let x0 = coopLoad<coop_mat16x16<f16, B>>(&t.x[gt * TS + c4], TS);
            let x1 = coopLoad<coop_mat16x16<f16, B>>(&t.x[(gt + 16u) * TS + c4], TS);
            a00 = coopMultiplyAdd(w0, x0, a00);
            a01 = coopMultiplyAdd(w0, x1, a01);
            a10 = coopMultiplyAdd(w1, x0, a10);
            a11 = coopMultiplyAdd(w1, x1, a11);
            if (WIDE == 1u) {
                let x2 = coopLoad<coop_mat16x16<f16, B>>(&t.x[(gt + 32u) * TS + c4], TS);
                let x3 = coopLoad<coop_mat16x16<f16, B>>(&t.x[(gt + 48u) * TS + c4], TS);
                a02 = coopMultiplyAdd(w0, x2, a02);
                a03 = coopMultiplyAdd(w0, x3, a03);
                a12 = coopMultiplyAdd(w1, x2, a12);
                a13 = coopMultiplyAdd(w1, x3, a13);
            }
        }
        workgroupBarrier();
    }
    // (stride 4 vec4: 16 f32 a row of each accumulator)
    coopStoreT(a00, &t.d[g << 6u], 4u);
    write_tile_split(g, l, row0 + gr, tok0 + gt, split);
    coopStoreT(a01, &t.d[g << 6u], 4u);
    write_tile_split(g, l, row0 + gr, tok0 + gt + 16u, split);
    coopStoreT(a10, &t.d[g << 6u], 4u);
    write_tile_split(g, l, row0 + gr + 16u, tok0 + gt, split);
    coopStoreT(a11, &t.d[g << 6u], 4u);
    write_tile_split(g, l, row0 + gr + 16u, tok0 + gt + 16u, split);
    if (WIDE == 1u) {
        coopStoreT(a02, &t.d[g << 6u], 4u);
        write_tile_split(g, l, row0 + gr, tok0 + gt + 32u, split);
        coopStoreT(a03, &t.d[g << 6u], 4u);
        write_tile_split(g, l, row0 + gr, tok0 + gt + 48u, split);
        coopStoreT(a12, &t.d[g << 6u], 4u);
        write_tile_split(g, l, row0 + gr + 16u, tok0 + gt + 32u, split);
        coopStoreT(a13, &t.d[g << 6u], 4u);
        write_tile_split(g, l, row0 + gr + 16u, tok0 + gt + 48u, split);
    }
}
