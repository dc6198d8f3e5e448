// Shared by the lanes kernels (rans_decode_lanes.wgsl, which says how they work, and
// rans_gemv_lanes.wgsl): a chunk's 32 interleaved lanes decoded by a group of W invocations
// of one subgroup, K = 32 / W consecutive lanes each, without a barrier a step. Declares the
// overrides both kernels take (the form, the precision, the order, the window start, the
// group width); uses the importing kernel's `P`, `states`, `offsets`, `words` and the decode
// table `table` (rans_table_sg.wgsl), and rans_consts.wgsl.

// The form: 3 a window split, 0 byte symbols (`bits * wps == 8`: the whole form of 4-bit
// weights two a symbol, `ecq encode`'s default; 2-bit four, 8-bit one), 2 a split matrix
// (2-bit symbols of four weights' high bits, two raw low bits a weight after the stream,
// `ecq encode --split`).
override LOW: u32 = 3u;
// Probability bits (<= 11), set by the host.
override PREC: u32 = 11u;
// 1: row-pair order (window splits and split matrices): a coded row is matrix rows 2r and
// 2r + 1 interleaved, in runs of two symbols (window splits) or four steps (split matrices).
override PAIR: u32 = 0u;
// The window start of the split (window_bits.wgsl).
override WSTART: u32 = 0u;
// Invocations per chunk: 4, 8, 16 or 32 (the host checks), dividing the subgroup size.
override W: u32 = 8u;
// Lanes per invocation (<= 8).
override K: u32 = 32u / W;
// Groups of 32 (one lane an invocation) hold their next stream words in registers
// (`plane_at`) instead of loading each when they take it: on an H200 at W = 32 that decoded
// whole symbols 1.3-1.5x and split matrices 1.2x faster (BENCHMARKS.md issue 5, step 129),
// and window splits 1.12-1.19x once their words were merged four steps at a time (step 130;
// before, when each step merged its own, 7-8% slower).
override PLANES: bool = W == 32u;

// Invocations a workgroup: WG / W chunks.
const WG: u32 = 128u;

fn read16(idx: u32) -> u32 {
    return (words[idx >> 1u] >> ((idx & 1u) * 16u)) & 0xFFFFu;
}

// Invocation i's u32 of the plane of 64 stream words from u16 word `base` (even): words
// base + 2i and base + 2i + 1. Clamped to the buffer: past it a plane holds its last word,
// which only a corrupt stream reads (and the lane reports).
fn plane_at(base: u32, i: u32) -> u32 {
    return words[min((base >> 1u) + i, arrayLength(&words) - 1u)];
}

// An invocation's place: its group's first invocation in the subgroup, the group's W bits of
// a ballot word, the bits of the invocation's lower ones in the group, and whether the group
// is W consecutive invocations of one subgroup in order (`ok`: each invocation's place in
// its subgroup's groups of W matches its place in the group, and the invocation in its
// subgroup's first place holds the group's first local index).
struct LanesPlace {
    first: u32,
    group_bits: u32,
    lower: u32,
    ok: bool,
}

// (the shuffle index and the ballot word stay inside the subgroup even where W is wider than
// it, a layout `ok` rejects: an index past the subgroup reads an undefined value, which a
// driver may carry into branches) Called in uniform control flow.
fn lanes_place(lid: u32, sg_id: u32, sg_size: u32) -> LanesPlace {
    let i = lid % W;
    let first = sg_id - sg_id % W;
    let first_lid = subgroupShuffle(lid, first);
    // (W divides 32, so a group's bits of a ballot lie in one word of it)
    let ok = sg_size % W == 0u && sg_id % W == i && first_lid == lid - i;
    return LanesPlace(first, 0xFFFFFFFFu >> (32u - W), (1u << i) - 1u, ok);
}

// An invocation's chunk in a launch of WG-invocation workgroups of WG / W chunks each
// (workgroup `wg` below P.total_wg: the kernel returns before for those past it): the tile,
// the chunk, the invocation's place i (lanes i K .. i K + K - 1) and its subgroup layout,
// whether the chunk is in the tile (`in_tile`, it reports errors) and is decoded (`valid`:
// in the tile with groups laid out as the kernel needs), and the chunk's first coded row and
// row count (0 where not valid). Called in uniform control flow.
struct LanesChunk {
    tile: u32,
    chunk: u32,
    i: u32,
    pl: LanesPlace,
    in_tile: bool,
    valid: bool,
    r0: u32,
    nrows: u32,
}

fn lanes_chunk(wg: u32, lid: u32, sg_id: u32, sg_size: u32) -> LanesChunk {
    let tile = wg / P.wg_per_tile;
    let sub = wg % P.wg_per_tile;
    let tile_first = tile * P.tile_chunks;
    let tile_end = min(tile_first + P.tile_chunks, P.n_chunks);
    let pl = lanes_place(lid, sg_id, sg_size);
    let chunk = tile_first + sub * (WG / W) + lid / W;
    let in_tile = chunk < tile_end;
    let valid = in_tile && pl.ok;
    var r0 = 0u;
    var nrows = 0u;
    if (valid) {
        r0 = chunk * P.chunk_rows;
        nrows = min(P.chunk_rows, P.rows - r0);
    }
    return LanesChunk(tile, chunk, lid % W, pl, in_tile, valid, r0, nrows);
}

