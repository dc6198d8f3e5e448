// The decode table of the blocked subgroup rANS kernels in their compact form
// (`FusedVariant::BlockedCompact`; appended by src/gpu in place of `// import: rans_table_sg`,
// same interface): for n <= 11 in 3.1 KB of workgroup memory instead of 8.7, so more
// workgroups stay resident on an SM: a byte per slot (its symbol; four per u32) and a u32 per
// symbol (cumulative frequency | frequency << 16), instead of a u32 per slot. A step then reads
// two dependent words (symbol, then its entry) where the u32-per-slot table reads one: slower
// where the grid leaves room on the SMs anyway, faster where it fills them (BENCHMARKS.md
// issue 5, step 26). Uses the importing kernel's `P` (alphabet, prec), `freqs` and `WG`
// (= 128, four subgroups of 32).

var<workgroup> slot_sym: array<u32, 512>;
var<workgroup> sym_entry: array<u32, 257>;
var<workgroup> warp_total: array<u32, 4>;
var<workgroup> table_bad: u32;

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
// of bounds. Must be called in uniform control flow by all 128 invocations, in subgroups of 32
// made of invocations 32 g .. 32 g + 31 (what every subgroup kernel here assumes: group g
// decodes its own chunk; the kernels check the subgroup size and flag every chunk otherwise).
fn build_blocked_table(tile: u32, lid: u32, sg_id: u32) -> bool {
    let a = P.alphabet;
    let m = 1u << P.prec;
    let base = tile * a;
    // invocation o owns symbols 2 o and 2 o + 1, in subgroup lane order (the order of the
    // exclusive sums)
    let g = lid / 32u;
    let o = g * 32u + (sg_id & 31u);
    var f = vec2<u32>(0u);
    for (var j = 0u; j < 2u; j++) {
        let s = 2u * o + j;
        if (s < a) {
            let idx = base + s;
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
    sym_entry[2u * o] = (c0 & 0xFFFFu) | (f.x << 16u);
    sym_entry[2u * o + 1u] = (c1 & 0xFFFFu) | (f.y << 16u);
    if (o == 127u) {
        let total = c1 + f.y;
        sym_entry[256] = total & 0xFFFFu;
        table_bad = select(0u, 1u, total != m || a > 256u);
    }
    workgroupBarrier();
    // four slots (one word) at a time: the largest s < a with cum(s) <= slot
    for (var w = lid; w < (m >> 2u); w += WG) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            let slot = 4u * w + j;
            var lo = 0u;
            var hi = a;
            for (var it = 0u; it < 9u; it++) {
                if (hi - lo > 1u) {
                    let mid = (lo + hi) >> 1u;
                    if ((sym_entry[mid] & 0xFFFFu) <= slot) { lo = mid; } else { hi = mid; }
                }
            }
            word |= lo << (8u * j);
        }
        slot_sym[w] = word;
    }
    workgroupBarrier();
    return workgroupUniformLoad(&table_bad) != 0u;
}
