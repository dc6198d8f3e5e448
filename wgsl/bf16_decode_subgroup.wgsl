// Lossless bf16/f16 decode, subgroup variant of bf16_decode.wgsl: the 16-bit patterns of W, two
// per u32 word, row-major (out[i] holds weights 2i in the low half and 2i+1 in the high half),
// decoded with the step of bf16_gemv_subgroup.wgsl (words from register planes, ballot prefix
// counts, uniform loop, checks made redundant by the format after the loop). Each lane builds
// its weight's pattern from the exponent symbol and the raw byte; lane pairs join theirs with
// one subgroupShuffleXor and the even lane stores the word (64 consecutive bytes per step).
//
// The host picks it only when the SUBGROUP feature is enabled and the adapter reports a subgroup
// size of 32 (min = max = 32); the kernel re-checks `subgroup_size` and flags every chunk with
// ERR_SUBGROUP otherwise.
//
// import: rans_consts
// import: rans_table
// import: lossless16
// import: f16
// import: rans_subgroup

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

struct Params {
    rows: u32,
    cols: u32,
    prec: u32,           // probability bits n (<= 11)
    chunk_rows: u32,
    tile_chunks: u32,
    n_chunks: u32,
    n_tiles: u32,
    steps_per_row: u32,  // T = K / 32
    n_words: u32,        // u16 words in the stream
    wg_per_tile: u32,
    total_wg: u32,
    wg_x: u32,           // workgroups along x of the 2-D dispatch
    half_f16: u32,       // 0: bf16, 1: f16
    alphabet: u32,       // 256 (the shared table builder reads it)
    _pad1: u32,
    _pad2: u32,
}

const G: u32 = 4u;             // groups of 32 lanes per workgroup
const WG: u32 = 128u;          // = 32 * G

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> freqs: array<u32>;    // u16 pairs, 256 per tile
@group(0) @binding(2) var<storage, read> states: array<u32>;   // 32 per chunk
@group(0) @binding(3) var<storage, read> offsets: array<u32>;  // n_chunks + 1
@group(0) @binding(4) var<storage, read> words: array<u32>;    // u16 pairs
@group(0) @binding(5) var<storage, read_write> errors: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> raw: array<u32>;      // raw bytes, 4 per word
@group(0) @binding(7) var<storage, read_write> out: array<u32>; // R * K / 2 words

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
    let n = P.prec;
    let mmask = (1u << n) - 1u;
    let T = P.steps_per_row;
    let K = P.cols;

    let chunk = tile_first + sub * G + g;
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
    let ltmask = (1u << l) - 1u;
    let rmax = max(P.rows, 1u) - 1u;
    var row = r0;
    var u = 0u;
    // raw byte of the current step, loaded one step ahead (clamped index: past the chunk it is
    // loaded and never used)
    var craw = read_raw(min(row, rmax) * K + l);
    for (var t = 0u; t < steps; t++) {
        let wrap = u + 1u == T;
        let nu = select(u + 1u, 0u, wrap);
        let nrow = select(row, row + 1u, wrap);
        let nraw = read_raw(min(nrow, rmax) * K + nu * 32u + l);
        // a table whose frequencies sum to 2^n has no zero-frequency slot (ERR_TABLE covers
        // the others), so no per-step check
        let e = table[x & mmask];
        let xd = ((e >> 12u) & 0xFFFu) * (x >> n) + (e & 0xFFFu);
        let need = xd < L;
        // the 16-bit pattern (FORMAT.md: sign and low mantissa bits raw, the symbol between)
        let h = pattern16(e >> 24u, craw);
        let hi = subgroupShuffleXor(h, 1u);
        if ((l & 1u) == 0u) {
            out[(row * K + u * 32u + l) >> 1u] = h | (hi << 16u);
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
        u = nu;
        row = nrow;
        craw = nraw;
    }
    if (valid) {
        err |= chunk_end_flags(x, p, end, l);
        if (err != 0u) {
            atomicOr(&errors[chunk], err);
        }
    }
}
