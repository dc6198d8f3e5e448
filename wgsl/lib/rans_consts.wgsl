// Constants shared by the rANS kernels that `// import: rans_consts` (appended to them at load
// time): the format's state bound, the slot table's size, and the per-chunk error bits, which
// `ecq::gpu::error_bits` mirrors on the host (one list here instead of one per kernel).

const L: u32 = 65536u;         // rANS states stay in [L, 2^32)
const MAX_TABLE: u32 = 2048u;  // slot table for n <= 11
const SENTINEL: u32 = 0xFFFFFFFFu;

const ERR_BAD_STATE: u32 = 1u;
const ERR_ZERO_FREQ: u32 = 2u;
const ERR_OVER_READ: u32 = 4u;
const ERR_FINAL_STATE: u32 = 8u;
const ERR_UNCONSUMED: u32 = 16u;
const ERR_TABLE: u32 = 32u;
const ERR_OFFSETS: u32 = 64u;
const ERR_SUBGROUP: u32 = 128u;
