// Activations quantized to 8 bits once per vector (issue 5), for the GEMV kernels that take
// them pre-quantized: the fused window-split GEMV (rans_gemv_blocked.wgsl with XI8) and the
// plain 4-bit one (qgemv4_dp4a.wgsl with PRE). One invocation per piece of 16 activations,
// quantized as x8_piece does (the plain kernel's in-register quantization gives the same
// integers). Output, u32 words: piece p's 16 integers in words 4p..4p + 3, in the byte order
// its reader multiplies them in (ORDER), then from word 4 * pieces on the pieces' (d, sum)
// pairs as f32 bits, two words per piece. Needs K = 16 * pieces (the host checks).
// import: x8

requires packed_4x8_integer_dot_product;

struct Params {
    pieces: u32,  // K / 16
    wg_x: u32,    // workgroups along x of the 2-D dispatch
    _pad0: u32,
    _pad1: u32,
}

// Byte order of a piece's four words (activation indices within the piece): 0 = the plain
// kernel's (x8_plain_words); 1 = the fused window kernel's, word c: (c, 8 + c, 4 + c,
// 12 + c) (window_x8_dot in rans_gemv_blocked.wgsl says why).
override ORDER: u32 = 0u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = (wid.y * P.wg_x + wid.x) * 64u + lid;
    if (p >= P.pieces) {
        return;
    }
    let v = x8_piece(x[4u * p], x[4u * p + 1u], x[4u * p + 2u], x[4u * p + 3u]);
    var w: vec4<u32>;
    if (ORDER == 0u) {
        w = x8_plain_words(v);
    } else {
        w = vec4<u32>(
            pack4xI8(vec4<i32>(v.q0.x, v.q2.x, v.q1.x, v.q3.x)),
            pack4xI8(vec4<i32>(v.q0.y, v.q2.y, v.q1.y, v.q3.y)),
            pack4xI8(vec4<i32>(v.q0.z, v.q2.z, v.q1.z, v.q3.z)),
            pack4xI8(vec4<i32>(v.q0.w, v.q2.w, v.q1.w, v.q3.w)),
        );
    }
    out[4u * p] = w.x;
    out[4u * p + 1u] = w.y;
    out[4u * p + 2u] = w.z;
    out[4u * p + 3u] = w.w;
    out[4u * P.pieces + 2u * p] = bitcast<u32>(v.d);
    out[4u * P.pieces + 2u * p + 1u] = bitcast<u32>(v.sum);
}
