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
// 56 KiB, over WebGPU's 16 KiB default.

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
@group(0) @binding(2) var<storage, read> sb: array<vec2<f32>>;  // (scale, bias) per group
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
        acc += term(w0, load_piece(v), sb[sa + (v * 32u) / GS]);
        if (h1) {
            acc += term(w1, load_piece(v1), sb[sa + (v1 * 32u) / GS]);
        }
        if (h2) {
            acc += term(w2, load_piece(v2), sb[sa + (v2 * 32u) / GS]);
        }
        if (h3) {
            acc += term(w3, load_piece(v3), sb[sa + (v3 * 32u) / GS]);
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
            acc.x += term(a0, p, sb[sa + gi]);
            acc.y += term(b0, p, sb[sbb + gi]);
        }
        if (h1) {
            let p = load_piece(v1);
            let gi = (v1 * 32u) / GS;
            acc.x += term(a1, p, sb[sa + gi]);
            acc.y += term(b1, p, sb[sbb + gi]);
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
        acc.x += term(a, p, sb[ra * gpr + gi]);
        acc.y += term(b, p, sb[rb * gpr + gi]);
        acc.z += term(c, p, sb[rc * gpr + gi]);
        acc.w += term(d, p, sb[rd * gpr + gi]);
    }
    reduce_store(wg, lid, s, acc, 4u);
}
