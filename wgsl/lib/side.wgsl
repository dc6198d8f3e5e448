// The (scale, bias) pair of an MLX group, for the kernels that dequantize (`sb`, declared by
// the importing kernel as `array<vec2<u32>>`). MLX stores scales and biases as f16 or bf16, so
// the host uploads them in the narrowest of f32, f16 and bf16 that holds every value exactly
// (`ecq::gpu::SideFormat`) and sets SIDE: 0 = f32 pairs (one vec2 per group), 1 = f16 pairs
// and 2 = bf16 pairs (one u32 per group, the scale in the low half, two groups per vec2).
// 16-bit pairs halve the side information's memory and traffic (4 of 36 bytes per 64 4-bit
// weights instead of 8 of 40), and the values are the same f32 numbers: results are bit for
// bit those of f32 pairs. In range wherever `i` is (the host sizes the buffer to whole vec2).
override SIDE: u32 = 0u;

// `f16_pair(w)` (the two f16 halves of w as f32) comes from one of two libraries the host
// appends: lib/side_f16_unpack.wgsl (`unpack2x16float`, where the device validates it) or
// lib/side_f16_bits.wgsl (integer operations only).

fn side(i: u32) -> vec2<f32> {
    if (SIDE == 0u) {
        return bitcast<vec2<f32>>(sb[i]);
    }
    let v = sb[i >> 1u];
    let w = select(v.x, v.y, (i & 1u) == 1u);
    if (SIDE == 1u) {
        return f16_pair(w);
    }
    return bitcast<vec2<f32>>(vec2<u32>(w << 16u, w & 0xFFFF0000u));
}
