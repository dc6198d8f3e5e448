// Fused rANS decode + dequantize + GEMV, subgroup variant: the same computation as
// rans_gemv.wgsl for adapters whose subgroups are exactly 32 invocations wide (NVIDIA, Apple).
// The host picks it only when the SUBGROUP feature is enabled and the adapter reports a
// subgroup size of 32 (min = max = 32); the kernel re-checks `subgroup_size` and flags every
// chunk otherwise (error bit 128), so a wrong pick is reported, never silently wrong.
//
// Differences from rans_gemv.wgsl: the renormalisation prefix count is a subgroupBallot (no
// workgroupBarrier in the decode loop: each group of 32 runs at its own pace); the words come
// from a window of 2 x 256 words held in registers across the subgroup (one vec4<u32> per lane
// each, in four "planes" of 64 words so a step needs one or two u32 shuffles; the next window
// is loaded ~15 steps before it is read) and are handed to the lanes that need them with
// subgroupShuffle; activations, scale and bias are loaded two steps ahead; each
// row's 32 lane sums are reduced with subgroupAdd. The word buffer is read as u32 (the host pads
// it to a multiple of 16 bytes).
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

// Specialisation constants set by the host from the matrix (0 = read from P at run time):
// weights per symbol, bits per weight, probability bits, log2 of the MLX group size (32 = not
// a power of two: divide). Constant values let the compiler drop the other cases' code.
override WPS: u32 = 0u;
override BITS: u32 = 0u;
override PREC: u32 = 0u;
override GSHIFT: u32 = 0u;

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
@group(0) @binding(6) var<storage, read> sb: array<vec2<f32>>;   // (scale, bias) per group
@group(0) @binding(7) var<storage, read> xv: array<f32>;          // activations, K
@group(0) @binding(8) var<storage, read_write> y: array<f32>;     // R outputs


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

// MLX group index of weight k: k >> gshift when the group size is a power of two (gshift < 32),
// else k / gsz.
fn group_of(k: u32, gsz: u32, gshift: u32) -> u32 {
    if (gshift < 32u) {
        return k >> gshift;
    }
    return k / gsz;
}

// Activations of the w weights of symbol column j (zeros past w).
fn load_x(j: u32) -> vec4<f32> {
    let wps = select(P.wps, WPS, WPS != 0u);
    let k0 = j * wps;
    var v = vec4<f32>(0.0);
    v.x = xv[k0];
    if (wps >= 2u) {
        v.y = xv[k0 + 1u];
    }
    if (wps == 4u) {
        v.z = xv[k0 + 2u];
        v.w = xv[k0 + 3u];
    }
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
    let bits = select(P.bits, BITS, BITS != 0u);
    let qmask = (1u << bits) - 1u;
    let b1 = bits;
    let b2 = 2u * bits;
    let b3 = 3u * bits;
    let gpr = P.groups_per_row;
    let gsz = P.group_size;
    let wps = select(P.wps, WPS, WPS != 0u);
    // group sizes are powers of two in MLX: a shift then; any other size divides
    var gshift = select(32u, firstTrailingBit(gsz), (gsz & (gsz - 1u)) == 0u);
    if (GSHIFT != 0u) {
        gshift = GSHIFT;
    }
    var acc = 0.0;

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
        // activations and (scale, bias), loaded two steps ahead: nx/nsb for step t, nx2/nsb2
        // for step t + 1 (an L2 hit takes longer than one step)
        var nx = vec4<f32>(0.0);
        var nsb = vec2<f32>(0.0);
        if (steps > 0u && l < S) {
            nx = load_x(l);
            nsb = sb[r0 * gpr + group_of(l * wps, gsz, gshift)];
        }
        // row and step-in-row of steps t and t + 1, advanced incrementally (no divisions in
        // the loop)
        var row = r0;
        var u = 0u;
        let wrap0 = T == 1u;
        var ua = select(1u, 0u, wrap0);
        var rowa = select(r0, r0 + 1u, wrap0);
        var nx2 = vec4<f32>(0.0);
        var nsb2 = vec2<f32>(0.0);
        if (steps > 1u && ua * 32u + l < S) {
            nx2 = load_x(ua * 32u + l);
            nsb2 = sb[rowa * gpr + group_of((ua * 32u + l) * wps, gsz, gshift)];
        }
        for (var t = 0u; t < steps; t++) {
            let j = u * 32u + l;
            let lane_on = j < S;
            let cx = nx;
            let csb = nsb;
            nx = nx2;
            nsb = nsb2;
            let wrap = u + 1u == T;
            // prefetch step t + 2
            let wrapa = ua + 1u == T;
            let ub = select(ua + 1u, 0u, wrapa);
            let rowb = select(rowa, rowa + 1u, wrapa);
            let jb = ub * 32u + l;
            if (t + 2u < steps && jb < S) {
                nx2 = load_x(jb);
                nsb2 = sb[rowb * gpr + group_of(jb * wps, gsz, gshift)];
            }
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
                // q as f32 without a conversion: 2^23 + q (q < 2^23) minus 2^23, exactly;
                // only the w values of the symbol (cx is zero past w)
                var d = 0.0;
                var xs = 0.0;
                if (wps == 1u) {
                    d = (bitcast<f32>((sym & qmask) | 0x4B000000u) - 8388608.0) * cx.x;
                    xs = cx.x;
                } else if (wps == 2u) {
                    let q2 = bitcast<vec2<f32>>((vec2<u32>(sym, sym >> b1) & vec2<u32>(qmask))
                        | vec2<u32>(0x4B000000u)) - vec2<f32>(8388608.0);
                    d = dot(q2, cx.xy);
                    xs = cx.x + cx.y;
                } else {
                    let qv = bitcast<vec4<f32>>((vec4<u32>(sym, sym >> b1, sym >> b2, sym >> b3)
                        & vec4<u32>(qmask)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
                    d = dot(qv, cx);
                    xs = dot(cx, vec4<f32>(1.0));
                }
                acc += csb.x * d + csb.y * xs;
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
            if (wrap) {
                let s = subgroupAdd(acc);
                if (l == 0u) {
                    y[row] = s;
                }
                acc = 0.0;
            }
            u = ua;
            row = rowa;
            ua = ub;
            rowa = rowb;
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
