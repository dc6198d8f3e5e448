// Fused rANS decode + dequantize + GEMV of a window split (`ecq::rans::SplitMatrix::encode_window`:
// one coded flag per weight, eight weights per byte symbol, three raw bits per weight after
// the stream), y = W x for one f32 activation vector, without a barrier per step, for devices
// whose subgroups are not 32 wide: the decode of rans_decode_lanes.wgsl (its window-split
// form), with each word of four symbols multiplied where that kernel writes its four MLX words.
// A chunk's 32 interleaved lanes are decoded by a group of W invocations of one subgroup
// (override W = 4, 8, 16 or 32, at most the device's smallest subgroup size), each running
// K = 32 / W consecutive lanes one after another; the renormalisation words come from K
// subgroup ballots a step (rans_decode_lanes.wgsl says how). With K >= 4 an invocation's K
// symbols of a step are K / 4 whole words; with fewer, invocation i gathers the word of the
// block's step i / 8, lanes 4 (i % 8) .. + 3, after the block's 4 / K steps by shuffles.
// Each word's 32 weights are merged from their raw bits (window_bits.wgsl `window_words`)
// and multiplied in place by the activations (window_dot.wgsl, as rans_gemv_blocked.wgsl
// does): scale * sum(q x) + bias * sum(x) into the invocation's sum of the row (two sums in
// row pairs: a coded row is matrix rows 2r and 2r + 1, 16 columns of each a word). At a
// row's end the group's W sums are added by subgroupShuffleXor and its first invocation
// writes y. Chunks own whole rows, so every y is written once, by one invocation.
//
// The kernel checks that each group of W consecutive local invocations sits in one subgroup
// in order and flags every chunk otherwise (error bit 128), as the decode does. Each
// workgroup of 128 invocations loads its tile's decode table built on the host
// (`load_blocked_table`, src/gpu/slot_table.rs) once for its 128 / W chunks. The host runs
// coded rows of whole 1024-weight blocks (T a multiple of 4), <= 11 probability bits, MLX
// groups of a multiple of 32 and one vector of activations in column order
// (`lanes_gemv_width` in src/gpu/decode.rs).
// Every loop is bounded by the geometry in `P` or by K and W; every stream word read is
// checked against the chunk's range; corrupt input sets bits in `errors[chunk]` and never
// hangs (y is then garbage and the host reports the error).
// import: rans_consts
// import: rans_table_scan
// import: rans_table_sg
// import: rans_lanes
// import: window_bits
// import: window_dot
// import: side

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

// (the layout of `CodedParams`, shared with the other rANS kernels)
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
    steps_per_row: u32,  // T = S / 32, a multiple of 4
    alphabet: u32,       // A = 2^(b*w)
    n_words: u32,        // u16 words in the stream
    wg_per_tile: u32,    // (for this kernel: ceil(tile_chunks / (128 / W)))
    total_wg: u32,
    out_mode: u32,
    out_row_words: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    chunk_iters: u32,    // (not read here)
    group_size: u32,     // MLX group size
    groups_per_row: u32, // a matrix row's groups
    low_base: u32,       // u32 index in `words` of the raw bits
    low_bits: u32,       // = 3
    zero: u32,           // always 0 (see `magic`)
    row_pairs: u32,      // 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`)
    window_start: u32,   // the window start (window_bits.wgsl takes WSTART)
}

// Probability bits (<= 11), set by the host.
override PREC: u32 = 11u;
// 1: row-pair order: a coded row is matrix rows 2r and 2r + 1 in runs of two symbols.
override PAIR: u32 = 0u;
// The window start of the split (window_bits.wgsl).
override WSTART: u32 = 0u;
// Invocations per chunk: 4, 8, 16 or 32 (the host checks), dividing the subgroup size.
override W: u32 = 8u;
// Lanes per invocation (<= 8).
override K: u32 = 32u / W;
// log2 of the MLX group size, 32 where it is not a power of two (window_dot.wgsl).
override GSHIFT: u32 = 6u;
// Groups of 32 (one lane an invocation) hold their next stream words in registers, as the
// lanes decode does at W = 32 (rans_decode_lanes.wgsl, BENCHMARKS.md issue 5, steps 129-130).
override PLANES: bool = W == 32u;

const WG: u32 = 128u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // the tiles' decode tables
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32, then the raw bits
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(7) var<storage, read> xv: array<vec4<f32>>;   // activations, K / 4
@group(0) @binding(8) var<storage, read_write> y: array<f32>;    // R outputs

