// Fused rANS decode + dequantize + GEMV, blocked subgroup variant (issue 5): the computation of
// rans_gemv_subgroup.wgsl, restructured so that a group of 32 lanes first decodes BLOCK steps
// (symbols kept packed in two registers), then does those steps' dot products. What this buys
// over the step-at-a-time kernel, whose loop pays ~100 compiled instructions per step:
// * the decode loop carries only the rANS state, the stream position and the word planes: no
//   activations or (scale, bias) in flight, no per-step row-wrap test, no clamped look-ahead
//   indices, no `jw < K` lane mask;
// * the dot loop has no dependence on the decode chain, so its loads can be issued early and
//   its arithmetic overlaps the next block's decode latency;
// * rows are an outer loop: the row reduction and the (scale, bias) row offset are hoisted out
//   of the step loop;
// * the dot products run over whole words of four symbols, transposed with 4-8 shuffles per
//   block (lane l gets words l and 32 + l of the block, as rans_decode_blocked.wgsl writes
//   them): 4 WPS consecutive weights per (scale, bias) load and vec4 activation loads,
//   instead of one symbol per step with its own loads, all issued before the block's decode.
// It therefore needs rows that are whole steps (K = steps_per_row * 32 * WPS) and
// steps_per_row a multiple of BLOCK, probability bits <= 11 (the slot table), MLX groups of
// whole words (group size a multiple of 4 WPS) and 32-wide subgroups; the host checks all of
// it (`FusedLayout::blocked_steps`), and the kernel
// flags every chunk on a wrong subgroup size (error bit 128). Error reporting is the subgroup
// kernel's: table, offsets, state, over-read and unconsumed words, all after the loop.
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
// import: window_dot
// import: symbol_dot
// import: side

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

// (dot4I8Packed, for the window split's 8-bit-activation build XI8)
requires packed_4x8_integer_dot_product;

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
    steps_per_row: u32,  // T = S / 32 (exact here)
    alphabet: u32,       // A = 2^(b*w)
    n_words: u32,        // u16 words in the stream
    wg_per_tile: u32,
    total_wg: u32,
    out_mode: u32,
    out_row_words: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    chunk_iters: u32,    // chunks decoded one after another by each group
    group_size: u32,     // MLX group size
    groups_per_row: u32, // K / group_size
    low_base: u32,       // u32 index in `words` of the raw low bits (LOW > 0)
    low_bits: u32,       // = LOW (the workgroup kernels read it from here)
    zero: u32,           // always 0 (see symbol_dot.wgsl's `magic`)
}

// Set by the host from the matrix: weights per symbol (1, 2 or 4), bits per weight,
// probability bits (<= 11), log2 of the MLX group size (32 = not a power of two: divide), and
// the steps decoded per block (2, 4 or 8; divides steps_per_row).
override WPS: u32 = 2u;
override BITS: u32 = 4u;
override PREC: u32 = 11u;
override GSHIFT: u32 = 6u;
override BLOCK: u32 = 8u;
// Diagnostic builds for measuring where the time goes (`GpuCodedMatrix::
// blocked_diagnostic_dispatch`; their y is meaningless): 1 = decode only (the dot loop
// replaced by one XOR of the block's symbols into the sum), 2 = dot products only (symbols
// made up from the lane and block, the stream never read), 3 = the kernel with the block's
// second word multiplied by the first word's activations (no second activation loads: what a
// symbol order putting two rows' words for the same columns into one block would save), 4 =
// 2 and 3 together, 5 = the kernel with a free word supply (renormalisation shifts in a
// constant, the stream is never read: what the shared stream's ballot, shuffles and plane
// moves cost), 6 = 1 and 5 together, 7 = the kernel with a word supply per lane (see
// decode_block_lane_words), 8 = 1 and 7 together, 9 = a window split's kernel without the sums
// of the activations (the host also runs a window split with WSTART = 0 as build 10: without
// the window start's addition), 11 = a window split's loads, table build and chunk setup alone
// (neither decode nor dot products), 12 = the table build, chunk setup and row sums alone (no
// block of the row is run), 15 = the kernel without its slot-table build (wrong symbols; what
// the build costs), 13 / 17 = a window split's kernel with two / four rANS states a lane (see
// decode_block_states), 14 / 18 = 13 / 17 with the decode alone. 0 = the kernel.
override DIAG: u32 = 0u;
// true: binding `freqs` holds the tiles' decode tables as the host built them
// (src/gpu/slot_table.rs), which each workgroup copies into workgroup memory instead of
// building its table from the frequencies (BENCHMARKS.md issue 5, step 65).
override TABLE_MEM: bool = false;
// Raw low bits per weight (`ecq::rans::SplitMatrix`): 0 = none; 2 = the symbols carry the high
// BITS = 2 bits of 4-bit weights, four weights per symbol, and the low 2 bits follow the
// stream in `words` (MLX-packed, from u32 P.low_base on), so a rANS step yields four weights
// instead of two (BENCHMARKS.md issue 5, step 43). The host allows 2 only with WPS = 4 and
// BITS = 2.
override LOW: u32 = 0u;
// 1: the second word's activations, (scale, bias) and low bits are loaded after the block's
// decode instead of before it. With raw low bits a word holds 16 weights, and the early loads'
// registers took the compact-table build from 58 to 70 registers (8 -> 7 workgroups per SM):
// late loads made it 4-14% faster where the grid fills the GPU and the u32-table build, which
// stays above 80 registers either way, up to 1.15x slower (BENCHMARKS.md issue 5, step 44).
// The host sets it for the compact build with raw low bits.
override LATE: u32 = 0u;
// 1: the symbols are in row-pair order (`ecq::rans::SplitOrder::RowPairs`): a coded row (P.rows,
// P.cols describe the coded matrix) is matrix rows 2r and 2r + 1 interleaved in runs of four
// steps, so a block's steps 0-3 hold row 2r's words and steps 4-7 row 2r + 1's for the same
// columns: lane l's two words share their activations (loaded once) and go to two sums.
// P.groups_per_row is a matrix row's. The host allows it with 8-step blocks only.
override PAIR: u32 = 0u;
// With LOW = 3, a window split (`ecq::rans::SplitMatrix::encode_window`): the symbols carry one
// flag bit per weight, eight weights per symbol (WPS = 8, BITS = 1), the raw words three bits
// per weight (`ecq::rans::window_raw_words`, in planes per 32 words); weight q = ((flag << 3) |
// raw) + WSTART, mod 16. Row pairs are interleaved in runs of two symbols (16 columns). The host
// runs it with 4-step blocks only.
override WSTART: u32 = 0u;
// true (window splits only): 8-bit activations. Binding 7 holds the activations as
// quantize_x8.wgsl (ORDER 1) wrote them, once per vector, instead of f32 ones: piece p of 16
// columns as four words of 8-bit integers at xv[p] (bits), its scale d and f32 sum at
// xv[K / 16 + p / 2] (.xy for even p, .zw for odd). A lane's 16 columns of a row are then
// d * sum(q xq) + their sum times the bias, with four products per dot4I8Packed instead of an
// f32 multiply-add per weight, as qgemv4_dp4a.wgsl does for plain 4-bit weights, and with
// its error bound: at most |scale| * d / 2 * sum(q) per piece (BENCHMARKS.md issue 5, step 69).
override XI8: bool = false;

