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
    low_bits: u32,       // = 3
    _pad2: u32,
    row_pairs: u32,      // 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`)
    window_start: u32,   // the window start (window_word.wgsl)
}

// The form: 3 a window split, 0 byte symbols (`bits * wps == 8`, the whole form of 4-bit
// weights two a symbol, `ecq encode`'s default), 2 a split matrix (2-bit symbols of four
// weights' high bits, two raw low bits a weight after the stream, `ecq encode --split`).
override LOW: u32 = 3u;
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

const WG: u32 = 128u;
// Groups of 32 (one lane an invocation) hold their next stream words in registers
// (`plane_at`) instead of loading each when they take it: on an H200 at W = 32 that decoded
// whole symbols 1.3-1.5x and split matrices 1.2x faster (BENCHMARKS.md issue 5, step 129),
// and window splits 1.12-1.19x once their words were merged four steps at a time (step 130;
// before, when each step merged its own, 7-8% slower).
override PLANES: bool = W == 32u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // the tiles' decode tables
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32, then the raw bits
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

fn read16(idx: u32) -> u32 {
    return (words[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xFFFFu;
}

// Invocation i's u32 of the plane of 64 stream words from u16 word `base` (even): words
// base + 2i and base + 2i + 1. Clamped to the buffer: past it a plane holds its last word,
// which only a corrupt stream reads (and the lane reports).
fn plane_at(base: u32, i: u32) -> u32 {
    return words[min((base >> 1u) + i, arrayLength(&words) - 1u)];
}

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
    // The group's first invocation in the subgroup, and whether the group is W
    // consecutive invocations of one subgroup in order: each invocation's place in its
    // subgroup's groups of W matches its place in the group, and the invocation in its
    // subgroup's first place holds the group's first local index (so all W share one subgroup).
    // (the shuffle index and the ballot word stay inside the subgroup even where W is wider
    // than it, a layout the check below rejects: an index past the subgroup reads an undefined
    // value, which a driver may carry into branches)
    let first = sg_id - sg_id % W;
    let first_lid = subgroupShuffle(lid, first);
    // (W divides 32, so a group's bits of a ballot lie in one word of it)
    let group_bits = 0xFFFFFFFFu >> (32u - W);
    let lower = (1u << i) - 1u;
    let layout_ok = sg_size % W == 0u && sg_id % W == i && first_lid == lid - i;

    let chunk = tile_first + sub * (WG / W) + g;
    let in_tile = chunk < tile_end;
    let valid = in_tile && layout_ok;
    let T = P.steps_per_row;
    var x = array<u32, 8>(L, L, L, L, L, L, L, L);
    var nrows = 0u;
    var r0 = 0u;
    var p = 0u;
    var end = 0u;
    var err = 0u;
    if (valid) {
        r0 = chunk * P.chunk_rows;
        nrows = min(P.chunk_rows, P.rows - r0);
        for (var k = 0u; k < K; k++) {
            x[k] = states[chunk * 32u + i * K + k];
            if (x[k] < L) { err |= ERR_BAD_STATE; }
        }
        p = offsets[chunk];
        end = offsets[chunk + 1u];
        if (end > P.n_words || p > end) {
            err |= ERR_OFFSETS;
            end = min(end, P.n_words);
            p = min(p, end);
        }
    }
    let bad_table = load_blocked_table(tile, lid);
    // (PLANES: the group's next stream words in two planes of 64 held across its invocations,
    // loaded ahead of the steps that take them and handed out by shuffles, as the blocked
    // kernels do; invariant p - base < 64 at every step's start, so a step's words lie below
    // base + 96. Otherwise each lane loads its word when it takes it.)
    var base = p & ~1u;
    var pa = 0u;
    var pb = 0u;
    if (PLANES) {
        pa = plane_at(base, i);
        pb = plane_at(base + 64u, i);
    }

    let n = PREC;
    let mmask = (1u << n) - 1u;
    let row_words = P.out_row_words;            // MLX words of a coded row, P.cols / 8
    let raw_row_words = (P.cols * 3u) >> 5u;    // raw words of a coded row
    let S = P.syms_per_row;
    // (K < 4: the steps of one gathered word, and this invocation's symbols of them)
    let Q = max(4u / K, 1u);
    var held = 0u;
    for (var rr = 0u; rr < P.chunk_rows; rr++) {
        let row_on = rr < nrows;
        let row = r0 + rr;
        for (var u = 0u; u < T; u++) {
            var sym = array<u32, 8>(0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
            var need = 0u;
            // symbols j0 .. j0 + K - 1 of the coded row (a row's last step may hold fewer
            // than 32: lanes past S decode nothing; window splits' rows are whole blocks).
            // No branch around the step: on a row past the chunk's end (the last chunk's) the
            // states stay as they are by select and need no word, so the renormalisation
            // below runs unguarded too. The table is the host's, whose tile flag (ERR_TABLE)
            // catches frequencies not summing to 2^n, so every slot has an owner and a step
            // does not check for one. Without that branch and that check a step compiles to
            // ~50 instructions instead of ~78 on an H200 at W = 32, where the decode ran
            // 1.10-1.26x faster (BENCHMARKS.md issue 5, step 130).
            let j0 = u * 32u + i * K;
            for (var k = 0u; k < K; k++) {
                let on = row_on && (LOW == 3u || j0 + k < S);
                let e = table[x[k] & mmask];
                let xd = ((e >> 12u) & 0xFFFu) * (x[k] >> n) + (e & 0xFFFu);
                x[k] = select(x[k], xd, on);
                sym[k] = select(0u, e >> 24u, on);
                need |= select(0u, 1u << k, on && xd < L);
            }
            // (every invocation of the subgroup takes part, in no branch) The words the
            // group's lower invocations take, and the group's total, from one ballot a lane
            // index: the group's W bits of ballot k are its invocations' needs of lane k.
            var below = 0u;
            var taken = 0u;
            for (var k = 0u; k < K; k++) {
                let b = subgroupBallot(((need >> k) & 1u) != 0u);
                let gb = (b[first >> 5u] >> (first & 31u)) & group_bits;
                below += countOneBits(gb & lower);
                taken += countOneBits(gb);
            }
            // (PLANES: this lane's word from the planes, taken below only if it renormalises)
            // The step's words lie in u32s (p - base) / 2 .. + 16 of the planes (p - base < 64),
            // at 17 different invocations, so each picks beforehand which of its two u32s
            // could be asked for (pa if i >= (p - base) / 2) and one shuffle serves all, as
            // in the blocked kernels' renorm_word (rans_subgroup.wgsl).
            var planed = 0u;
            if (PLANES) {
                let rel0 = p - base;
                let mine = select(pb, pa, rel0 <= 2u * i + 1u);
                let r = rel0 + below;
                let src = min(first + ((r >> 1u) & 31u), sg_size - 1u);
                planed = (subgroupShuffle(mine, src) >> ((r & 1u) * 16u)) & 0xFFFFu;
            }
            {
                // Every lane loads the word at its position, taken only where it renormalises:
                // a load inside the branch of the lanes that need a word cost lavapipe ~95% of
                // the whole form's decode (it runs a branch whenever any lane of its 8 takes
                // it; BENCHMARKS.md issue 5, step 124). Past the chunk's end the load reads
                // word 0 and the lane that needed it reports the over-read.
                if (PLANES) {
                    // (a word taken past the chunk's end leaves p past it, which the end
                    // reports: ERR_OVER_READ)
                    x[0] = select(x[0], (x[0] << 16u) | planed, (need & 1u) != 0u);
                } else {
                    var idx = p + below;
                    for (var k = 0u; k < K; k++) {
                        let nk = (need >> k) & 1u;
                        let ok = idx < end;
                        let wv = read16(select(0u, idx, ok));
                        if (nk != 0u && !ok) {
                            err |= ERR_OVER_READ;
                        }
                        x[k] = select(x[k], (x[k] << 16u) | wv, nk != 0u);
                        idx += nk;
                    }
                }
                p += taken;
                if (PLANES && p - base >= 64u) {
                    pa = pb;
                    base += 64u;
                    pb = plane_at(base + 64u, i);
                }
            }
            if (row_on) {
                if (LOW != 3u) {
                    // symbol word j / 4 of the row holds symbols j .. j + 3, j a multiple of 4
                    // (S is: the host decodes rows of whole words; K < 4: gathered after the
                    // block's last step, below)
                    for (var s = 0u; s < K / 4u; s++) {
                        let js = j0 + 4u * s;
                        if (js < S) {
                            let b = 4u * s;
                            let w = sym[b] | (sym[b + 1u] << 8u) | (sym[b + 2u] << 16u)
                                | (sym[b + 3u] << 24u);
                            write_symbol_word(row, js, w, row_words);
                        }
                    }
                } else {
                    // a window split's symbols, four a raw word (K < 4: gathered after the
                    // block's last step, below)
                    for (var s = 0u; s < K / 4u; s++) {
                        let js = j0 + 4u * s;
                        // (raw word js / 4 of the row: lane js / 4 % 32 of its 1024-weight
                        // block)
                        let wr = js >> 2u;
                        let r = window_raw(row * raw_row_words, wr >> 5u, wr & 31u);
                        let b = 4u * s;
                        let sv = vec4<u32>(sym[b], sym[b + 1u], sym[b + 2u], sym[b + 3u]);
                        let mw = window_mlx_words(window_words(sv, r));
                        for (var m = 0u; m < 4u; m++) {
                            out[out_index(row, js + m, row_words)] = mw[m];
                        }
                    }
                }
            }
            if (K < 4u) {
                // Fewer than four lanes an invocation: an invocation keeps its symbols of
                // Q = 4 / K steps (step q's lane k in byte q K + k of `held`); after the
                // block's last step (or the row's) invocation i gathers the word of four
                // symbols of the block's step i / 8, lanes 4 (i % 8) .. + 3, from the Q
                // invocations that hold them (K bytes from each, one shuffle each), as the
                // blocked window decode does with its 4-step blocks, and writes it: merged
                // with its raw words into four MLX words (window splits) or as byte symbols
                // (split_bits.wgsl for split matrices). Merging a window split's four symbols
                // at every step made four words of which one was kept; byte symbols took
                // 4 / K - 1 shuffles a step and wrote from one invocation in 4 / K
                // (BENCHMARKS.md issue 5, steps 130 and 132). Window splits' rows are whole
                // 1024-weight blocks, so T is a multiple of Q there; a byte-symbol row may
                // end inside a block, whose steps past it hold no symbols (js >= S). (Outside
                // the branch: every invocation of the subgroup takes part in the shuffles.)
                let q = u % Q;
                for (var k = 0u; k < K; k++) {
                    held |= sym[k] << (8u * (q * K + k));
                }
                if (q == Q - 1u || u + 1u == T) {
                    let t = i / 8u;
                    let m8 = i % 8u;
                    // (K bytes; written so that no constant shift reaches 32 where K >= 4)
                    let kmask = 0xFFFFFFFFu >> (32u - 8u * min(K, 3u));
                    var word = 0u;
                    for (var c = 0u; c < Q; c++) {
                        let src = min(first + 4u * m8 / K + c, sg_size - 1u);
                        let v = subgroupShuffle(held, src);
                        word |= ((v >> (8u * K * t)) & kmask) << (8u * K * c);
                    }
                    held = 0u;
                    let js = (u - q + t) * 32u + 4u * m8;
                    if (row_on && js < S) {
                        if (LOW == 3u) {
                            let wr = js >> 2u;
                            let r = window_raw(row * raw_row_words, wr >> 5u, wr & 31u);
                            let sv = vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u);
                            let mw = window_mlx_words(window_words(sv, r));
                            for (var c = 0u; c < 4u; c++) {
                                out[out_index(row, js + c, row_words)] = mw[c];
                            }
                        } else {
                            write_symbol_word(row, js, word, row_words);
                        }
                    }
                }
            }
        }
    }
    if (in_tile) {
        var e = err | select(0u, ERR_TABLE, bad_table) | select(0u, ERR_SUBGROUP, !layout_ok);
        for (var k = 0u; k < K; k++) {
            if (x[k] != L) { e |= ERR_FINAL_STATE; }
        }
        if (i == 0u && valid) {
            if (p > end) {
                e |= ERR_OVER_READ;
            } else if (p != end) {
                e |= ERR_UNCONSUMED;
            }
        }
        if (e != 0u) {
            atomicOr(&errors[chunk], e);
        }
    }
}
