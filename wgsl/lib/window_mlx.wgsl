// Shared by the decode kernels of window splits (rans_decode_window.wgsl, and the window path
// of rans_decode_blocked.wgsl): the four MLX words of a lane's word of 32 coded weights, from
// the nibble words that window_bits.wgsl's `window_words` gives.

// The four MLX words of a window split's word from its nibble words n (window_words: coded
// weight 4i + m is nibble i of n[m]); MLX word k holds coded weights 8k .. 8k + 7, so nibble
// 4h + m of word k is nibble 2k + h of n[m]. Done as a transpose: the low nibbles of n[0]
// and n[1] (n[2] and n[3]) interleaved into the bytes of l01 (l23), the high ones into h01
// (h23); byte k of l01, l23, h01, h23 is then byte 0..3 of word k, a 4x4 byte transpose in
// two rounds of 16-bit and 8-bit swaps: 12 shifts and 12 bit selects for the four words,
// where extracting each word's eight nibbles took 31 operations a word in the source. The
// window decode ran 4-13% faster on an H200 (BENCHMARKS.md issue 5, step 115).
fn window_mlx_words(n: vec4<u32>) -> vec4<u32> {
    let l01 = bitsel(n.x, n.y << 4u, 0x0F0F0F0Fu);
    let l23 = bitsel(n.z, n.w << 4u, 0x0F0F0F0Fu);
    let h01 = bitsel(n.x >> 4u, n.y, 0x0F0F0F0Fu);
    let h23 = bitsel(n.z >> 4u, n.w, 0x0F0F0F0Fu);
    // bytes (l01 b0, l23 b0, l01 b2, l23 b2), (l01 b1, l23 b1, l01 b3, l23 b3), and the same of h
    let x0 = bitsel(l01, l23 << 8u, 0x00FF00FFu);
    let x1 = bitsel(l01 >> 8u, l23, 0x00FF00FFu);
    let y0 = bitsel(h01, h23 << 8u, 0x00FF00FFu);
    let y1 = bitsel(h01 >> 8u, h23, 0x00FF00FFu);
    return vec4<u32>(
        bitsel(x0, y0 << 16u, 0x0000FFFFu),
        bitsel(x1, y1 << 16u, 0x0000FFFFu),
        bitsel(x0 >> 16u, y0, 0x0000FFFFu),
        bitsel(x1 >> 16u, y1, 0x0000FFFFu),
    );
}

// The bits of a where m is set, of b elsewhere.
fn bitsel(a: u32, b: u32, m: u32) -> u32 {
    return (a & m) | (b & ~m);
}
