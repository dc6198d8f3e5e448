// Plain MLX 4-bit GEMV, y = W x (f32 activations, exact f32 math): candidate streaming kernels
// for issue 5 (`QGemvVariant::Stream`, never picked automatically; `qgemv4.wgsl` stays the
// default until they are timed on the H200).
//
// What differs from qgemv4.wgsl and why:
//
// * 16-byte loads: each lane reads one vec4<u32> (32 weights) per row per piece, the next lane
//   the next 16 bytes, so a 32-lane group reads 512 contiguous bytes of a row per load
//   instruction (qgemv4: 8-byte loads, 256 bytes). Half the load instructions per byte, and a
//   piece never straddles a group of scales when GS % 32 == 0 (the host checks GS % 32 and
//   K % 32; other shapes fall back to qgemv4).
// * No pre-scaling of the activations: the nibble at bits 4i..4i+3 of a word (i = 0..3; the
//   high four after `w >> 16`) is OR-ed into the float 2^(23-4i), whose mantissa unit is then
//   16^-i, so the float is 2^(23-4i) + q exactly and one FADD of the per-position constant
//   leaves q itself (qgemv4 leaves q * 16^i and multiplies activations by 16^-i, 32 FMUL per 32
//   weights per row set; both are exact and give the same rounded products). Per weight: one
//   LOP3 (and + or), one FADD, one FFMA; per 32-weight piece and row one FFMA for the scale and
//   one for the bias; per piece the activation sum (bias term) is shared by the group's rows.
// * Three shapes of the same loop, chosen by the entry point (rows per group of 32 lanes, with
//   about 64 bytes of weight loads in flight per lane before any arithmetic):
//     main_r1: 1 row per group,  4 pieces per iteration (most groups: 4096 rows = 4096 groups
//              of 32 lanes, ~31 per SM on a 132-SM GPU, one wave; activations are re-read from
//              L1 once per row, 8 bytes of x per byte of weights);
//     main_r2: 2 rows per group, 2 pieces per iteration (x read once per 2 rows);
//     main_r4: 4 rows per group, 1 piece per iteration (x once per 4 rows, as qgemv4).
//   Fewer rows per group means more independent groups (memory-level parallelism) but more
//   activation traffic and ALU per weight; which wins is the measurement's call.
// * KSPLIT (1, 2, 4 or 8) groups share a row set and take interleaved pieces of K, as in
//   qgemv4, for matrices with few rows; 256 invocations = 8 groups per workgroup.
// * Lane and group sums are reduced once at the end in workgroup memory (5 KiB), no
//   subgroup operations: WebGPU default limits, no features.
//
// Activations are read through L1 rather than staged in workgroup memory: K = 14336 f32 is
// 56 KiB, over WebGPU's 16 KiB default (the staged_r* entry points below stage chunks).
//
// Measured (NVIDIA H200, Vulkan, GPU timestamps, MLX g64, weights streamed from HBM; bench_gpu
// --plain-variants, same process as qgemv4), 2026-11-26: main_r1/r2/r4 are slower than qgemv4
// everywhere, in the order r1 < r2 < r4 (4096x14336: qgemv4 22.2 us, r4 28.8, r2 39.5, r1
// 67.3; lm_head 128256x4096: 139.5, 184.4, 302.4, 536.9). Explanation (see the staged
// section): each lane's 32 weights need 128 contiguous bytes of x, so every vec4 activation
// load of a group touches 32 cache lines; time tracked that count. Kept as the evidence and
// the shared helpers; staged_r* fixes the activation reads.
// import: side

struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,     // vec4<u32> of packed weights per row = K / 32
    groups_per_row: u32,  // K / GS
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,
    _pad0: u32,
    _pad1: u32,
}

override GS: u32 = 64u;      // multiple of 32
override KSPLIT: u32 = 1u;   // groups of 32 lanes per row set: 1, 2, 4 or 8

// bits of 2^23, 2^19, 2^15, 2^11: the mantissa unit of each is 16^-i for the nibble at 4i
const EXP = vec4<u32>(0x4B000000u, 0x49000000u, 0x47000000u, 0x45000000u);
const EXPF = vec4<f32>(8388608.0, 524288.0, 32768.0, 2048.0);
const ML = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 1024>;   // 8 groups x up to 4 rows x 32 lanes
var<workgroup> red2: array<f32, 256>;   // 8 groups x up to 4 rows x 8 partial sums