const G: u32 = 4u;             // groups of 32 lanes per workgroup
const WG: u32 = 128u;          // = 32 * G
// Groups of 32 lanes per chunk (1, 2 or 4; window splits with chunks of at most four coded
// rows, the host checks: `GpuCodedMatrix::set_chunk_subgroups`, `LinearOptions::
// chunk_subgroups`, diagnostic builds 19 and 20): with DUP > 1 the DUP groups of a chunk
// each decode all of it and multiply every DUP-th block (block b in group b % DUP); their row
// sums meet in workgroup memory. It shortens a chunk's chain of dependent work at the cost of
// DUP decodes. On an H200, two groups a chunk ran 1024x4096 in row pairs (512 chunks on 132
// SMs) 1.11x faster and every larger grid 1.4-1.5x slower; four groups were slower at every
// shape (BENCHMARKS.md issue 5, step 80).
override DUP: u32 = 1u;
var<workgroup> dup_sums: array<vec2<f32>, 16>;  // [group * 4 + coded row of the chunk]
// Planes read without a branch (see rans_block.wgsl, block_plane_at). The host sets it for the
// compact build in row-pair order only: 4.5% faster there at the lm_head on an H200, 3% slower
// in the u32-table build, mixed in row-major order (BENCHMARKS.md issue 5, step 53). Not for
// window splits, whose compact build runs 4096x4096 1.05x faster with the branch (step 86).
override BRANCH_FREE_PLANES: bool = false;
// Activation vectors multiplied per launch (1 = one; window splits on f32 activations only,
// DUP = 1, DIAG = 0: the host checks, `GpuCodedMatrix::gemv_many_dispatch`). With NVEC > 1,
// binding 7 holds NVEC vectors of the matrix's inputs one after another and binding 8 NVEC
// rows of its outputs: each block is decoded and merged into 32 nibble floats once, then
// multiplied by every vector's activations, so the decode (~5.5 of the kernel's ~12
// instructions a weight) is paid once for all of them instead of once a vector (BENCHMARKS.md
// issue 5, step 87). Each vector's arithmetic is the one-vector kernel's, in the same order.
override NVEC: u32 = 1u;
// Window splits in row pairs on f32 activations: the activations come in lane order
// (`ecq::gpu::x_lane_order`), so that a group's four 16-byte loads of a block's activations
// read four runs of 512 contiguous bytes instead of each touching all 16 of the block's
// 128-byte lines (BENCHMARKS.md issue 5, step 88).
override XLANES: bool = false;
const MAX_NVEC: u32 = 16u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, A per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
// activations, K (a multiple of 32 here), read four at a time
@group(0) @binding(7) var<storage, read> xv: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> y: array<f32>;     // R outputs


