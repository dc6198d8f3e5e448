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

// The operands (`WordOperands`) of the first word a step completes (K >= 4: the step's only
// word at K = 4, the first of two at K = 8) loaded before the step that decodes its symbols
// instead of after (a gathered word's, K < 4: EARLY_GATHERED). On an H200 running the lanes
// kernels (32 Llama-3-8B layers a token, BENCHMARKS.md issue 5, steps 136-137 and 144) that
// made window splits 1.32x and split matrices 1.30x faster at W = 8 (K = 4), and at W = 4
// (K = 8) window splits 1.17x and split matrices 1.23x; loading both words' operands there
// had cost split matrices 1.24x and changed nothing for window splits. Matrices coded whole
// lost 4-6% at W = 8 and 32: not for them.
override EARLY_OPERANDS: bool = LOW != 0u && K >= 4u;
// K < 4: a gathered word's operands loaded before its block's last step, after which the word
// is gathered, instead of after the gather: by default at K = 2 only (W = 16, two steps a
// block). On the H200 standing in (BENCHMARKS.md issue 5, step 138) that made 32 Llama-3-8B
// layers a token 1.13x faster at W = 16 (window splits 11.2 -> 9.9 ms, split matrices 20.1
// -> 17.5); at W = 32 (four steps a block) it changed window splits by +-1% and cost split
// matrices 4%, as loading them at the block's first step did there. At the block's first
// step it had cost 1.22-1.25x at W = 16 (step 137). Not for matrices coded whole (their
// one-row calls decode first, and early operands lost for them at K = 4).
override EARLY_GATHERED: bool = LOW != 0u && K == 2u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // the tiles' decode tables
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32, then the raw bits
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(7) var<storage, read> xv: array<vec4<f32>>;   // activations, K / 4
@group(0) @binding(8) var<storage, read_write> y: array<f32>;    // R outputs

// What the word of four symbols js .. js + 3 of coded row `row` multiplies, loaded before its
// symbols are decoded where EARLY_OPERANDS, so that the loads overlap the decode steps.
// - A window split's word of 32 weights is one MLX group's (the host requires groups of a
//   multiple of 32), or in row pairs the same 16 columns of two rows: its activations (x[0..3]
//   those of the first 16 weights, x[4..7] the next 16; in row pairs the 16 columns' only), its
//   raw words (raw word js / 4 of the row: lane js / 4 % 32 of its 1024-weight block) and
//   (scale, bias) of its first and (row pairs) second matrix row.
// - A word of byte symbols holds 4 WPS weights of one MLX group (the host requires groups of
//   whole words): x[v] the activations of weights 4v .. 4v + 3 (v < WPS), its group's
//   (scale, bias) in s0, for a split matrix the weights' raw low bits in raw.x, and whether it
//   belongs to the second matrix row of a row pair (split matrices only: the matrix row
//   `row_pair_step` gives).
struct WordOperands {
    x: array<vec4<f32>, 8>,
    raw: vec3<u32>,
    s0: vec2<f32>,
    s1: vec2<f32>,
    second: bool,
}

fn word_operands(row: u32, js: u32) -> WordOperands {
    let pair = PAIR != 0u;
    var o: WordOperands;
    if (LOW == 3u) {
        let wr = js >> 2u;
        o.raw = window_raw(row * ((P.cols * 3u) >> 5u), wr >> 5u, wr & 31u);
        let ka = select(32u * wr, 16u * wr, pair);
        for (var v = 0u; v < select(8u, 4u, pair); v++) {
            o.x[v] = xv[(ka >> 2u) + v];
        }
        let g = group_of(ka, P.group_size);
        let gpr = P.groups_per_row;
        if (pair) {
            o.s0 = side(2u * row * gpr + g);
            o.s1 = side((2u * row + 1u) * gpr + g);
        } else {
            o.s0 = side(row * gpr + g);
        }
        return o;
    }
    let ms = row_pair_step(row, js >> 5u, pair);
    // (the matrix row's symbol word and its first weight)
    let jw = ms.y * 8u + ((js & 31u) >> 2u);
    let k = jw * 4u * WPS;
    if (LOW == 2u) {
        o.raw.x = raw_low_bits(ms.x * ((P.cols >> select(0u, 1u, pair)) >> 4u), k, 2u);
    }
    for (var v = 0u; v < min(WPS, 4u); v++) {
        o.x[v] = xv[(k >> 2u) + v];
    }
    o.s0 = side(ms.x * P.groups_per_row + group_of(k, P.group_size));
    o.second = ms.x != 2u * row && pair;
    return o;
}