// The low four nibbles of `w` as exact floats q (0..15).
fn q4(w: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>((vec4<u32>(w) & ML) | EXP) - EXPF;
}

// The 32 activations of one piece and their sum.
struct Piece {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
    x4: vec4<f32>,
    x5: vec4<f32>,
    x6: vec4<f32>,
    x7: vec4<f32>,
    s: f32,
}

fn load_piece(v: u32) -> Piece {
    let b = v * 8u;
    var p: Piece;
    p.x0 = X[b];
    p.x1 = X[b + 1u];
    p.x2 = X[b + 2u];
    p.x3 = X[b + 3u];
    p.x4 = X[b + 4u];
    p.x5 = X[b + 5u];
    p.x6 = X[b + 6u];
    p.x7 = X[b + 7u];
    p.s = dot(((p.x0 + p.x1) + (p.x2 + p.x3)) + ((p.x4 + p.x5) + (p.x6 + p.x7)), vec4<f32>(1.0));
    return p;
}

// sum over the 32 weights of `w` (word j: weights 8j..8j+7, low nibble first) of q * x
fn dot32(w: vec4<u32>, p: Piece) -> f32 {
    return ((dot(q4(w.x), p.x0) + dot(q4(w.x >> 16u), p.x1))
        + (dot(q4(w.y), p.x2) + dot(q4(w.y >> 16u), p.x3)))
        + ((dot(q4(w.z), p.x4) + dot(q4(w.z >> 16u), p.x5))
        + (dot(q4(w.w), p.x6) + dot(q4(w.w >> 16u), p.x7)));
}

// scale * sum(q x) + bias * sum(x) of one piece of one row
fn term(w: vec4<u32>, p: Piece, s: vec2<f32>) -> f32 {
    return s.x * dot32(w, p) + s.y * p.s;
}

// Which rows and part of K a group owns.
struct Slot {
    row0: u32,   // first row of the group's row set (may be past the last row)
    part: u32,   // which of the KSPLIT interleaved parts of K
    g: u32,      // group within the workgroup, 0..8
    l: u32,      // lane, 0..32
}

fn slot(wg: u32, lid: u32, rows_per_group: u32) -> Slot {
    let g = lid / 32u;
    return Slot((wg * (8u / KSPLIT) + g / KSPLIT) * rows_per_group, g % KSPLIT, g, lid % 32u);
}

// Sums the lanes' partial sums `acc` (one per row of the group, R of them) over the 32 lanes
// and the KSPLIT groups of a row set, and writes the workgroup's 8 * R / KSPLIT rows.
fn reduce_store(wg: u32, lid: u32, s: Slot, acc: vec4<f32>, R: u32) {
    for (var r = 0u; r < R; r++) {
        red[(s.g * R + r) * 32u + s.l] = acc[r];
    }
    workgroupBarrier();
    // (group, row, eighth of the lanes) -> sum of 4 lanes
    if (lid < 64u * R) {
        let base = lid * 4u;
        red2[lid] = (red[base] + red[base + 1u]) + (red[base + 2u] + red[base + 3u]);
    }
    workgroupBarrier();
    let wrows = 8u * R / KSPLIT;
    if (lid < wrows) {
        let b = lid / R;
        let rr = lid % R;
        var t = 0.0;
        for (var k = 0u; k < KSPLIT; k++) {
            let o = ((b * KSPLIT + k) * R + rr) * 8u;
            t += ((red2[o] + red2[o + 1u]) + (red2[o + 2u] + red2[o + 3u]))
                + ((red2[o + 4u] + red2[o + 5u]) + (red2[o + 6u] + red2[o + 7u]));
        }
        let row = wg * wrows + lid;
        if (row < P.rows) {
            Y[row] = t;
        }
    }
}

fn wg_index(wid: vec3<u32>) -> u32 {
    return wid.y * P.wg_x + wid.x;
}

