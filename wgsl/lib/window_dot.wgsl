// Shared by the fused GEMVs of window splits that multiply whole words of 32 weights
// (rans_gemv_blocked.wgsl, rans_gemv_lanes.wgsl): a word's nibbles as floats without a
// conversion, their products with the activations, the activations and the MLX group of a
// column. Uses the importing kernel's `xv` (activations as `array<vec4<f32>>`) and override
// `GSHIFT` (log2 of the MLX group size, or 32 where it is not a power of two).

// Four weights as nibbles 0-3 of w (higher bits ignored), each at its own place: (q0, 16 q1,
// 256 q2, 4096 q3), exactly (a nibble masked in place and OR-ed into the bits of 2^23 is
// 2^23 + q 16^j, q 16^j < 2^23), without a shift per weight. Multiplied by activations and
// summed per component, the components are rescaled once per word by NIBBLE_PLACE: powers
// of two, so the rounding is that of q x.
fn nibbles_in_place(w: u32, magic: u32) -> vec4<f32> {
    let m = vec4<u32>(w) & vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
    return bitcast<vec4<f32>>(m | vec4<u32>(magic)) - vec4<f32>(8388608.0);
}
const NIBBLE_PLACE = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);

// Half a window-split word's q x, per nibble place: nibbles 0..3 of n (n >> 16 for the second
// half) with xw = the half's four activation vectors.
fn window_half(n: vec4<u32>, xw: array<vec4<f32>, 4>, magic: u32) -> vec4<f32> {
    var qx = nibbles_in_place(n.x, magic) * vec4<f32>(xw[0].x, xw[1].x, xw[2].x, xw[3].x);
    qx += nibbles_in_place(n.y, magic) * vec4<f32>(xw[0].y, xw[1].y, xw[2].y, xw[3].y);
    qx += nibbles_in_place(n.z, magic) * vec4<f32>(xw[0].z, xw[1].z, xw[2].z, xw[3].z);
    qx += nibbles_in_place(n.w, magic) * vec4<f32>(xw[0].w, xw[1].w, xw[2].w, xw[3].w);
    return qx;
}

// The 16 activations from weight k on.
fn x16(k: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(xv[k >> 2u], xv[(k >> 2u) + 1u], xv[(k >> 2u) + 2u], xv[(k >> 2u) + 3u]);
}

// The MLX group of weight k.
fn group_of(k: u32, gsz: u32) -> u32 {
    return select(k >> (GSHIFT & 31u), k / gsz, GSHIFT >= 32u);
}
