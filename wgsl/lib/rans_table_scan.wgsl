// Shared by the two decode-table forms of the blocked subgroup rANS kernels
// (rans_table_sg.wgsl, rans_table_byte.wgsl; a kernel imports this and one of them): the
// tile's cumulative frequencies from subgroupExclusiveAdd, two symbols per invocation, without
// a scan through workgroup-memory arrays, and the search for the symbol that owns a slot. Uses
// the importing kernel's `P` (alphabet, prec) and `freqs`, and `cum_at(s)` (cumulative
// frequency of symbol s <= a) of the table form.
// Imported by kernels that run without naga's bounds checks (the blocked ones, see
// `Kernel::indices_in_range_by_construction`): every index must stay in range by construction.

var<workgroup> warp_total: array<u32, 4>;
var<workgroup> table_bad: u32;

// Frequencies and exclusive cumulative frequencies of the two symbols an invocation owns.
struct SymbolPair {
    // the owner index o: symbols 2 o and 2 o + 1
    o: u32,
    freq: vec2<u32>,
    cum: vec2<u32>,
}

// Reads tile `tile`'s frequencies and returns this invocation's pair; sets table_bad (read
// after the caller's next barrier) when they do not sum to 2^n or the alphabet is larger than
// 256. Must be called in uniform control flow by all 128 invocations, in subgroups of 32 made
// of invocations 32 g .. 32 g + 31 (what every subgroup kernel here assumes: group g decodes
// its own chunk; the kernels check the subgroup size and flag every chunk otherwise).
// Symbols are owned in subgroup lane order, the order of the exclusive sums.
fn scan_tile_freqs(tile: u32, lid: u32, sg_id: u32) -> SymbolPair {
    let a = P.alphabet;
    let g = lid / 32u;
    let o = g * 32u + (sg_id & 31u);
    var f = vec2<u32>(0u);
    for (var j = 0u; j < 2u; j++) {
        let s = 2u * o + j;
        if (s < a) {
            let idx = tile * a + s;
            f[j] = (freqs[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xFFFFu;
        }
    }
    let pair = f.x + f.y;
    let ex = subgroupExclusiveAdd(pair);
    let tot = subgroupAdd(pair);
    if ((sg_id & 31u) == 0u) {
        warp_total[g] = tot;
    }
    workgroupBarrier();
    var off = 0u;
    for (var w = 0u; w < g; w++) {
        off += warp_total[w];
    }
    let c0 = off + ex;
    let c1 = c0 + f.x;
    if (o == 127u) {
        table_bad = select(0u, 1u, c1 + f.y != (1u << P.prec) || a > 256u);
    }
    return SymbolPair(o, f, vec2<u32>(c0, c1));
}

// The owner of `slot` for an alphabet of `a` symbols: the largest s < a with cum(s) <= slot,
// by binary search (a <= 256: 9 steps).
fn slot_owner(slot: u32, a: u32) -> u32 {
    var lo = 0u;
    var hi = a;
    for (var it = 0u; it < 9u; it++) {
        if (hi - lo > 1u) {
            let mid = (lo + hi) >> 1u;
            if (cum_at(mid) <= slot) { lo = mid; } else { hi = mid; }
        }
    }
    return lo;
}

// The owner of `slot` from `lo`, the owner of an earlier slot: the same symbol or a later one,
// found by walking forward. The table builders fill runs of consecutive slots with one
// slot_owner and then this (16 binary searches per lane had cost the lm_head decode ~3%,
// BENCHMARKS.md issue 5, steps 34-35). The walk stops at a - 1, so indices stay in range
// whatever the frequencies (a corrupt table is flagged by table_bad).
fn walk_owner(lo: u32, slot: u32, a: u32) -> u32 {
    var s = lo;
    for (var it = 0u; it < 256u; it++) {
        if (s + 1u >= a || cum_at(s + 1u) > slot) {
            break;
        }
        s += 1u;
    }
    return s;
}