// Diagnostic builds 7 and 8 (BENCHMARKS.md issue 5, step 59): the block's decode with the word
// supply a stream laid out by lane would allow. Lane l reads words of its own from `words`
// (two per u32; the next u32 loaded when the current one is started, so its latency has about
// four steps to pass), with no ballot, prefix count, shuffles or plane moves. The words are
// not the lane's (the format interleaves the 32 lanes' words in one stream), so states and
// symbols are wrong; what it measures is the cost of such a supply. The decoder's fields hold
// the lane's supply instead of the planes: pa the current u32, pb the next, pc the index of the
// one after, pd 1 when pa's low word is used up.
fn lane_words_decoder(x: u32, p: u32, end: u32, l: u32) -> BlockDecoder {
    let last = arrayLength(&words) - 1u;
    // lane l's share of the chunk's words, as a layout by lane would give it
    let first = (p >> 1u) + l * (((end - p) >> 6u) + 1u);
    return BlockDecoder(x, p, 0u, words[min(first, last)], words[min(first + 1u, last)], first + 2u, 0u);
}

fn decode_block_lane_words(d: ptr<function, BlockDecoder>, steps: u32) -> vec2<u32> {
    let last = arrayLength(&words) - 1u;
    var s = vec2<u32>(0u);
    for (var i = 0u; i < steps; i++) {
        let dec = decode_slot((*d).x, PREC);
        let xd = dec.x;
        let need = xd < L;
        let w = select((*d).pa & 0xFFFFu, (*d).pa >> 16u, (*d).pd == 1u);
        (*d).x = select(xd, (xd << 16u) | w, need);
        if (need && (*d).pd == 1u) {
            (*d).pa = (*d).pb;
            (*d).pb = words[min((*d).pc, last)];
            (*d).pc += 1u;
        }
        (*d).pd = select((*d).pd, (*d).pd ^ 1u, need);
        s |= block_symbol(dec.y, i);
    }
    return s;
}

// Diagnostic builds 13, 14, 17 and 18 (BENCHMARKS.md issue 5, step 73): the block's decode
// with n = 2 or 4 rANS states a lane, step i taking state i % n, as a format with 32 n states
// a chunk whose stream holds the words of the n state sets' steps in turn would have it. The
// stream position and the planes are shared (each step's renormalisation reads after the
// previous step's), but each state's chain of table lookups is n times shorter per block:
// the instruction-level parallelism of "several independent lanes per thread" at the same
// instruction count. The extra states start as copies of the first and the stream is laid out
// for one, so the symbols are wrong; what it measures is what the independent chains buy.
fn decode_block_states(
    d: ptr<function, BlockDecoder>,
    xs: ptr<function, vec4<u32>>,
    n: u32,
    steps: u32,
    l: u32,
    ltmask: u32,
) -> vec2<u32> {
    var s = vec2<u32>(0u);
    // (the position relative to the planes, as decode_block carries it)
    var rel = (*d).p - (*d).base;
    for (var i = 0u; i < steps; i++) {
        let j = i % n;
        let dec = decode_slot(select((*xs)[j & 3u], (*d).x, j == 0u), PREC);
        let xd = dec.x;
        let need = xd < L;
        let rw = renorm_word(need, rel, (*d).pa, (*d).pb, ltmask, l);
        let xn = renormalised(xd, rw.x, need);
        if (j == 0u) {
            (*d).x = xn;
        } else {
            (*xs)[j & 3u] = xn;
        }
        rel += rw.y;
        if ((i & 1u) == 1u) {
            rel = block_move_planes(d, rel, l);
        }
        s |= block_symbol(dec.y, i);
    }
    (*d).p = (*d).base + rel;
    return s;
}


// window_half with the nibbles already made floats (nf[c] = nibbles_in_place(n[c], magic)),
// for NVEC > 1: the same products and sums in the same order.
fn window_half_floats(nf: array<vec4<f32>, 4>, xw: array<vec4<f32>, 4>) -> vec4<f32> {
    var qx = nf[0] * vec4<f32>(xw[0].x, xw[1].x, xw[2].x, xw[3].x);
    qx += nf[1] * vec4<f32>(xw[0].y, xw[1].y, xw[2].y, xw[3].y);
    qx += nf[2] * vec4<f32>(xw[0].z, xw[1].z, xw[2].z, xw[3].z);
    qx += nf[3] * vec4<f32>(xw[0].w, xw[1].w, xw[2].w, xw[3].w);
    return qx;
}

// What a window-split block of NVEC > 1 vectors shares between its vectors: the lane's first
// column, the activations' stride (a vector's inputs), the order, vector 0's activations
// (loaded before the decode), the block's nibble floats of both halves and (scale, bias) of
// both rows.
struct WindowVectors {
    ka: u32,
    kin: u32,
    pair: bool,
    xlo0: array<vec4<f32>, 4>,
    xhi0: array<vec4<f32>, 4>,
    fa: array<vec4<f32>, 4>,
    fb: array<vec4<f32>, 4>,
    sba: vec2<f32>,
    sbb: vec2<f32>,
}

