// Plain MLX 4-bit GEMV, y = W x (f32 activations, exact f32 math): qgemv4.wgsl software-
// pipelined (`QGemvVariant::Pipelined`, a candidate for issue 5, never picked automatically).
//
// Why: on the H200, qgemv4 takes about as long with one matrix resident in L2 as streaming
// from HBM (BENCHMARKS.md, issue 5: 26.1 vs 25.6 us at 4096x14336), so it is not bandwidth-
// bound; at ~4 instructions per weight it uses about a third of the issue slots. Each of its
// loop iterations issues 8 weight loads and then waits for them before any arithmetic, so a
// group alternates between a full memory latency and a burst of arithmetic, and groups tend to
// do so in step. Here the weights of the next iteration are loaded before the current one is
// multiplied (register double buffering: 2 x 64 bytes per lane), so the latency of iteration
// i+1 overlaps the arithmetic of iteration i.
//
// Everything else is qgemv4's layout (4 rows x 2 pieces of 16 weights per lane, 8-byte loads,
// KSPLIT groups per 4 rows, reduction in workgroup memory), which keeps its activation reads
// at 16 lines per load instruction; plus the per-position exponent trick of
// qgemv4_stream.wgsl (the nibble at bits 4i is OR-ed into 2^(23-4i), so one FADD leaves q
// itself and the activations need no pre-scaling: 16 FMUL fewer per 16 weights and 4 rows).
//
// Measured (NVIDIA H200, Vulkan, GPU timestamps, MLX g64, same process as qgemv4), 2026-11-26:
// 4-8% faster than qgemv4 at the auto K split (4096x14336 21.3 vs 22.3 us, 14336x4096 20.3 vs
// 21.4, lm_head 128256x4096 128.3 vs 138.7 = 2.05 TB/s, 4096x4096 9.5 vs 9.6), with results
// bit-identical to qgemv4's at the same K split (same products, same summation order). With
// one matrix reused from L2 it is barely faster (4096x14336: 18.5 us), so neither kernel is
// limited by HBM bandwidth.
//
// Entry point main8 (`Pipelined { rows: 8, .. }`): 8 rows per group and one piece per
// iteration instead of 4 rows x 2 pieces (same 64 bytes of weights per lane per iteration,
// plus 64 prefetched). The activations of a piece (4 vec4 loads touching 16 cache lines per
// group, and their sum) then serve 8 rows instead of 4: half the activation traffic through
// L1 and half the activation arithmetic per weight, for fewer groups (K split up to 8).
// Measured (H200 as above): no better than main, mostly worse (4096x14336 21.2 us = main;
// 14336x4096 22.8 vs 20.2; lm_head 135-141 vs 128.9; 4096x4096 10.6 vs 9.4), so activation
// reads through L1 are not what limits qgemv4's layout.
//
// Requires K % 16 == 0 and GS % 16 == 0 (as qgemv4; the host checks).
// import: side

struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,     // vec2<u32> of packed weights per row = K / 16
    groups_per_row: u32,  // K / GS
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,
    zero: u32,            // always 0 (see `magic`)
    _pad1: u32,
}

override GS: u32 = 64u;
override KSPLIT: u32 = 1u;   // groups per 4 rows: 1, 2, 4 or 8
// Diagnostic builds for measuring the limit (GpuQuantizedMatrix::pipelined_diagnostic_dispatch,
// never used for results): 1 = the same loads, next to no arithmetic; 2 = every row computes
// with row 0's weights and scales (cache-resident); 3 = as 1 without the activation loads.
override DIAG: u32 = 0u;
// The activations come in lane order (`ecq::gpu::x_lane_order`, as rans_gemv_blocked.wgsl's
// XLANES reads them): a group's four 16-byte loads of a piece's activations then read four
// runs of 512 contiguous bytes instead of each touching the same 16 lines (BENCHMARKS.md
// issue 5, step 88). Lane l reads piece v with v % 32 == l in both entry points.
override XLANES: bool = false;