// An invocation's decoder: its K states, the group's stream position `p` and the chunk's end,
// with PLANES the group's next stream words in two planes of 64 held across its invocations
// (`pa`, `pb` from u16 word `base`; invariant p - base < 64 at every step's start, so a
// step's words lie below base + 96), and the errors seen.
struct LanesDecoder {
    x: array<u32, 8>,
    p: u32,
    end: u32,
    base: u32,
    pa: u32,
    pb: u32,
    err: u32,
}

// Invocation i's decoder of chunk `chunk`: its states and the chunk's range where `valid`,
// else states at L and an empty range.
fn lanes_decoder(chunk: u32, i: u32, valid: bool) -> LanesDecoder {
    var d: LanesDecoder;
    d.x = array<u32, 8>(L, L, L, L, L, L, L, L);
    if (valid) {
        for (var k = 0u; k < K; k++) {
            d.x[k] = states[chunk * 32u + i * K + k];
            if (d.x[k] < L) { d.err |= ERR_BAD_STATE; }
        }
        d.p = offsets[chunk];
        d.end = offsets[chunk + 1u];
        if (d.end > P.n_words || d.p > d.end) {
            d.err |= ERR_OFFSETS;
            d.end = min(d.end, P.n_words);
            d.p = min(d.p, d.end);
        }
    }
    d.base = d.p & ~1u;
    if (PLANES) {
        d.pa = plane_at(d.base, i);
        d.pb = plane_at(d.base + 64u, i);
    }
    return d;
}

