// `f16_pair` of lib/side.wgsl without `unpack2x16float` (it needs SHADER_FLOAT16_IN_FLOAT32,
// which some Vulkan drivers lack): exponent and mantissa moved into f32 place and the exponent
// rebiased by 112 with integer operations (a float scaling by 2^112 lets a compiler reorder it
// against the products, where an intermediate below f32's normal range may be flushed). Exact
// for zeros and normal f16 values, the only ones the host sends in this format (finite, no
// f16 subnormals).
fn f16_pair(w: u32) -> vec2<f32> {
    let mag = vec2<u32>(w << 13u, w >> 3u) & vec2<u32>(0x0FFFE000u);
    let sign = vec2<u32>(w << 16u, w) & vec2<u32>(0x80000000u);
    let rebias = select(vec2<u32>(0u), vec2<u32>(0x38000000u), mag != vec2<u32>(0u));
    return bitcast<vec2<f32>>((mag + rebias) | sign);
}
