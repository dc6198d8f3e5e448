// Shared by the kernels of the indexed bf16 form (src/lossless/indexed.rs), appended to them at
// load time: the uniform block and the rebuild of weights, two at a time, from index and raw
// words.
//
// Layout, for a row-major R x K matrix with K a multiple of 16, in units of 16 weights (unit u
// = weights 16u .. 16u+15, never crossing a row), made by IndexedMatrix::index_gpu_words and
// raw_gpu_words:
//   codes[u]: vec2<u32>, word h = weights 16u + 8h .. + 8, 4-bit indices (index i stands for
//             exponent base + i); after the shift of pair p (pair_code), the indices of
//             weights 2p and 2p + 1 sit at bits 7..11 and 23..27: the low exponent bits of a
//             word holding two bf16 patterns;
//   raw[u]:   vec4<u32>, word q = weights 16u + 4q .. + 4: sign and mantissa of weights 0, 1
//             in bf16 positions (PAIR_RAW), weights 2, 3 rotated right by 8;
//   escapes of row r: esc[esc_rows[r] .. esc_rows[r + 1]], each (column, bf16 bits); their
//             dense slots hold index 0 and raw 0, the value P.escape_slot = 2^(base - 127).
//
// So a pair of weights costs a shift of the code word, a rotate of the raw word for one pair
// in two, and three 3-input logic operations, with no table. The GEMV rebuilds every weight
// with exponent DENSE_BASE + index instead of base + index: the exponent field is then the
// index OR a constant, and the true dense sum is the computed one times P.scale =
// 2^(base - DENSE_BASE), exact (a power of two). The rebuilt weights lie in [2^-15, 2), the
// range of ordinary weights, so nothing overflows that the true ones would not.

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

const PAIR_INDEX: u32 = 0x07800780u;       // the two indices in a two-bf16 word
const PAIR_RAW: u32 = 0x807F807Fu;         // the two signs and mantissas
const PAIR_DENSE_BASE: u32 = 0x38003800u;  // DENSE_BASE = 112 in both exponent fields

fn rotl8(v: u32) -> u32 {
    return (v << 8u) | (v >> 24u);
}

// Code word c shifted for pair p (0..3) of its eight weights.
fn pair_code(c: u32, p: u32) -> u32 {
    switch p {
        case 0u: { return c; }
        case 1u: { return c << 4u; }
        case 2u: { return c >> 4u; }
        default: { return rotl8(c); }
    }
}

// Raw word r rotated for its pair k (0: weights 0, 1; 1: weights 2, 3).
fn pair_raw(r: u32, k: u32) -> u32 {
    return select(r, rotl8(r), k == 1u);
}

// Two weights as bf16 patterns with exponent DENSE_BASE + index (the GEMV's form).
fn dense_pair(cp: u32, rp: u32) -> u32 {
    return (cp & PAIR_INDEX) | (rp & PAIR_RAW) | PAIR_DENSE_BASE;
}

// Two weights as their true bf16 patterns (exponent base + index; no carry crosses halves,
// base + 15 <= 254).
fn true_pair(cp: u32, rp: u32) -> u32 {
    return ((cp & PAIR_INDEX) + P.base_bits) | (rp & PAIR_RAW);
}
