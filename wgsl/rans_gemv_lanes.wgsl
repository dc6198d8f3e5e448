// Fused rANS decode + dequantize + GEMV, y = W x for one f32 activation vector, without a
// barrier per step, for devices whose subgroups are not 32 wide: the decode of
// rans_decode_lanes.wgsl, with each word of four symbols multiplied where that kernel writes
// it. It takes that kernel's forms: a window split (`ecq::rans::SplitMatrix::encode_window`:
// one coded flag per weight, eight weights per byte symbol, three raw bits per weight after
// the stream), a matrix coded whole in byte symbols (`bits * wps == 8`: two 4-bit weights a
// symbol, four 2-bit or one 8-bit) and a split matrix (`ecq::rans::SplitMatrix::encode`: byte
// symbols of four weights' high 2 bits, the low 2 bits raw).
// A chunk's 32 interleaved lanes are decoded by a group of W invocations of one subgroup
// (override W = 4, 8, 16 or 32, at most the device's smallest subgroup size), each running
// K = 32 / W consecutive lanes one after another; the renormalisation words come from K
// subgroup ballots a step (rans_decode_lanes.wgsl says how). With K >= 4 an invocation's K
// symbols of a step are K / 4 whole words; with fewer, invocation i gathers the word of the
// block's step i / 8, lanes 4 (i % 8) .. + 3, after the block's 4 / K steps by shuffles.
// A window split's word of 32 weights is merged from its raw bits (window_bits.wgsl
// `window_words`) and multiplied in place by the activations (window_dot.wgsl, as
// rans_gemv_blocked.wgsl does); a word of byte symbols is multiplied as the blocked kernel
// multiplies it (symbol_dot.wgsl). Each adds scale * sum(q x) + bias * sum(x) to the
// invocation's sum of the row (two sums in row pairs: a coded row is matrix rows 2r and
// 2r + 1). At a row's end the group's W sums are added by subgroupShuffleXor and its first
// invocation writes y. Chunks own whole rows, so every y is written once, by one invocation.
//
// The kernel checks that each group of W consecutive local invocations sits in one subgroup
// in order and flags every chunk otherwise (error bit 128), as the decode does. Each
// workgroup of 128 invocations loads its tile's decode table built on the host
// (`load_blocked_table`, src/gpu/slot_table.rs) once for its 128 / W chunks. The host runs
// window splits in coded rows of whole 1024-weight blocks (T a multiple of 4), byte symbols
// in rows of whole words with MLX groups of whole words, <= 11 probability bits and one
// vector of activations in column order (`lanes_gemv_width` in src/gpu/decode.rs).
// Every loop is bounded by the geometry in `P` or by K and W; every stream word read is
// checked against the chunk's range; corrupt input sets bits in `errors[chunk]` and never
// hangs (y is then garbage and the host reports the error).
// import: rans_consts
// import: rans_table_scan
// import: rans_table_sg
// import: rans_lanes
// import: window_bits
// import: window_dot
// import: symbol_dot
// import: split_bits
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
    steps_per_row: u32,  // T = ceil(S / 32) (a multiple of 4 for window splits)
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
    low_bits: u32,       // = LOW
    zero: u32,           // always 0 (see `magic`)
    row_pairs: u32,      // 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`)
    window_start: u32,   // the window start (window_bits.wgsl takes WSTART)
}

// (the overrides LOW, PREC, PAIR, WSTART, W, K and PLANES, and WG: rans_lanes.wgsl)

// Byte symbols: weights per symbol (1, 2 or 4) and bits per weight (WPS * BITS = 8; a split
// matrix's symbols are WPS = 4 weights' high BITS = 2 bits). Not read for window splits.
override WPS: u32 = 2u;
override BITS: u32 = 4u;
// log2 of the MLX group size, 32 where it is not a power of two (window_dot.wgsl).
override GSHIFT: u32 = 6u;

// Byte symbols: each word's operands (`SymbolOperands`) loaded before its symbols are decoded
// (the step's, or at a block's first step the gathered word's) instead of after. On an H200
// running the lanes kernels that made split matrices' token 1.30x faster at W = 8 (24.0 ->
// 18.5 ms for 32 Llama-3-8B layers) and 1-1.5% slower at W = 32, and matrices coded whole
// 4-6% slower at both (BENCHMARKS.md issue 5, step 136): split matrices only.
override EARLY_OPERANDS: bool = LOW == 2u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // the tiles' decode tables
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32, then the raw bits
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(7) var<storage, read> xv: array<vec4<f32>>;   // activations, K / 4
@group(0) @binding(8) var<storage, read_write> y: array<f32>;    // R outputs

