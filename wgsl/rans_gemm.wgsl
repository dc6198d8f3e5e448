// Batched fused rANS decode + dequantize + matmul (prefill): Y = X W^T for M activation rows,
// reading the ecq coded form of W (docs/FORMAT.md, version 1). Each chunk is decoded ONCE per
// dispatch and the decoded weights are reused for every activation row of the dispatch (up to
// MAX_M = 512; the host splits larger M into blocks of 512).
//
// Structure (decode part as in rans_gemv.wgsl, the portable workgroup-memory version):
// * one workgroup = G = 4 groups of 32 lanes; group g decodes chunk `tile_first + sub*G + g` of
//   one tile, whose slot table is built once in workgroup memory (with TABLE_MEM loaded from the
//   tables built on the host, rans_table_mem.wgsl);
// * every group walks the same step index t (all chunks of a band have the same steps per row),
//   so at any step the 4 groups sit at the same column slice of 4 different rows;
// * a lane dequantizes the w weights of its decoded symbol (scale * q + bias, f32) into the
//   slice buffer `wbuf` (256 weights x 4 rows, one vec4 per column: the 4 groups' rows);
// * when a slice of 256 weights (8 / w steps) or a row is complete, all 128 invocations multiply
//   it with the activations: invocation i owns activation rows i, i+128, i+256, i+384 and keeps
//   one vec4 accumulator (the 4 rows) per activation row; at the end of a row it writes
//   Y[m * y_stride + row_base + row].
//
// * when the matrix has few chunks the host also splits the activation rows across workgroups
//   (blocks of m_block = 128, 256 or 512 rows: grid = chunk workgroups x M blocks), each block
//   decoding the chunks again: parallelism for the multiply at the price of repeated decoding.
//
// X is row-major with rows padded to a multiple of 4 floats (xs4 vec4 per row, zero padding),
// so the multiply reads one vec4 of activations per 4 weights.
//
// Split matrices (`ecq::rans::SplitMatrix`, 4-bit weights split 2 + 2): the symbols hold the
// high 2 bits of four weights, and their low 2 bits are read raw from `words` (u32 P.low_base
// on, MLX-packed by matrix row). With the override PAIR (row-pair order,
// `SplitOrder::RowPairs`) each coded row is two matrix rows interleaved in runs of 4 steps:
// a slice (2 steps of 4-weight symbols) always lies in one matrix row, and each invocation
// keeps a second set of accumulators for the pair's second row.
//
// Bounded loops and bounds-checked word reads; corrupt input sets bits in `errors[chunk]` and
// never hangs the device (Y is then garbage and the host reports the error).
// import: rans_consts
// import: rans_table
// import: rans_table_mem
// import: split_bits
// import: side
// import: gemm_slice
// import: rans_gemm_slice

struct Params {
    rows: u32,           // rows of this band
    cols: u32,           // K
    bits: u32,
    wps: u32,            // weights per symbol w
    prec: u32,           // probability bits n
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,       // chunks of this band
    n_tiles: u32,        // tiles of this band
    syms_per_row: u32,   // S = K / w
    steps_per_row: u32,  // T = ceil(S / 32)
    alphabet: u32,       // A = 2^(b*w)
    n_words: u32,        // u16 words in this band's buffer
    wg_per_tile: u32,
    total_wg: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    group_size: u32,     // MLX group size
    groups_per_row: u32, // K / group_size
    m: u32,              // activation rows in this dispatch, 1..=MAX_M
    xs4: u32,            // vec4 per activation row = ceil(K / 4)
    y_stride: u32,       // floats per output row of Y (all rows of the matrix)
    row_base: u32,       // first row of this band
    m_block: u32,        // activation rows per workgroup (a multiple of 128, <= 512)
    total_grid: u32,     // total_wg * ceil(m / m_block): workgroups launched
    low_base: u32,       // u32 index in `words` of a split matrix's raw low bits
    low_bits: u32,       // raw low bits per weight (0: coded whole; else 2)
    kparts: u32,         // invocations sharing an activation row (lib/gemm_slice.wgsl)
    _pad1: u32,
}

// Row-pair order: rows, cols, steps_per_row and chunks describe the coded matrix (two matrix
// rows per coded row), y_stride and row_base the matrix.
override PAIR: bool = false;

const G: u32 = 4u;             // groups of 32 lanes per workgroup
const WG: u32 = 128u;          // = 32 * G
const SLICE: u32 = 256u;       // weights per row per slice

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, A per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 pairs
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(7) var<storage, read> X: array<vec4<f32>>;    // M rows of xs4 vec4
@group(0) @binding(8) var<storage, read_write> Y: array<f32>;    // M rows of y_stride

var<workgroup> masks: array<atomic<u32>, 12>;      // G * 3 (triple buffered)
var<workgroup> wbuf: array<vec4<f32>, 256>;        // SLICE columns x G rows, 4 KiB

