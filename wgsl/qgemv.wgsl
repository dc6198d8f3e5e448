// Plain quantized GEMV over MLX packed weights (2, 4 or 8 bits): y = W x, one f32 activation
// vector. The baseline the fused rANS kernel must beat; follows MLX's qmv_fast:
//
// * a workgroup owns ROWS = 4 consecutive output rows and has KSPLIT groups of 32 lanes that
//   split the row's 16-byte steps between them (more warps in flight than MLX's layout: on a
//   big discrete GPU one group per 4 rows leaves too few loads in flight);
// * per step each lane reads one vec4<u32> (16 bytes) of packed weights of each of its rows and
//   the matching 128/BITS activations (shared by the rows), which it pre-scales by 2^-(BITS*i) (i = the value's
//   position in its u32 word) so a masked value `w & (MASK << BITS*i)`, converted to f32, needs no
//   shift: f32(q << BITS*i) * x * 2^-(BITS*i) == q * x exactly (powers of two);
// * the result is scale * sum(q*x) + bias * sum(x) per group;
// * the 32 lanes' partial sums are reduced through workgroup memory once at the end.
//
// Rows must hold a whole number of vec4<u32> (K * BITS % 128 == 0); the host checks.
// import: side

struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,     // vec4<u32> of packed weights per row = K * BITS / 128
    groups_per_row: u32,  // K / GS
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,
    _pad0: u32,
    _pad1: u32,
}

override BITS: u32 = 4u;
override GS: u32 = 64u;

override KSPLIT: u32 = 8u;         // groups of 32 lanes per workgroup, splitting the K steps
override WGS: u32 = 256u;          // = 32 * KSPLIT (set together by the host)
const ROWS: u32 = 4u;              // rows per workgroup (written out explicitly below)
override PW: u32 = 32u / BITS;     // values per u32 word
override WPL: u32 = 4u * PW;       // values per lane per step (128 / BITS)

// 4-bit: masks and pre-scales of the low / high four nibbles of a word
const M4L = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
const M4H = vec4<u32>(0xF0000u, 0xF00000u, 0xF000000u, 0xF0000000u);
const S4L = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const S4H = vec4<f32>(1.52587890625e-05, 9.5367431640625e-07, 5.9604644775390625e-08,
    3.7252902984619140625e-09);
// 8-bit: masks and pre-scales of the four bytes of a word
const M8 = vec4<u32>(0xFFu, 0xFF00u, 0xFF0000u, 0xFF000000u);
const S8 = vec4<f32>(1.0, 0.00390625, 1.52587890625e-05, 5.9604644775390625e-08);

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 1024>;  // KSPLIT (<= 8) * ROWS * 32
var<workgroup> red2: array<f32, 128>;  // ROWS * 32

// Everything below is written without private arrays: drivers put dynamically indexed private
// arrays in (slow) local memory when they do not unroll the loops.

fn w4(w: u32, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    let v = vec4<u32>(w);
    return dot(vec4<f32>(v & M4L), lo) + dot(vec4<f32>(v & M4H), hi);
}

fn row4(wv: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
        x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    return (w4(wv.x, x0, x1) + w4(wv.y, x2, x3)) + (w4(wv.z, x4, x5) + w4(wv.w, x6, x7));
}

fn row8(wv: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    return (dot(vec4<f32>(vec4<u32>(wv.x) & M8), x0) + dot(vec4<f32>(vec4<u32>(wv.y) & M8), x1))
        + (dot(vec4<f32>(vec4<u32>(wv.z) & M8), x2) + dot(vec4<f32>(vec4<u32>(wv.w) & M8), x3));
}

// Any other width dividing 32 (2 bits): per word, values read from X (cached) and scaled on the
// fly; a lane's words may span several groups, so scale and bias are applied per word.
fn row_generic(wv: vec4<u32>, row: u32, k0: u32) -> f32 {
    let vmask = (1u << BITS) - 1u;
    var acc = 0.0;
    for (var c = 0u; c < 4u; c++) {
        let w = wv[c];
        let kw = k0 + c * PW;
        var d = 0.0;
        var xs = 0.0;
        for (var h = 0u; h < PW / 4u; h++) {
            let xx = X[kw / 4u + h];
            let s0 = BITS * 4u * h;
            let m = vec4<u32>(vmask << s0, vmask << (s0 + BITS), vmask << (s0 + 2u * BITS),
                vmask << (s0 + 3u * BITS));
            let sc = vec4<f32>(ldexp(1.0, -i32(s0)), ldexp(1.0, -i32(s0 + BITS)),
                ldexp(1.0, -i32(s0 + 2u * BITS)), ldexp(1.0, -i32(s0 + 3u * BITS)));
            d += dot(vec4<f32>(vec4<u32>(w) & m), xx * sc);
            xs += dot(xx, vec4<f32>(1.0));
        }
        let q = side(row * P.groups_per_row + kw / GS);
        acc += q.x * d + q.y * xs;
    }
    return acc;
}