// The word of four symbols js .. js + 3 of a window split's coded row `row` times its
// activations and (scale, bias): the first matrix row's part and, in row pairs, the second's.
// Its 32 weights are merged from their raw words (raw word js / 4 of the row: lane js / 4 %
// 32 of its 1024-weight block) and are one MLX group's (the host requires groups of a
// multiple of 32), or in row pairs the same 16 columns of two rows.
fn window_word_dot(row: u32, js: u32, sv: vec4<u32>, magic: u32) -> vec2<f32> {
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

// What the word of four byte symbols js .. js + 3 of coded row `row` multiplies (4 WPS weights
// of one MLX group: the host requires groups of whole words): its activations (xw[v] those of
// weights 4v .. 4v + 3, v < WPS), its group's (scale, bias), for a split matrix the weights'
// raw low bits, and whether it belongs to the second matrix row of a row pair (split
// matrices only: the matrix row `row_pair_step` gives). Loaded before the word's symbols are
// decoded where EARLY_OPERANDS, so that the loads overlap the decode steps.
struct SymbolOperands {
    xw: array<vec4<f32>, 4>,
    sbv: vec2<f32>,
    lw: u32,
    second: bool,
}

fn symbol_operands(row: u32, js: u32) -> SymbolOperands {
    let pair = PAIR != 0u;
    let ms = row_pair_step(row, js >> 5u, pair);
    // (the matrix row's symbol word and its first weight)
    let jw = ms.y * 8u + ((js & 31u) >> 2u);
    let k = jw * 4u * WPS;
    var o: SymbolOperands;
    if (LOW == 2u) {
        o.lw = raw_low_bits(ms.x * ((P.cols >> select(0u, 1u, pair)) >> 4u), k, 2u);
    }
    for (var v = 0u; v < min(WPS, 4u); v++) {
        o.xw[v] = xv[(k >> 2u) + v];
    }
    o.sbv = side(ms.x * P.groups_per_row + group_of(k, P.group_size));
    o.second = ms.x != 2u * row && pair;
    return o;
}

// The word of byte symbols `sv` times its operands, as `symbol_word_dot` (symbol_dot.wgsl)
// multiplies it: the first matrix row's part in x, the second's in y.
fn symbol_dot(o: SymbolOperands, sv: vec4<u32>, magic: u32) -> vec2<f32> {
    let t = symbol_word_dot(sv, o.lw, o.xw, o.sbv, magic);
    return select(vec2<f32>(t, 0.0), vec2<f32>(0.0, t), o.second);
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
    let c = lanes_chunk(wg, lid, sg_id, sg_size);
    let i = c.i;
    let pl = c.pl;
    let T = P.steps_per_row;
    var d = lanes_decoder(c.chunk, i, c.valid);
    let bad_table = load_blocked_table(c.tile, lid);

    // (the bits of 2^23, from P.zero so that the driver holds them in a register:
    // window_dot.wgsl)
    let magic = 0x4B000000u | P.zero;
    let S = P.syms_per_row;
    // (K < 4: the steps of one gathered word; a window split's T is a multiple of 4, so of Q)
    let Q = max(4u / K, 1u);
    var held = 0u;
    var gathered_ops: SymbolOperands;
    var acc = 0.0;
    var acc_b = 0.0;
    for (var rr = 0u; rr < P.chunk_rows; rr++) {
        let row_on = rr < c.nrows;
        let row = c.r0 + rr;
        for (var u = 0u; u < T; u++) {
            // symbols j0 .. j0 + K - 1 of the coded row (a byte-symbol row's last step may
            // hold fewer than 32: lanes past S decode nothing; window splits' rows are whole
            // blocks)
            let j0 = u * 32u + i * K;
            let left = select(S - min(j0, S), K, LOW == 3u);
            // (byte symbols with EARLY_OPERANDS: the operands of the words this step's symbols
            // complete, and at a block's first step those of the word gathered after its last,
            // loaded before the decode)
            var ops: array<SymbolOperands, 2>;
            if (LOW != 3u && row_on && EARLY_OPERANDS) {
                for (var s = 0u; s < K / 4u; s++) {
                    if (j0 + 4u * s < S) {
                        ops[s] = symbol_operands(row, j0 + 4u * s);
                    }
                }
                let jg = lanes_gathered_symbol(u, 0u, i);
                if (K < 4u && u % Q == 0u && jg < S) {
                    gathered_ops = symbol_operands(row, jg);
                }
            }
            let sym = lanes_step(&d, row_on, left, i, pl, sg_size);
            if (row_on) {
                // the invocation's K / 4 words of the step (K < 4: gathered below); S is a
                // multiple of 4 (the host runs rows of whole words; window splits' rows are
                // whole blocks, and their words are not tested: a plain `js < S` around every
                // window word cost window splits 8-10% at W = 8 on an H200, while the select
                // folds away for them; BENCHMARKS.md issue 5, step 135)
                for (var s = 0u; s < K / 4u; s++) {
                    let js = j0 + 4u * s;
                    if (select(js < S, true, LOW == 3u)) {
                        var dot2: vec2<f32>;
                        if (LOW == 3u) {
                            dot2 = window_word_dot(row, js, lanes_symbols(sym, 4u * s), magic);
                        } else {
                            var o = ops[s];
                            if (!EARLY_OPERANDS) {
                                o = symbol_operands(row, js);
                            }
                            dot2 = symbol_dot(o, lanes_symbols(sym, 4u * s), magic);
                        }
                        acc += dot2.x;
                        acc_b += dot2.y;
                    }
                }
            }
            if (K < 4u) {
                // after the block's Q steps (or the row's last), invocation i's word of the
                // block's step i / 8, lanes 4 (i % 8) .. + 3 (`lanes_gather`; outside any
                // branch: every invocation of the subgroup takes part in the shuffles)
                let q = u % Q;
                held = lanes_hold(held, sym, q);
                if (q == Q - 1u || u + 1u == T) {
                    let word = lanes_gather(held, i, pl, sg_size);
                    held = 0u;
                    let js = lanes_gathered_symbol(u, q, i);
                    if (row_on && select(js < S, true, LOW == 3u)) {
                        var dot2: vec2<f32>;
                        if (LOW == 3u) {
                            dot2 = window_word_dot(row, js, lanes_unpacked(word), magic);
                        } else {
                            var o = gathered_ops;
                            if (!EARLY_OPERANDS) {
                                o = symbol_operands(row, js);
                            }
                            dot2 = symbol_dot(o, lanes_unpacked(word), magic);
                        }
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
                if (row_on && i == 0u && c.valid) {
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
    if (c.in_tile) {
        let e = lanes_chunk_errors(d, c, bad_table);
        if (e != 0u) {
            atomicOr(&errors[c.chunk], e);
        }
    }
}
