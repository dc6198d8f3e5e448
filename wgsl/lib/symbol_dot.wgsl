// Shared by the fused GEMVs that multiply words of four byte symbols (rans_gemv_blocked.wgsl,
// rans_gemv_lanes.wgsl): a word's weights, dequantized and multiplied by their activations.
// Uses the importing kernel's overrides WPS (weights per symbol: 1, 2 or 4), BITS (bits per
// weight: WPS * BITS = 8) and LOW (0, or 2: raw low bits, with WPS = 4 and BITS = 2), and
// window_dot.wgsl's `nibbles_in_place` and NIBBLE_PLACE.

// The dot product of one word of four byte symbols (4 WPS consecutive weights in one MLX
// group; xw[v] = their activations 4v..4v+3, v < WPS) with the group's (scale, bias):
// scale * sum(q x) + bias * sum(x). Symbol c is in the low byte of sv[c] (higher bits are
// masked off). With LOW = 2, lw holds the 16 weights' raw low bits (2 each, the first
// weight's lowest) and a weight is (high << 2) | low. q as f32 without a conversion: 2^23 + q
// (q < 2^23) minus 2^23, exactly.
// `magic` is 0x4B000000 (the bits of 2^23), computed by the caller from P.zero so that the
// driver holds it in a register: with it as a literal the driver masks and ORs in two bit
// operations per weight (each takes one literal), with it in a register in one.
fn symbol_word_dot(sv: vec4<u32>, lw: u32, xw: array<vec4<f32>, 4>, sbv: vec2<f32>, magic: u32) -> f32 {
    if (LOW == 2u) {
        // The 16 high fields (weight t's at bits 2t) and low fields (lw, the same places)
        // merge into 4-bit weights without spreading them apart: the even weights' fields sit
        // in bits 0-1 of the nibbles (mask 0x3...), the odd weights' in bits 2-3 (0xC...), so
        // one shift and one mask per half give two words of eight 4-bit weights each, the
        // even weights 0, 2, .., 14 in `ev` and the odd ones in `od`, nibble m holding weight
        // 2m (+ 1). Their activations are taken in the same order.
        let h = (sv.x & 0xFFu) | ((sv.y & 0xFFu) << 8u) | ((sv.z & 0xFFu) << 16u) | (sv.w << 24u);
        let ev = ((h & 0x33333333u) << 2u) | (lw & 0x33333333u);
        let od = (h & 0xCCCCCCCCu) | ((lw >> 2u) & 0x33333333u);
        var qx = nibbles_in_place(ev, magic) * vec4<f32>(xw[0].x, xw[0].z, xw[1].x, xw[1].z);
        qx += nibbles_in_place(od, magic) * vec4<f32>(xw[0].y, xw[0].w, xw[1].y, xw[1].w);
        qx += nibbles_in_place(ev >> 16u, magic) * vec4<f32>(xw[2].x, xw[2].z, xw[3].x, xw[3].z);
        qx += nibbles_in_place(od >> 16u, magic) * vec4<f32>(xw[2].y, xw[2].w, xw[3].y, xw[3].w);
        let xs = (xw[0] + xw[1]) + (xw[2] + xw[3]);
        return sbv.x * dot(qx, NIBBLE_PLACE) + sbv.y * dot(xs, vec4<f32>(1.0));
    }
    let qmask = vec4<u32>((1u << BITS) - 1u);
    var qx = vec4<f32>(0.0);
    var xs = vec4<f32>(0.0);
    for (var v = 0u; v < WPS; v++) {
        // weights 4v .. 4v + 3: weight t is bits BITS * (t % WPS) of symbol t / WPS
        var qi = sv;
        if (WPS == 2u) {
            let lo = select(sv.x, sv.z, v == 1u);
            let hi = select(sv.y, sv.w, v == 1u);
            qi = vec4<u32>(lo, lo >> BITS, hi, hi >> BITS);
        } else if (WPS == 4u) {
            let c = sv[v & 3u];
            qi = vec4<u32>(c, c >> BITS, c >> (2u * BITS), c >> (3u * BITS));
        }
        let q = bitcast<vec4<f32>>((qi & qmask) | vec4<u32>(magic)) - vec4<f32>(8388608.0);
        let xa = xw[v & 3u];
        qx += q * xa;
        xs += xa;
    }
    return sbv.x * dot(qx, vec4<f32>(1.0)) + sbv.y * dot(xs, vec4<f32>(1.0));
}