// Vector v's terms of the block (x: row 2r's in row pairs, else the row's; y: row 2r + 1's),
// the one-vector kernel's arithmetic in its order.
fn window_vector(w: ptr<function, WindowVectors>, v: u32) -> vec2<f32> {
    var xlo = (*w).xlo0;
    var xhi = (*w).xhi0;
    if (v > 0u) {
        xlo = x16_of(v, (*w).kin, (*w).ka);
        xhi = xlo;
        if (!(*w).pair) {
            xhi = x16(v * (*w).kin + (*w).ka + 16u);
        }
    }
    let qa = window_half_floats((*w).fa, xlo);
    let qb = window_half_floats((*w).fb, xhi);
    let xs = dot((xlo[0] + xlo[1]) + (xlo[2] + xlo[3]), vec4<f32>(1.0));
    let sba = (*w).sba;
    let sbb = (*w).sbb;
    if ((*w).pair) {
        return vec2<f32>(
            sba.x * dot(qa, NIBBLE_PLACE) + sba.y * xs,
            sbb.x * dot(qb, NIBBLE_PLACE) + sbb.y * xs,
        );
    }
    let xs_hi = dot((xhi[0] + xhi[1]) + (xhi[2] + xhi[3]), vec4<f32>(1.0));
    return vec2<f32>(sba.x * dot(qa + qb, NIBBLE_PLACE) + sba.y * (xs + xs_hi), 0.0);
}

// Vector v's row sums: y[v * rows_out + row] (and + 1 in row pairs) from lane 0.
fn store_vector(v: u32, acc: f32, acc_b: f32, row: u32, rows_out: u32, pair: bool, l: u32) {
    let t = subgroupAdd(acc);
    var tb = 0.0;
    if (pair) {
        tb = subgroupAdd(acc_b);
    }
    if (l == 0u) {
        y[v * rows_out + row] = t;
        if (pair) {
            y[v * rows_out + row + 1u] = tb;
        }
    }
}

// The nibble floats of half a window-split word (n, or n >> 16 for the second half).
fn window_floats(n: vec4<u32>, magic: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        nibbles_in_place(n.x, magic),
        nibbles_in_place(n.y, magic),
        nibbles_in_place(n.z, magic),
        nibbles_in_place(n.w, magic),
    );
}

// sum(q xq) over the 16 columns whose weights are nibbles 0..3 of the four words n (word c:
// columns c, 4 + c, 8 + c, 12 + c, as window_words gives them; higher bits ignored), with the
// columns' 8-bit activations x8 (word c: bytes for columns c, 8 + c, 4 + c, 12 + c,
// quantize_x8.wgsl's ORDER 1): each word's nibbles 0 and 2 stay in place as bytes 0 and 1,
// nibbles 1 and 3 move to bytes 2 and 3, one shift and one mask-and-merge per four weights.
// Exact in i32 (|sum| <= 16 * 15 * 127).
fn window_x8_dot(n: vec4<u32>, x8: vec4<u32>) -> i32 {
    let b = (n & vec4<u32>(0x0F0Fu)) | ((n << vec4<u32>(12u)) & vec4<u32>(0x0F0F0000u));
    return (dot4I8Packed(b.x, x8.x) + dot4I8Packed(b.y, x8.y))
        + (dot4I8Packed(b.z, x8.z) + dot4I8Packed(b.w, x8.w));
}

// A window-split lane's activations for the columns from ka on: f32 (16, and the next 16
// in row-major order) or, with XI8, their 8-bit form and (d, sum) (see XI8). Loaded in one
// call before the block's decode: the same loads written inline, into zero-initialised
// variables, compiled to a compact-table f32 build 1.03-1.06x slower on an H200
// (BENCHMARKS.md issue 5, step 71; the driver's code was not read).
struct WindowX {
    xlo: array<vec4<f32>, 4>,
    xhi: array<vec4<f32>, 4>,
    q8: vec4<u32>,
    q8_hi: vec4<u32>,
    ds: vec2<f32>,
    ds_hi: vec2<f32>,
}

fn window_x(ka: u32, pair: bool, x8_meta: u32, kin: u32) -> WindowX {
    var w: WindowX;
    if (XI8) {
        let piece = ka >> 4u;
        w.q8 = bitcast<vec4<u32>>(xv[piece]);
        let dsum = xv[x8_meta + (piece >> 1u)];
        if (pair) {
            w.ds = select(dsum.xy, dsum.zw, (piece & 1u) == 1u);
        } else {
            // (piece is even: 32 columns a lane)
            w.q8_hi = bitcast<vec4<u32>>(xv[piece + 1u]);
            w.ds = dsum.xy;
            w.ds_hi = dsum.zw;
        }
    } else {
        w.xlo = x16_of(0u, kin, ka);
        w.xhi = w.xlo;
        if (!pair) {
            w.xhi = x16(ka + 16u);
        }
    }
    return w;
}