// 1 row per group, 4 pieces per iteration.
@compute @workgroup_size(256)
fn main_r1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wg_index(wid);
    if (wg >= P.total_wg) {
        return;
    }
    let s = slot(wg, lid, 1u);
    let ra = min(s.row0, P.rows - 1u);
    let n4 = P.vec_per_row;
    let wa = ra * n4;
    let sa = ra * P.groups_per_row;
    let stride = 32u * KSPLIT;
    var acc = 0.0;
    for (var v = s.part * 32u + s.l; v < n4; v += 4u * stride) {
        let v1 = v + stride;
        let v2 = v1 + stride;
        let v3 = v2 + stride;
        let h1 = v1 < n4;
        let h2 = v2 < n4;
        let h3 = v3 < n4;
        let c1 = select(v, v1, h1);
        let c2 = select(v, v2, h2);
        let c3 = select(v, v3, h3);
        // weights first (4 x 16 bytes in flight), then activations and scales
        let w0 = W[wa + v];
        let w1 = W[wa + c1];
        let w2 = W[wa + c2];
        let w3 = W[wa + c3];
        acc += term(w0, load_piece(v), side(sa + (v * 32u) / GS));
        if (h1) {
            acc += term(w1, load_piece(v1), side(sa + (v1 * 32u) / GS));
        }
        if (h2) {
            acc += term(w2, load_piece(v2), side(sa + (v2 * 32u) / GS));
        }
        if (h3) {
            acc += term(w3, load_piece(v3), side(sa + (v3 * 32u) / GS));
        }
    }
    reduce_store(wg, lid, s, vec4<f32>(acc, 0.0, 0.0, 0.0), 1u);
}

// 2 rows per group, 2 pieces per iteration.
@compute @workgroup_size(256)
fn main_r2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wg_index(wid);
    if (wg >= P.total_wg) {
        return;
    }
    let s = slot(wg, lid, 2u);
    let last = P.rows - 1u;
    let ra = min(s.row0, last);
    let rb = min(s.row0 + 1u, last);
    let n4 = P.vec_per_row;
    let gpr = P.groups_per_row;
    let wa = ra * n4;
    let wb = rb * n4;
    let sa = ra * gpr;
    let sbb = rb * gpr;
    let stride = 32u * KSPLIT;
    var acc = vec2<f32>(0.0);
    for (var v = s.part * 32u + s.l; v < n4; v += 2u * stride) {
        let v1 = v + stride;
        let h1 = v1 < n4;
        let c1 = select(v, v1, h1);
        let a0 = W[wa + v];
        let b0 = W[wb + v];
        let a1 = W[wa + c1];
        let b1 = W[wb + c1];
        {
            let p = load_piece(v);
            let gi = (v * 32u) / GS;
            acc.x += term(a0, p, side(sa + gi));
            acc.y += term(b0, p, side(sbb + gi));
        }
        if (h1) {
            let p = load_piece(v1);
            let gi = (v1 * 32u) / GS;
            acc.x += term(a1, p, side(sa + gi));
            acc.y += term(b1, p, side(sbb + gi));
        }
    }
    reduce_store(wg, lid, s, vec4<f32>(acc, 0.0, 0.0), 2u);
}

// 4 rows per group, 1 piece per iteration.
@compute @workgroup_size(256)
fn main_r4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wg_index(wid);
    if (wg >= P.total_wg) {
        return;
    }
    let s = slot(wg, lid, 4u);
    let last = P.rows - 1u;
    let ra = min(s.row0, last);
    let rb = min(s.row0 + 1u, last);
    let rc = min(s.row0 + 2u, last);
    let rd = min(s.row0 + 3u, last);
    let n4 = P.vec_per_row;
    let gpr = P.groups_per_row;
    let stride = 32u * KSPLIT;
    var acc = vec4<f32>(0.0);
    for (var v = s.part * 32u + s.l; v < n4; v += stride) {
        let a = W[ra * n4 + v];
        let b = W[rb * n4 + v];
        let c = W[rc * n4 + v];
        let d = W[rd * n4 + v];
        let p = load_piece(v);
        let gi = (v * 32u) / GS;
        acc.x += term(a, p, side(ra * gpr + gi));
        acc.y += term(b, p, side(rb * gpr + gi));
        acc.z += term(c, p, side(rc * gpr + gi));
        acc.w += term(d, p, side(rd * gpr + gi));
    }
    reduce_store(wg, lid, s, acc, 4u);
}

