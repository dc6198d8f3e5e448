// The decode table of the blocked subgroup rANS kernels (`FusedVariant::Blocked`; they
// `// import: rans_table_scan` and `// import: rans_table_sg`): the slot table of rans_table.wgsl
// (entries `(slot - cum) | freq << 12 | symbol << 24`, SENTINEL where no symbol owns a slot),
// for n <= 11 only, built with 2.6 KB less workgroup memory (8.7 KB in all): the cumulative
// frequencies come from subgroupExclusiveAdd instead of a scan through two 256-entry arrays,
// and are kept as u16 pairs (n <= 11: at most 2048). Where the grid fills the GPU, the
// kernels' speed follows how many workgroups an SM keeps resident, which workgroup memory
// limits (BENCHMARKS.md issue 5, step 26); rans_table_byte.wgsl is the same interface in
// 3.1 KB. Uses the importing kernel's `P` (alphabet, prec) and `WG` (= 128), `MAX_TABLE` and
// `SENTINEL` of rans_consts.wgsl, and rans_table_scan.wgsl.
// Imported by kernels that run without naga's bounds checks (the blocked ones, see
// `Kernel::indices_in_range_by_construction`): every index must stay in range by construction.

var<workgroup> table: array<u32, MAX_TABLE>;
// cumulative frequency of symbol s in half s % 2 of cum16[s / 2]; cum16[128] = the total
var<workgroup> cum16: array<u32, 129>;

fn cum_at(s: u32) -> u32 {
    return (cum16[s >> 1u] >> ((s & 1u) << 4u)) & 0xFFFFu;
}

// The decode of state x (n = PREC <= 11 probability bits): (state before renormalisation,
// symbol).
fn decode_slot(x: u32, n: u32) -> vec2<u32> {
    let e = table[x & ((1u << n) - 1u)];
    return vec2<u32>(((e >> 12u) & 0xFFFu) * (x >> n) + (e & 0xFFFu), e >> 24u);
}

// Slot `slot`'s entry when symbol `lo` owns it (cum16 holding the tile's cumulative
// frequencies); SENTINEL where it does not (only in a table that does not sum to m = 2^n).
fn slot_entry(slot: u32, lo: u32, m: u32) -> u32 {
    let c = cum_at(lo);
    let fr = cum_at(lo + 1u) - c;
    if (slot >= c && slot < c + fr && fr <= m) {
        return (slot - c) | (fr << 12u) | (lo << 24u);
    }
    return SENTINEL;
}

// Builds the tile's table; returns whether its frequencies do not sum to 2^n. Called as
// scan_tile_freqs (rans_table_scan.wgsl) must be.
fn build_blocked_table(tile: u32, lid: u32, sg_id: u32) -> bool {
    let m = 1u << P.prec;
    let sp = scan_tile_freqs(tile, lid, sg_id);
    cum16[sp.o] = (sp.cum.x & 0xFFFFu) | ((sp.cum.y & 0xFFFFu) << 16u);
    if (sp.o == 127u) {
        cum16[128] = (sp.cum.y + sp.freq.y) & 0xFFFFu;
    }
    mark_runs(sp, m);
    workgroupBarrier();
    // Each lane fills a run of up to 16 consecutive slots (rans_table_scan.wgsl, slot_owners).
    let per = (m + WG - 1u) / WG;
    let s0 = lid * per;
    let owners = slot_owners(s0, select(0u, per, s0 < m), lid, sg_id);
    for (var k = 0u; k < 16u; k++) {
        let slot = s0 + k;
        if (k < per && slot < m) {
            let lo = owners[k];
            table[slot] = slot_entry(slot, lo, m);
        }
    }
    workgroupBarrier();
    return workgroupUniformLoad(&table_bad) != 0u;
}

// Builds tile `tile`'s table from the slot owners and cumulative frequencies the host built
// (`TABLE_MEM` kernels: binding `freqs` then holds them, src/gpu/slot_table.rs: per tile
// 2^n / 4 words of owner bytes, 129 words of u16 cumulative pairs and a flag word, 16-byte
// aligned); returns whether the tile's frequencies do not sum to 2^n. The same entries as
// build_blocked_table without its scans and owner search: one load of the sums and four of
// owners per invocation, then the fill. Reads past the buffer are clamped. Called by all 128
// invocations in uniform control flow.
fn load_blocked_table(tile: u32, lid: u32) -> bool {
    let m = 1u << P.prec;
    let words = m >> 2u;
    let base = tile * ((words + 133u) & ~3u);
    let last = arrayLength(&freqs) - 1u;
    cum16[lid] = freqs[min(base + words + lid, last)];
    if (lid == 0u) {
        cum16[128] = freqs[min(base + words + 128u, last)];
    }
    // this invocation's slots s0 .. s0 + per - 1 lie in the four owner words from s0 / 4
    let per = (m + WG - 1u) / WG;
    let s0 = lid * per;
    let w0 = base + (s0 >> 2u);
    let own = vec4<u32>(
        freqs[min(w0, last)],
        freqs[min(w0 + 1u, last)],
        freqs[min(w0 + 2u, last)],
        freqs[min(w0 + 3u, last)],
    );
    let bad = freqs[min(base + words + 129u, last)];
    workgroupBarrier();
    for (var k = 0u; k < 16u; k++) {
        let slot = s0 + k;
        if (k < per && slot < m) {
            // (k < 16 and s0 a multiple of min(per, 4): the word is own[k / 4], or own.x
            // where per < 4)
            let d = select(k >> 2u, 0u, per < 4u);
            let ow = select(select(own.x, own.y, d == 1u), select(own.z, own.w, d == 3u), d >= 2u);
            let lo = (ow >> ((slot & 3u) << 3u)) & 0xFFu;
            table[slot] = slot_entry(slot, lo, m);
        }
    }
    workgroupBarrier();
    return bad != 0u;
}
