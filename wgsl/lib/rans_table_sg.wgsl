// The decode table of the blocked subgroup rANS kernels (`FusedVariant::Blocked`; appended to
// them by src/gpu in place of `// import: rans_table_sg`): the slot table of rans_table.wgsl
// (entries `(slot - cum) | freq << 12 | symbol << 24`, SENTINEL where no symbol owns a slot),
// for n <= 11 only, built with 2.6 KB less workgroup memory (8.7 KB in all): the cumulative
// frequencies come from subgroupExclusiveAdd instead of a scan through two 256-entry arrays,
// and are kept as u16 pairs (n <= 11: at most 2048). Where the grid fills the GPU, the
// kernels' speed follows how many workgroups an SM keeps resident, which workgroup memory
// limits (BENCHMARKS.md issue 5, step 25); rans_table_byte.wgsl is the same interface in
// 3.1 KB. Uses the importing kernel's `P` (alphabet, prec), `freqs`, `WG` (= 128, four
// subgroups of 32), `MAX_TABLE` and `SENTINEL`.

var<workgroup> table: array<u32, MAX_TABLE>;
// cumulative frequency of symbol s in half s % 2 of cum16[s / 2]; cum16[128] = the total
var<workgroup> cum16: array<u32, 129>;
var<workgroup> warp_total: array<u32, 4>;
var<workgroup> table_bad: u32;

fn cum_at(s: u32) -> u32 {
    return (cum16[s >> 1u] >> ((s & 1u) << 4u)) & 0xFFFFu;
}

// The decode of state x (n = PREC <= 11 probability bits): (state before renormalisation,
// symbol).
fn decode_slot(x: u32, n: u32) -> vec2<u32> {
    let e = table[x & ((1u << n) - 1u)];
    return vec2<u32>(((e >> 12u) & 0xFFFu) * (x >> n) + (e & 0xFFFu), e >> 24u);
}

// Builds the tile's table; returns whether its frequencies do not sum to 2^n. Must be called
// in uniform control flow by all 128 invocations, in subgroups of 32 made of invocations
// 32 g .. 32 g + 31 (what every subgroup kernel here assumes: group g decodes its own chunk;
// the kernels check the subgroup size and flag every chunk otherwise).
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
    cum16[o] = (c0 & 0xFFFFu) | ((c1 & 0xFFFFu) << 16u);
    if (o == 127u) {
        let total = c1 + f.y;
        cum16[128] = total & 0xFFFFu;
        table_bad = select(0u, 1u, total != m || a > 256u);
    }
    workgroupBarrier();
    for (var slot = lid; slot < m; slot += WG) {
        // largest s < a with cum(s) <= slot (cums past the alphabet are the total)
        var lo = 0u;
        var hi = a;
        for (var it = 0u; it < 9u; it++) {
            if (hi - lo > 1u) {
                let mid = (lo + hi) >> 1u;
                if (cum_at(mid) <= slot) { lo = mid; } else { hi = mid; }
            }
        }
        let c = cum_at(lo);
        let fr = cum_at(lo + 1u) - c;
        var e = SENTINEL;
        if (slot >= c && slot < c + fr && fr <= m) {
            e = (slot - c) | (fr << 12u) | (lo << 24u);
        }
        table[slot] = e;
    }
    workgroupBarrier();
    return workgroupUniformLoad(&table_bad) != 0u;
}
