// Shared by the lossless 16-bit kernels that `// import: lossless16` (appended to them at load
// time): reading the coded parts and rebuilding a weight from its exponent symbol and raw byte
// (docs/FORMAT.md, "Lossless 16-bit weights"). Uses the importing kernel's `P` (half_f16),
// `words` and `raw`, and `f16_to_f32` of wgsl/lib/f16.wgsl (import both).

// u16 word idx of the exponent stream.
fn read16(idx: u32) -> u32 {
    return (words[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xFFFFu;
}

// Raw byte idx (sign and low mantissa bits of weight idx, row-major).
fn read_raw(idx: u32) -> u32 {
    return (raw[idx >> 2u] >> ((idx & 3u) * 8u)) & 0xFFu;
}

// The weight's 16-bit pattern from its symbol and raw byte: the raw byte's top bit is the sign,
// its low 7 bits the low mantissa bits, and the 8-bit symbol sits between them.
fn pattern16(sym: u32, rb: u32) -> u32 {
    return ((rb & 0x80u) << 8u) | (sym << 7u) | (rb & 0x7Fu);
}

// The weight from its symbol and raw byte, as f32 (bf16, or f16 when P.half_f16).
fn weight(sym: u32, rb: u32) -> f32 {
    let h = pattern16(sym, rb);
    if (P.half_f16 != 0u) {
        return f16_to_f32(h);
    }
    return bitcast<f32>(h << 16u);
}
