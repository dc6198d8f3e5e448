// Shared by the two decode-table forms of the blocked subgroup rANS kernels
// (rans_table_sg.wgsl, rans_table_byte.wgsl; a kernel imports this and one of them): the
// tile's cumulative frequencies from subgroupExclusiveAdd, two symbols per invocation, without
// a scan through workgroup-memory arrays, and the symbols that own a run of slots. Uses the
// importing kernel's `P` (alphabet, prec) and `freqs`.
// Imported by kernels that run without naga's bounds checks (the blocked ones, see
// `Kernel::indices_in_range_by_construction`): every index must stay in range by construction.

var<workgroup> warp_total: array<u32, 4>;
var<workgroup> warp_nonzero: array<u32, 4>;
var<workgroup> warp_starts: array<u32, 4>;
var<workgroup> table_bad: u32;
// Bit s % 32 of run_starts[s / 32]: a symbol of nonzero frequency starts its run at slot s.
// Byte r % 4 of nonzero_syms[r / 4]: the r-th symbol of nonzero frequency (r < 256). Both
// written once per invocation with atomicOr into the zero-initialised workgroup memory.
var<workgroup> run_starts: array<atomic<u32>, 64>;
var<workgroup> nonzero_syms: array<atomic<u32>, 64>;

// Frequencies and exclusive cumulative frequencies of the two symbols an invocation owns.
struct SymbolPair {
    // the owner index o: symbols 2 o and 2 o + 1
    o: u32,
    freq: vec2<u32>,
    cum: vec2<u32>,
    // symbols of nonzero frequency before symbol 2 o
    rank: u32,
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
    let nz = select(0u, 1u, f.x > 0u) + select(0u, 1u, f.y > 0u);
    let ex_nz = subgroupExclusiveAdd(nz);
    let tot_nz = subgroupAdd(nz);
    if ((sg_id & 31u) == 0u) {
        warp_total[g] = tot;
        warp_nonzero[g] = tot_nz;
    }
    workgroupBarrier();
    var off = 0u;
    var off_nz = 0u;
    for (var w = 0u; w < g; w++) {
        off += warp_total[w];
        off_nz += warp_nonzero[w];
    }
    let c0 = off + ex;
    let c1 = c0 + f.x;
    if (o == 127u) {
        table_bad = select(0u, 1u, c1 + f.y != (1u << P.prec) || a > 256u);
    }
    return SymbolPair(o, f, vec2<u32>(c0, c1), off_nz + ex_nz);
}

// Marks the pair's symbols of nonzero frequency: their ranks in nonzero_syms, the slots their
// runs start at (those below m = 2^n) in run_starts. Every invocation calls it once after
// scan_tile_freqs; slot_owners reads both after the next barrier. Ranks are < 256 and starts
// < m <= 2048, so both indices are in range.
fn mark_runs(sp: SymbolPair, m: u32) {
    for (var j = 0u; j < 2u; j++) {
        let f = sp.freq[j];
        let c = sp.cum[j];
        if (f > 0u) {
            let r = sp.rank + select(0u, 1u, j == 1u && sp.freq.x > 0u);
            atomicOr(&nonzero_syms[(r >> 2u) & 63u], (2u * sp.o + j) << ((r & 3u) << 3u));
            if (c < m) {
                atomicOr(&run_starts[(c >> 5u) & 63u], 1u << (c & 31u));
            }
        }
    }
}

// The symbols owning slots s0 .. s0 + n - 1 (element k: slot s0 + k; elements from n on repeat
// the last), where n <= 16 is a power of two and s0 a multiple of n (n = 0: an invocation with
// no slots). A slot's owner is the r-th symbol of nonzero frequency, r + 1 the run starts at or
// before it: a popcount of the invocation's bits of run_starts, their exclusive sum over the
// workgroup, then a running count per slot. Every slot costs a few bit operations and one
// independent read, where the binary search and forward walk this replaced (BENCHMARKS.md
// issue 5, step 64) chained a workgroup-memory read per symbol passed. In a table that does
// not sum to 2^n (flagged by table_bad) the owners are wrong but in range. Must be called in
// uniform control flow by all 128 invocations, after the barrier that follows mark_runs.
fn slot_owners(s0: u32, n: u32, lid: u32, sg_id: u32) -> array<u32, 16> {
    var bits = 0u;
    if (n > 0u) {
        let w = atomicLoad(&run_starts[(s0 >> 5u) & 63u]);
        bits = (w >> (s0 & 31u)) & ((1u << (n & 31u)) - 1u);
    }
    let cnt = countOneBits(bits);
    let ex = subgroupExclusiveAdd(cnt);
    let g = lid / 32u;
    if ((sg_id & 31u) == 31u) {
        warp_starts[g] = ex + cnt;
    }
    workgroupBarrier();
    var r = ex;
    for (var w = 0u; w < g; w++) {
        r += warp_starts[w];
    }
    var owners = array<u32, 16>();
    for (var k = 0u; k < 16u; k++) {
        r += (bits >> k) & 1u;
        let ri = max(r, 1u) - 1u;
        owners[k] = (atomicLoad(&nonzero_syms[(ri >> 2u) & 63u]) >> ((ri & 3u) << 3u)) & 0xFFu;
    }
    return owners;
}
