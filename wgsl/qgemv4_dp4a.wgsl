// Plain MLX 4-bit GEMV on the packed 4x8-bit integer dot product (issue 5): the layout and K
// split of qgemv4.wgsl, but each 16-weight piece's activations are quantized in registers to
// 8 bits (one scale d = max|x| / 127 per piece, round half to even) and multiplied with
// dot4I8Packed: the low nibbles of a word (w & 0x0F0F0F0F) meet activations 0, 2, 4, 6 and the
// high nibbles ((w >> 4) & 0x0F0F0F0F) activations 1, 3, 5, 7, four products per instruction.
// Result per piece: scale * d * sum(q * xq) + bias * sum(x) (the bias term uses the exact f32
// sum). Approximate: the 8-bit activations add an error of at most
// |scale| * d / 2 * sum(q) per piece (as ggml's q8_1 activations); the f32 kernels are exact to
// rounding. Where the device lacks the instruction, naga's polyfill (bit-field extracts) runs.
//
// Requires K % 16 == 0 and GS % 16 == 0 (the host checks).
// import: side
// import: x8

requires packed_4x8_integer_dot_product;

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
// true: X holds the activations quantized once per vector by quantize_x8.wgsl (ORDER 0: this
// kernel's byte order; the same integers as quantize_piece), not f32 ones: piece v's words
// at X[v], its (d, sum) at X[vec_per_row + v / 2] (.xy for even v, .zw for odd). The baseline
// for the fused kernel with 8-bit activations, which reads them the same way.
override PRE: bool = false;

const NIB = 0x0F0F0F0Fu;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 1024>;   // 8 groups x 4 rows x 32 lanes
var<workgroup> red2: array<f32, 256>;   // 8 groups x 4 rows x 8 partial sums

// Activations of one 16-weight piece as 8-bit integers in the nibble order of the two words:
// (even of word 0, odd of word 0, even of word 1, odd of word 1), and their scale d.
struct XQ {
    q: vec4<u32>,
    d: f32,
    sum: f32,
}

fn quantize_piece(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> XQ {
    let p = x8_piece(x0, x1, x2, x3);
    return XQ(x8_plain_words(p), p.d, p.sum);
}

// Piece v's activations: quantized here (4 f32 vector loads), or loaded as quantized (PRE).
fn piece_x(v: u32) -> XQ {
    if (PRE) {
        let m = X[P.vec_per_row + (v >> 1u)];
        let ds = select(m.xy, m.zw, (v & 1u) == 1u);
        return XQ(bitcast<vec4<u32>>(X[v]), ds.x, ds.y);
    }
    return quantize_piece(X[v * 4u], X[v * 4u + 1u], X[v * 4u + 2u], X[v * 4u + 3u]);
}

// sum over the 16 weights of `wv` of q * xq (exact in i32)
fn idot16(wv: vec2<u32>, xq: vec4<u32>) -> i32 {
    return (dot4I8Packed(wv.x & NIB, xq.x) + dot4I8Packed((wv.x >> 4u) & NIB, xq.y))
        + (dot4I8Packed(wv.y & NIB, xq.z) + dot4I8Packed((wv.y >> 4u) & NIB, xq.w));
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
        let xq0 = piece_x(v);
        {
            let xq = xq0;
            acc.x += (q0.x * xq.d) * f32(idot16(a0, xq.q)) + q0.y * xq.sum;
            acc.y += (q1.x * xq.d) * f32(idot16(b0, xq.q)) + q1.y * xq.sum;
            acc.z += (q2.x * xq.d) * f32(idot16(c0, xq.q)) + q2.y * xq.sum;
            acc.w += (q3.x * xq.d) * f32(idot16(d0, xq.q)) + q3.y * xq.sum;
        }
        if (has2) {
            let p0 = side(sa + gi1);
            let p1 = side(sbb + gi1);
            let p2 = side(sc + gi1);
            let p3 = side(sd + gi1);
            let xq = piece_x(v2);
            acc.x += (p0.x * xq.d) * f32(idot16(a1, xq.q)) + p0.y * xq.sum;
            acc.y += (p1.x * xq.d) * f32(idot16(b1, xq.q)) + p1.y * xq.sum;
            acc.z += (p2.x * xq.d) * f32(idot16(c1, xq.q)) + p2.y * xq.sum;
            acc.w += (p3.x * xq.d) * f32(idot16(d1, xq.q)) + p3.y * xq.sum;
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
