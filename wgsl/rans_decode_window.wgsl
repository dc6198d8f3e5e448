// rANS decode of a window split (`ecq::rans::SplitMatrix::encode_window`: one coded flag per
// weight, eight weights per byte symbol, three raw bits per weight after the stream) to MLX
// 4-bit packed words: the decode-first path of window-split layers, which prefill runs before
// the plain GEMM. A group of 32 lanes decodes a chunk in blocks of 4 steps (the loop of
// rans_gemv_blocked.wgsl); lane l gathers its word of four symbols (32 coded weights) with 4
// subgroupShuffles, merges it with its raw words and writes it as 4 MLX words, 2 per row with
// row pairs. The host needs 32-wide subgroups, rows of whole 4-step blocks (steps per row a
// multiple of 4) and <= 11 probability bits (`GpuCodedMatrix::decode_blocked_supported`); the
// kernel flags every chunk on a wrong subgroup size (error bit 128) and reports errors like
// the other decode kernels.
//
// A kernel of its own, apart from rans_decode_blocked.wgsl, because changes to either path
// moved the other's speed on an H200 when they shared a kernel, even where the other's source
// stayed as it was (the driver's instruction schedule; BENCHMARKS.md issue 5, steps 115 and
// 116). Two things make it faster than the shared kernel's window path: each workgroup loads
// its tile's decode table built on the host (`load_blocked_table`, src/gpu/slot_table.rs)
// instead of building it, and each group of 32 lanes loads its chunk's start and first stream
// planes before that table, so that the two chains of loads overlap (step 67 did the same in
// the fused GEMV). Matrices that build their tables in the kernel
// (`GpuCodedMatrix::set_tables_in_memory(false)`) decode in rans_decode_blocked.wgsl.
// This kernel runs without naga's bounds checks (`Kernel::indices_in_range_by_construction`
// says why that is safe): every index here and in the imported libraries must stay in range
// for any buffer contents, by masking or clamping in the source.
// import: rans_consts
// import: rans_table_scan
// import: rans_table_sg
// import: rans_subgroup
// import: rans_block
// import: window_bits
// import: window_mlx

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
    wg_per_tile: u32,
    total_wg: u32,
    out_mode: u32,
    out_row_words: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    chunk_iters: u32,    // (1: one chunk per group of 32 lanes; not read here)
    group_size: u32,     // MLX group size (GEMV only)
    groups_per_row: u32, // K / group_size (GEMV only)
    low_base: u32,       // u32 index in `words` of the raw low bits
    low_bits: u32,       // = 3
    _pad2: u32,
}

// Probability bits (<= 11), set by the host.
override PREC: u32 = 11u;
// 1: row-pair order (`ecq::rans::SplitOrder::RowPairs`; P describes the coded matrix): a coded
// row is matrix rows 2r and 2r + 1, a block's lane l holding words 2l, 2l + 1 of each.
override PAIR: u32 = 0u;
// The window start of the split (window_bits.wgsl).
override WSTART: u32 = 0u;

const G: u32 = 4u;             // groups of 32 lanes per workgroup
const WG: u32 = 128u;          // = 32 * G
const BRANCH_FREE_PLANES: bool = true;  // see rans_block.wgsl, block_plane_at

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // the tiles' decode tables
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32, then the raw bits
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
// The packed words, two to an element: a lane stores its four words as two 8-byte stores
// instead of four 4-byte ones (1.5% faster at 14336x4096 on an H200, issue 5 step 117). Every
// index below is even: a coded row holds P.cols / 8 words, P.cols a multiple of 1024 (whole
// 4-step blocks of 32 lanes and 8 weights a symbol), and a lane's first word is 2 l or 4 l on.
@group(0) @binding(6) var<storage, read_write> out: array<vec2<u32>>;

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
    let g = lid / 32u;
    let l = sg_id & 31u;
    let T = P.steps_per_row;
    let ltmask = (1u << l) - 1u;
    // the block's word this lane assembles: symbols of lanes 4m..4m+3, byte i of their word,
    // with m = l % 8 and i = l / 8
    let src0 = (l & 7u) * 4u;
    let byte_shift = 8u * (l >> 3u);

    // One chunk per group, its start and first planes before the table (as values, not
    // reassigned in a loop: step 66 saw the fused kernel 1.4-1.6x slower that way); the
    // table's error bit is added at the end.
    let chunk = tile_first + sub * G + g;
    let valid = chunk < tile_end;
    let cs = chunk_start(chunk, valid, l, T, false, sg_size);
    var d = block_decoder(cs.x, cs.p, l);
    let bad_table = load_blocked_table(tile, lid);

    // (T > 0 here; the host checks)
    let nrows = cs.steps / T;
    let pair = PAIR != 0u;
    let sh = select(0u, 1u, pair);
    let row_words = P.out_row_words;  // MLX words of a coded row, P.cols / 8
    for (var rr = 0u; rr < nrows; rr++) {
        // (row pairs: the two matrix rows of coded row r0 + rr, each half its words)
        let row_out = (cs.r0 + rr) * row_words;
        let row_out_b = row_out + (row_words >> sh) * sh;
        let raw_row = (cs.r0 + rr) * ((P.cols * 3u) >> 5u);
        for (var b = 0u; b < T / 4u; b++) {
            // 4 steps: lane l's 32 coded weights into 4 words (row pairs: words 2l, 2l + 1 of
            // the block's 512 columns of each row; else words 4l .. 4l + 3 of its 1024 columns)
            let sx = decode_block(&d, 4u, l, ltmask, true).x;
            var sw = vec4<u32>(0u);
            for (var c = 0u; c < 4u; c++) {
                sw[c] = subgroupShuffle(sx, src0 + c) >> byte_shift;
            }
            let n = window_words(sw, window_raw(raw_row, b, l));
            let w = window_mlx_words(n);
            if (pair) {
                let j = b * 64u + 2u * l;
                out[(row_out + j) >> 1u] = w.xy;
                out[(row_out_b + j) >> 1u] = w.zw;
            } else {
                let j = (row_out + b * 128u + 4u * l) >> 1u;
                out[j] = w.xy;
                out[j + 1u] = w.zw;
            }
        }
    }
    if (valid) {
        let err = cs.err | select(0u, ERR_TABLE, bad_table) | chunk_end_flags(d.x, d.p, cs.end, l);
        if (err != 0u) {
            atomicOr(&errors[chunk], err);
        }
    }
}
