// rANS decode to MLX packed words, subgroup variant of rans_decode.wgsl (issue 5) for adapters
// whose subgroups are exactly 32 wide: the decode loop of rans_gemv_subgroup.wgsl (ballot
// prefix counts, a 2 x 256-word register window handed out with subgroupShuffle, no barrier in
// the loop), writing each step's symbols instead of multiplying them. A step's 32 symbols of
// b*w bits are OR-ed into whole u32 words with subgroupShuffleXor inside segments of 32/(b*w)
// lanes, and the first lane of each segment stores the word. Only for b*w in {1, 2, 4, 8, 16,
// 32} dividing 32 and rows of whole words (the host checks; other cases use rans_decode.wgsl).
// Like the other kernels it checks `subgroup_size` and flags every chunk otherwise (bit 128).
// import: rans_table

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
const MAX_TABLE: u32 = 2048u;  // slot table for n <= 11
const SENTINEL: u32 = 0xFFFFFFFFu;
const L: u32 = 65536u;

// error bits, mirrored in src/gpu/decode.rs
const ERR_BAD_STATE: u32 = 1u;
const ERR_ZERO_FREQ: u32 = 2u;
const ERR_OVER_READ: u32 = 4u;
const ERR_FINAL_STATE: u32 = 8u;
const ERR_UNCONSUMED: u32 = 16u;
const ERR_TABLE: u32 = 32u;
const ERR_OFFSETS: u32 = 64u;
const ERR_SUBGROUP: u32 = 128u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, A per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>; // packed words


fn load_w(i: u32) -> u32 {
    var v = 0u;
    if (i < arrayLength(&words)) {
        v = words[i];
    }
    return v;
}

// One 256-word window in "planes": component c of lane l holds the u32 with words
// base + 64c + 2l and base + 64c + 2l + 1. Each component is one coalesced 128-byte load.
fn load_window(base: u32, l: u32) -> vec4<u32> {
    let i = base / 2u + l;
    return vec4<u32>(load_w(i), load_w(i + 32u), load_w(i + 64u), load_w(i + 96u));
}

// Plane c (0..4) of the window pair: 0..3 from cur, 4 = plane 0 of nxt. c is uniform across
// the subgroup.
fn plane(cur: vec4<u32>, nxt: vec4<u32>, c: u32) -> u32 {
    var v = cur.x;
    v = select(v, cur.y, c == 1u);
    v = select(v, cur.z, c == 2u);
    v = select(v, cur.w, c == 3u);
    v = select(v, nxt.x, c == 4u);
    return v;
}

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

    for (var it = 0u; it < P.chunk_iters; it++) {
        let chunk = tile_first + (sub * P.chunk_iters + it) * G + g;
        let valid = chunk < tile_end;
        var steps = 0u;
        var r0 = 0u;
        var x = L;
        var p = 0u;
        var end = 0u;
        var err = 0u;
        if (valid) {
            r0 = chunk * P.chunk_rows;
            steps = min(P.chunk_rows, P.rows - r0) * T;
            x = states[chunk * 32u + l];
            if (x < L) { err |= ERR_BAD_STATE; }
            p = offsets[chunk];
            end = offsets[chunk + 1u];
            if (end > P.n_words || p > end) {
                err |= ERR_OFFSETS;
                end = min(end, P.n_words);
                p = min(p, end);
            }
            if (bad_table) { err |= ERR_TABLE; }
            if (sg_size != 32u) { err |= ERR_SUBGROUP; }
        }
        // Word window of 2 x 256 words (planes, see load_window) in `cur` and `nxt`, base a
        // multiple of 8. Invariant
        // p - base < 256 at the start of a step, so a step's reads (at most 32 words) lie in
        // cur or nxt; `nxt` is loaded about 256 words (~15 steps) before it is first read, so
        // its latency hides behind the decoding.
        var base = p & ~7u;
        var cur = load_window(base, l);
        var nxt = load_window(base + 256u, l);
        // row and step-in-row of step t, advanced incrementally
        var row = r0;
        var u = 0u;
        for (var t = 0u; t < steps; t++) {
            let j = u * 32u + l;
            let lane_on = j < S;
            let wrap = u + 1u == T;
            var osym = 0u;
            var need = false;
            if (lane_on) {
                let slot = x & mmask;
                var f = 1u;
                var bias = 0u;
                var sym = 0u;
                if (n <= 11u) {
                    var e = table[slot];
                    if (e == SENTINEL) {
                        err |= ERR_ZERO_FREQ;
                        e = 0u;
                    }
                    sym = e & 0xFFu;
                    f = ((e >> 8u) & 0xFFFu) + 1u;
                    bias = e >> 20u;
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
                    if (slot >= c + f || f == 0u) {
                        err |= ERR_ZERO_FREQ;
                        f = 1u;
                        bias = 0u;
                    } else {
                        bias = slot - c;
                    }
                    sym = lo;
                }
                x = f * (x >> n) + bias;
                need = x < L;
                osym = sym;
            }
            // OR the segment's symbols into one word (inactive lanes contribute 0)
            var wv = osym << ((j * bw) & 31u);
            for (var d = 1u; d < seg; d = d << 1u) {
                wv |= subgroupShuffleXor(wv, d);
            }
            if (lane_on && (l & (seg - 1u)) == 0u) {
                out[row * row_words + (j * bw) / 32u] = wv;
            }
            let mask = subgroupBallot(need).x;
            let total = countOneBits(mask);
            let prefix = countOneBits(mask & ((1u << l) - 1u));
            // this step's words lie in plane c0 = (p - base) / 64 and, when they cross its end,
            // plane c0 + 1 (both subgroup-uniform): one or two u32 shuffles
            let d0 = p - base;
            let c0 = d0 >> 6u;
            let rel = d0 + prefix;
            let srcl = (rel >> 1u) & 31u;
            var v = subgroupShuffle(plane(cur, nxt, c0), srcl);
            if (total > 0u && ((d0 + total - 1u) >> 6u) != c0) {
                let v1 = subgroupShuffle(plane(cur, nxt, c0 + 1u), srcl);
                if ((rel >> 6u) != c0) {
                    v = v1;
                }
            }
            let word = (v >> ((rel & 1u) * 16u)) & 0xFFFFu;
            if (need) {
                if (p + prefix < end) {
                    x = (x << 16u) | word;
                } else {
                    err |= ERR_OVER_READ;
                }
            }
            p += total;
            if (p - base >= 256u) {
                cur = nxt;
                base += 256u;
                nxt = load_window(base + 256u, l);
            }
            u = select(u + 1u, 0u, wrap);
            row = select(row, row + 1u, wrap);
        }
        if (valid) {
            if (x != L) { err |= ERR_FINAL_STATE; }
            if (l == 0u && p != end) { err |= ERR_UNCONSUMED; }
            if (err != 0u) {
                atomicOr(&errors[chunk], err);
            }
        }
    }
}