// The word `sv` (`lanes_symbols`) times its operands: the first matrix row's part in x, the
// second's in y. A window split's 32 weights are merged from the symbols and raw words
// (window_bits.wgsl `window_words`) and multiplied in place (window_dot.wgsl), as
// rans_gemv_blocked.wgsl does; byte symbols as `symbol_word_dot` (symbol_dot.wgsl) multiplies
// them there.
fn word_dot(o: WordOperands, sv: vec4<u32>, magic: u32) -> vec2<f32> {
    if (LOW == 3u) {
        let n = window_words(sv, o.raw);
        let xlo = array<vec4<f32>, 4>(o.x[0], o.x[1], o.x[2], o.x[3]);
        let xs = dot((xlo[0] + xlo[1]) + (xlo[2] + xlo[3]), vec4<f32>(1.0));
        if (PAIR != 0u) {
            let qa = window_half(n, xlo, magic);
            let qb = window_half(n >> vec4<u32>(16u), xlo, magic);
            return vec2<f32>(
                o.s0.x * dot(qa, NIBBLE_PLACE) + o.s0.y * xs,
                o.s1.x * dot(qb, NIBBLE_PLACE) + o.s1.y * xs,
            );
        }
        let xhi = array<vec4<f32>, 4>(o.x[4], o.x[5], o.x[6], o.x[7]);
        let qa = window_half(n, xlo, magic);
        let qb = window_half(n >> vec4<u32>(16u), xhi, magic);
        let xs_hi = dot((xhi[0] + xhi[1]) + (xhi[2] + xhi[3]), vec4<f32>(1.0));
        return vec2<f32>(o.s0.x * dot(qa + qb, NIBBLE_PLACE) + o.s0.y * (xs + xs_hi), 0.0);
    }
    let xw = array<vec4<f32>, 4>(o.x[0], o.x[1], o.x[2], o.x[3]);
    let t = symbol_word_dot(sv, o.raw.x, xw, o.s0, magic);
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
    var gathered_ops: WordOperands;
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
            // (with EARLY_OPERANDS: the operands of the first word this step's symbols
            // complete, loaded before the decode. Since step 144 only ops[0] is used; the
            // array of two and the loop of one are the form timed at K = 4 (steps 136-137,
            // W = 8, the Intel default) and K = 8 (step 144). One variable would say the same
            // but has not been timed, and this loop has moved by 8-10% on small edits before,
            // step 135.)
            var ops: array<WordOperands, 2>;
            if (row_on && EARLY_OPERANDS) {
                for (var s = 0u; s < min(K / 4u, 1u); s++) {
                    if (select(j0 + 4u * s < S, true, LOW == 3u)) {
                        ops[s] = word_operands(row, j0 + 4u * s);
                    }
                }
            }
            // (with EARLY_GATHERED: at a block's last step, the operands of the word gathered
            // after it, `lanes_gathered_symbol`)
            if (row_on && EARLY_GATHERED && u % Q == Q - 1u) {
                let jg = lanes_gathered_symbol(u, Q - 1u, i);
                if (select(jg < S, true, LOW == 3u)) {
                    gathered_ops = word_operands(row, jg);
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
                        var o: WordOperands;
                        if (EARLY_OPERANDS && s == 0u) {
                            o = ops[s];
                        } else {
                            o = word_operands(row, js);
                        }
                        let dot2 = word_dot(o, lanes_symbols(sym, 4u * s), magic);
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
                        // (a block ending early, at a byte-symbol row's end, loads them now)
                        var o: WordOperands;
                        if (EARLY_GATHERED && q == Q - 1u) {
                            o = gathered_ops;
                        } else {
                            o = word_operands(row, js);
                        }
                        let dot2 = word_dot(o, lanes_unpacked(word), magic);
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