const ML = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
// The place of each nibble of q4's result: its activations are scaled by this once per piece
// (shared by the four or eight rows), powers of two, so the products round as q x does.
const PLACE = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 1024>;   // 8 groups x 4 rows x 32 lanes
var<workgroup> red2: array<f32, 256>;   // 8 groups x 4 rows x 8 partial sums (main8: x 8 x 4)
var<workgroup> red8: array<f32, 2048>;  // main8: 8 groups x 8 rows x 32 lanes

// The bits of 2^23, set by the entry points from P.zero so that the driver holds it in a
// register: as a literal, the driver masks and ORs each nibble in two bit operations (each
// takes one literal), with it in a register in one (BENCHMARKS.md issue 5, step 50).
var<private> magic: u32;

// The low four nibbles of `w` in place, exactly: (q0, 16 q1, 256 q2, 4096 q3) (a nibble masked
// in place and OR-ed into the bits of 2^23 is 2^23 + q 16^j, q 16^j < 2^23).
fn q4(w: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>((vec4<u32>(w) & ML) | vec4<u32>(magic)) - vec4<f32>(8388608.0);
}

// sum over the 16 weights of `wv` of q * x (x0..x3: the piece's activations in order, each
// scaled by PLACE)
fn dot16(wv: vec2<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    return (dot(q4(wv.x), x0) + dot(q4(wv.x >> 16u), x1))
        + (dot(q4(wv.y), x2) + dot(q4(wv.y >> 16u), x3));
}