@compute @workgroup_size(WGS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let g = lid / 32u;
    let l = lid % 32u;
    let row0 = wg * ROWS;
    let vpr = P.vec_per_row;
    let gpr = P.groups_per_row;
    let last = P.rows - 1u;
    let ra = min(row0, last);
    let rb = min(row0 + 1u, last);
    let rc = min(row0 + 2u, last);
    let rd = min(row0 + 3u, last);

    var acc = vec4<f32>(0.0);
    let nsteps = (vpr + 31u) / 32u;
    for (var s = g; s < nsteps; s += KSPLIT) {
        let v = s * 32u + l;
        if (v < vpr) {
            let k0 = v * WPL;          // first weight of this lane
            let xb = k0 / 4u;          // first vec4 of x
            let wa = W[ra * vpr + v];
            let wb = W[rb * vpr + v];
            let wc = W[rc * vpr + v];
            let wd = W[rd * vpr + v];
            let gi = k0 / GS;
            if (BITS == 4u) {
                let a0 = X[xb];
                let a1 = X[xb + 1u];
                let a2 = X[xb + 2u];
                let a3 = X[xb + 3u];
                let a4 = X[xb + 4u];
                let a5 = X[xb + 5u];
                let a6 = X[xb + 6u];
                let a7 = X[xb + 7u];
                let xsum = dot(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), vec4<f32>(1.0));
                let x0 = a0 * S4L;
                let x1 = a1 * S4H;
                let x2 = a2 * S4L;
                let x3 = a3 * S4H;
                let x4 = a4 * S4L;
                let x5 = a5 * S4H;
                let x6 = a6 * S4L;
                let x7 = a7 * S4H;
                let qa = side(ra * gpr + gi);
                let qb = side(rb * gpr + gi);
                let qc = side(rc * gpr + gi);
                let qd = side(rd * gpr + gi);
                acc.x += qa.x * row4(wa, x0, x1, x2, x3, x4, x5, x6, x7) + qa.y * xsum;
                acc.y += qb.x * row4(wb, x0, x1, x2, x3, x4, x5, x6, x7) + qb.y * xsum;
                acc.z += qc.x * row4(wc, x0, x1, x2, x3, x4, x5, x6, x7) + qc.y * xsum;
                acc.w += qd.x * row4(wd, x0, x1, x2, x3, x4, x5, x6, x7) + qd.y * xsum;
            } else if (BITS == 8u) {
                let a0 = X[xb];
                let a1 = X[xb + 1u];
                let a2 = X[xb + 2u];
                let a3 = X[xb + 3u];
                let xsum = dot((a0 + a1) + (a2 + a3), vec4<f32>(1.0));
                let x0 = a0 * S8;
                let x1 = a1 * S8;
                let x2 = a2 * S8;
                let x3 = a3 * S8;
                let qa = side(ra * gpr + gi);
                let qb = side(rb * gpr + gi);
                let qc = side(rc * gpr + gi);
                let qd = side(rd * gpr + gi);
                acc.x += qa.x * row8(wa, x0, x1, x2, x3) + qa.y * xsum;
                acc.y += qb.x * row8(wb, x0, x1, x2, x3) + qb.y * xsum;
                acc.z += qc.x * row8(wc, x0, x1, x2, x3) + qc.y * xsum;
                acc.w += qd.x * row8(wd, x0, x1, x2, x3) + qd.y * xsum;
            } else {
                acc.x += row_generic(wa, ra, k0);
                acc.y += row_generic(wb, rb, k0);
                acc.z += row_generic(wc, rc, k0);
                acc.w += row_generic(wd, rd, k0);
            }
        }
    }

    red[(g * ROWS + 0u) * 32u + l] = acc.x;
    red[(g * ROWS + 1u) * 32u + l] = acc.y;
    red[(g * ROWS + 2u) * 32u + l] = acc.z;
    red[(g * ROWS + 3u) * 32u + l] = acc.w;
    workgroupBarrier();
    // ROWS * 32 invocations: sum over the KSPLIT groups, then 32 lanes per row
    for (var i = lid; i < ROWS * 32u; i += WGS) {
        var t = 0.0;
        for (var k = 0u; k < KSPLIT; k++) {
            t += red[k * ROWS * 32u + i];
        }
        red2[i] = t;
    }
    workgroupBarrier();
    if (lid < ROWS) {
        var t = 0.0;
        for (var k = 0u; k < 32u; k++) {
            t += red2[lid * 32u + k];
        }
        let row = row0 + lid;
        if (row < P.rows) {
            Y[row] = t;
        }
    }
}
