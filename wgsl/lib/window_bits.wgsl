// Shared by the kernels that read window splits (`ecq::rans::SplitMatrix::encode_window`:
// one coded flag per weight, eight weights per symbol, three raw bits in planes after the
// stream in `words` from u32 P.low_base on; rans_gemv_blocked.wgsl, rans_gemm_blocked.wgsl):
// the raw words of a lane and the merge into nibbles. Uses the importing kernel's `P`
// (low_base), `words` and override `WSTART` (the window start).

// Nibble word m (m = 0..3) of a window split's 32 weights: weights m, m + 4, .., m + 28 in
// nibbles 0..7, from the flags `f` (weight t's at bit t), the raw bit-2 word `mid` (the same
// places) and the raw low-bit word `low`, each shifted by the caller so that weight 4n + m's
// fields sit at bits 4n + 3, 4n + 2 and 4n..4n + 1; then WSTART added to every nibble, mod 16
// (the low three bits of each nibble summed without a carry out, bit 3 the sum's carry XOR
// both bits 3).
fn window_nibbles(f: u32, mid: u32, low: u32) -> u32 {
    let u = (f & 0x88888888u) | (mid & 0x44444444u) | (low & 0x33333333u);
    if (WSTART == 0u) {
        return u;
    }
    let c = WSTART * 0x11111111u;
    return ((u & 0x77777777u) + (c & 0x77777777u)) ^ ((u ^ c) & 0x88888888u);
}

// The four nibble words of a window split's word of four symbols (symbol c in the low byte of
// sv[c]: 32 flags, coded weight t's at bit t) and its raw words r: word m holds coded weights
// m, m + 4, .., m + 28 as nibbles 0..7, so its low half multiplies activation components m of
// the word's first 16 columns (window_half) and its high half those of the next 16 (or, in row
// pairs, the same 16 columns of the second row).
fn window_words(sv: vec4<u32>, r: vec3<u32>) -> vec4<u32> {
    let f = (sv.x & 0xFFu) | ((sv.y & 0xFFu) << 8u) | ((sv.z & 0xFFu) << 16u) | (sv.w << 24u);
    return vec4<u32>(
        window_nibbles(f << 3u, r.z << 2u, r.x),
        window_nibbles(f << 2u, r.z << 1u, r.x >> 2u),
        window_nibbles(f << 1u, r.z, r.y),
        window_nibbles(f, r.z >> 1u, r.y >> 2u),
    );
}

// Lane l's three raw words of block b of a window split's coded row whose raw words start at
// word `row_word0` (= coded row * coded cols * 3 / 32): the block's 32 words' planes
// (`ecq::rans::SplitMatrix::encode_window`), so each load is one contiguous line for the 32
// lanes. In range by construction (the host appends rows * cols * 3 / 32 words and runs only
// whole 4-step blocks), clamped to the buffer anyway.
fn window_raw(row_word0: u32, b: u32, l: u32) -> vec3<u32> {
    let i = P.low_base + row_word0 + b * 96u + l;
    let last = arrayLength(&words) - 1u;
    return vec3<u32>(words[min(i, last)], words[min(i + 32u, last)], words[min(i + 64u, last)]);
}
