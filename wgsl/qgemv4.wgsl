// Plain MLX 4-bit GEMV, y = W x (f32 activations): the baseline the fused rANS kernel must beat.
// Replaces qgemv.wgsl's 4-bit path (issue 5):
//
// * a workgroup has 8 groups of 32 invocations; each group owns 4 consecutive rows and one of
//   KSPLIT interleaved parts of K (KSPLIT groups per 4 rows, 32 / KSPLIT rows per workgroup);
// * per iteration each lane reads one vec2<u32> (16 weights) of each of its 4 rows, the next
//   lane the next 8 bytes, so a group reads 256 contiguous bytes per row and the KSPLIT groups
//   of a row block read neighbouring 256-byte pieces; each lane handles two such pieces per
//   loop iteration (64 bytes of weights in flight per lane before any arithmetic);
// * no integer-to-float conversion: a nibble masked in place and OR-ed into the exponent of
//   2^23 is the float 2^23 + q * 16^i exactly; subtracting 2^23 leaves q * 16^i, which meets
//   activations pre-scaled by 16^-i (powers of two: exact, as in MLX's qmv_fast). Per weight:
//   one LOP3, one FADD, one FFMA (the old path spent a quarter-rate I2F per weight);
// * result per group: scale * sum(q*x) + bias * sum(x); lane and group sums are reduced in
//   workgroup memory once at the end.
//
// Requires K % 16 == 0 and GS % 16 == 0 (the host checks).
// import: side

struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,     // vec2<u32> of packed weights per row = K / 16
    groups_per_row: u32,  // K / GS
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,
    _pad0: u32,
    _pad1: u32,
}

override GS: u32 = 64u;
override KSPLIT: u32 = 1u;   // groups per 4 rows: 1, 2, 4 or 8

const MAGIC: u32 = 0x4B000000u;      // bits of 2^23
const MAGIC_F: f32 = 8388608.0;
const ML = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);        // nibbles 0..3 in place
const MH = vec4<u32>(0xF0u, 0xF00u, 0xF000u, 0xF0000u);    // nibbles 4..7 after w >> 12
const SL = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const SH = vec4<f32>(0.0625, 0.00390625, 0.000244140625, 1.52587890625e-05);

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 1024>;   // 8 groups x 4 rows x 32 lanes
var<workgroup> red2: array<f32, 256>;   // 8 groups x 4 rows x 8 partial sums

// The four nibbles selected by `m` of `w` as q * 16^i, exactly.
fn deq(w: u32, m: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>((vec4<u32>(w) & m) | vec4<u32>(MAGIC)) - vec4<f32>(MAGIC_F);
}

// sum over the 16 weights of `wv` of q * x, with x pre-scaled (xl0, xh0 for word 0, ...)
fn dot16(wv: vec2<u32>, xl0: vec4<f32>, xh0: vec4<f32>, xl1: vec4<f32>, xh1: vec4<f32>) -> f32 {
    return (dot(deq(wv.x, ML), xl0) + dot(deq(wv.x >> 12u, MH), xh0))
        + (dot(deq(wv.y, ML), xl1) + dot(deq(wv.y >> 12u, MH), xh1));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
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
    let wa = ra * n2;
    let wb = rb * n2;
    let wc = rc * n2;
    let wd = rd * n2;
    let sa = ra * gpr;
    let sbb = rb * gpr;
    let sc = rc * gpr;
    let sd = rd * gpr;

    var acc = vec4<f32>(0.0);
    let stride = 32u * KSPLIT;
    // two pieces per iteration: v and v + stride
    for (var v = part * 32u + l; v < n2; v += 2u * stride) {
        let v2 = v + stride;
        let has2 = v2 < n2;
        let v2c = select(v, v2, has2);
        // weights first (8 loads in flight), then activations and scales
        let a0 = W[wa + v];
        let b0 = W[wb + v];
        let c0 = W[wc + v];
        let d0 = W[wd + v];
        let a1 = W[wa + v2c];
        let b1 = W[wb + v2c];
        let c1 = W[wc + v2c];
        let d1 = W[wd + v2c];
        let gi0 = (v * 16u) / GS;
        let gi1 = (v2c * 16u) / GS;
        let q0 = side(sa + gi0);
        let q1 = side(sbb + gi0);
        let q2 = side(sc + gi0);
        let q3 = side(sd + gi0);
        let x0 = X[v * 4u];
        let x1 = X[v * 4u + 1u];
        let x2 = X[v * 4u + 2u];
        let x3 = X[v * 4u + 3u];
        {
            let xs = dot((x0 + x1) + (x2 + x3), vec4<f32>(1.0));
            let xl0 = x0 * SL;
            let xh0 = x1 * SH;
            let xl1 = x2 * SL;
            let xh1 = x3 * SH;
            acc.x += q0.x * dot16(a0, xl0, xh0, xl1, xh1) + q0.y * xs;
            acc.y += q1.x * dot16(b0, xl0, xh0, xl1, xh1) + q1.y * xs;
            acc.z += q2.x * dot16(c0, xl0, xh0, xl1, xh1) + q2.y * xs;
            acc.w += q3.x * dot16(d0, xl0, xh0, xl1, xh1) + q3.y * xs;
        }
        if (has2) {
            let p0 = side(sa + gi1);
            let p1 = side(sbb + gi1);
            let p2 = side(sc + gi1);
            let p3 = side(sd + gi1);
            let y0 = X[v2 * 4u];
            let y1 = X[v2 * 4u + 1u];
            let y2 = X[v2 * 4u + 2u];
            let y3 = X[v2 * 4u + 3u];
            let xs = dot((y0 + y1) + (y2 + y3), vec4<f32>(1.0));
            let xl0 = y0 * SL;
            let xh0 = y1 * SH;
            let xl1 = y2 * SL;
            let xh1 = y3 * SH;
            acc.x += p0.x * dot16(a1, xl0, xh0, xl1, xh1) + p0.y * xs;
            acc.y += p1.x * dot16(b1, xl0, xh0, xl1, xh1) + p1.y * xs;
            acc.z += p2.x * dot16(c1, xl0, xh0, xl1, xh1) + p2.y * xs;
            acc.w += p3.x * dot16(d1, xl0, xh0, xl1, xh1) + p3.y * xs;
        }
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
