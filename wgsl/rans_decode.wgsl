// Parallel rANS decode of one ecq coded matrix (docs/FORMAT.md, version 1).
//
// One workgroup = G groups of 32 invocations and handles chunks of ONE tile: it first builds the
// tile's decode table in workgroup memory (or, with TABLE_MEM, loads the one the host built,
// rans_table_mem.wgsl), then each group of 32 invocations decodes whole chunks (invocation =
// lane). Renormalisation words are read with a per-step prefix count of the
// lanes that need one (a workgroup-memory bitmask, one workgroupBarrier per step), so the lanes
// of a step read consecutive words, exactly as the encoder wrote them.
//
// Output modes:
//   0: MLX packed u32 words (continuous LSB-first bit stream per row; a full step covers exactly
//      b*w words because it holds 32 symbols of b*w bits).
//   1: one byte per weight (q values), four per u32, rows of K/4 words.
// A split matrix (`ecq::rans::SplitMatrix`, P.low_bits = 2: the symbols hold the high 2 bits of
// four 4-bit weights, the low 2 bits follow the stream in `words` from u32 P.low_base on) is
// merged back into 4-bit weights in either mode. So is a window split (P.low_bits = 3, one flag
// per weight, eight weights per symbol, `ecq::rans::SplitMatrix::encode_window`): a symbol's
// eight weights are one MLX word (window_symbol_word), which its lane writes itself, in row
// pairs runs of two symbols. The host runs only coded rows of whole 1024-weight blocks.
//
// Every loop is bounded by the geometry in `P`; every word read is bounds-checked against the
// chunk's range; corrupt input sets bits in `errors[chunk]` and never hangs the device.
// Devices with subgroups of any size decode window splits, byte symbols and split 2 + 2
// matrices to packed words with the host's tables in rans_decode_lanes.wgsl instead, without
// the barrier a step.
// import: rans_consts
// import: rans_table
// import: rans_table_mem
// import: split_bits
// import: window_word

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
    // 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`): the rows and columns above are the
    // coded matrix's, whose row r is matrix rows 2r and 2r + 1 interleaved in runs of four
    // steps (step u of coded row r is step 4 (u / 8) + u % 4 of row 2r + (u / 4) % 2)
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
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

var<workgroup> masks: array<atomic<u32>, 12>;      // G * 3 (triple buffered)
var<workgroup> stage: array<u32, 256>;             // G * 2 * 32 (double buffered)

// The four nibbles in bits 0..15 of v, one to a byte.
fn nibbles_to_bytes(v: u32) -> u32 {
    var s = v & 0xFFFFu;
    s = (s | (s << 8u)) & 0x00FF00FFu;
    return (s | (s << 4u)) & 0x0F0F0F0Fu;
}

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
    let sw = P.bits * P.wps;
    let qmask = (1u << P.bits) - 1u;
    var gstep = 0u;

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
            }
            let sbase = (g * 2u + (gstep & 1u)) * 32u;
            stage[sbase + l] = sym;
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
            if (step_valid && P.low_bits == 3u) {
                // a window split: symbol j of the coded row, written at its matrix row and
                // first column
                let pair = P.row_pairs != 0u;
                let ps = select(0u, 1u, pair);
                let at = window_symbol_at(row, j, pair);
                if (j < S) {
                    let word = window_symbol_word(sym, row, j);
                    let o = at.x * (P.out_row_words >> ps);
                    if (P.out_mode == 0u) {
                        out[o + at.y / 8u] = word;
                    } else {
                        out[o + at.y / 4u] = nibbles_to_bytes(word);
                        out[o + at.y / 4u + 1u] = nibbles_to_bytes(word >> 16u);
                    }
                }
            } else if (step_valid) {
                let na = min(32u, S - u * 32u);
                // the matrix row and step this step writes, its row's words and columns
                let pair = P.row_pairs != 0u;
                let ps = select(0u, 1u, pair);
                let ms = row_pair_step(row, u, pair);
                let row = ms.x;
                let u = ms.y;
                let out_row_words = P.out_row_words >> ps;
                let cols = P.cols >> ps;
                if (P.out_mode == 0u) {
                    let nw = (na * sw + 31u) / 32u;
                    if (l < nw) {
                        var word = 0u;
                        if (sw == 8u) {
                            let b = sbase + 4u * l;
                            word = stage[b] | (stage[b + 1u] << 8u) | (stage[b + 2u] << 16u)
                                | (stage[b + 3u] << 24u);
                        } else {
                            let bit0 = l * 32u;
                            let first = bit0 / sw;
                            for (var k = 0u; k < 34u; k++) {
                                let js = first + k;
                                let sb = js * sw;
                                if (sb >= bit0 + 32u || js >= na) {
                                    break;
                                }
                                let v = stage[sbase + js];
                                if (sb >= bit0) {
                                    word |= v << (sb - bit0);
                                } else {
                                    word |= v >> (bit0 - sb);
                                }
                            }
                        }
                        if (P.low_bits == 0u) {
                            out[row * out_row_words + u * sw + l] = word;
                        } else {
                            // a split matrix (2 raw low bits beside 2-bit symbols of four
                            // weights): word j of the row's symbols and word j of its raw bits
                            // make the row's 4-bit words 2j and 2j + 1
                            let jw = u * sw + l;
                            let lw = raw_low_bits(row * (cols >> 4u), 16u * jw, 2u);
                            let o = row * out_row_words + 2u * jw;
                            out[o] = merge_split(word, lw);
                            out[o + 1u] = merge_split(word >> 16u, lw >> 16u);
                        }
                    }
                } else {
                    let nw = (na * P.wps + 3u) / 4u;
                    if (l < nw) {
                        var word = 0u;
                        // a split matrix's raw low bits of these four weights
                        var lo = 0u;
                        if (P.low_bits > 0u) {
                            let row0 = row * ((cols * P.low_bits) >> 5u);
                            lo = raw_low_bits(row0, u * 32u * P.wps + 4u * l, P.low_bits);
                        }
                        let lmask = (1u << P.low_bits) - 1u;
                        for (var k = 0u; k < 4u; k++) {
                            let m = 4u * l + k;
                            let v = stage[sbase + m / P.wps];
                            let q = (((v >> (P.bits * (m % P.wps))) & qmask) << P.low_bits)
                                | ((lo >> (P.low_bits * k)) & lmask);
                            word |= q << (8u * k);
                        }
                        out[row * out_row_words + u * 8u * P.wps + l] = word;
                    }
                }
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
