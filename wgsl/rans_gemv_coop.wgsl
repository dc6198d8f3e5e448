// Fused rANS decode + dequantize + GEMV of up to 16 activation vectors with the multiply on
// cooperative matrices (tensor cores; wgpu `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`,
// 16x16x16 f16 inputs, f32 accumulators), for window splits in row pairs (issue 5, step 90).
// The blocked kernel's multi-vector build (rans_gemv_blocked.wgsl, NVEC) decodes each block
// once and multiplies it by every vector with f32 multiply-adds: ~4.6 issue slots a weight and
// vector on an H200 (BENCHMARKS.md step 88), most of a 16-vector launch. Here the decode is
// the same (one chunk, one coded row pair at a time, per group of 32 lanes), and the multiply
// goes through workgroup memory to the tensor cores:
// * a workgroup is eight groups, so a block of the eight chunks is 16 matrix rows x 512
//   columns; each lane writes its 2 x 16 weights into the W tile as f16 (q exactly), and the
//   256 invocations copy the block's activation tiles (B, 16 KiB, loaded before the decode)
//   next to it, then a barrier;
// * group g then multiplies K-tiles g, 8 + g, 16 + g and 24 + g of the tile, i.e. columns
//   64 g .. 64 g + 63 (one MLX group of 64, or half of one of 128), by the activations: D (16
//   rows x 16 vectors) = W (16 x 16) B (16 x 16) over the four tiles;
// * D goes through workgroup memory (a barrier) to the lanes, which scale it by the rows'
//   MLX scales and the vectors' activation scales and add the bias terms (bias times the sum
//   of the activations, from x_coop.wgsl) in f32: lane l keeps tile row l / 2, 8 vectors;
// * after a coded row, the eight groups' sums meet in workgroup memory.
// Both operands come from workgroup memory: the NVIDIA driver (580) compiles a cooperative
// load from a storage buffer to 16-bit loads one element at a time (64 a lane for eight
// tiles), from workgroup memory to `ldmatrix` (BENCHMARKS.md issue 5, step 90).
// The weights' q are exact in f16 and the products exact in f32, and the tensor cores add in
// f32; the activations are f16, scaled per 512 columns (x_coop.wgsl): exact for activations
// that f16 holds after the scaling (f16 and bf16 ones, down to 2^-29 of the block's largest),
// else rounded to 11 bits. Outputs are not bit for bit the f32 kernels'.
// Needs: window splits in row pairs with whole 4-step blocks (K % 512 == 0), MLX groups of 64
// or 128 (a group's four K-tiles in one group), probability bits <= 11, tables in memory
// (binding 1 holds src/gpu/slot_table.rs's tables: the compact table is loaded, never built),
// 32-wide subgroups and the features above; the host checks all of it
// (`GpuCodedMatrix::coop_supported`). Workgroup memory: 16.3 KiB W tile + 16 KiB B tiles + 8
// KiB D + 3.1 KiB table = 43.3 KiB, above WebGPU's default 16 KiB (the host asks for the
// adapter's limit with the feature: 48 KiB on NVIDIA). Nine storage buffers, above the
// default 8. Every index is in range by construction (no naga bounds checks, see
// `Kernel::indices_in_range_by_construction`); corrupt streams set the same per-chunk error
// bits as the blocked kernel.
// import: rans_consts
// import: rans_table_scan
// import: rans_table_byte
// import: rans_subgroup
// import: rans_block
// import: window_bits
// import: side
// import: coop_tile

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)
// requires: COOPERATIVE_MATRIX (wgpu Features::EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16)

enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    wps: u32,
    prec: u32,
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,
    n_tiles: u32,
    syms_per_row: u32,
    steps_per_row: u32,
    alphabet: u32,
    n_words: u32,
    wg_per_tile: u32,
    total_wg: u32,
    out_mode: u32,
    out_row_words: u32,
    wg_x: u32,
    chunk_iters: u32,
    group_size: u32,
    groups_per_row: u32,
    low_base: u32,
    low_bits: u32,
    zero: u32,
}

// Probability bits (<= 11), log2 of the MLX group size (6 or 7), the window start, activation
// vectors (1..16; the multiply always runs 16, the outputs of the others are not written).
override PREC: u32 = 11u;
override GSHIFT: u32 = 6u;
override WSTART: u32 = 0u;
override NVEC: u32 = 16u;
// Diagnostic builds (`GpuCodedMatrix::coop_diagnostic_dispatch`; outputs meaningless): 1 =
// the decode alone (no tile, no barriers, no multiply), 2 = the decode and the tile's stores
// and barriers without the cooperative multiply, 3 = the kernel with made-up symbols (the
// stream never read): the tile, multiply and flush alone. 0 = the kernel. (Two more builds,
// with the flush's operands or the activation tiles loaded after the decode, freed 16
// registers, kept two workgroups an SM and ran 1.03-1.09x slower on an H200: step 90.)
override DIAG: u32 = 0u;
// (rans_block.wgsl's plane reads: with the branch, as the window splits' blocked kernel)
const BRANCH_FREE_PLANES: bool = false;