// Vector v's 16 activations from column k on (k % 16 == 0; a vector has kin): in column
// order, or in lane order (XLANES): the 16-column pieces go in runs of 32, a run's vec4 c of
// every piece before its vec4 c + 1, so piece u's vec4 c sits at 128 (u / 32) + 32 c + u % 32
// of its vector. (Runs are whole: window splits in row pairs have whole 4-step blocks a coded
// row, 1024 coded weights, so kin % 512 == 0.) In range for k < kin.
fn x16_of(v: u32, kin: u32, k: u32) -> array<vec4<f32>, 4> {
    if (XLANES) {
        let u = k >> 4u;
        let i = ((v * kin) >> 2u) + ((u & ~31u) << 2u) + (u & 31u);
        return array<vec4<f32>, 4>(xv[i], xv[i + 32u], xv[i + 64u], xv[i + 96u]);
    }
    return x16(v * kin + k);
}

// The activations of the word at weight k (4 WPS of them).
fn word_x(k: u32) -> array<vec4<f32>, 4> {
    var xw = array<vec4<f32>, 4>();
    for (var v = 0u; v < WPS; v++) {
        xw[v & 3u] = xv[(k >> 2u) + v];
    }
    return xw;
}

// The low bits of the word at weight k of a row whose low bits start at word `row_low`:
// 16 weights, LOW bits each (0 without low bits; LOW is 0 or 2, the host allows no other).
fn word_low(row_low: u32, k: u32) -> u32 {
    if (LOW == 0u) {
        return 0u;
    }
    return raw_low_bits(row_low, k, LOW);
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
    let g = lid / 32u;
    let l = sg_id & 31u;
    let T = P.steps_per_row;
    // One chunk per group of 32 lanes (the host sets P.chunk_iters = 1; this kernel does not
    // read it). Its start and first stream planes are loaded before the table, so that their
    // chain of loads (the offsets, then the planes at them) overlaps the table's
    // (BENCHMARKS.md issue 5, step 67); the table's error bit is added at the end.
    let chunk = tile_first + sub * (G / DUP) + g / DUP;
    // (broadcast from the first lane so that the compiler sees branches on it uniform in the
    // subgroup: without it, subgroup operations under them compiled with WARPSYNC)
    let part = subgroupBroadcastFirst(g % DUP);
    let valid = chunk < tile_end;
    let cs = chunk_start(chunk, valid, l, T, false, sg_size);
    let lane_words = DIAG == 7u || DIAG == 8u;
    var d: BlockDecoder;
    if (lane_words) {
        d = lane_words_decoder(cs.x, cs.p, cs.end, l);
    } else {
        d = block_decoder(cs.x, cs.p, l);
    }
    // (diagnostic build 15: no table at all, neither built nor loaded, the table left as
    // zero-initialised: what the table costs)
    var bad_table = false;
    if (DIAG != 15u) {
        if (TABLE_MEM) {
            bad_table = load_blocked_table(tile, lid);
        } else {
            bad_table = build_blocked_table(tile, lid, sg_id);
        }
    }

    // (diagnostic build 12: no blocks at all, the table build, chunk setup and row sums alone)
    let nblk = select(T / BLOCK, 0u, DIAG == 12u);
    let kstep = 32u * WPS;
    let pair = PAIR != 0u;
    let ps = select(0u, 1u, pair);  // 1 with row pairs: a coded row is two matrix rows
    // a block covers kblock weights of a coded row: of one matrix row, or of two (row pairs)
    let kblock = (BLOCK * kstep) >> ps;
    let kword = 4u * WPS;  // weights per word of four symbols
    // the second word's columns: 32 words on, or the first word's (row pairs)
    let kb_off = select(32u * kword, 0u, pair);
    // a matrix row's raw low-bit words
    let low_row_words = ((P.cols >> ps) * LOW) >> 5u;
    let src0 = (l & 7u) * 4u;
    let byte_shift = 8u * (l >> 3u);
    let gpr = P.groups_per_row;
    let gsz = P.group_size;
    let ltmask = (1u << l) - 1u;
    let magic = 0x4B000000u | P.zero;
    // (XI8: where the pieces' (d, sum) pairs start in xv, K / 16)
    let x8_meta = (P.cols >> ps) >> 4u;
    // (NVEC > 1: a vector's activations, the matrix's inputs)
    let kin = P.cols >> ps;
    // (diagnostic builds 13, 14, 17, 18: the extra states, and how many states a lane has)
    var xs = vec4<u32>(cs.x);
    let n_states = select(select(1u, 2u, DIAG == 13u || DIAG == 14u), 4u, DIAG == 17u || DIAG == 18u);

    {
        // (T > 0 here; the host checks)
        let nrows = cs.steps / T;
        for (var rr = 0u; rr < nrows; rr++) {
            // the matrix rows of the second word: the first word's, or the next (row pairs)
            let row = (cs.r0 + rr) << ps;
            let row_b = row + ps;
            let sb_row = row * gpr;
            let sb_row_b = row_b * gpr;
            let row_low = row * low_row_words;
            let row_low_b = row_b * low_row_words;
            var acc = 0.0;
            var acc_b = 0.0;
            // (NVEC > 1: vector v's sums)
            var accv = array<f32, MAX_NVEC>();
            var accv_b = array<f32, MAX_NVEC>();
            for (var b = 0u; b < nblk; b++) {
                if (LOW == 3u && NVEC > 1u) {
                    // a window split's block for NVEC vectors: the kernel's block below,
                    // with the merged nibbles made floats once and multiplied per vector
                    // (vector 0's activations loaded before the decode, as below; the
                    // others after it, to keep their registers out of the decode's)
                    let ka = b * kblock + l * (kword >> ps);
                    let sba = side(sb_row + group_of(ka, gsz));
                    var sbb = vec2<f32>(0.0);
                    if (pair) {
                        sbb = side(sb_row_b + group_of(ka, gsz));
                    }
                    let raw = window_raw(row_low, b, l);
                    let wx0 = window_x(ka, pair, x8_meta, kin);
                    let s = decode_block(&d, BLOCK, l, ltmask, true).x;
                    var sw = vec4<u32>(0u);
                    for (var c = 0u; c < 4u; c++) {
                        sw[c] = subgroupShuffle(s, src0 + c) >> byte_shift;
                    }
                    let n = window_words(sw, raw);
                    let fa = window_floats(n, magic);
                    let fb = window_floats(n >> vec4<u32>(16u), magic);
                    // (written out per vector, constant indices: the accumulators stay in
                    // registers whether or not the driver unrolls a loop over them)
                    var wv = WindowVectors(ka, kin, pair, wx0.xlo, wx0.xhi, fa, fb, sba, sbb);
                    if (NVEC > 0u) {
                        let t = window_vector(&wv, 0u);
                        accv[0] += t.x;
                        accv_b[0] += t.y;
                    }
                    if (NVEC > 1u) {
                        let t = window_vector(&wv, 1u);
                        accv[1] += t.x;
                        accv_b[1] += t.y;
                    }
                    if (NVEC > 2u) {
                        let t = window_vector(&wv, 2u);
                        accv[2] += t.x;
                        accv_b[2] += t.y;
                    }
                    if (NVEC > 3u) {
                        let t = window_vector(&wv, 3u);
                        accv[3] += t.x;
                        accv_b[3] += t.y;
                    }
                    if (NVEC > 4u) {
                        let t = window_vector(&wv, 4u);
                        accv[4] += t.x;
                        accv_b[4] += t.y;
                    }
                    if (NVEC > 5u) {
                        let t = window_vector(&wv, 5u);
                        accv[5] += t.x;
                        accv_b[5] += t.y;
                    }
                    if (NVEC > 6u) {
                        let t = window_vector(&wv, 6u);
                        accv[6] += t.x;
                        accv_b[6] += t.y;
                    }
                    if (NVEC > 7u) {
                        let t = window_vector(&wv, 7u);
                        accv[7] += t.x;
                        accv_b[7] += t.y;
                    }
                    if (NVEC > 8u) {
                        let t = window_vector(&wv, 8u);
                        accv[8] += t.x;
                        accv_b[8] += t.y;
                    }
                    if (NVEC > 9u) {
                        let t = window_vector(&wv, 9u);
                        accv[9] += t.x;
                        accv_b[9] += t.y;
                    }
                    if (NVEC > 10u) {
                        let t = window_vector(&wv, 10u);
                        accv[10] += t.x;
                        accv_b[10] += t.y;
                    }
                    if (NVEC > 11u) {
                        let t = window_vector(&wv, 11u);
                        accv[11] += t.x;
                        accv_b[11] += t.y;
                    }
                    if (NVEC > 12u) {
                        let t = window_vector(&wv, 12u);
                        accv[12] += t.x;
                        accv_b[12] += t.y;
                    }
                    if (NVEC > 13u) {
                        let t = window_vector(&wv, 13u);
                        accv[13] += t.x;
                        accv_b[13] += t.y;
                    }
                    if (NVEC > 14u) {
                        let t = window_vector(&wv, 14u);
                        accv[14] += t.x;
                        accv_b[14] += t.y;
                    }
                    if (NVEC > 15u) {
                        let t = window_vector(&wv, 15u);
                        accv[15] += t.x;
                        accv_b[15] += t.y;
                    }
                    continue;
                }
                if (LOW == 3u) {
                    // a window split, 4-step blocks: lane l's word (four symbols, 32 coded
                    // weights) is coded weights 32 l .. 32 l + 31 of the block's 1024: with row
                    // pairs columns 16 l .. 16 l + 15 of both rows (coded weights 0..15 row
                    // 2r's, 16..31 row 2r + 1's, so both take the same activations), else
                    // columns 32 l .. 32 l + 31 of one row, in one MLX group either way. The
                    // loads first, as below.
                    // (DUP > 1: the block's loads and dot products only in its group)
                    let mine = DUP == 1u || b % DUP == part;
                    let ka = b * kblock + l * (kword >> ps);
                    var sba = vec2<f32>(0.0);
                    var sbb = vec2<f32>(0.0);
                    var raw = vec3<u32>(0u);
                    var wx: WindowX;
                    if (mine) {
                        sba = side(sb_row + group_of(ka, gsz));
                        if (pair) {
                            sbb = side(sb_row_b + group_of(ka, gsz));
                        }
                        raw = window_raw(row_low, b, l);
                        wx = window_x(ka, pair, x8_meta, kin);
                    }
                    // (diagnostic builds 1 and 2 as below; the others are the kernel here)
                    var s = (l * 0x01030507u) ^ b;
                    if (n_states > 1u) {
                        s = decode_block_states(&d, &xs, n_states, BLOCK, l, ltmask).x;
                    } else if (DIAG != 2u && DIAG != 11u) {
                        s = decode_block(&d, BLOCK, l, ltmask, true).x;
                    }
                    if (DIAG == 1u || DIAG == 14u || DIAG == 18u) {
                        acc += bitcast<f32>(s & 0x3FFFFFFFu);
                        continue;
                    }
                    if (!mine) {
                        continue;
                    }
                    let xlo = wx.xlo;
                    let xhi = wx.xhi;
                    let q8 = wx.q8;
                    let q8_hi = wx.q8_hi;
                    let ds = wx.ds;
                    let ds_hi = wx.ds_hi;
                    if (DIAG == 11u) {
                        // (diagnostic build 11: the loads, the table build and the chunk setup
                        // alone, every load kept live by an XOR or the activation sum)
                        let raw_x = raw.x ^ raw.y ^ raw.z ^ bitcast<u32>(sba.x + sbb.y);
                        let xs_all = dot((xlo[0] + xlo[1]) + (xhi[2] + xhi[3]), vec4<f32>(1.0));
                        acc += xs_all + bitcast<f32>((s ^ raw_x) & 0x3FFFFFFFu);
                        continue;
                    }
                    var sw = vec4<u32>(0u);
                    for (var c = 0u; c < 4u; c++) {
                        sw[c] = subgroupShuffle(s, src0 + c) >> byte_shift;
                    }
                    let n = window_words(sw, raw);
                    if (XI8) {
                        let ia = f32(window_x8_dot(n, q8));
                        if (pair) {
                            let ib = f32(window_x8_dot(n >> vec4<u32>(16u), q8));
                            acc += (sba.x * ds.x) * ia + sba.y * ds.y;
                            acc_b += (sbb.x * ds.x) * ib + sbb.y * ds.y;
                        } else {
                            let ib = f32(window_x8_dot(n >> vec4<u32>(16u), q8_hi));
                            acc += ((sba.x * ds.x) * ia + sba.y * ds.y)
                                + ((sba.x * ds_hi.x) * ib + sba.y * ds_hi.y);
                        }
                        continue;
                    }
                    let qa = window_half(n, xlo, magic);
                    let qb = window_half(n >> vec4<u32>(16u), xhi, magic);
                    // (diagnostic build 9: without the sums of the activations, what sums
                    // computed once per token would save)
                    var xs = dot((xlo[0] + xlo[1]) + (xlo[2] + xlo[3]), vec4<f32>(1.0));
                    if (DIAG == 9u) {
                        xs = 0.0;
                    }
                    if (pair) {
                        acc += sba.x * dot(qa, NIBBLE_PLACE) + sba.y * xs;
                        acc_b += sbb.x * dot(qb, NIBBLE_PLACE) + sbb.y * xs;
                    } else {
                        let xs_hi = dot((xhi[0] + xhi[1]) + (xhi[2] + xhi[3]), vec4<f32>(1.0));
                        acc += sba.x * dot(qa + qb, NIBBLE_PLACE) + sba.y * (xs + xs_hi);
                    }
                    continue;
                }
                // the block's activations and (scale, bias) first: they do not depend on the
                // decode, so their latency overlaps it (BENCHMARKS.md issue 5, step 29)
                let ka = b * kblock + l * kword;
                let kb = ka + kb_off;
                var sba = vec2<f32>(0.0);
                var sbb = vec2<f32>(0.0);
                var lwa = 0u;
                var lwb = 0u;
                var xa = array<vec4<f32>, 4>();
                var xb = array<vec4<f32>, 4>();
                if (BLOCK >= 4u || l < 16u) {
                    sba = side(sb_row + group_of(ka, gsz));
                    xa = word_x(ka);
                    lwa = word_low(row_low, ka);
                }
                let share_x = DIAG == 3u || DIAG == 4u || pair;
                let made_up = DIAG == 2u || DIAG == 4u;
                if (BLOCK == 8u && LATE == 0u) {
                    sbb = side(sb_row_b + group_of(kb, gsz));
                    if (!share_x) {
                        xb = word_x(kb);
                    }
                    lwb = word_low(row_low_b, kb);
                }
                // decode BLOCK steps; symbol i of the block in byte i % 4 of s.x / s.y
                var s = vec2<u32>(0u);
                if (lane_words) {
                    s = decode_block_lane_words(&d, BLOCK);
                } else if (!made_up) {
                    s = decode_block(&d, BLOCK, l, ltmask, DIAG != 5u && DIAG != 6u);
                }
                if (DIAG == 1u || DIAG == 6u || DIAG == 8u) {
                    acc += bitcast<f32>((s.x ^ s.y) & 0x3FFFFFFFu);
                    continue;
                }
                if (made_up) {
                    s.x = (l * 0x01030507u) ^ b;
                    s.y = s.x ^ 0x5A5A5A5Au;
                }
                // their dot products, over whole words of the block (as
                // rans_decode_blocked.wgsl writes them): lane l takes word l (symbols
                // 4l..4l+3 of the block: step l / 8, lanes 4 (l % 8) + c) from s.x and, for
                // 8-step blocks, word 32 + l from s.y, so it multiplies 4 WPS consecutive
                // weights with one (scale, bias) and vector activation loads. (2-step blocks
                // have 16 words: lanes 16-31 sit out.)
                var sa = vec4<u32>(0u);
                var sy = vec4<u32>(0u);
                for (var c = 0u; c < 4u; c++) {
                    sa[c] = subgroupShuffle(s.x, src0 + c) >> byte_shift;
                    if (BLOCK == 8u) {
                        sy[c] = subgroupShuffle(s.y, src0 + c) >> byte_shift;
                    }
                }
                if (BLOCK >= 4u || l < 16u) {
                    acc += symbol_word_dot(sa, lwa, xa, sba, magic);
                }
                if (BLOCK == 8u) {
                    if (LATE != 0u) {
                        sbb = side(sb_row_b + group_of(kb, gsz));
                        if (!share_x) {
                            xb = word_x(kb);
                        }
                        lwb = word_low(row_low_b, kb);
                    }
                    if (share_x) {
                        xb = xa;
                    }
                    if (pair) {
                        acc_b += symbol_word_dot(sy, lwb, xb, sbb, magic);
                    } else {
                        acc += symbol_word_dot(sy, lwb, xb, sbb, magic);
                    }
                }
            }
            if (NVEC > 1u) {
                // vector v's outputs are row v of the NVEC x (matrix rows) output
                let rows_out = P.rows << ps;
                if (NVEC > 0u) {
                    store_vector(0u, accv[0], accv_b[0], row, rows_out, pair, l);
                }
                if (NVEC > 1u) {
                    store_vector(1u, accv[1], accv_b[1], row, rows_out, pair, l);
                }
                if (NVEC > 2u) {
                    store_vector(2u, accv[2], accv_b[2], row, rows_out, pair, l);
                }
                if (NVEC > 3u) {
                    store_vector(3u, accv[3], accv_b[3], row, rows_out, pair, l);
                }
                if (NVEC > 4u) {
                    store_vector(4u, accv[4], accv_b[4], row, rows_out, pair, l);
                }
                if (NVEC > 5u) {
                    store_vector(5u, accv[5], accv_b[5], row, rows_out, pair, l);
                }
                if (NVEC > 6u) {
                    store_vector(6u, accv[6], accv_b[6], row, rows_out, pair, l);
                }
                if (NVEC > 7u) {
                    store_vector(7u, accv[7], accv_b[7], row, rows_out, pair, l);
                }
                if (NVEC > 8u) {
                    store_vector(8u, accv[8], accv_b[8], row, rows_out, pair, l);
                }
                if (NVEC > 9u) {
                    store_vector(9u, accv[9], accv_b[9], row, rows_out, pair, l);
                }
                if (NVEC > 10u) {
                    store_vector(10u, accv[10], accv_b[10], row, rows_out, pair, l);
                }
                if (NVEC > 11u) {
                    store_vector(11u, accv[11], accv_b[11], row, rows_out, pair, l);
                }
                if (NVEC > 12u) {
                    store_vector(12u, accv[12], accv_b[12], row, rows_out, pair, l);
                }
                if (NVEC > 13u) {
                    store_vector(13u, accv[13], accv_b[13], row, rows_out, pair, l);
                }
                if (NVEC > 14u) {
                    store_vector(14u, accv[14], accv_b[14], row, rows_out, pair, l);
                }
                if (NVEC > 15u) {
                    store_vector(15u, accv[15], accv_b[15], row, rows_out, pair, l);
                }
                continue;
            }
            let total = subgroupAdd(acc);
            var total_b = 0.0;
            if (pair) {
                total_b = subgroupAdd(acc_b);
            }
            if (DUP > 1u) {
                if (l == 0u) {
                    dup_sums[(g << 2u) | (rr & 3u)] = vec2<f32>(total, total_b);
                }
            } else if (l == 0u) {
                y[row] = total;
                if (pair) {
                    y[row_b] = total_b;
                }
            }
        }
        if (DUP > 1u) {
            // the chunk's first group sums its groups' row sums in group order (lane l: coded
            // row l of the chunk, nrows <= 4)
            workgroupBarrier();
            if (part == 0u && l < nrows) {
                var t = vec2<f32>(0.0);
                for (var j = 0u; j < DUP; j++) {
                    t += dup_sums[((g + j) << 2u) | (l & 3u)];
                }
                let row = (cs.r0 + l) << ps;
                y[row] = t.x;
                if (pair) {
                    y[row + 1u] = t.y;
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
}
