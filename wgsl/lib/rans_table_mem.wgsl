// The workgroup kernels' slot table (rans_decode.wgsl, rans_gemv.wgsl, rans_gemm.wgsl) read
// from the tables built on the host (src/gpu/slot_table.rs: per tile the owner of every slot,
// a byte, four to a u32; the cumulative frequencies as u16 pairs, symbol s in half s % 2 of
// word s / 2, word 128 the total; a word nonzero where the tile's frequencies do not sum to
// 2^n), bound in place of the frequencies: the entries
// build_table (rans_table.wgsl) makes, from one load a slot instead of a scan with its barriers
// and a binary search a slot. Uses rans_table.wgsl's `table`, `sc_a` and `build_table`, the
// kernel's `P` (prec, 8..=11 where the host builds these tables), `freqs` and `WG`, and
// `SENTINEL`.

// true: `freqs` holds the tables built on the host, loaded instead of built from the
// frequencies
override TABLE_MEM: bool = false;

// Fills `table` with tile `tile`'s entries, loaded (TABLE_MEM) or built; returns whether the
// tile's frequencies are bad. Must be called in uniform control flow.
fn tile_table(tile: u32, lid: u32) -> bool {
    if (TABLE_MEM) {
        return load_table(tile, lid);
    }
    return build_table(tile, lid);
}

// Fills `table` with tile `tile`'s entries; returns whether the host flagged the tile. Must be
// called in uniform control flow.
fn load_table(tile: u32, lid: u32) -> bool {
    let m = 1u << P.prec;
    let words = m >> 2u;
    let base = tile * ((words + 133u) & ~3u);
    let last = arrayLength(&freqs) - 1u;
    for (var i = lid; i < 129u; i += WG) {
        sc_a[i] = freqs[min(base + words + i, last)];
    }
    let bad = freqs[min(base + words + 129u, last)];
    workgroupBarrier();
    for (var slot = lid; slot < m; slot += WG) {
        let s = (freqs[min(base + (slot >> 2u), last)] >> ((slot & 3u) << 3u)) & 0xFFu;
        let c = (sc_a[s >> 1u] >> ((s & 1u) << 4u)) & 0xFFFFu;
        let s1 = s + 1u;
        let f = ((sc_a[s1 >> 1u] >> ((s1 & 1u) << 4u)) & 0xFFFFu) - c;
        var e = SENTINEL;
        if (slot >= c && slot < c + f && f <= m) {
            e = (slot - c) | (f << 12u) | (s << 24u);
        }
        table[slot] = e;
    }
    workgroupBarrier();
    return bad != 0u;
}
