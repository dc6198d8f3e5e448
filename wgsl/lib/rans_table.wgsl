// Shared by the rANS kernels that `// import: rans_table` (appended to them at load time by
// src/gpu and src/linear, and by tests/wgsl_portability.rs): the tile's slot table in workgroup
// memory, built from its u16 frequencies. Uses the importing kernel's `P` (alphabet, prec),
// `freqs`, `WG`, `MAX_TABLE` and `SENTINEL`.

var<workgroup> table: array<u32, MAX_TABLE>;
var<workgroup> sc_a: array<u32, 256>;
var<workgroup> sc_b: array<u32, 256>;
var<workgroup> fq: array<u32, 256>;
var<workgroup> table_bad: u32;

// Builds the tile's table: slot -> symbol | (freq - 1) << 8 | (slot - cum) << 20 for n <= 11.
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
                e = lo | ((f - 1u) << 8u) | ((slot - c) << 20u);
            }
            table[slot] = e;
        }
    }
    workgroupBarrier();
    return workgroupUniformLoad(&table_bad) != 0u;
}