// Adds scale * sum(q x) + bias * sum(x) of piece v of the four rows to acc.
fn piece4(
    acc: vec4<f32>,
    v: u32,
    a: vec2<u32>,
    b: vec2<u32>,
    c: vec2<u32>,
    d: vec2<u32>,
    s: vec4<u32>,   // first group of each row
) -> vec4<f32> {
    let gi = (v * 16u) / GS;
    let q0 = side(s.x + gi);
    let q1 = side(s.y + gi);
    let q2 = side(s.z + gi);
    let q3 = side(s.w + gi);
    var x0 = vec4<f32>(1.0);
    var x1 = vec4<f32>(1.0);
    var x2 = vec4<f32>(1.0);
    var x3 = vec4<f32>(1.0);
    if (DIAG != 3u) {
        x0 = X[x_at(v, 0u)];
        x1 = X[x_at(v, 1u)];
        x2 = X[x_at(v, 2u)];
        x3 = X[x_at(v, 3u)];
    }
    if (DIAG == 1u || DIAG == 3u) {
        let t = (a ^ b) ^ (c ^ d);
        return acc + bitcast<f32>((t.x ^ t.y) & 0x3FFFFFFFu)
            * ((x0.x + x1.y + x2.z + x3.w) + (q0.x + q1.y + q2.x + q3.y));
    }
    let xs = dot((x0 + x1) + (x2 + x3), vec4<f32>(1.0));
    x0 *= PLACE;
    x1 *= PLACE;
    x2 *= PLACE;
    x3 *= PLACE;
    return acc + vec4<f32>(
        q0.x * dot16(a, x0, x1, x2, x3) + q0.y * xs,
        q1.x * dot16(b, x0, x1, x2, x3) + q1.y * xs,
        q2.x * dot16(c, x0, x1, x2, x3) + q2.y * xs,
        q3.x * dot16(d, x0, x1, x2, x3) + q3.y * xs,
    );
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    magic = 0x4B000000u | P.zero;
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let g = lid / 32u;          // group 0..8
    let l = lid % 32u;
    let blk = g / KSPLIT;       // row block within the workgroup
    let part = g % KSPLIT;      // part of K
    let row0 = (wg * (8u / KSPLIT) + blk) * 4u;
    let n2 = P.vec_per_row;
    let gpr = P.groups_per_row;
    let last = P.rows - 1u;
    let ra = min(row0, last);
    let rb = min(row0 + 1u, last);
    let rc = min(row0 + 2u, last);
    let rd = min(row0 + 3u, last);
    let cached = DIAG == 2u;
    let wa = select(ra * n2, 0u, cached);
    let wb = select(rb * n2, 0u, cached);
    let wc = select(rc * n2, 0u, cached);
    let wd = select(rd * n2, 0u, cached);
    let srow = select(vec4<u32>(ra, rb, rc, rd) * gpr, vec4<u32>(0u), cached);
    let stride = 32u * KSPLIT;
    let end = n2 - 1u;

    // iteration i covers pieces v and v + stride; its weights are loaded one iteration early
    // (indices clamped to the row: loads past the end are never used)
    var v = part * 32u + l;
    var a0 = W[wa + min(v, end)];
    var b0 = W[wb + min(v, end)];
    var c0 = W[wc + min(v, end)];
    var d0 = W[wd + min(v, end)];
    var a1 = W[wa + min(v + stride, end)];
    var b1 = W[wb + min(v + stride, end)];
    var c1 = W[wc + min(v + stride, end)];
    var d1 = W[wd + min(v + stride, end)];
    var acc = vec4<f32>(0.0);
    for (; v < n2; v += 2u * stride) {
        let vn = min(v + 2u * stride, end);
        let vn2 = min(v + 3u * stride, end);
        let na0 = W[wa + vn];
        let nb0 = W[wb + vn];
        let nc0 = W[wc + vn];
        let nd0 = W[wd + vn];
        let na1 = W[wa + vn2];
        let nb1 = W[wb + vn2];
        let nc1 = W[wc + vn2];
        let nd1 = W[wd + vn2];
        acc = piece4(acc, v, a0, b0, c0, d0, srow);
        let v2 = v + stride;
        if (v2 < n2) {
            acc = piece4(acc, v2, a1, b1, c1, d1, srow);
        }
        a0 = na0;
        b0 = nb0;
        c0 = nc0;
        d0 = nd0;
        a1 = na1;
        b1 = nb1;
        c1 = nc1;
        d1 = nd1;
    }

    red[(g * 4u + 0u) * 32u + l] = acc.x;
    red[(g * 4u + 1u) * 32u + l] = acc.y;
    red[(g * 4u + 2u) * 32u + l] = acc.z;
    red[(g * 4u + 3u) * 32u + l] = acc.w;
    workgroupBarrier();
    // 256 invocations: (group, row, eighth of the lanes) -> sum of 4 lanes
    {
        let base = (lid / 8u) * 32u + (lid % 8u) * 4u;
        red2[lid] = (red[base] + red[base + 1u]) + (red[base + 2u] + red[base + 3u]);
    }
    workgroupBarrier();
    // one invocation per row of the workgroup: sum over KSPLIT groups x 8 partial sums
    let wrows = 32u / KSPLIT;
    if (lid < wrows) {
        let b = lid / 4u;
        let rr = lid % 4u;
        var t = 0.0;
        for (var k = 0u; k < KSPLIT; k++) {
            let gg = b * KSPLIT + k;
            let o = (gg * 4u + rr) * 8u;
            t += ((red2[o] + red2[o + 1u]) + (red2[o + 2u] + red2[o + 3u]))
                + ((red2[o + 4u] + red2[o + 5u]) + (red2[o + 6u] + red2[o + 7u]));
        }
        let row = wg * wrows + lid;
        if (row < P.rows) {
            Y[row] = t;
        }
    }
}

// Where vec4 c of piece v's activations is: v * 4 + c, or in lane order (XLANES) at
// 128 (v / 32) + c nb + v % 32, nb the pieces of v's run of 32 (fewer in a last run).
fn x_at(v: u32, c: u32) -> u32 {
    if (XLANES) {
        let run = v & ~31u;
        let nb = min(32u, (P.cols >> 4u) - run);
        return (run << 2u) + c * nb + (v & 31u);
    }
    return v * 4u + c;
}

// The activations of piece v (16 weights), scaled by PLACE, and their sum.
struct X16 {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
    s: f32,
}

fn x16(v: u32) -> X16 {
    var p: X16;
    p.x0 = X[x_at(v, 0u)];
    p.x1 = X[x_at(v, 1u)];
    p.x2 = X[x_at(v, 2u)];
    p.x3 = X[x_at(v, 3u)];
    p.s = dot((p.x0 + p.x1) + (p.x2 + p.x3), vec4<f32>(1.0));
    p.x0 *= PLACE;
    p.x1 *= PLACE;
    p.x2 *= PLACE;
    p.x3 *= PLACE;
    return p;
}

