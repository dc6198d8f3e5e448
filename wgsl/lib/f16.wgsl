// Shared by the kernels that `// import: f16` (appended to them at load time).

// IEEE f16 bit pattern (low 16 bits of h) to f32, exact, without the f16 capability
// (unpack2x16float needs SHADER_FLOAT16_IN_FLOAT32 on some back ends): normals rebias the
// exponent, subnormals are m * 2^-24 (exact in f32), infinities and NaN payloads are kept.
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1Fu;
    let m = h & 0x3FFu;
    let normal = sign | ((e + 112u) << 23u) | (m << 13u);
    let special = sign | 0x7F800000u | (m << 13u);
    let sub = sign | bitcast<u32>(f32(m) * 5.9604644775390625e-8);
    return bitcast<f32>(select(select(normal, special, e == 31u), sub, e == 0u));
}