// ---------------------------------------------------------------------------------------------
// Staged activations (entry points staged_r1, staged_r2, staged_r4; `QGemvVariant::Staged`).
//
// Why: on the H200 the kernels above are slower than qgemv4, in the order r1 < r2 < r4, and
// the count of L1 wavefronts explains it: a lane's 32 weights need 128 contiguous bytes of x,
// so each of its 8 vec4 activation loads touches 32 different 128-byte lines across the group
// (256 line lookups per 32 x 32 weights, shared by the group's rows only). Here the workgroup
// copies x once per chunk of 2048 weights into workgroup memory (coalesced loads, 8 KiB),
// transposed and XOR-swizzled so that the 8 reads of a lane's piece are conflict-free 16-byte
// accesses (32 wavefronts per 32 x 32 weights): 8x fewer than main_r1 from the same data.
//
// All 8 groups of a workgroup walk K in step, one chunk (2 tiles of 32 pieces) at a time, with
// two barriers per chunk; the next chunk's weights, scales and activations are loaded into
// registers before the current chunk is multiplied, so memory latency overlaps the barriers.
// KSPLIT (1 or 2) groups share a row set; with 2, each takes one of the chunk's two tiles.
//
// Measured (H200 as above): 3x faster than main_r1 (lm_head 536.9 -> 184.6 us), but only level
// with qgemv4 (4096x14336: staged r2 21.5-21.6 us, r4 21.8-21.9, qgemv4 22.2; 14336x4096: 22.0 /
// 22.7 / 21.4; lm_head 156 / 162 / 139). The lane's activation sum (31 FADD per piece, shared
// only by the group's rows) and the barriers take back what the reads saved.

const XCHUNK = 512u;   // vec4<f32> of activations per chunk (2048 weights, 2 tiles)

var<workgroup> xs: array<vec4<f32>, 512>;

// The activations of the chunk starting at vec4 `base`, element e (0..512) of it, or 0 past K.
fn xglobal(base: u32, e: u32) -> vec4<f32> {
    let i = base + e;
    let n = P.cols / 4u;
    return select(vec4<f32>(0.0), X[min(i, n - 1u)], i < n);
}

// Stores chunk element e (tile e / 256, piece lane (e % 256) / 8, part c = e % 8) transposed:
// xs[tile * 256 + c * 32 + (lane ^ c)].
fn xstore(e: u32, v: vec4<f32>) {
    let t = e / 256u;
    let r = e % 256u;
    let ln = r / 8u;
    let c = r % 8u;
    xs[t * 256u + c * 32u + (ln ^ c)] = v;
}

// The piece of lane `l` in tile `t` of the staged chunk.
fn xpiece(t: u32, l: u32) -> Piece {
    let b = t * 256u;
    var p: Piece;
    p.x0 = xs[b + (l ^ 0u)];
    p.x1 = xs[b + 32u + (l ^ 1u)];
    p.x2 = xs[b + 64u + (l ^ 2u)];
    p.x3 = xs[b + 96u + (l ^ 3u)];
    p.x4 = xs[b + 128u + (l ^ 4u)];
    p.x5 = xs[b + 160u + (l ^ 5u)];
    p.x6 = xs[b + 192u + (l ^ 6u)];
    p.x7 = xs[b + 224u + (l ^ 7u)];
    p.s = dot(((p.x0 + p.x1) + (p.x2 + p.x3)) + ((p.x4 + p.x5) + (p.x6 + p.x7)), vec4<f32>(1.0));
    return p;
}

// Weights (16 bytes) of piece v of the row starting at vec4 `wrow`, zero past the row.
fn wglobal(wrow: u32, v: u32, n4: u32) -> vec4<u32> {
    return select(vec4<u32>(0u), W[wrow + min(v, n4 - 1u)], v < n4);
}

// Scale and bias of piece v of the row whose groups start at `srow` (clamped past the row,
// where the piece's weights and activations are zero).
fn sglobal(srow: u32, v: u32, n4: u32) -> vec2<f32> {
    return side(srow + (min(v, n4 - 1u) * 32u) / GS);
}

// Piece index of tile `j` (0 or 1 within the group's share) of chunk h for lane l.
fn piece(h: u32, part: u32, j: u32, l: u32) -> u32 {
    return (h * 2u + part * (2u / KSPLIT) + j) * 32u + l;
}

