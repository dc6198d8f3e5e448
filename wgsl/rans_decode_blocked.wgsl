// rANS decode to MLX packed words, blocked subgroup variant (issue 5): the decode loop of
// rans_gemv_blocked.wgsl (a group of 32 lanes decodes a block of 8 steps, each lane keeping its
// 8 byte symbols in two registers), then the block's 256 symbols are written as 64 whole
// words with 8 subgroupShuffles: lane l assembles the words l and 32 + l of the block (word
// (i, m) of step i holds the symbols of lanes 4m..4m+3), so every store is one coalesced
// 128-byte row. rans_decode_subgroup.wgsl needs two subgroupShuffleXor and a masked store per
// step instead. Only for byte symbols (bits * weights per symbol = 8), rows of whole steps
// with a multiple of 8 steps, and <= 11 probability bits (the host checks:
// `GpuCodedMatrix::decode_blocked_supported`); it flags every chunk on a wrong subgroup size
// (error bit 128) and reports errors like the subgroup kernel. Window splits (LOW = 3,
// `ecq::rans::SplitMatrix::encode_window`): blocks of 4 steps, lane l's word of four symbols
// (32 coded weights) merged with its raw words and written as 4 MLX words, 2 per row with row
// pairs (the host needs steps per row in a multiple of 4 for them). The host runs them here
// only where the matrix builds its decode tables in the kernel; with tables built on the host
// (the default) they run rans_decode_window.wgsl, which loads its chunk's start first. That
// change made here ran the byte symbols 5-8% slower on an H200 (BENCHMARKS.md issue 5, steps
// 115-116), and so did removing the window path or the chunk loop from this file: the driver
// then compiled the byte-symbol loop to the same instructions in another order. This source is
// the one measured (`window_mlx_words` has since moved to lib/window_mlx.wgsl: every kernel
// compiled to the same code, instruction for instruction).
// This kernel runs without naga's bounds checks (`Kernel::indices_in_range_by_construction`
// says why that is safe): every index here and in the imported libraries must stay in range
// for any buffer contents, by masking or clamping in the source.
// import: rans_consts
// import: rans_table_scan
// import: rans_table_sg
// import: rans_subgroup
// import: rans_block
// import: split_bits
// import: window_bits
// import: window_mlx

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

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
    low_base: u32,       // u32 index in `words` of the raw low bits (LOW > 0)
    low_bits: u32,       // = LOW (the workgroup kernels read it from here)
    _pad2: u32,
}

// Probability bits (<= 11), set by the host.
override PREC: u32 = 11u;
// Raw low bits per weight (`ecq::rans::SplitMatrix`): 0 = none; 2 = the symbols carry the high
// 2 bits of 4-bit weights, four per symbol, their low 2 bits follow the stream in `words`
// (MLX-packed, from u32 P.low_base on), and the output is the 4-bit packed weights (two words
// per word of symbols). The host allows 2 only with 2-bit symbols of four weights.
override LOW: u32 = 0u;
// 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`; P describes the coded matrix): a coded
// row is matrix rows 2r and 2r + 1 interleaved in runs of four steps, so a block's word l goes
// to row 2r and word 32 + l to row 2r + 1, at the same word of each. The host allows it with
// 8-step blocks only.
override PAIR: u32 = 0u;
// The window start of a window split (LOW = 3).
override WSTART: u32 = 0u;

const BLOCK: u32 = 8u;         // steps per block: 8 byte symbols per lane = 2 output words
const G: u32 = 4u;             // groups of 32 lanes per workgroup
const WG: u32 = 128u;          // = 32 * G
const BRANCH_FREE_PLANES: bool = true;  // see rans_block.wgsl, block_plane_at

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, A per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>; // packed words

