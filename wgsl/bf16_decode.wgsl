// Lossless bf16/f16 decode: the lossless 16-bit form of W (docs/FORMAT.md, "Lossless 16-bit
// weights") back to its 16-bit patterns, two per u32 word, row-major (out[i] holds weights 2i in
// the low half and 2i+1 in the high half, the little-endian bytes of the original tensor).
//
// Structure of rans_gemv.wgsl / bf16_gemv.wgsl: one workgroup = G groups of 32 lanes, each group
// decoding one chunk of one tile with the tile's slot table (n <= 11) in workgroup memory, one
// workgroupBarrier per step for the renormalisation prefix count. K is a multiple of 32 (checked
// by the host), so every lane is active in every step. Each lane puts its 16-bit pattern in
// workgroup memory before the step's barrier; after it, lanes 0..15 write 16 whole u32 words
// (64 consecutive bytes per step and group).
//
// Bounded loops and bounds-checked reads; corrupt input sets bits in errors[chunk] (same bits as
// rans_decode.wgsl) and never hangs the device.

// import: rans_consts
// import: rans_table
// import: lossless16
// import: f16

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

var<workgroup> masks: array<atomic<u32>, 12>;      // G * 3 (triple buffered)
var<workgroup> stage: array<u32, 256>;             // G * 2 * 32 (double buffered by step)

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
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
    let l = lid % 32u;
    let n = P.prec;
    let mmask = (1u << n) - 1u;
    let T = P.steps_per_row;
    let K = P.cols;
    let max_steps = P.chunk_rows * T;

    let chunk = tile_first + sub * G + g;
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
    }
    var row = r0;
    var u = 0u;
    for (var t = 0u; t < max_steps; t++) {
        let step_valid = t < steps;
        var need = false;
        if (step_valid) {
            let j = u * 32u + l;
            let rb = read_raw(row * K + j);
            let lk = lookup_slot(x & mmask, n);
            err |= lk.w;
            let sym = lk.x;
            x = lk.y * (x >> n) + lk.z;
            need = x < L;
            stage[(g * 2u + (t & 1u)) * 32u + l] = pattern16(sym, rb);
        }
        let row_end = step_valid && u == T - 1u;
        if (need) {
            atomicOr(&masks[g * 3u + t % 3u], 1u << l);
        }
        workgroupBarrier();
        let mask = atomicLoad(&masks[g * 3u + t % 3u]);
        if (l == 0u) {
            atomicStore(&masks[g * 3u + (t + 2u) % 3u], 0u);
        }
        if (need) {
            let idx = p + countOneBits(mask & ((1u << l) - 1u));
            var wv = 0u;
            if (idx < end) {
                wv = read16(idx);
            } else {
                err |= ERR_OVER_READ;
            }
            x = (x << 16u) | wv;
        }
        p += countOneBits(mask);
        if (step_valid && l < 16u) {
            let sb = (g * 2u + (t & 1u)) * 32u + 2u * l;
            out[(row * K + u * 32u) / 2u + l] = stage[sb] | (stage[sb + 1u] << 16u);
        }
        if (row_end) {
            row += 1u;
            u = 0u;
        } else {
            u += 1u;
        }
    }
    if (valid) {
        if (x != L) { err |= ERR_FINAL_STATE; }
        if (l == 0u && p != end) { err |= ERR_UNCONSUMED; }
        if (err != 0u) {
            atomicOr(&errors[chunk], err);
        }
    }
}