// The word of four symbols js .. js + 3 (js a multiple of 4; `lanes_symbols` or
// `lanes_unpacked`) of coded row `row` times its activations and (scale, bias): the first
// matrix row's part and, in row pairs, the second's. Its 32 weights are merged from their
// raw words (raw word js / 4 of the row: lane js / 4 % 32 of its 1024-weight block) and
// are one MLX group's (the host requires groups of a multiple of 32), or in row pairs the
// same 16 columns of two rows.
fn word_dot(row: u32, js: u32, sv: vec4<u32>, magic: u32) -> vec2<f32> {
    let pair = PAIR != 0u;
    let wr = js >> 2u;
    let n = window_words(sv, window_raw(row * ((P.cols * 3u) >> 5u), wr >> 5u, wr & 31u));
    let ka = select(32u * wr, 16u * wr, pair);
    let xlo = x16(ka);
    var xhi = xlo;
    if (!pair) {
        xhi = x16(ka + 16u);
    }
    let qa = window_half(n, xlo, magic);
    let qb = window_half(n >> vec4<u32>(16u), xhi, magic);
    let xs = dot((xlo[0] + xlo[1]) + (xlo[2] + xlo[3]), vec4<f32>(1.0));
    let g = group_of(ka, P.group_size);
    let gpr = P.groups_per_row;
    if (pair) {
        let sa = side(2u * row * gpr + g);
        let sz = side((2u * row + 1u) * gpr + g);
        return vec2<f32>(
            sa.x * dot(qa, NIBBLE_PLACE) + sa.y * xs,
            sz.x * dot(qb, NIBBLE_PLACE) + sz.y * xs,
        );
    }
    let xs_hi = dot((xhi[0] + xhi[1]) + (xhi[2] + xhi[3]), vec4<f32>(1.0));
    let s = side(row * gpr + g);
    return vec2<f32>(s.x * dot(qa + qb, NIBBLE_PLACE) + s.y * (xs + xs_hi), 0.0);
}

@compute @workgroup_size(128)
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
    let g = lid / W;          // the group (chunk) in the workgroup
    let i = lid % W;          // lanes i K .. i K + K - 1 of the chunk
    let pl = lanes_place(lid, sg_id, sg_size);
    let chunk = tile_first + sub * (WG / W) + g;
    let in_tile = chunk < tile_end;
    let valid = in_tile && pl.ok;
    let T = P.steps_per_row;
    var d = lanes_decoder(chunk, i, valid);
    var nrows = 0u;
    var r0 = 0u;
    if (valid) {
        r0 = chunk * P.chunk_rows;
        nrows = min(P.chunk_rows, P.rows - r0);
    }
    let bad_table = load_blocked_table(tile, lid);

    // (the bits of 2^23, from P.zero so that the driver holds them in a register:
    // window_dot.wgsl)
    let magic = 0x4B000000u | P.zero;
    // (K < 4: the steps of one gathered word; T is a multiple of 4, so of Q)
    let Q = max(4u / K, 1u);
    var held = 0u;
    var acc = 0.0;
    var acc_b = 0.0;
    for (var rr = 0u; rr < P.chunk_rows; rr++) {
        let row_on = rr < nrows;
        let row = r0 + rr;
        for (var u = 0u; u < T; u++) {
            // symbols j0 .. j0 + K - 1 of the coded row (rows are whole blocks)
            let j0 = u * 32u + i * K;
            let sym = lanes_step(&d, row_on, K, i, pl, sg_size);
            if (row_on) {
                // the invocation's K / 4 words of the step (K < 4: gathered below)
                for (var s = 0u; s < K / 4u; s++) {
                    let dot2 = word_dot(row, j0 + 4u * s, lanes_symbols(sym, 4u * s), magic);
                    acc += dot2.x;
                    acc_b += dot2.y;
                }
            }
            if (K < 4u) {
                // after the block's Q steps, invocation i's word of the block's step i / 8,
                // lanes 4 (i % 8) .. + 3 (`lanes_gather`; outside any branch: every
                // invocation of the subgroup takes part in the shuffles)
                let q = u % Q;
                for (var k = 0u; k < K; k++) {
                    held |= sym[k] << (8u * (q * K + k));
                }
                if (q == Q - 1u) {
                    let word = lanes_gather(held, i, pl, sg_size);
                    held = 0u;
                    if (row_on) {
                        let js = (u - q + i / 8u) * 32u + 4u * (i % 8u);
                        let dot2 = word_dot(row, js, lanes_unpacked(word), magic);
                        acc += dot2.x;
                        acc_b += dot2.y;
                    }
                }
            }
            if (u + 1u == T) {
                // the row's sum: the group's W invocations' added by a butterfly inside the
                // group (W divides the subgroup's groups, so i ^ o stays in it)
                var s = acc;
                var s_b = acc_b;
                for (var o = 1u; o < W; o <<= 1u) {
                    s += subgroupShuffleXor(s, o);
                    if (PAIR != 0u) {
                        s_b += subgroupShuffleXor(s_b, o);
                    }
                }
                if (row_on && i == 0u && valid) {
                    if (PAIR != 0u) {
                        y[2u * row] = s;
                        y[2u * row + 1u] = s_b;
                    } else {
                        y[row] = s;
                    }
                }
                acc = 0.0;
                acc_b = 0.0;
            }
        }
    }
    if (in_tile) {
        let e = lanes_end_errors(d, i, valid) | select(0u, ERR_TABLE, bad_table)
            | select(0u, ERR_SUBGROUP, !pl.ok);
        if (e != 0u) {
            atomicOr(&errors[chunk], e);
        }
    }
}
