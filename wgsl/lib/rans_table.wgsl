// Shared by the rANS kernels that `// import: rans_table` (appended to them at load time by
// src/gpu and src/linear, and by tests/wgsl_portability.rs): the tile's slot table in workgroup
// memory, built from its u16 frequencies. Uses the importing kernel's `P` (alphabet, prec),
// `freqs` and `WG`, and `MAX_TABLE` and `SENTINEL` of rans_consts.wgsl.

var<workgroup> table: array<u32, MAX_TABLE>;
var<workgroup> sc_a: array<u32, 256>;
var<workgroup> sc_b: array<u32, 256>;
var<workgroup> fq: array<u32, 256>;
var<workgroup> table_bad: u32;

// Builds the tile's table: slot -> (slot - cum) | freq << 12 | symbol << 24 for n <= 11 (bias
// and freq <= 2^11 in 12 bits each, the symbol the top byte). The earlier layout,
// symbol | (freq - 1) << 8 | bias << 20, compiled to the same number of instructions per step
// on an H200 (one add fewer, one mask more).
// Leaves exclusive cumulative frequencies in sc_a and frequencies in fq; returns whether the
// frequencies do not sum to 2^n. Must be called in uniform control flow.
fn build_table(tile: u32, lid: u32) -> bool {
    let a = P.alphabet;
    let m = 1u << P.prec;
    let base = tile * a;
    for (var i = lid; i < 256u; i += WG) {
        var f = 0u;
        if (i < a) {
            let idx = base + i;
            f = (freqs[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xFFFFu;
        }
        fq[i] = f;
        sc_a[i] = f;
    }
    workgroupBarrier();
    // Hillis-Steele inclusive scan over 256 entries, ping-pong between sc_a and sc_b.
    var in_a = true;
    for (var d = 1u; d < 256u; d = d << 1u) {
        for (var i = lid; i < 256u; i += WG) {
            if (in_a) {
                var v = sc_a[i];
                if (i >= d) { v += sc_a[i - d]; }
                sc_b[i] = v;
            } else {
                var v = sc_b[i];
                if (i >= d) { v += sc_b[i - d]; }
                sc_a[i] = v;
            }
        }
        in_a = !in_a;
        workgroupBarrier();
    }
    // 8 rounds: the result is back in sc_a. Make it exclusive in place.
    for (var i = lid; i < 256u; i += WG) {
        sc_a[i] = sc_a[i] - fq[i];
    }
    workgroupBarrier();
    if (lid == 0u) {
        let total = sc_a[a - 1u] + fq[a - 1u];
        table_bad = select(0u, 1u, total != m);
    }
    if (P.prec <= 11u) {
        for (var slot = lid; slot < m; slot += WG) {
            // largest s with c[s] <= slot
            var lo = 0u;
            var hi = a;
            for (var it = 0u; it < 9u; it++) {
                if (hi - lo > 1u) {
                    let mid = (lo + hi) >> 1u;
                    if (sc_a[mid] <= slot) { lo = mid; } else { hi = mid; }
                }
            }
            let c = sc_a[lo];
            let f = fq[lo];
            var e = SENTINEL;
            if (slot < c + f && f > 0u && f <= m) {
                e = (slot - c) | (f << 12u) | (lo << 24u);
            }
            table[slot] = e;
        }
    }
    workgroupBarrier();
    return workgroupUniformLoad(&table_bad) != 0u;
}

// The rANS decode of `slot` (the low n bits of the state) in the tile's table: (symbol,
// frequency f, bias = slot - cumulative frequency, error bits). n <= 11 reads the slot table,
// larger n searches the cumulative frequencies. A slot without a symbol (only in a table whose
// frequencies do not sum to 2^n) gives ERR_ZERO_FREQ and a harmless f = 1 (symbol and bias
// from a zeroed entry), so decoding goes on to the loop's bound and the chunk is reported.
// Uses ERR_ZERO_FREQ of rans_consts.wgsl.
fn lookup_slot(slot: u32, n: u32) -> vec4<u32> {
    if (n <= 11u) {
        var e = table[slot];
        var bad = 0u;
        if (e == SENTINEL) {
            bad = ERR_ZERO_FREQ;
            e = 0u;
        }
        return vec4<u32>(e >> 24u, (e >> 12u) & 0xFFFu, e & 0xFFFu, bad);
    }
    var lo = 0u;
    var hi = P.alphabet;
    for (var k = 0u; k < 9u; k++) {
        if (hi - lo > 1u) {
            let mid = (lo + hi) >> 1u;
            if (sc_a[mid] <= slot) { lo = mid; } else { hi = mid; }
        }
    }
    let c = sc_a[lo];
    let f = fq[lo];
    if (slot >= c + f || f == 0u) {
        return vec4<u32>(lo, 1u, 0u, ERR_ZERO_FREQ);
    }
    return vec4<u32>(lo, f, slot - c, 0u);
}