// scale * sum(q x) + bias * sum(x) of piece v of four rows (first groups in `s`)
fn rows4(v: u32, a: vec2<u32>, b: vec2<u32>, c: vec2<u32>, d: vec2<u32>, s: vec4<u32>, p: X16) -> vec4<f32> {
    let gi = (v * 16u) / GS;
    let q0 = side(s.x + gi);
    let q1 = side(s.y + gi);
    let q2 = side(s.z + gi);
    let q3 = side(s.w + gi);
    return vec4<f32>(
        q0.x * dot16(a, p.x0, p.x1, p.x2, p.x3) + q0.y * p.s,
        q1.x * dot16(b, p.x0, p.x1, p.x2, p.x3) + q1.y * p.s,
        q2.x * dot16(c, p.x0, p.x1, p.x2, p.x3) + q2.y * p.s,
        q3.x * dot16(d, p.x0, p.x1, p.x2, p.x3) + q3.y * p.s,
    );
}

// 8 rows per group, one piece per iteration, the next piece's weights loaded first.
@compute @workgroup_size(256)
fn main8(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    magic = 0x4B000000u | P.zero;
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let g = lid / 32u;
    let l = lid % 32u;
    let blk = g / KSPLIT;
    let part = g % KSPLIT;
    let row0 = (wg * (8u / KSPLIT) + blk) * 8u;
    let n2 = P.vec_per_row;
    let last = P.rows - 1u;
    let lo = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    let hi = min(vec4<u32>(row0) + vec4<u32>(4u, 5u, 6u, 7u), vec4<u32>(last));
    let wlo = lo * n2;
    let whi = hi * n2;
    let slo = lo * P.groups_per_row;
    let shi = hi * P.groups_per_row;
    let stride = 32u * KSPLIT;
    let end = n2 - 1u;

    var v = part * 32u + l;
    let v0 = min(v, end);
    var a = W[wlo.x + v0];
    var b = W[wlo.y + v0];
    var c = W[wlo.z + v0];
    var d = W[wlo.w + v0];
    var e = W[whi.x + v0];
    var f = W[whi.y + v0];
    var gg = W[whi.z + v0];
    var h = W[whi.w + v0];
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    for (; v < n2; v += stride) {
        let vn = min(v + stride, end);
        let na = W[wlo.x + vn];
        let nb = W[wlo.y + vn];
        let nc = W[wlo.z + vn];
        let nd = W[wlo.w + vn];
        let ne = W[whi.x + vn];
        let nf = W[whi.y + vn];
        let ng = W[whi.z + vn];
        let nh = W[whi.w + vn];
        let p = x16(v);
        acc0 += rows4(v, a, b, c, d, slo, p);
        acc1 += rows4(v, e, f, gg, h, shi, p);
        a = na;
        b = nb;
        c = nc;
        d = nd;
        e = ne;
        f = nf;
        gg = ng;
        h = nh;
    }

    for (var r = 0u; r < 4u; r++) {
        red8[(g * 8u + r) * 32u + l] = acc0[r];
        red8[(g * 8u + 4u + r) * 32u + l] = acc1[r];
    }
    workgroupBarrier();
    // 256 invocations: (group, row, quarter of the lanes) -> sum of 8 lanes
    {
        let base = lid * 8u;
        red2[lid] = ((red8[base] + red8[base + 1u]) + (red8[base + 2u] + red8[base + 3u]))
            + ((red8[base + 4u] + red8[base + 5u]) + (red8[base + 6u] + red8[base + 7u]));
    }
    workgroupBarrier();
    // one invocation per row of the workgroup: sum over KSPLIT groups x 4 partial sums
    let wrows = 64u / KSPLIT;
    if (lid < wrows) {
        let bb = lid / 8u;
        let rr = lid % 8u;
        var t = 0.0;
        for (var k = 0u; k < KSPLIT; k++) {
            let o = ((bb * KSPLIT + k) * 8u + rr) * 4u;
            t += (red2[o] + red2[o + 1u]) + (red2[o + 2u] + red2[o + 3u]);
        }
        let row = wg * wrows + lid;
        if (row < P.rows) {
            Y[row] = t;
        }
    }
}
