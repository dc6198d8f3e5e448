// rANS decode to MLX packed words, subgroup variant of rans_decode.wgsl (issue 5) for adapters
// whose subgroups are exactly 32 wide: the decode loop of rans_gemv_subgroup.wgsl (ballot
// prefix counts, four 64-word planes in registers handed out with two subgroupShuffles, a
// visibly uniform loop without per-lane branches around the step, no barrier in the loop),
// writing each step's symbols instead of multiplying them. A step's 32 symbols of
// b*w bits are OR-ed into whole u32 words with subgroupShuffleXor inside segments of 32/(b*w)
// lanes, and the first lane of each segment stores the word. Only for b*w in {1, 2, 4, 8, 16,
// 32} dividing 32 and rows of whole words (the host checks; other cases use rans_decode.wgsl).
// Like the other kernels it checks `subgroup_size` and flags every chunk otherwise (bit 128).
// import: rans_consts
// import: rans_table
// import: rans_subgroup

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    wps: u32,            // weights per symbol
    prec: u32,           // probability bits n
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,
    n_tiles: u32,
    syms_per_row: u32,   // S = K / w
    steps_per_row: u32,  // T = ceil(S / 32)
    alphabet: u32,       // A = 2^(b*w)
    n_words: u32,        // u16 words in the stream
    wg_per_tile: u32,
    total_wg: u32,
    out_mode: u32,
    out_row_words: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    chunk_iters: u32,    // chunks decoded one after another by each group
    group_size: u32,     // MLX group size (GEMV only)
    groups_per_row: u32, // K / group_size (GEMV only)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Specialisation constants set by the host (0 = read from P at run time): probability bits and
// bits per symbol.
override PREC: u32 = 0u;
override BW: u32 = 0u;

const G: u32 = 4u;             // groups of 32 lanes per workgroup
const WG: u32 = 128u;          // = 32 * G

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, A per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>; // packed words

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let tile = wg / P.wg_per_tile;
    let sub = wg % P.wg_per_tile;
    let tile_first = tile * P.tile_chunks;
    let tile_end = min(tile_first + P.tile_chunks, P.n_chunks);
    let bad_table = build_table(tile, lid);

    let g = lid / 32u;
    let l = sg_id;
    let n = select(P.prec, PREC, PREC != 0u);
    let mmask = (1u << n) - 1u;
    let T = P.steps_per_row;
    let S = P.syms_per_row;
    let bw = select(P.bits * P.wps, BW, BW != 0u);  // bits per symbol, divides 32
    let seg = 32u / bw;               // lanes per output word
    let row_words = P.out_row_words;  // = S * bw / 32

    let ltmask = (1u << l) - 1u;
    for (var it = 0u; it < P.chunk_iters; it++) {
        let chunk = tile_first + (sub * P.chunk_iters + it) * G + g;
        let valid = chunk < tile_end;
        let cs = chunk_start(chunk, valid, l, T, bad_table, sg_size);
        let steps = cs.steps;
        let r0 = cs.r0;
        var p = cs.p;
        let end = cs.end;
        var x = cs.x;
        var err = cs.err;
        // word planes (see plane_at); invariant p - base < 64 at the start of a step
        var base = p & ~1u;
        var pa = plane_at(base, l);
        var pb = plane_at(base + 64u, l);
        var pc = plane_at(base + 128u, l);
        var pd = plane_at(base + 192u, l);
        // row and step-in-row of step t, advanced incrementally
        var row = r0;
        var u = 0u;
        for (var t = 0u; t < steps; t++) {
            let j = u * 32u + l;
            let lane_on = j < S;
            let wrap = u + 1u == T;
            // decode in every lane; lanes past the row's end keep their state (x >= 2^16, so
            // they need no word) and write nothing
            let slot = x & mmask;
            var f = 1u;
            var bias = 0u;
            var sym = 0u;
            if (n <= 11u) {
                let e = table[slot];
                // only a table whose frequencies do not sum to 2^n (ERR_TABLE) has such slots
                err |= select(0u, ERR_ZERO_FREQ, lane_on && e == SENTINEL);
                sym = e >> 24u;
                f = (e >> 12u) & 0xFFFu;
                bias = e & 0xFFFu;
            } else {
                var lo = 0u;
                var hi = P.alphabet;
                for (var k = 0u; k < 9u; k++) {
                    if (hi - lo > 1u) {
                        let mid = (lo + hi) >> 1u;
                        if (sc_a[mid] <= slot) { lo = mid; } else { hi = mid; }
                    }
                }
                let c = sc_a[lo];
                f = fq[lo];
                if (lane_on && (slot >= c + f || f == 0u)) {
                    err |= ERR_ZERO_FREQ;
                }
                if (slot >= c + f || f == 0u) {
                    f = 1u;
                    bias = 0u;
                } else {
                    bias = slot - c;
                }
                sym = lo;
            }
            let xd = select(x, f * (x >> n) + bias, lane_on);
            let need = xd < L;
            let osym = select(0u, sym, lane_on);
            // OR the segment's symbols into one word (inactive lanes contribute 0)
            var wv = osym << ((j * bw) & 31u);
            for (var d = 1u; d < seg; d = d << 1u) {
                wv |= subgroupShuffleXor(wv, d);
            }
            if (lane_on && (l & (seg - 1u)) == 0u) {
                out[row * row_words + (j * bw) / 32u] = wv;
            }
            // renormalisation (see renorm_word)
            let rw = renorm_word(need, p - base, pa, pb, ltmask, l);
            x = renormalised(xd, rw.x, need);
            p += rw.y;
            if (p - base >= 64u) {
                pa = pb;
                pb = pc;
                pc = pd;
                base += 64u;
                pd = plane_at(base + 192u, l);
            }
            u = select(u + 1u, 0u, wrap);
            row = select(row, row + 1u, wrap);
        }
        if (valid) {
            err |= chunk_end_flags(x, p, end, l);
            if (err != 0u) {
                atomicOr(&errors[chunk], err);
            }
        }
    }
}
