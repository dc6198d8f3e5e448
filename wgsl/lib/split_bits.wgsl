// Shared by the rANS kernels that read split matrices (`ecq::rans::SplitMatrix`: the high 2
// bits of 4-bit weights coded, four to a symbol, the low 2 bits raw, MLX-packed after the word
// stream in `words`): merging the two halves.

// Eight 2-bit fields (bits 0..15 of v) spread to the low half of eight nibbles: with
// `(spread2(high) << 2) | spread2(low)`, the high and raw low bits of eight 4-bit weights
// become their MLX packed word.
fn spread2(v: u32) -> u32 {
    var s = v & 0xFFFFu;
    s = (s | (s << 8u)) & 0x00FF00FFu;
    s = (s | (s << 4u)) & 0x0F0F0F0Fu;
    return (s | (s << 2u)) & 0x33333333u;
}
