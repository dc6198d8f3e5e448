// Shared by the batched rANS kernels (rans_gemm.wgsl, rans_gemm_blocked.wgsl): a decoded
// symbol's weights into the slice, and the stores of a row set's results. Uses the importing
// kernel's `P` (groups_per_row, group_size, low_bits, cols, y_stride, row_base), `PAIR`,
// `wbuf`, `Y`, `side` (lib/side.wgsl), `row_pair_step` and `raw_low_bits`
// (lib/split_bits.wgsl), and `RowShare` and `sum_parts` (lib/gemm_slice.wgsl).

// The `w` weights of symbol `sym` (`bits` coded bits each; a split matrix's raw low bits
// merged below them) of coded row `crow`, step u, lane l, dequantized into columns col0 ..
// col0 + w - 1 of the slice for the workgroup's row g.
fn dequantize_symbol(sym: u32, crow: u32, u: u32, l: u32, w: u32, bits: u32, col0: u32, g: u32) {
    // the matrix row and step of this coded step (the same with PAIR off)
    let rs = row_pair_step(crow, u, PAIR);
    let k0 = (rs.y * 32u + l) * w;
    let sbv = side(rs.x * P.groups_per_row + k0 / P.group_size);
    var low = 0u;
    if (P.low_bits != 0u) {
        // (a matrix row's cols * low_bits / 32 words)
        let kc = P.cols >> u32(PAIR);
        low = raw_low_bits(rs.x * ((kc * P.low_bits) >> 5u), k0, P.low_bits);
    }
    let qmask = (1u << bits) - 1u;
    let lmask = (1u << P.low_bits) - 1u;
    for (var i = 0u; i < w; i++) {
        let hi = (sym >> (bits * i)) & qmask;
        let q = f32((hi << P.low_bits) | ((low >> (P.low_bits * i)) & lmask));
        wbuf[wslot(col0 + i)][g] = sbv.x * q + sbv.y;
    }
}

// Zeros in columns col0 .. col0 + w - 1 for row g: a lane without a symbol this step.
fn clear_symbol(w: u32, col0: u32, g: u32) {
    for (var i = 0u; i < w; i++) {
        wbuf[wslot(col0 + i)][g] = 0.0;
    }
}

// Stores activation row m's results for the workgroup's 4 matrix rows `rowv` (those in `okv`;
// rows are the band's, Y's are the matrix's).
fn store_row(m: u32, acc: vec4<f32>, rowv: vec4<u32>, okv: vec4<bool>) {
    let yb = m * P.y_stride + P.row_base;
    if (okv.x) { Y[yb + rowv.x] = acc.x; }
    if (okv.y) { Y[yb + rowv.y] = acc.y; }
    if (okv.z) { Y[yb + rowv.z] = acc.z; }
    if (okv.w) { Y[yb + rowv.w] = acc.w; }
}

// Sums the parts of the invocation's activation rows (below m_hi) and stores them for matrix
// rows rowv (those in okv). Every invocation of the workgroup calls it together, after the
// last reads of the slice in wbuf (sum_parts).
fn store_rows(
    acc: array<vec4<f32>, 4>,
    rs: RowShare,
    m_hi: u32,
    lid: u32,
    rowv: vec4<u32>,
    okv: vec4<bool>,
) {
    var a = acc;
    for (var j = 0u; j < 4u; j++) {
        let s = sum_parts(a[j], lid, rs.part);
        let m = rs.m0 + j * rs.rstride;
        if (rs.part == 0u && m < m_hi) {
            store_row(m, s, rowv, okv);
        }
    }
}
