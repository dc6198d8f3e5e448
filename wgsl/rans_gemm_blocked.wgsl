// Batched fused rANS decode + dequantize + matmul (prefill), blocked subgroup variant: the
// computation of rans_gemm.wgsl (Y = X W^T for up to 512 activation rows per dispatch, each
// chunk decoded once per dispatch and every slice of 256 weights x 4 rows multiplied from
// workgroup memory), with the decoder of rans_gemv_blocked.wgsl instead of the portable one:
// a group of 32 lanes decodes a block of BLOCK = 256 / (32 WPS) steps (one slice) with
// subgroup ballot and shuffles and no workgroup barrier per step, then dequantizes its
// symbols into the slice. On an H200 the portable decoder made rans_gemm 20-35x slower per
// weight than the blocked one (BENCHMARKS.md, Prefill, split matrices from files).
//
// Structure per workgroup (as rans_gemm.wgsl): G = 4 groups decode chunks c0 .. c0 + 3 of one
// tile (the compact slot table built once in workgroup memory); all groups walk the same
// block index, so at every block the four groups hold the same column slice of four rows.
// After a block, lane l of group g writes the dequantized weights of its BLOCK symbols
// (columns (i 32 + l) WPS .. + WPS - 1 of the slice for step i) into wbuf[column][g]; after a
// barrier the 128 invocations multiply the slice with their activation rows (4 each).
//
// Split matrices (raw low bits, `ecq::rans::SplitMatrix`) and row-pair order (override PAIR,
// two accumulator sets per invocation) as in rans_gemm.wgsl; with PAIR a block of 2 steps
// lies inside one run of 4 steps, so in one matrix row.
//
// Window splits (override WIN, `ecq::rans::SplitMatrix::encode_window`: one flag per weight,
// eight weights per symbol, three raw bits): blocks of 4 steps, whose 1024 coded weights are
// 512 columns of both rows of a pair (PAIR) or 1024 columns of one row; lane l holds a word of
// four symbols (32 coded weights) after the block's shuffles, as rans_gemv_blocked.wgsl does,
// and the block is multiplied in four passes of 256 columns of one matrix row (PAIR: two
// column halves times two rows), each written into wbuf by the 8 or 16 lanes holding it.
//
// Needs 32-wide subgroups, rows of whole steps (K = 32 WPS T) with T a multiple of BLOCK and
// probability bits <= 11; the host checks (`EntropyCodedLinear`), and the kernel flags every
// chunk on a wrong subgroup size (error bit 128). Errors as rans_gemv_blocked.wgsl: table,
// offsets, state, over-read and unconsumed words, reported after the loop; Y is then garbage
// and the host reports the error. Runs with naga's bounds checks.
// import: rans_consts
// import: rans_table_scan
// import: rans_table_byte
// import: rans_subgroup
// import: rans_block
// import: split_bits
// import: window_bits
// import: side
// import: gemm_slice
// import: rans_gemm_slice

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

struct Params {
    rows: u32,           // coded rows of this band
    cols: u32,           // K of a coded row
    bits: u32,
    wps: u32,            // weights per symbol w
    prec: u32,           // probability bits n
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,       // chunks of this band
    n_tiles: u32,        // tiles of this band
    syms_per_row: u32,   // S = K / w
    steps_per_row: u32,  // T = S / 32 (exact here)
    alphabet: u32,       // A = 2^(b*w)
    n_words: u32,        // u16 words in this band's buffer
    wg_per_tile: u32,
    total_wg: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    group_size: u32,     // MLX group size
    groups_per_row: u32, // a matrix row's groups
    m: u32,              // activation rows in this dispatch, 1..=MAX_M
    xs4: u32,            // vec4 per activation row = ceil(K / 4)
    y_stride: u32,       // floats per output row of Y (all rows of the matrix)
    row_base: u32,       // first matrix row of this band
    m_block: u32,        // activation rows per workgroup (a multiple of 128, <= 512)
    total_grid: u32,     // total_wg * ceil(m / m_block): workgroups launched
    low_base: u32,       // u32 index in `words` of a split matrix's raw low bits
    low_bits: u32,       // raw low bits per weight (0: coded whole; else 2)
    kparts: u32,         // invocations sharing an activation row (lib/gemm_slice.wgsl)
    _pad1: u32,
}

// Set by the host from the matrix: weights per symbol, coded bits per weight, probability
// bits (<= 11), steps per block (8 / WPS: one slice), row-pair order.
override WPS: u32 = 2u;
override BITS: u32 = 4u;
override PREC: u32 = 11u;
override BLOCK: u32 = 4u;
override PAIR: bool = false;
// A window split (see above) with window start WSTART; the host sets BLOCK = 4 with it.
override WIN: bool = false;
override WSTART: u32 = 0u;
// (rans_block.wgsl's plane reads: with the branch, as the fused kernel's default)
override BRANCH_FREE_PLANES: bool = false;

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

var<workgroup> wbuf: array<vec4<f32>, 256>;        // SLICE columns x G rows, 4 KiB