fn read16(idx: u32) -> u32 {
    return (words[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xFFFFu;
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wgi = wid.y * P.wg_x + wid.x;
    if (wgi >= P.total_grid) {
        return;
    }
    // workgroup wgi decodes the chunks of `wg` for activation rows [m_lo, m_hi)
    let wg = wgi % P.total_wg;
    let m_lo = (wgi / P.total_wg) * P.m_block;
    let m_hi = min(P.m, m_lo + P.m_block);
    let tile = wg / P.wg_per_tile;
    let sub = wg % P.wg_per_tile;
    let tile_first = tile * P.tile_chunks;
    let tile_end = min(tile_first + P.tile_chunks, P.n_chunks);
    if (lid < 12u) {
        atomicStore(&masks[lid], 0u); // before tile_table's first barrier
    }
    let bad_table = tile_table(tile, lid);

    let g = lid / 32u;
    let l = lid % 32u;
    let n = P.prec;
    let mmask = (1u << n) - 1u;
    let T = P.steps_per_row;
    let S = P.syms_per_row;
    let W = P.wps;
    let ss = 8u / W;                 // steps per slice (SLICE = ss * 32 * w)
    let max_steps = P.chunk_rows * T;

    // the chunks (and so the rows) of the 4 groups, known to every invocation
    let c0 = tile_first + sub * G;
    let chunkv = vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u);
    let r0v = chunkv * P.chunk_rows;
    let chunk_ok = chunkv < vec4<u32>(tile_end);

    let chunk = chunkv[g];
    let valid = chunk < tile_end;
    var steps = 0u;
    var r0 = 0u;
    var x = L;
    var p = 0u;
    var end = 0u;
    var err = 0u;
    if (valid) {
        r0 = chunk * P.chunk_rows;
        steps = min(P.chunk_rows, P.rows - r0) * T;
        x = states[chunk * 32u + l];
        if (x < L) { err |= ERR_BAD_STATE; }
        p = offsets[chunk];
        end = offsets[chunk + 1u];
        if (end > P.n_words || p > end) {
            err |= ERR_OFFSETS;
            end = min(end, P.n_words);
            p = min(p, end);
        }
        if (bad_table) { err |= ERR_TABLE; }
    }

    // this invocation's activation rows and its share of each slice's columns, and their sums
    // for the workgroup's 4 rows (PAIR: bcc for the second row of each pair)
    let rs = row_share(lid, m_lo);
    var acc = array<vec4<f32>, 4>();
    var bcc = array<vec4<f32>, 4>();

    for (var t = 0u; t < max_steps; t++) {
        let step_valid = t < steps;
        let rr = t / T;               // row within the chunk (same for every group)
        let row = r0 + rr;
        let u = t % T;
        let j = u * 32u + l;
        let lane_on = step_valid && j < S;
        let col0 = ((u % ss) * 32u + l) * W;   // first column of this lane's weights in the slice
        var need = false;
        if (lane_on) {
            let lk = lookup_slot(x & mmask, n);
            err |= lk.w;
            let sym = lk.x;
            x = lk.y * (x >> n) + lk.z;
            need = x < L;
            dequantize_symbol(sym, row, u, l, W, P.bits, col0, g);
        } else {
            clear_symbol(W, col0, g);
        }
        if (need) {
            atomicOr(&masks[g * 3u + t % 3u], 1u << l);
        }
        workgroupBarrier();
        let mask = atomicLoad(&masks[g * 3u + t % 3u]);
        if (l == 0u) {
            atomicStore(&masks[g * 3u + (t + 2u) % 3u], 0u);
        }
        if (need) {
            let idx = p + countOneBits(mask & ((1u << l) - 1u));
            var wv = 0u;
            if (idx < end) {
                wv = read16(idx);
            } else {
                err |= ERR_OVER_READ;
            }
            x = (x << 16u) | wv;
        }
        p += countOneBits(mask);

        // multiply a complete slice (uniform condition: t, T, ss are the same everywhere)
        let row_end = u == T - 1u;
        if (u % ss == ss - 1u || row_end) {
            // the slice's matrix step: with PAIR a slice lies in one run (ss divides 4)
            let mu = row_pair_step(0u, u, PAIR).y;
            let kbase = (mu - mu % ss) * 32u * W;
            let klen = min(SLICE, (P.cols >> u32(PAIR)) - kbase);
            let n4 = (klen + 3u) / 4u;
            let k4 = kbase / 4u;
            if (PAIR && ((u >> 2u) & 1u) == 1u) {
                add_slice(&bcc, rs, m_hi, k4, n4);
            } else {
                add_slice(&acc, rs, m_hi, k4, n4);
            }
            if (row_end) {
                let crowv = r0v + vec4<u32>(rr);
                let okv = chunk_ok & (crowv < vec4<u32>(P.rows))
                    & (crowv < r0v + vec4<u32>(P.chunk_rows));
                // (PAIR: coded row r holds matrix rows 2r and 2r + 1)
                let rowv = crowv << vec4<u32>(u32(PAIR));
                // (the parts of each activation row summed, after the slice's reads)
                workgroupBarrier();
                store_rows(acc, rs, m_hi, lid, rowv, okv);
                if (PAIR) {
                    store_rows(bcc, rs, m_hi, lid, rowv + vec4<u32>(1u), okv);
                }
                acc = array<vec4<f32>, 4>();
                bcc = array<vec4<f32>, 4>();
            }
            workgroupBarrier();
        }
    }
    if (valid) {
        if (x != L) { err |= ERR_FINAL_STATE; }
        if (l == 0u && p != end) { err |= ERR_UNCONSUMED; }
        if (err != 0u) {
            atomicOr(&errors[chunk], err);
        }
    }
}
