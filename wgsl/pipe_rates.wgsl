// Instruction-rate probe (issue 5, "the limit, measured"; `examples/pipe_rates.rs`): how many
// 32-lane instructions of one kind a GPU retires per clock, so that a kernel's compiled
// instruction mix gives a lower bound on its time per execution pipe. NVIDIA's SM partitions
// feed integer logic, shifts and integer adds to a narrower pipe than f32 multiply-adds (the
// rates this measures); the fused GEMV is mostly such integer work.
//
// Every invocation runs 8 P.iters rounds of one kind of operation over eight u32 (or f32) values.
// Each round's eight updates read only the previous round's values (eight independent chains,
// so latency is hidden by the 8-wide parallelism and the resident warps, and issue or the pipe
// is the limit), each a mix of two of them and a constant, so the compiler can neither fold
// rounds together nor drop them: the result goes to `out`. Which instruction each OP compiles
// to is checked in the compiled code (`scripts/nvidia_sass.py`; BENCHMARKS.md says what it
// found), not assumed.
//
// OP: 0 f32 multiply-add (FFMA); 1 three-input logic (a & b) ^ c (LOP3); 2 a right shift by a
// lane-uniform amount (SHF); 3 u32 multiply-add (IMAD); 4 three-input u32 add
// (IADD3, or IMAD.IADD where the compiler balances pipes); 5 OP 0 and OP 1 interleaved, one
// each per value (do the two pipes overlap?); 6 subgroup shuffle (SHFL).

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

struct Params {
    iters: u32,
    seed: u32,
    shift: u32,     // rotate amount for OP 2 (from the host, so it is not a literal)
    _pad: u32,
}

override OP: u32 = 0u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

// One round: eight updates, each reading the previous round's values only.
fn round_u(b: array<u32, 8>, s: u32, src: u32) -> array<u32, 8> {
    var a = b;
    for (var k = 0u; k < 8u; k++) {
        let k1 = (k + 1u) & 7u;
        if (OP == 1u || OP == 5u) {
            a[k] = (b[k] & b[k1]) ^ 0x5A5A5A5Au;
        } else if (OP == 2u) {
            a[k] = b[k1] >> s;
        } else if (OP == 3u) {
            a[k] = b[k] * b[k1] + 0x9E3779B9u;
        } else if (OP == 4u) {
            a[k] = b[k] + b[k1] + 0x9E3779B9u;
        } else if (OP == 6u) {
            a[k] = subgroupShuffle(b[k1], src);
        }
    }
    return a;
}

fn round_f(g: array<f32, 8>) -> array<f32, 8> {
    var f = g;
    for (var k = 0u; k < 8u; k++) {
        if (OP == 0u || OP == 5u) {
            // (values stay in [0, 0.5): x y + 0.1 has its stable fixed point at 0.113, so no
            // infinities or NaNs, whatever a GPU does with them)
            f[k] = fma(g[k], g[(k + 1u) & 7u], 0.1);
        }
    }
    return f;
}

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let s0 = gid.x * 0x9E3779B9u ^ P.seed;
    var a = array<u32, 8>(
        s0, s0 ^ 0x85EBCA6Bu, s0 * 3u, s0 + 0xC2B2AE35u,
        s0 ^ 0x27D4EB2Fu, s0 * 5u, s0 + 0x165667B1u, s0 ^ 0xD3A2646Cu,
    );
    var f = array<f32, 8>();
    for (var k = 0u; k < 8u; k++) {
        f[k] = f32(a[k] & 0xFFFFu) * (1.0 / 131072.0);
    }
    let s = P.shift & 31u;
    let src = (lane + 1u) & 31u;
    // eight rounds per iteration, written out, so that the loop's own instructions (counter,
    // compare, branch, register moves) are few against the 64 or 128 measured ones
    for (var i = 0u; i < P.iters; i++) {
        a = round_u(round_u(round_u(round_u(a, s, src), s, src), s, src), s, src);
        a = round_u(round_u(round_u(round_u(a, s, src), s, src), s, src), s, src);
        f = round_f(round_f(round_f(round_f(f))));
        f = round_f(round_f(round_f(round_f(f))));
    }
    var r = 0u;
    for (var k = 0u; k < 8u; k++) {
        r ^= a[k] ^ bitcast<u32>(f[k]);
    }
    out[gid.x] = r;
}
