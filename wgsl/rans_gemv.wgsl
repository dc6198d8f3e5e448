// Fused rANS decode + dequantize + GEMV: y = W x for one f32 activation vector, reading the
// ecq coded form of W (docs/FORMAT.md, version 1) and never writing W to memory.
//
// Same decode structure as rans_decode.wgsl: one workgroup = G groups of 32 lanes handling chunks
// of one tile with the tile's slot table in workgroup memory (with TABLE_MEM loaded from the
// tables built on the host, rans_table_mem.wgsl, instead of built from the frequencies); one
// workgroupBarrier per step for the renormalisation prefix count. Each lane multiplies the w
// weights of the symbol it decoded with x and accumulates scale * sum(q*x) + bias * sum(x) for
// the row; at the end of a row the 32 lane sums are reduced through workgroup memory and y[row]
// is written once (chunks own whole rows).
// A split matrix's raw low bits (P.low_bits = 2, after the stream in `words`) are merged into
// the symbol's four weights before they are multiplied. A window split (P.low_bits = 3, one flag
// per weight, eight weights per symbol, `ecq::rans::SplitMatrix::encode_window`) is merged per
// symbol from its raw planes (window_symbol_word), with its own row-pair runs of two symbols.
//
// Bounded loops and bounds-checked word reads as in rans_decode.wgsl; corrupt input sets bits in
// `errors[chunk]` and never hangs the device (y is then garbage and the host reports the error).
// import: rans_consts
// import: rans_table
// import: rans_table_mem
// import: split_bits
// import: window_word
// import: side

struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    wps: u32,            // weights per symbol
    prec: u32,           // probability bits n
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,
    n_tiles: u32,
    syms_per_row: u32,   // S = K / w
    steps_per_row: u32,  // T = ceil(S / 32)
    alphabet: u32,       // A = 2^(b*w)
    n_words: u32,        // u16 words in the stream
    wg_per_tile: u32,
    total_wg: u32,
    out_mode: u32,
    out_row_words: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    chunk_iters: u32,    // chunks decoded one after another by each group
    group_size: u32,     // MLX group size (GEMV only)
    groups_per_row: u32, // K / group_size (GEMV only)
    low_base: u32,       // u32 index in `words` of a split matrix's raw low bits
    low_bits: u32,       // raw low bits per weight (0, or 2 beside 2-bit symbols of 4 weights)
    _pad2: u32,
    // 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`): rows and columns above are the
    // coded matrix's, whose row r is matrix rows 2r and 2r + 1 interleaved in runs of four
    // steps (step u of coded row r is step 4 (u / 8) + u % 4 of row 2r + (u / 4) % 2);
    // groups_per_row is a matrix row's
    row_pairs: u32,
    // a window split's window start (low_bits = 3)
    window_start: u32,
}

const G: u32 = 4u;             // groups of 32 lanes per workgroup
const WG: u32 = 128u;          // = 32 * G

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, A per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 pairs
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(7) var<storage, read> xv: array<f32>;          // activations, K
@group(0) @binding(8) var<storage, read_write> y: array<f32>;     // R outputs

var<workgroup> masks: array<atomic<u32>, 12>;      // G * 3 (triple buffered)
var<workgroup> red: array<f32, 256>;               // G * 2 * 32 (double buffered by row)
var<workgroup> red_b: array<f32, 256>;             // the same for row 2r + 1 of row pairs

fn read16(idx: u32) -> u32 {
    return (words[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xFFFFu;
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
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
    let max_steps = P.chunk_rows * T;
    let qmask = (1u << P.bits) - 1u;
    var gstep = 0u;
    var rows_done = 0u;
    var acc = 0.0;
    var acc_b = 0.0;  // row pairs: matrix row 2r + 1's sum
    let pair = P.row_pairs != 0u;
    let ps = select(0u, 1u, pair);
    let cols = P.cols >> ps;

    for (var it = 0u; it < P.chunk_iters; it++) {
        let chunk = tile_first + (sub * P.chunk_iters + it) * G + g;
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
        for (var t = 0u; t < max_steps; t++) {
            let step_valid = t < steps;
            let row = r0 + t / T;
            let u = t % T;
            let j = u * 32u + l;
            let lane_on = step_valid && j < S;
            var sym = 0u;
            var need = false;
            if (lane_on) {
                let lk = lookup_slot(x & mmask, n);
                err |= lk.w;
                sym = lk.x;
                x = lk.y * (x >> n) + lk.z;
                need = x < L;
                // the matrix row and column of the symbol (row pairs: see Params); in a pair,
                // the second row is the odd one
                let ms = row_pair_step(row, u, pair);
                var mrow = ms.x;
                var k0 = (ms.y * 32u + l) * P.wps;
                if (P.low_bits == 3u) {
                    // a window split: symbol j of the coded row
                    let at = window_symbol_at(row, j, pair);
                    mrow = at.x;
                    k0 = at.y;
                }
                let second = pair && (mrow & 1u) == 1u;
                // a split matrix: the raw low bits of these weights, after the word stream
                // (the host allows 2 beside 2-bit symbols of four weights: one byte of a word)
                var lo = 0u;
                if (P.low_bits == 2u) {
                    lo = raw_low_bits(mrow * ((cols * P.low_bits) >> 5u), k0, P.low_bits);
                }
                let lmask = (1u << P.low_bits) - 1u;
                // a window split: the symbol's eight weights, merged from its raw words (in
                // coded order: the coded row's)
                var ww = 0u;
                if (P.low_bits == 3u) {
                    ww = window_symbol_word(sym, row, j);
                }
                var d = 0.0;
                var xs = 0.0;
                for (var i = 0u; i < P.wps; i++) {
                    let xi = xv[k0 + i];
                    var q = (((sym >> (P.bits * i)) & qmask) << P.low_bits)
                        | ((lo >> (P.low_bits * i)) & lmask);
                    if (P.low_bits == 3u) {
                        q = (ww >> (4u * i)) & 15u;
                    }
                    d += f32(q) * xi;
                    xs += xi;
                }
                let sbv = side(mrow * P.groups_per_row + k0 / P.group_size);
                if (second) {
                    acc_b += sbv.x * d + sbv.y * xs;
                } else {
                    acc += sbv.x * d + sbv.y * xs;
                }
            }
            let row_end = step_valid && u == T - 1u;
            let rbase = (g * 2u + (rows_done & 1u)) * 32u;
            if (row_end) {
                red[rbase + l] = acc;
                red_b[rbase + l] = acc_b;
                acc = 0.0;
                acc_b = 0.0;
            }
            if (need) {
                atomicOr(&masks[g * 3u + gstep % 3u], 1u << l);
            }
            workgroupBarrier();
            let mask = atomicLoad(&masks[g * 3u + gstep % 3u]);
            if (l == 0u) {
                atomicStore(&masks[g * 3u + (gstep + 2u) % 3u], 0u);
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
            if (row_end) {
                if (l == 0u) {
                    var s = 0.0;
                    var s_b = 0.0;
                    for (var k = 0u; k < 32u; k++) {
                        s += red[rbase + k];
                        s_b += red_b[rbase + k];
                    }
                    if (pair) {
                        y[2u * row] = s;
                        y[2u * row + 1u] = s_b;
                    } else {
                        y[row] = s;
                    }
                }
                rows_done += 1u;
            }
            gstep += 1u;
        }
        if (valid) {
            if (x != L) { err |= ERR_FINAL_STATE; }
            if (l == 0u && p != end) { err |= ERR_UNCONSUMED; }
            if (err != 0u) {
                atomicOr(&errors[chunk], err);
            }
        }
    }
}
