// rANS decode of a window split (`ecq::rans::SplitMatrix::encode_window`: one coded flag per
// weight, eight weights per byte symbol, three raw bits per weight after the stream), of a
// matrix coded whole in byte symbols (`ecq encode`'s default form: two 4-bit weights a
// symbol) or of a split matrix (`ecq::rans::SplitMatrix::encode`: byte symbols of four
// weights' high 2 bits, the low 2 bits raw), to MLX packed words, without a barrier per step,
// for devices whose subgroups are not 32 wide:
// a chunk's 32 interleaved lanes are decoded by a group of W invocations of one subgroup
// (override W = 4, 8, 16 or 32, at most the device's smallest subgroup size), each running
// K = 32 / W consecutive lanes one after another. A step's renormalisation words are read, as
// the encoder wrote them, in lane order: an invocation's first word is the group's position
// plus the words its lower invocations take, counted in K subgroup ballots (one a lane index,
// the group's W bits of each; a subgroup may hold several groups). (The first build took an
// exclusive prefix sum over the subgroup minus its value at the group's first invocation,
// which NVIDIA compiles to a chain of shuffles: BENCHMARKS.md issue 5, step 128.)
//
// The workgroup kernel (rans_decode.wgsl) gets that prefix from a bitmask in workgroup memory
// and one workgroupBarrier per step, which every device runs; the 32-wide subgroup kernels
// (rans_decode_window.wgsl) need subgroups of exactly 32, which AMD (32..64) and Intel
// (8..32) GPUs do not promise, since their drivers pick the size per kernel. Any size that is
// a multiple of W works here. The kernel checks that each group of W consecutive local
// invocations sits in one subgroup in order, and flags every chunk otherwise (error bit 128),
// so a device that breaks the assumption gets an error, never a wrong result.
//
// Each workgroup of 128 invocations loads its tile's decode table built on the host
// (`load_blocked_table`, src/gpu/slot_table.rs) once for its 128 / W chunks. An invocation's
// symbols of a step are consecutive in the row. Four byte symbols are one MLX word, or, for a
// split matrix, two merged with the raw low bits (split_bits.wgsl). Four window symbols share
// one word of each raw bit plane and become four MLX words at once (window_bits.wgsl
// `window_words`, then window_mlx.wgsl's transpose), written to their places in row order or
// row pairs (window_word.wgsl `window_symbol_at`). With fewer than four lanes an invocation,
// the four symbols come from 4 / K steps of the group's invocations by shuffles.
// The host runs window splits in coded rows of whole 1024-weight blocks, byte symbols in rows
// of whole words, <= 11 probability bits and packed output only (`GpuCodedMatrix` decode
// dispatch).
// Every loop is bounded by the geometry in `P` or by K; every stream word read is checked
// against the chunk's range; corrupt input sets bits in `errors[chunk]` and never hangs.
// import: rans_consts
// import: rans_table_scan
// import: rans_table_sg
// import: rans_lanes
// import: window_bits
// import: window_mlx
// import: window_word
// import: split_bits

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
    steps_per_row: u32,  // T = ceil(S / 32)
    alphabet: u32,       // A = 2^(b*w)
    n_words: u32,        // u16 words in the stream
    wg_per_tile: u32,    // (for this kernel: ceil(tile_chunks / (128 / W)))
    total_wg: u32,
    out_mode: u32,
    out_row_words: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    chunk_iters: u32,    // (not read here)
    group_size: u32,     // MLX group size (GEMV only)
    groups_per_row: u32, // K / group_size (GEMV only)
    low_base: u32,       // u32 index in `words` of the raw low bits
    low_bits: u32,       // = LOW
    _pad2: u32,
    row_pairs: u32,      // 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`)
    window_start: u32,   // the window start (window_word.wgsl)
}

// (the overrides LOW, PREC, PAIR, WSTART, W, K and PLANES, and WG: rans_lanes.wgsl)

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // the tiles' decode tables
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32, then the raw bits
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

// The u32 index in `out` of the MLX word of symbol j of coded row `row` (row_words: MLX words
// of a coded row).
fn out_index(row: u32, j: u32, row_words: u32) -> u32 {
    if (PAIR != 0u) {
        let at = window_symbol_at(row, j, true);
        return at.x * (row_words >> 1u) + at.y / 8u;
    }
    return row * row_words + j;
}