// One row per group: 2 / KSPLIT pieces per chunk.
@compute @workgroup_size(256)
fn staged_r1(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wg_index(wid);
    if (wg >= P.total_wg) {
        return;
    }
    let s = slot(wg, lid, 1u);
    let ra = min(s.row0, P.rows - 1u);
    let n4 = P.vec_per_row;
    let wa = ra * n4;
    let sa = ra * P.groups_per_row;
    let two = KSPLIT == 1u;
    let nch = (n4 + 63u) / 64u;
    let tb = s.part * (2u / KSPLIT);   // first tile of the group's share
    // prologue: chunk 0
    var a0 = wglobal(wa, piece(0u, s.part, 0u, s.l), n4);
    var a1 = vec4<u32>(0u);
    var sa0 = sglobal(sa, piece(0u, s.part, 0u, s.l), n4);
    var sa1 = vec2<f32>(0.0);
    if (two) {
        a1 = wglobal(wa, piece(0u, s.part, 1u, s.l), n4);
        sa1 = sglobal(sa, piece(0u, s.part, 1u, s.l), n4);
    }
    xstore(lid, xglobal(0u, lid));
    xstore(lid + 256u, xglobal(0u, lid + 256u));
    workgroupBarrier();
    var acc = 0.0;
    for (var h = 0u; h < nch; h++) {
        // next chunk into registers (clamped loads past the end are harmless)
        let hn = h + 1u;
        let na0 = wglobal(wa, piece(hn, s.part, 0u, s.l), n4);
        let nsa0 = sglobal(sa, piece(hn, s.part, 0u, s.l), n4);
        var na1 = vec4<u32>(0u);
        var nsa1 = vec2<f32>(0.0);
        if (two) {
            na1 = wglobal(wa, piece(hn, s.part, 1u, s.l), n4);
            nsa1 = sglobal(sa, piece(hn, s.part, 1u, s.l), n4);
        }
        let nx0 = xglobal(hn * XCHUNK, lid);
        let nx1 = xglobal(hn * XCHUNK, lid + 256u);
        // this chunk
        acc += term(a0, xpiece(tb, s.l), sa0);
        if (two) {
            acc += term(a1, xpiece(tb + 1u, s.l), sa1);
        }
        workgroupBarrier();
        xstore(lid, nx0);
        xstore(lid + 256u, nx1);
        workgroupBarrier();
        a0 = na0;
        a1 = na1;
        sa0 = nsa0;
        sa1 = nsa1;
    }
    reduce_store(wg, lid, s, vec4<f32>(acc, 0.0, 0.0, 0.0), 1u);
}

// Two rows per group: 2 x 2 / KSPLIT pieces per chunk.
@compute @workgroup_size(256)
fn staged_r2(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wg_index(wid);
    if (wg >= P.total_wg) {
        return;
    }
    let s = slot(wg, lid, 2u);
    let last = P.rows - 1u;
    let ra = min(s.row0, last);
    let rb = min(s.row0 + 1u, last);
    let n4 = P.vec_per_row;
    let gpr = P.groups_per_row;
    let wa = ra * n4;
    let wb = rb * n4;
    let sa = ra * gpr;
    let sbb = rb * gpr;
    let two = KSPLIT == 1u;
    let nch = (n4 + 63u) / 64u;
    let tb = s.part * (2u / KSPLIT);
    let p00 = piece(0u, s.part, 0u, s.l);
    let p01 = piece(0u, s.part, 1u, s.l);
    var a0 = wglobal(wa, p00, n4);
    var b0 = wglobal(wb, p00, n4);
    var sa0 = sglobal(sa, p00, n4);
    var sb0 = sglobal(sbb, p00, n4);
    var a1 = vec4<u32>(0u);
    var b1 = vec4<u32>(0u);
    var sa1 = vec2<f32>(0.0);
    var sb1 = vec2<f32>(0.0);
    if (two) {
        a1 = wglobal(wa, p01, n4);
        b1 = wglobal(wb, p01, n4);
        sa1 = sglobal(sa, p01, n4);
        sb1 = sglobal(sbb, p01, n4);
    }
    xstore(lid, xglobal(0u, lid));
    xstore(lid + 256u, xglobal(0u, lid + 256u));
    workgroupBarrier();
    var acc = vec2<f32>(0.0);
    for (var h = 0u; h < nch; h++) {
        let hn = h + 1u;
        let q0 = piece(hn, s.part, 0u, s.l);
        let q1 = piece(hn, s.part, 1u, s.l);
        let na0 = wglobal(wa, q0, n4);
        let nb0 = wglobal(wb, q0, n4);
        let nsa0 = sglobal(sa, q0, n4);
        let nsb0 = sglobal(sbb, q0, n4);
        var na1 = vec4<u32>(0u);
        var nb1 = vec4<u32>(0u);
        var nsa1 = vec2<f32>(0.0);
        var nsb1 = vec2<f32>(0.0);
        if (two) {
            na1 = wglobal(wa, q1, n4);
            nb1 = wglobal(wb, q1, n4);
            nsa1 = sglobal(sa, q1, n4);
            nsb1 = sglobal(sbb, q1, n4);
        }
        let nx0 = xglobal(hn * XCHUNK, lid);
        let nx1 = xglobal(hn * XCHUNK, lid + 256u);
        {
            let p = xpiece(tb, s.l);
            acc.x += term(a0, p, sa0);
            acc.y += term(b0, p, sb0);
        }
        if (two) {
            let p = xpiece(tb + 1u, s.l);
            acc.x += term(a1, p, sa1);
            acc.y += term(b1, p, sb1);
        }
        workgroupBarrier();
        xstore(lid, nx0);
        xstore(lid + 256u, nx1);
        workgroupBarrier();
        a0 = na0;
        b0 = nb0;
        a1 = na1;
        b1 = nb1;
        sa0 = nsa0;
        sb0 = nsb0;
        sa1 = nsa1;
        sb1 = nsb1;
    }
    reduce_store(wg, lid, s, vec4<f32>(acc, 0.0, 0.0), 2u);
}