// Block bi of coded row `crow` of a window split (s: its four steps' symbols, one byte each),
// multiplied into acc (PAIR: row 2 crow; else row crow) and bcc (PAIR: row 2 crow + 1) in four
// passes of 256 columns: pass p writes columns 256 h .. of one matrix row into wbuf (h = p / 2
// and the pair's row p % 2 with PAIR, else h = p), from the 16 (PAIR) or 8 lanes whose words
// hold them, then multiplies. Every invocation of the workgroup calls it together (barriers).
fn window_block(
    s: u32,
    crow: u32,
    bi: u32,
    l: u32,
    g: u32,
    on: bool,
    rs: RowShare,
    m_hi: u32,
    acc: ptr<function, array<vec4<f32>, 4>>,
    bcc: ptr<function, array<vec4<f32>, 4>>,
) {
    // lane l's word: symbols 4 l .. 4 l + 3 of the block (step l / 8, lanes 4 (l % 8) + c)
    var sw = vec4<u32>(0u);
    for (var c = 0u; c < 4u; c++) {
        sw[c] = subgroupShuffle(s, (l & 7u) * 4u + c) >> (8u * (l >> 3u));
    }
    let nw = window_words(sw, window_raw(crow * ((P.cols * 3u) >> 5u), bi, l));
    let ps = u32(PAIR);
    let rowm = crow << ps;
    // the block's first column and the lane's (16 of both rows, or 32 of one)
    let kb = bi * (1024u >> ps);
    let ka = kb + l * (32u >> ps);
    let sba = side(rowm * P.groups_per_row + ka / P.group_size);
    let sbb = side((rowm + ps) * P.groups_per_row + ka / P.group_size);
    let lanes = 8u << ps;
    let nweights = 32u >> ps;
    for (var p = 0u; p < 4u; p++) {
        let h = p >> ps;
        let second = PAIR && (p & 1u) == 1u;
        if (l >= h * lanes && l < (h + 1u) * lanes) {
            let col0 = (l - h * lanes) * nweights;
            let sbv = select(sba, sbb, second);
            let t0 = select(0u, 16u, second);
            for (var j = 0u; j < nweights; j++) {
                // coded weight t of the word: nibble t / 4 of nibble word t % 4
                let t = t0 + j;
                let q = (nw[t & 3u] >> (4u * (t >> 2u))) & 0xFu;
                wbuf[wslot(col0 + j)][g] = select(0.0, sbv.x * f32(q) + sbv.y, on);
            }
        }
        workgroupBarrier();
        let k4 = (kb + h * 256u) / 4u;
        if (second) {
            add_slice(bcc, rs, m_hi, k4, SLICE / 4u);
        } else {
            add_slice(acc, rs, m_hi, k4, SLICE / 4u);
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
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
    let bad_table = build_blocked_table(tile, lid, sg_id);

    let g = lid / 32u;
    let l = sg_id & 31u;
    let ltmask = (1u << l) - 1u;
    let T = P.steps_per_row;
    let nblk = T / BLOCK;             // blocks (slices) per coded row

    // the chunks (and so the rows) of the 4 groups, known to every invocation
    let c0 = tile_first + sub * G;
    let chunkv = vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u);
    let r0v = chunkv * P.chunk_rows;
    let chunk_ok = chunkv < vec4<u32>(tile_end);

    let chunk = c0 + g;
    let valid = chunk < tile_end;
    let cs = chunk_start(chunk, valid, l, T, bad_table, sg_size);
    var d = block_decoder(cs.x, cs.p, l);

    // this invocation's activation rows and its share of each slice's columns, and their sums
    // for the workgroup's 4 rows (PAIR: bcc for the second row of each pair)
    let rs = row_share(lid, m_lo);
    var acc = array<vec4<f32>, 4>();
    var bcc = array<vec4<f32>, 4>();

    let max_blocks = P.chunk_rows * nblk;
    for (var b = 0u; b < max_blocks; b++) {
        let rr = b / nblk;                // coded row within the chunk (same in every group)
        let u0 = (b % nblk) * BLOCK;      // its first step in that row
        // (uniform in the group: the 32 lanes decode together or not at all)
        let on = b * BLOCK < cs.steps;
        var s = vec2<u32>(0u);
        if (on) {
            s = decode_block(&d, BLOCK, l, ltmask, true);
        }
        let row = cs.r0 + rr;
        if (WIN) {
            window_block(s.x, row, b % nblk, l, g, on, rs, m_hi, &acc, &bcc);
        } else {
            for (var i = 0u; i < BLOCK; i++) {
                let col0 = (i * 32u + l) * WPS;   // the lane's first column in the slice
                if (on) {
                    let sym = (select(s.x, s.y, i >= 4u) >> (8u * (i & 3u))) & 0xFFu;
                    dequantize_symbol(sym, row, u0 + i, l, WPS, BITS, col0, g);
                } else {
                    clear_symbol(WPS, col0, g);
                }
            }
            workgroupBarrier();

            // multiply the slice (uniform: b is the same everywhere); its columns start at the
            // block's first matrix step
            let mu = row_pair_step(0u, u0, PAIR).y;
            let k4 = (mu * 32u * WPS) / 4u;
            if (PAIR && ((u0 >> 2u) & 1u) == 1u) {
                add_slice(&bcc, rs, m_hi, k4, SLICE / 4u);
            } else {
                add_slice(&acc, rs, m_hi, k4, SLICE / 4u);
            }
        }
        if (b % nblk == nblk - 1u) {
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
    if (valid) {
        let err = cs.err | chunk_end_flags(d.x, d.p, cs.end, l);
        if (err != 0u) {
            atomicOr(&errors[chunk], err);
        }
    }
}
