// Fused rANS decode + dequantize + GEMV, subgroup variant: the same computation as
// rans_gemv.wgsl for adapters whose subgroups are exactly 32 invocations wide (NVIDIA, Apple).
// The host picks it only when the SUBGROUP feature is enabled and the adapter reports a
// subgroup size of 32 (min = max = 32); the kernel re-checks `subgroup_size` and flags every
// chunk otherwise (error bit 128), so a wrong pick is reported, never silently wrong.
//
// The kernel is bound by the instructions of its serial rANS step (issue 5), so the step is
// kept as short as the format allows:
// * renormalisation: the prefix count of the lanes that need a word is one subgroupBallot and
//   two countOneBits; no workgroup barrier in the loop, each group of 32 runs at its own pace;
// * words come from four "planes" of 64 words held in registers (lane l holds the u32 with
//   words base + 64c + 2l, +1 of plane c): a step reads at most 32 words at offsets < 96 from
//   `base`, i.e. from the first two planes, with two subgroupShuffles and a select; when 64
//   words are used up the planes move down and one coalesced 128-byte load fetches the fourth,
//   about 128 words (8 steps at 3.7 bits/weight) before it is read;
// * no per-step checks that the format makes redundant: a table whose frequencies sum to 2^n
//   has no zero-frequency slot (ERR_TABLE covers the rest), and a stream that reads past its
//   chunk's end ends with p > end, so the over-read flag is raised once, after the loop;
// * the activations and (scale, bias) of the next step are loaded one step ahead (their
//   indices are clamped into the arrays instead of branching); each row's 32 lane sums are
//   reduced with subgroupAdd when the row ends.
// The word buffer is read as u32 (the host pads it to a multiple of 16 bytes).
// plane_at, the renormalisation read and the end checks come from wgsl/lib/rans_subgroup.wgsl;
// the chunk start is written out here instead of calling its chunk_start: through that
// function the driver scheduled the loop differently and this kernel ran 7% slower on an H200
// (162 -> 175 µs at 4096x14336, two alternating runs each), while the decode and bf16 subgroup
// kernels did not change.
// import: rans_consts
// import: rans_table
// import: rans_subgroup
// import: side

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

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, A per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 words, 2 per u32
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
@group(0) @binding(7) var<storage, read> xv: array<f32>;          // activations, K
@group(0) @binding(8) var<storage, read_write> y: array<f32>;     // R outputs

// MLX group index of weight k: k >> gshift when the group size is a power of two (gshift < 32),
// else k / gsz.
fn group_of(k: u32, gsz: u32, gshift: u32) -> u32 {
    if (gshift < 32u) {
        return k >> gshift;
    }
    return k / gsz;
}

// Activations of the w weights from weight k0 (zeros past w).
fn load_x(k0: u32, wps: u32) -> vec4<f32> {
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
    let l = sg_id & 31u;
    let n = select(P.prec, PREC, PREC != 0u);
    let mmask = (1u << n) - 1u;
    let T = P.steps_per_row;
    let K = P.cols;
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
    let ltmask = (1u << l) - 1u;
    let kstep = 32u * wps;
    let k_first = l * wps;
    // clamps for the look-ahead loads (only used when the matrix has weights)
    let xmax = max(K, wps) - wps;
    let gmax = max(gpr, 1u) - 1u;

    for (var it = 0u; it < P.chunk_iters; it++) {
        let chunk = tile_first + (sub * P.chunk_iters + it) * G + g;
        let valid = chunk < tile_end;
        var steps0 = 0u;
        var r00 = 0u;
        var x = L;
        var p0 = 0u;
        var end0 = 0u;
        var err = 0u;
        if (valid) {
            r00 = chunk * P.chunk_rows;
            steps0 = min(P.chunk_rows, P.rows - r00) * T;
            x = states[chunk * 32u + l];
            if (x < L) { err |= ERR_BAD_STATE; }
            p0 = offsets[chunk];
            end0 = offsets[chunk + 1u];
            if (end0 > P.n_words || p0 > end0) {
                err |= ERR_OFFSETS;
                end0 = min(end0, P.n_words);
                p0 = min(p0, end0);
            }
            if (bad_table) { err |= ERR_TABLE; }
            if (sg_size != 32u) { err |= ERR_SUBGROUP; }
        }
        // The same in every lane of the group; broadcast so the compiler can see that the loop
        // and its branches are uniform (it then needs no per-step active-mask bookkeeping).
        let steps = subgroupBroadcastFirst(steps0);
        let r0 = subgroupBroadcastFirst(r00);
        var p = subgroupBroadcastFirst(p0);
        let end = subgroupBroadcastFirst(end0);
        // word planes, see plane_at; invariant p - base < 64 at the start of a step
        var base = p & ~1u;
        var pa = plane_at(base, l);
        var pb = plane_at(base + 64u, l);
        var pc = plane_at(base + 128u, l);
        var pd = plane_at(base + 192u, l);
        // position of the current step: row, step in row, first weight of this lane
        var row = r0;
        var u = 0u;
        var jw = k_first;
        let rmax = max(P.rows, 1u) - 1u;
        var cx = load_x(min(jw, xmax), wps);
        var csb = side(min(row, rmax) * gpr + min(group_of(jw, gsz, gshift), gmax));
        var acc = 0.0;
        for (var t = 0u; t < steps; t++) {
            // The next step's position; its activations and (scale, bias) are loaded now, from
            // clamped indices (past the chunk they are loaded and never used), so no branch.
            let wrap = u + 1u == T;
            let nu = select(u + 1u, 0u, wrap);
            let nrow = select(row, row + 1u, wrap);
            let njw = select(jw + kstep, k_first, wrap);
            let nx = load_x(min(njw, xmax), wps);
            let nsb = side(min(nrow, rmax) * gpr + min(group_of(njw, gsz, gshift), gmax));
            // Decode in every lane; lanes past the row's end (K not a multiple of 32 w) keep
            // their state (x >= 2^16, so they need no word) and add nothing.
            let on = jw < K;
            let slot = x & mmask;
            var f = 1u;
            var bias = 0u;
            var sym = 0u;
            if (n <= 11u) {
                let e = table[slot];
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
                if (on && (slot >= c + f || f == 0u)) {
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
            let xd = select(x, f * (x >> n) + bias, on);
            let need = xd < L;
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
            acc += select(0.0, csb.x * d + csb.y * xs, on);
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
            if (wrap) {
                let s = subgroupAdd(acc);
                if (l == 0u) {
                    y[row] = s;
                }
                acc = 0.0;
            }
            u = nu;
            row = nrow;
            jw = njw;
            cx = nx;
            csb = nsb;
        }
        if (valid) {
            err |= chunk_end_flags(x, p, end, l);
            if (err != 0u) {
                atomicOr(&errors[chunk], err);
            }
        }
    }
}
