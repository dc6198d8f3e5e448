// The decode table of the blocked subgroup rANS kernels in their compact form
// (`FusedVariant::BlockedCompact`; appended by src/gpu in place of `// import: rans_table_sg`,
// same interface, after rans_table_scan.wgsl): for n <= 11 in 3.1 KB of workgroup memory
// instead of 8.7, so more workgroups stay resident on an SM: a byte per slot (its symbol; four
// per u32) and a u32 per symbol (cumulative frequency | frequency << 16), instead of a u32 per
// slot. A step then reads two dependent words (symbol, then its entry) where the u32-per-slot
// table reads one: slower where the grid leaves room on the SMs anyway, faster where it fills
// them (BENCHMARKS.md issue 5, step 26). Uses the importing kernel's `P` (alphabet, prec) and
// `WG` (= 128), and rans_table_scan.wgsl.
// Imported by kernels that run without naga's bounds checks (the blocked ones, see
// `Kernel::indices_in_range_by_construction`): every index must stay in range by construction.

var<workgroup> slot_sym: array<u32, 512>;
var<workgroup> sym_entry: array<u32, 257>;

// The decode of state x (n = PREC <= 11 probability bits): (state before renormalisation,
// symbol).
fn decode_slot(x: u32, n: u32) -> vec2<u32> {
    let slot = x & ((1u << n) - 1u);
    let sym = (slot_sym[slot >> 2u] >> ((slot & 3u) << 3u)) & 0xFFu;
    let e = sym_entry[sym];
    return vec2<u32>((e >> 16u) * (x >> n) + slot - (e & 0xFFFFu), sym);
}

// Builds the tile's table; returns whether its frequencies do not sum to 2^n (or the alphabet
// is larger than 256). In a table that does not sum to 2^n, slots past the total decode to the
// last symbol and wrong states follow: the chunk is reported (ERR_TABLE), nothing is read out
// of bounds. Called as scan_tile_freqs (rans_table_scan.wgsl) must be.
fn build_blocked_table(tile: u32, lid: u32, sg_id: u32) -> bool {
    let m = 1u << P.prec;
    let sp = scan_tile_freqs(tile, lid, sg_id);
    sym_entry[2u * sp.o] = (sp.cum.x & 0xFFFFu) | (sp.freq.x << 16u);
    sym_entry[2u * sp.o + 1u] = (sp.cum.y & 0xFFFFu) | (sp.freq.y << 16u);
    if (sp.o == 127u) {
        sym_entry[256] = (sp.cum.y + sp.freq.y) & 0xFFFFu;
    }
    mark_runs(sp, m);
    workgroupBarrier();
    // Each lane fills a run of up to four consecutive words (16 slots; rans_table_scan.wgsl,
    // slot_owners).
    let words = m >> 2u;
    let per = (words + WG - 1u) / WG;
    let w0 = lid * per;
    let owners = slot_owners(4u * w0, select(0u, 4u * per, w0 < words), lid, sg_id);
    for (var k = 0u; k < 4u; k++) {
        if (k < per && w0 + k < words) {
            slot_sym[w0 + k] = owners[4u * k] | (owners[4u * k + 1u] << 8u)
                | (owners[4u * k + 2u] << 16u) | (owners[4u * k + 3u] << 24u);
        }
    }
    workgroupBarrier();
    return workgroupUniformLoad(&table_bad) != 0u;
}

// Loads tile `tile`'s table from the slot owners and cumulative frequencies the host built
// (`TABLE_MEM` kernels: binding `freqs` then holds them, src/gpu/slot_table.rs: per tile
// 2^n / 4 words of owner bytes, which are slot_sym as is, 129 words of u16 cumulative pairs,
// from which each invocation makes its two symbols' entries, and a flag word, 16-byte
// aligned); returns whether the tile's frequencies do not sum to 2^n. Reads past the buffer
// are clamped. Called by all 128 invocations in uniform control flow.
fn load_blocked_table(tile: u32, lid: u32) -> bool {
    let words = (1u << P.prec) >> 2u;
    let base = tile * ((words + 133u) & ~3u);
    let last = arrayLength(&freqs) - 1u;
    for (var k = 0u; k < 4u; k++) {
        let w = k * WG + lid;
        if (w < words) {
            slot_sym[w] = freqs[min(base + w, last)];
        }
    }
    // symbols 2 lid and 2 lid + 1: their sums, and the next symbol's (word 128: the total)
    let c01 = freqs[min(base + words + lid, last)];
    let c2 = freqs[min(base + words + lid + 1u, last)] & 0xFFFFu;
    let c0 = c01 & 0xFFFFu;
    let c1 = c01 >> 16u;
    sym_entry[2u * lid] = c0 | ((c1 - c0) << 16u);
    sym_entry[2u * lid + 1u] = c1 | ((c2 - c1) << 16u);
    if (lid == 127u) {
        sym_entry[256] = c2;
    }
    let bad = freqs[min(base + words + 129u, last)];
    workgroupBarrier();
    return bad != 0u;
}