const G: u32 = 8u;        // groups of 32 lanes per workgroup, one chunk each
// Invocations the table library spreads its loads over: lanes 0..127 load the table, lanes
// 128..255 repeat their loads and writes (the same values).
const WG: u32 = 128u;
@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // tables (slot_table.rs)
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
// The activations as x_coop.wgsl writes them: B tiles (16 columns x 16 vectors, column-major;
// 64 vec4 each), K / 512 x 32 tiles.
@group(0) @binding(7) var<storage, read> xb: array<vec4<f16>>;
// Per block b, 64-column range m and vector v, at 16 (8 b + m) + v: (sum of the range's
// activations, 2^-e of the vector's scaling in block b), two vectors a vec4.
@group(0) @binding(8) var<storage, read> xs: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> y: array<f32>;   // NVEC rows of the outputs

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let tile = wg / P.wg_per_tile;
    let sub = wg % P.wg_per_tile;
    let tile_first = tile * P.tile_chunks;
    let tile_end = min(tile_first + P.tile_chunks, P.n_chunks);
    let g = lid / 32u;
    let l = sg_id & 31u;
    let T = P.steps_per_row;
    let chunk0 = tile_first + sub * G;
    let chunk = chunk0 + g;
    let valid = chunk < tile_end;
    let cs = chunk_start(chunk, valid, l, T, false, sg_size);
    var d = block_decoder(cs.x, cs.p, l);
    let bad_table = load_blocked_table(tile, lid & 127u);

    let nblk = T / 4u;
    let nrows = cs.steps / max(T, 1u);
    let src0 = (l & 7u) * 4u;
    let byte_shift = 8u * (l >> 3u);
    let ltmask = (1u << l) - 1u;
    let kin = P.cols >> 1u;           // the matrix's inputs
    let rows_out = P.rows << 1u;      // the matrix's rows
    let raw_row_words = (P.cols * 3u) >> 5u;
    let gpr = P.groups_per_row;
    // this lane's part of the flush: tile row ft (row ft % 2 of group ft / 2's coded row),
    // vectors fv .. fv + 7
    let ft = l >> 1u;
    let fv = (l & 1u) * 8u;
    let fchunk = chunk0 + (ft >> 1u);
    // after a coded row, invocation lid adds up tile row ot's sum for vector ov
    let ot = lid >> 4u;
    let ov = lid & 15u;
    let ochunk = chunk0 + (ot >> 1u);

    for (var rr = 0u; rr < P.chunk_rows; rr++) {
        let live = rr < nrows;
        let row_low = (cs.r0 + rr) * raw_row_words;
        let fcrow = fchunk * P.chunk_rows + rr;
        let fvalid = fchunk < tile_end && fcrow < P.rows;
        let frow = (fcrow << 1u) | (ft & 1u);
        let sb_row = select(0u, frow * gpr, fvalid);
        var acc = array<f32, 8>();
        for (var b = 0u; b < nblk; b++) {
            // (columns 512 b + 64 g .. + 63: one MLX group's (scale, bias) for the tile row)
            let o = coop_operands(sb_row + (((b << 9u) + (g << 6u)) >> GSHIFT), b, g, fv, lid);
            var n = vec4<u32>(0u);
            if (live) {
                let raw = window_raw(row_low, b, l);
                var s = (l * 0x01030507u) ^ b;
                if (DIAG != 3u) {
                    s = decode_block(&d, 4u, l, ltmask, true).x;
                }
                if (DIAG == 1u) {
                    acc[0] += bitcast<f32>((s ^ raw.x) & 0x3FFFFFFFu);
                } else {
                    var sw = vec4<u32>(0u);
                    for (var c = 0u; c < 4u; c++) {
                        sw[c] = subgroupShuffle(s, src0 + c) >> byte_shift;
                    }
                    n = window_words(sw, raw);
                }
            }
            if (DIAG == 1u) {
                continue;
            }
            coop_stage(n, o.xb8, g, l, lid);
            if (DIAG == 2u) {
                acc[0] += f32(tiles.w[((2u * g) * WS + l + 7u * b) % 2080u].x);
                workgroupBarrier();
                continue;
            }
            coop_multiply(g);
            coop_flush(&acc, o, g, ft, fv);
        }
        let total = coop_row_total(acc, g, ft, fv, ot, ov);
        let ocrow = ochunk * P.chunk_rows + rr;
        if (ov < NVEC && ochunk < tile_end && ocrow < P.rows) {
            y[ov * rows_out + ((ocrow << 1u) | (ot & 1u))] = total;
        }
    }
    if (valid) {
        let err = cs.err | select(0u, ERR_TABLE, bad_table) | chunk_end_flags(d.x, d.p, cs.end, l);
        if (err != 0u) {
            atomicOr(&errors[chunk], err);
        }
    }
}