// One decode step of invocation i's lanes: lane k (< K) decodes where `row_on` and
// k < `left` (0 where the row's symbols end before it), and its symbol is returned in
// element k (0 where it does not decode).
// No branch around the step: on a row past the chunk's end (the last chunk's) the states
// stay as they are by select and need no word, so the renormalisation below runs unguarded
// too. The table is the host's, whose tile flag (ERR_TABLE) catches frequencies not summing
// to 2^n, so every slot has an owner and a step does not check for one. Without that branch
// and that check a step compiles to ~50 instructions instead of ~78 on an H200 at W = 32,
// where the decode ran 1.10-1.26x faster (BENCHMARKS.md issue 5, step 130). Called in
// uniform control flow: every invocation of the subgroup takes part in its ballots and
// shuffles.
fn lanes_step(
    d: ptr<function, LanesDecoder>,
    row_on: bool,
    left: u32,
    i: u32,
    pl: LanesPlace,
    sg_size: u32,
) -> array<u32, 8> {
    let n = PREC;
    let mmask = (1u << n) - 1u;
    var sym = array<u32, 8>(0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
    var need = 0u;
    for (var k = 0u; k < K; k++) {
        let on = row_on && k < left;
        let x = (*d).x[k];
        let e = table[x & mmask];
        let xd = ((e >> 12u) & 0xFFFu) * (x >> n) + (e & 0xFFFu);
        (*d).x[k] = select(x, xd, on);
        sym[k] = select(0u, e >> 24u, on);
        need |= select(0u, 1u << k, on && xd < L);
    }
    // The words the group's lower invocations take, and the group's total, from one ballot a
    // lane index: the group's W bits of ballot k are its invocations' needs of lane k.
    var below = 0u;
    var taken = 0u;
    for (var k = 0u; k < K; k++) {
        let b = subgroupBallot(((need >> k) & 1u) != 0u);
        let gb = (b[pl.first >> 5u] >> (pl.first & 31u)) & pl.group_bits;
        below += countOneBits(gb & pl.lower);
        taken += countOneBits(gb);
    }
    let p = (*d).p;
    if (PLANES) {
        // This lane's word from the planes, taken only if it renormalises. The step's words
        // lie in u32s (p - base) / 2 .. + 16 of the planes (p - base < 64), at 17 different
        // invocations, so each picks beforehand which of its two u32s could be asked for
        // (pa if i >= (p - base) / 2) and one shuffle serves all, as in the blocked kernels'
        // renorm_word (rans_subgroup.wgsl). A word taken past the chunk's end leaves p past
        // it, which the end reports: ERR_OVER_READ.
        let rel0 = p - (*d).base;
        let mine = select((*d).pb, (*d).pa, rel0 <= 2u * i + 1u);
        let r = rel0 + below;
        let src = min(pl.first + ((r >> 1u) & 31u), sg_size - 1u);
        let planed = (subgroupShuffle(mine, src) >> ((r & 1u) * 16u)) & 0xFFFFu;
        let x0 = (*d).x[0];
        (*d).x[0] = select(x0, (x0 << 16u) | planed, (need & 1u) != 0u);
    } else {
        // Every lane loads the word at its position, taken only where it renormalises: a
        // load inside the branch of the lanes that need a word cost lavapipe ~95% of the
        // whole form's decode (it runs a branch whenever any lane of its 8 takes it;
        // BENCHMARKS.md issue 5, step 124). Past the chunk's end the load reads word 0 and
        // the lane that needed it reports the over-read.
        var idx = p + below;
        for (var k = 0u; k < K; k++) {
            let nk = (need >> k) & 1u;
            let ok = idx < (*d).end;
            let wv = read16(select(0u, idx, ok));
            if (nk != 0u && !ok) {
                (*d).err |= ERR_OVER_READ;
            }
            let x = (*d).x[k];
            (*d).x[k] = select(x, (x << 16u) | wv, nk != 0u);
            idx += nk;
        }
    }
    (*d).p = p + taken;
    if (PLANES && (*d).p - (*d).base >= 64u) {
        (*d).pa = (*d).pb;
        (*d).base += 64u;
        (*d).pb = plane_at((*d).base + 64u, i);
    }
    return sym;
}

// The errors a chunk's decode ends with, for invocation i: the decoder's, a state not back
// at L, and (the group's first invocation, of a valid chunk) words over-read or left.
fn lanes_end_errors(d: LanesDecoder, i: u32, valid: bool) -> u32 {
    var e = d.err;
    for (var k = 0u; k < K; k++) {
        if (d.x[k] != L) { e |= ERR_FINAL_STATE; }
    }
    if (i == 0u && valid) {
        if (d.p > d.end) {
            e |= ERR_OVER_READ;
        } else if (d.p != d.end) {
            e |= ERR_UNCONSUMED;
        }
    }
    return e;
}

// The errors to report for chunk c at its end: the decoder's (`lanes_end_errors`), a tile
// table whose frequencies do not sum to 2^n (`bad_table`) and a subgroup layout the kernel
// cannot run (every chunk of such a device is flagged, never decoded).
fn lanes_chunk_errors(d: LanesDecoder, c: LanesChunk, bad_table: bool) -> u32 {
    return lanes_end_errors(d, c.i, c.valid) | select(0u, ERR_TABLE, bad_table)
        | select(0u, ERR_SUBGROUP, !c.pl.ok);
}

// K < 4 lanes an invocation: `held` with step q's (q < 4 / K) symbols of the invocation's
// K lanes added, lane k's in byte q K + k, for `lanes_gather` after the block's last step.
fn lanes_hold(held: u32, sym: array<u32, 8>, q: u32) -> u32 {
    var h = held;
    for (var k = 0u; k < K; k++) {
        h |= sym[k] << (8u * (q * K + k));
    }
    return h;
}

// The first symbol of the word invocation i gathers (`lanes_gather`) after step u, step q of
// its block: the block's step i / 8, lanes 4 (i % 8) .. + 3.
fn lanes_gathered_symbol(u: u32, q: u32, i: u32) -> u32 {
    return (u - q + i / 8u) * 32u + 4u * (i % 8u);
}

// K < 4 lanes an invocation: after a block of Q = 4 / K steps in which each invocation kept
// step q's symbol of lane k in byte q K + k of `held`, invocation i's word of four symbols:
// those of the block's step i / 8, lanes 4 (i % 8) .. + 3, symbol c in byte c, K bytes from
// each of the Q invocations holding them (one shuffle each), as the blocked window decode
// gathers its 4-step blocks. Merging a window split's four symbols at every step made four
// words of which one was kept; byte symbols took 4 / K - 1 shuffles a step and wrote from
// one invocation in 4 / K (BENCHMARKS.md issue 5, steps 130 and 132). Called in uniform
// control flow.
fn lanes_gather(held: u32, i: u32, pl: LanesPlace, sg_size: u32) -> u32 {
    let q_steps = max(4u / K, 1u);
    let t = i / 8u;
    let m8 = i % 8u;
    // (K bytes; written so that no constant shift reaches 32 where K >= 4)
    let kmask = 0xFFFFFFFFu >> (32u - 8u * min(K, 3u));
    var word = 0u;
    for (var c = 0u; c < q_steps; c++) {
        let src = min(pl.first + 4u * m8 / K + c, sg_size - 1u);
        let v = subgroupShuffle(held, src);
        word |= ((v >> (8u * K * t)) & kmask) << (8u * K * c);
    }
    return word;
}

// The four symbols of a word, symbol c in the low byte of element c: symbols b .. b + 3 of
// `sym` as they are, or a gathered word's (symbol c in byte c) shifted down without a mask.
// Either way `sv.x | sv.y << 8 | sv.z << 16 | sv.w << 24` is the word, and a window split's
// merge (`window_words`) reads the low bytes: the symbols are never packed only to be
// unpacked (at K >= 4 a pack cost window splits 1-3% at W = 8 on an H200, BENCHMARKS.md
// issue 5, step 134).
fn lanes_symbols(sym: array<u32, 8>, b: u32) -> vec4<u32> {
    return vec4<u32>(sym[b], sym[b + 1u], sym[b + 2u], sym[b + 3u]);
}

fn lanes_unpacked(word: u32) -> vec4<u32> {
    return vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u);
}