// Writes word j of a row's symbols, w (16 weights, 2 bits each), at row offset `row_out`: as it
// is, or with LOW = 2 merged with the row's low-bit word j as two 4-bit words.
fn write_word(row_out: u32, row_low: u32, j: u32, w: u32) {
    if (LOW == 0u) {
        out[row_out + j] = w;
        return;
    }
    // (the raw bits of word j's 16 weights are the row's raw word j)
    let lw = raw_low_bits(row_low, 16u * j, LOW);
    out[row_out + 2u * j] = merge_split(w, lw);
    out[row_out + 2u * j + 1u] = merge_split(w >> 16u, lw >> 16u);
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
    let bad_table = build_blocked_table(tile, lid, sg_id);

    let g = lid / 32u;
    let l = sg_id & 31u;
    let T = P.steps_per_row;
    let nblk = T / BLOCK;
    let row_words = P.out_row_words;  // = 8 T (16 T with LOW = 2)
    let ltmask = (1u << l) - 1u;
    // the block's words this lane assembles: symbols of lanes 4m..4m+3, byte i of their
    // s.x (word l) and s.y (word 32 + l), with m = l % 8 and i = l / 8
    let src0 = (l & 7u) * 4u;
    let byte_shift = 8u * (l >> 3u);

    for (var it = 0u; it < P.chunk_iters; it++) {
        let chunk = tile_first + (sub * P.chunk_iters + it) * G + g;
        let valid = chunk < tile_end;
        let cs = chunk_start(chunk, valid, l, T, bad_table, sg_size);
        // (T > 0 here; the host checks)
        let nrows = cs.steps / T;
        var d = block_decoder(cs.x, cs.p, l);
        for (var rr = 0u; rr < nrows; rr++) {
            // (row pairs: the two matrix rows of coded row r0 + rr, each half its words)
            let pair = PAIR != 0u;
            let sh = select(0u, 1u, pair);
            let row_out = (cs.r0 + rr) * row_words;
            let row_low = (cs.r0 + rr) * 8u * T;
            let row_out_b = row_out + (row_words >> sh) * sh;
            let row_low_b = row_low + ((8u * T) >> sh) * sh;
            let jb = select(32u, 0u, pair);  // word wb's index past word wa's
            if (LOW == 3u) {
                // a window split: 4-step blocks, lane l's 32 coded weights into 4 words (row
                // pairs: words 2l, 2l + 1 of the block's 512 columns of each row; else words
                // 4l .. 4l + 3 of its 1024 columns)
                let raw_row = (cs.r0 + rr) * ((P.cols * 3u) >> 5u);
                for (var b = 0u; b < T / 4u; b++) {
                    let sx = decode_block(&d, 4u, l, ltmask, true).x;
                    var sw = vec4<u32>(0u);
                    for (var c = 0u; c < 4u; c++) {
                        sw[c] = subgroupShuffle(sx, src0 + c) >> byte_shift;
                    }
                    let n = window_words(sw, window_raw(raw_row, b, l));
                    let w = window_mlx_words(n);
                    if (pair) {
                        let j = b * 64u + 2u * l;
                        out[row_out + j] = w.x;
                        out[row_out + j + 1u] = w.y;
                        out[row_out_b + j] = w.z;
                        out[row_out_b + j + 1u] = w.w;
                    } else {
                        let j = b * 128u + 4u * l;
                        out[row_out + j] = w.x;
                        out[row_out + j + 1u] = w.y;
                        out[row_out + j + 2u] = w.z;
                        out[row_out + j + 3u] = w.w;
                    }
                }
                continue;
            }
            for (var b = 0u; b < nblk; b++) {
                // decode BLOCK steps; symbol i of the block in byte i % 4 of s.x / s.y
                let s = decode_block(&d, BLOCK, l, ltmask, true);
                var wa = 0u;
                var wb = 0u;
                for (var c = 0u; c < 4u; c++) {
                    let va = subgroupShuffle(s.x, src0 + c);
                    let vb = subgroupShuffle(s.y, src0 + c);
                    wa |= ((va >> byte_shift) & 0xFFu) << (8u * c);
                    wb |= ((vb >> byte_shift) & 0xFFu) << (8u * c);
                }
                let j = ((b * 64u) >> sh) + l;
                write_word(row_out, row_low, j, wa);
                write_word(row_out_b, row_low_b, j + jb, wb);
            }
        }
        if (valid) {
            let err = cs.err | chunk_end_flags(d.x, d.p, cs.end, l);
            if (err != 0u) {
                atomicOr(&errors[chunk], err);
            }
        }
    }
}