// Writes the word of byte symbols j .. j + 3 (j a multiple of 4) of coded row `row`: as it is
// (byte symbols of whole weights), or for a split matrix (2-bit symbols of four weights'
// high bits) merged with the weights' raw low bits into two MLX words, at the matrix row and
// step `row_pair_step` gives in row-pair order.
fn write_symbol_word(row: u32, j: u32, word: u32, row_words: u32) {
    if (LOW == 0u) {
        out[row * row_words + j / 4u] = word;
        return;
    }
    let pair = PAIR != 0u;
    let ps = select(0u, 1u, pair);
    let ms = row_pair_step(row, j / 32u, pair);
    // (symbol word jw of the matrix row: eight a step)
    let jw = ms.y * 8u + (j % 32u) / 4u;
    let lw = raw_low_bits(ms.x * ((P.cols >> ps) >> 4u), 16u * jw, 2u);
    let o = ms.x * (row_words >> ps) + 2u * jw;
    out[o] = merge_split(word, lw);
    out[o + 1u] = merge_split(word >> 16u, lw >> 16u);
}

// Writes the word of four symbols js .. js + 3 (js a multiple of 4; `lanes_symbols` or
// `lanes_unpacked`) of coded row `row`: a window split's merged with their raw words into
// four MLX words (window_bits.wgsl `window_words`, then window_mlx.wgsl's transpose; raw
// word js / 4 of the row is lane js / 4 % 32 of its 1024-weight block), written to their
// places in row order or row pairs; byte symbols as one word by `write_symbol_word`.
fn write_four(row: u32, js: u32, sv: vec4<u32>, row_words: u32) {
    if (LOW == 3u) {
        let wr = js >> 2u;
        let r = window_raw(row * ((P.cols * 3u) >> 5u), wr >> 5u, wr & 31u);
        let mw = window_mlx_words(window_words(sv, r));
        for (var m = 0u; m < 4u; m++) {
            out[out_index(row, js + m, row_words)] = mw[m];
        }
    } else {
        let word = sv.x | (sv.y << 8u) | (sv.z << 16u) | (sv.w << 24u);
        write_symbol_word(row, js, word, row_words);
    }
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

    let row_words = P.out_row_words;            // MLX words of a coded row, P.cols / 8
    let S = P.syms_per_row;
    // (K < 4: the steps of one gathered word, and this invocation's symbols of them)
    let Q = max(4u / K, 1u);
    var held = 0u;
    for (var rr = 0u; rr < P.chunk_rows; rr++) {
        let row_on = rr < c.nrows;
        let row = c.r0 + rr;
        for (var u = 0u; u < T; u++) {
            // symbols j0 .. j0 + K - 1 of the coded row (a row's last step may hold fewer
            // than 32: lanes past S decode nothing; window splits' rows are whole blocks)
            let j0 = u * 32u + i * K;
            let left = select(S - min(j0, S), K, LOW == 3u);
            let sym = lanes_step(&d, row_on, left, i, pl, sg_size);
            if (row_on) {
                // the invocation's K / 4 words of the step (K < 4: gathered after the
                // block's last step, below); symbol word j / 4 of the row holds symbols
                // j .. j + 3, j a multiple of 4 (S is: the host decodes rows of whole words)
                for (var s = 0u; s < K / 4u; s++) {
                    let js = j0 + 4u * s;
                    if (js < S) {
                        write_four(row, js, lanes_symbols(sym, 4u * s), row_words);
                    }
                }
            }
            if (K < 4u) {
                // Fewer than four lanes an invocation: an invocation keeps its symbols of
                // Q = 4 / K steps; after the block's last step (or the row's) invocation i
                // gathers and writes the word of the block's step i / 8, lanes
                // 4 (i % 8) .. + 3 (`lanes_gather`). Window splits' rows are whole
                // 1024-weight blocks, so T is a multiple of Q there; a byte-symbol row may
                // end inside a block, whose steps past it hold no symbols (js >= S). (Outside
                // the branch: every invocation of the subgroup takes part in the shuffles.)
                let q = u % Q;
                held = lanes_hold(held, sym, q);
                if (q == Q - 1u || u + 1u == T) {
                    let word = lanes_gather(held, i, pl, sg_size);
                    held = 0u;
                    let js = lanes_gathered_symbol(u, q, i);
                    if (row_on && js < S) {
                        write_four(row, js, lanes_unpacked(word), row_words);
                    }
                }
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
