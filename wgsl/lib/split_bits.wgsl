// Shared by the rANS kernels that read split matrices (`ecq::rans::SplitMatrix`: the high 2
// bits of 4-bit weights coded, four to a symbol, the low 2 bits raw, MLX-packed after the word
// stream in `words` from u32 P.low_base on): finding the raw bits and merging the two halves,
// and where a step of a coded row goes in row-pair order. Uses the importing kernel's `P`
// (low_base) and `words`.

// Row-pair order (`ecq::rans::SplitOrder::RowPairs`): step u of coded row r is step
// 4 (u / 8) + u % 4 of matrix row 2r + (u / 4) % 2. Returns (matrix row, its step); (r, u)
// when `pair` is false.
fn row_pair_step(r: u32, u: u32, pair: bool) -> vec2<u32> {
    let paired = vec2<u32>(2u * r + ((u >> 2u) & 1u), ((u >> 3u) << 2u) | (u & 3u));
    return select(vec2<u32>(r, u), paired, pair);
}

// Eight 2-bit fields (bits 0..15 of v) spread to the low half of eight nibbles.
fn spread2(v: u32) -> u32 {
    var s = v & 0xFFFFu;
    s = (s | (s << 8u)) & 0x00FF00FFu;
    s = (s | (s << 4u)) & 0x0F0F0F0Fu;
    return (s | (s << 2u)) & 0x33333333u;
}

// The MLX packed word of eight 4-bit weights from their high and low 2-bit fields (bits 0..15
// of `high` and `low`, the first weight's lowest).
fn merge_split(high: u32, low: u32) -> u32 {
    return (spread2(high) << 2u) | spread2(low);
}

// The raw low bits of weights k, k + 1, ... of a row, `low` bits each and weight k's lowest,
// right-aligned in the result (as many as its word holds past k); `row_word0` = the row's
// first word of raw bits, row * cols * low / 32. In range by construction (the host appends
// rows * cols * low / 32 words), clamped to the buffer anyway.
fn raw_low_bits(row_word0: u32, k: u32, low: u32) -> u32 {
    let bit = k * low;
    let i = min(P.low_base + row_word0 + (bit >> 5u), arrayLength(&words) - 1u);
    return words[i] >> (bit & 31u);
}
