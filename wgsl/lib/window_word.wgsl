// Shared by the workgroup kernels that read window splits (`ecq::rans::SplitMatrix::encode_window`:
// one coded flag per weight, eight weights per symbol, three raw bits in planes after the
// stream in `words` from u32 P.low_base on; rans_decode.wgsl, rans_gemv.wgsl): a symbol's eight
// weights as one MLX word, and where it goes. Uses the importing kernel's `P` (cols, low_base,
// window_start) and `words`.
// (The blocked kernels build four such words a lane at once from whole raw words:
// window_bits.wgsl.)

// The matrix row and first column of symbol j of a window split's coded row `row`: in row
// pairs (`pair`) the coded row holds matrix rows 2 row and 2 row + 1 in runs of two symbols
// (16 columns), the first row's first.
fn window_symbol_at(row: u32, j: u32, pair: bool) -> vec2<u32> {
    let paired = vec2<u32>(2u * row + ((j >> 1u) & 1u), (j >> 2u) * 16u + (j & 1u) * 8u);
    return select(vec2<u32>(row, 8u * j), paired, pair);
}

// The MLX word of symbol j of a window split's coded row `row` (its raw words start at word
// row * P.cols * 3 / 32, P.cols the coded row's weights), from the symbol's eight flags `sym` (coded
// weight 8j + i's at bit i): nibble i holds coded weight 8j + i, ((flag << 3) | raw bits) +
// window start, mod 16. The raw words (`ecq::rans::window_raw_words`) come in blocks of 96 a
// 1024 weights, planes of 32 words: bits 0-1 of the weights t % 4 = 0, 1 of word w (at bits
// 4 (t / 4) + 2 (t % 2)), then those of t % 4 = 2, 3, then bit 2 of every weight (at bit t).
// The eight weights of a symbol are one byte of each plane's word. In range by construction
// (the host appends the raw words of whole blocks); clamped to the buffer anyway.
fn window_symbol_word(sym: u32, row: u32, j: u32) -> u32 {
    let w = j >> 2u;
    let at = P.low_base + row * ((P.cols * 3u) >> 5u) + (w >> 5u) * 96u + (w & 31u);
    let last = arrayLength(&words) - 1u;
    let sh = 8u * (j & 3u);
    let low01 = words[min(at, last)] >> sh;
    let low23 = words[min(at + 32u, last)] >> sh;
    let mid = words[min(at + 64u, last)] >> sh;
    var word = 0u;
    for (var i = 0u; i < 8u; i++) {
        let m = i & 3u;
        let low = (select(low01, low23, m >= 2u) >> (4u * (i >> 2u) + 2u * (m & 1u))) & 3u;
        let q = (((sym >> i) & 1u) << 3u) | (((mid >> i) & 1u) << 2u) | low;
        word |= ((q + P.window_start) & 15u) << (4u * i);
    }
    return word;
}
