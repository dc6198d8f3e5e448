// Shared by the kernels of the indexed bf16 form (src/lossless/indexed.rs), appended to them at
// load time: the uniform block and the rebuild of weights, two at a time, from the packed words.
//
// Layout (IndexedMatrix::gpu_words), for a row-major R x K matrix, K a multiple of 16, 12 bits
// per weight:
//   - an octet (8 weights, pairs p = 0..4 of weights 2p, 2p + 1) is three words A, B, C;
//   - a pair's target is a word of two bf16-like halves (low weight in bits 0..16): sign 15,
//     4-bit index 7..11, mantissa 0..7 (PAIR_FIELDS); bits 11..15 of each half are spare;
//   - A, B, C hold the targets of pairs 0, 1, 2, and in their spare bits pair 3: A its two
//     indices, B the mantissa bits 0..4, C the mantissa bits 4..7 (at 11..14) and signs (14);
//   - a unit is 2 octets (16 weights: one thread's share of an iteration), its words as three
//     vec2<u32> (octet o in component o); a row's units form tiles of up to 32 (one per thread
//     of a row), each storing its m units' A vec2s, then their B, then their C: a warp's three
//     loads are each contiguous;
//   - escapes of row r: esc[esc_rows[r] .. esc_rows[r + 1]], each (column, bf16 bits); their
//     dense slots hold index 0 and raw 0, the value P.escape_slot = 2^(base - 127).
//
// So pairs 0-2 cost one AND/OR each and pair 3 four shifts and four logic operations, and no
// table. The GEMV rebuilds every weight with exponent DENSE_BASE + index instead of base +
// index: the exponent field is then the index OR a constant, and the true dense sum is the
// computed one times P.scale = 2^(base - DENSE_BASE), exact (a power of two). The rebuilt
// weights lie in [2^-15, 2), the range of ordinary weights, so nothing overflows that the
// true ones would not.

struct IndexedParams {
    rows: u32,
    cols: u32,
    wg_x: u32,
    total_wg: u32,
    base_bits: u32,     // window base in both halves' exponent fields: base << 7 | base << 23
    scale: f32,         // 2^(base - DENSE_BASE)
    escape_slot: f32,   // 2^(base - 127)
    _pad: u32,
}

const PAIR_FIELDS: u32 = 0x87FF87FFu;      // signs, indices, mantissas of a pair's target
const PAIR_INDEX: u32 = 0x07800780u;       // the two indices
const PAIR_DENSE_BASE: u32 = 0x38003800u;  // DENSE_BASE = 112 in both exponent fields

// The four pair targets of the octet (a, b, c) (fields only, spare bits clear).
fn octet_targets(a: u32, b: u32, c: u32) -> vec4<u32> {
    let p3 = ((a >> 4u) & PAIR_INDEX) | ((b >> 11u) & 0x000F000Fu) | ((c >> 7u) & 0x00700070u)
        | ((c << 1u) & 0x80008000u);
    return vec4<u32>(a & PAIR_FIELDS, b & PAIR_FIELDS, c & PAIR_FIELDS, p3);
}

// A target as the GEMV's two bf16 weights (exponent DENSE_BASE + index).
fn dense_pair(t: u32) -> u32 {
    return t | PAIR_DENSE_BASE;
}

// A target as its two true bf16 patterns (exponent base + index; no carry crosses halves,
// base + 15 <= 254).
fn true_pair(t: u32) -> u32 {
    return (t & ~PAIR_INDEX) | ((t & PAIR_INDEX) + P.base_bits);
}

// vec2 index of the A words of unit u (of n units per row) in row `row`, and the distance to
// its B and C words.
fn unit_words(row: u32, u: u32, n: u32) -> vec2<u32> {
    let t0 = u & ~31u;
    let m = min(32u, n - t0);
    return vec2<u32>((row * n + t0) * 3u + (u - t0), m);
}