// Four rows per group, one tile of each chunk per group (the host always runs it with
// KSPLIT = 2): 4 x 16 bytes of weights per lane per chunk.
@compute @workgroup_size(256)
fn staged_r4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wg_index(wid);
    if (wg >= P.total_wg) {
        return;
    }
    let s = slot(wg, lid, 4u);
    let last = P.rows - 1u;
    let n4 = P.vec_per_row;
    let gpr = P.groups_per_row;
    let ra = min(s.row0, last);
    let rb = min(s.row0 + 1u, last);
    let rc = min(s.row0 + 2u, last);
    let rd = min(s.row0 + 3u, last);
    let wa = ra * n4;
    let wb = rb * n4;
    let wc = rc * n4;
    let wd = rd * n4;
    let sa = ra * gpr;
    let sbb = rb * gpr;
    let sc = rc * gpr;
    let sd = rd * gpr;
    let nch = (n4 + 63u) / 64u;
    let tb = s.part * (2u / KSPLIT);
    let p0 = piece(0u, s.part, 0u, s.l);
    var a = wglobal(wa, p0, n4);
    var b = wglobal(wb, p0, n4);
    var c = wglobal(wc, p0, n4);
    var d = wglobal(wd, p0, n4);
    var s0 = sglobal(sa, p0, n4);
    var s1 = sglobal(sbb, p0, n4);
    var s2 = sglobal(sc, p0, n4);
    var s3 = sglobal(sd, p0, n4);
    xstore(lid, xglobal(0u, lid));
    xstore(lid + 256u, xglobal(0u, lid + 256u));
    workgroupBarrier();
    var acc = vec4<f32>(0.0);
    for (var h = 0u; h < nch; h++) {
        let q = piece(h + 1u, s.part, 0u, s.l);
        let na = wglobal(wa, q, n4);
        let nb = wglobal(wb, q, n4);
        let nc = wglobal(wc, q, n4);
        let nd = wglobal(wd, q, n4);
        let ns0 = sglobal(sa, q, n4);
        let ns1 = sglobal(sbb, q, n4);
        let ns2 = sglobal(sc, q, n4);
        let ns3 = sglobal(sd, q, n4);
        let nx0 = xglobal((h + 1u) * XCHUNK, lid);
        let nx1 = xglobal((h + 1u) * XCHUNK, lid + 256u);
        let p = xpiece(tb, s.l);
        acc.x += term(a, p, s0);
        acc.y += term(b, p, s1);
        acc.z += term(c, p, s2);
        acc.w += term(d, p, s3);
        workgroupBarrier();
        xstore(lid, nx0);
        xstore(lid + 256u, nx1);
        workgroupBarrier();
        a = na;
        b = nb;
        c = nc;
        d = nd;
        s0 = ns0;
        s1 = ns1;
        s2 = ns2;
        s3 = ns3;
    }
    reduce_store(wg, lid, s, acc, 4u);
}
