// Plain MLX 4-bit GEMV of several activation vectors in one launch, Y = X W^T for NVEC vectors
// (f32 activations, exact f32 math): the plain counterpart of rans_gemv_blocked.wgsl's
// NVEC > 1 build, the baseline its launches are timed against (BENCHMARKS.md issue 5, step 87).
//
// Why a kernel of its own: every other plain GEMV reads the weights once per vector, so M of
// them read M times the weights; timed against those, a fused kernel that decodes once for M
// vectors would be credited with what any kernel reading its weights once gets.
//
// Layout: the fused window kernel's without the decode. A group of 32 lanes owns two rows; per
// block a lane loads 16 weights of each row (8 bytes: a group reads 256 contiguous bytes a
// row), turns them into floats once (nibbles masked in place and OR-ed into the bits of 2^23,
// as qgemv4_pipe.wgsl does) and multiplies them with each vector's 16 activations, so the
// weights are read and converted once for all vectors. The next block's weights are loaded
// before the current one is multiplied. Per vector and row the lanes' sums meet by
// subgroupAdd. Per vector, row and block the arithmetic is rans_gemv_blocked.wgsl's (q x per
// nibble place, then scale * dot(., place) + bias * sum(x)).
//
// Needs K % 16 == 0, GS % 16 == 0 and 32-wide subgroups; the host checks all of it and the
// buffer sizes (`GpuQuantizedMatrix::gemv_many_dispatch`). This kernel runs without naga's
// bounds checks (`Kernel::indices_in_range_by_construction`), as the fused kernel it is timed
// against does: weight indices are clamped to the row, every other index comes from the
// uniform block and the lane.
// import: side

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,     // vec2<u32> of packed weights per row = K / 16
    groups_per_row: u32,  // K / GS
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,
    zero: u32,            // always 0 (see `magic`)
    _pad1: u32,
}

override GS: u32 = 64u;
// Activation vectors per launch, 1..=MAX_NVEC (the host checks).
override NVEC: u32 = 1u;
const MAX_NVEC: u32 = 16u;

const ML = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
const PLACE = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;    // NVEC vectors of K
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;    // NVEC rows of R outputs

// The low four nibbles of `w` in place, exactly: (q0, 16 q1, 256 q2, 4096 q3). `magic` is the
// bits of 2^23, held in a register (see qgemv4_pipe.wgsl).
fn q4(w: u32, magic: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>((vec4<u32>(w) & ML) | vec4<u32>(magic)) - vec4<f32>(8388608.0);
}

// The 16 weights of piece `w` as floats, per nibble place: weights 4c..4c+3 in element c.
fn piece_floats(w: vec2<u32>, magic: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(q4(w.x, magic), q4(w.x >> 16u, magic), q4(w.y, magic), q4(w.y >> 16u, magic));
}

// sum(q x) of a piece per nibble place (f: piece_floats, x0..x3: its 16 activations in order).
fn piece_qx(f: array<vec4<f32>, 4>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> vec4<f32> {
    var qx = f[0] * x0;
    qx += f[1] * x1;
    qx += f[2] * x2;
    qx += f[3] * x3;
    return qx;
}

// What a block's vectors share: the piece's first activation vec4, the activations' stride (a
// vector's, in vec4), both rows' weights as floats and their (scale, bias).
struct PieceVectors {
    x0: u32,
    xrow: u32,
    fa: array<vec4<f32>, 4>,
    fb: array<vec4<f32>, 4>,
    qa: vec2<f32>,
    qb: vec2<f32>,
}

// Vector j's terms of the block for both rows.
fn piece_vector(p: ptr<function, PieceVectors>, j: u32) -> vec2<f32> {
    let xi = j * (*p).xrow + (*p).x0;
    let x0 = X[xi];
    let x1 = X[xi + 1u];
    let x2 = X[xi + 2u];
    let x3 = X[xi + 3u];
    let xs = dot((x0 + x1) + (x2 + x3), vec4<f32>(1.0));
    let qa = (*p).qa;
    let qb = (*p).qb;
    return vec2<f32>(
        qa.x * dot(piece_qx((*p).fa, x0, x1, x2, x3), PLACE) + qa.y * xs,
        qb.x * dot(piece_qx((*p).fb, x0, x1, x2, x3), PLACE) + qb.y * xs,
    );
}

// Vector j's sums of the group's rows 2 pair and 2 pair + 1 (the first at `ra`), written by
// lane 0 where the rows exist.
fn store_vector(j: u32, acc: f32, acc_b: f32, pair: u32, ra: u32, l: u32) {
    let t = subgroupAdd(acc);
    let tb = subgroupAdd(acc_b);
    if (l == 0u && 2u * pair < P.rows) {
        Y[j * P.rows + ra] = t;
        if (2u * pair + 1u < P.rows) {
            Y[j * P.rows + ra + 1u] = tb;
        }
    }
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let magic = 0x4B000000u | P.zero;
    let l = sg_id & 31u;
    // (rows past the end are clamped to the last one and not written: no branch around the
    // subgroup sums)
    let pair = wg * 4u + lid / 32u;
    let last = P.rows - 1u;
    let ra = min(2u * pair, last);
    let rb = min(2u * pair + 1u, last);
    let n2 = P.vec_per_row;
    let end = n2 - 1u;
    let wa = ra * n2;
    let wb = rb * n2;
    let sa0 = ra * P.groups_per_row;
    let sb0 = rb * P.groups_per_row;
    let xrow = P.cols >> 2u;
    var accv = array<f32, MAX_NVEC>();
    var accv_b = array<f32, MAX_NVEC>();
    var v = l;
    var a = W[wa + min(v, end)];
    var b = W[wb + min(v, end)];
    for (; v < n2; v += 32u) {
        let vn = min(v + 32u, end);
        let na = W[wa + vn];
        let nb = W[wb + vn];
        let gi = (v * 16u) / GS;
        let qa = side(sa0 + gi);
        let qb = side(sb0 + gi);
        let fa = piece_floats(a, magic);
        let fb = piece_floats(b, magic);
        // (written out per vector, constant indices: the accumulators stay in registers
        // whether or not the driver unrolls a loop over them)
        var pv = PieceVectors(v * 4u, xrow, fa, fb, qa, qb);
        if (NVEC > 0u) {
            let t = piece_vector(&pv, 0u);
            accv[0] += t.x;
            accv_b[0] += t.y;
        }
        if (NVEC > 1u) {
            let t = piece_vector(&pv, 1u);
            accv[1] += t.x;
            accv_b[1] += t.y;
        }
        if (NVEC > 2u) {
            let t = piece_vector(&pv, 2u);
            accv[2] += t.x;
            accv_b[2] += t.y;
        }
        if (NVEC > 3u) {
            let t = piece_vector(&pv, 3u);
            accv[3] += t.x;
            accv_b[3] += t.y;
        }
        if (NVEC > 4u) {
            let t = piece_vector(&pv, 4u);
            accv[4] += t.x;
            accv_b[4] += t.y;
        }
        if (NVEC > 5u) {
            let t = piece_vector(&pv, 5u);
            accv[5] += t.x;
            accv_b[5] += t.y;
        }
        if (NVEC > 6u) {
            let t = piece_vector(&pv, 6u);
            accv[6] += t.x;
            accv_b[6] += t.y;
        }
        if (NVEC > 7u) {
            let t = piece_vector(&pv, 7u);
            accv[7] += t.x;
            accv_b[7] += t.y;
        }
        if (NVEC > 8u) {
            let t = piece_vector(&pv, 8u);
            accv[8] += t.x;
            accv_b[8] += t.y;
        }
        if (NVEC > 9u) {
            let t = piece_vector(&pv, 9u);
            accv[9] += t.x;
            accv_b[9] += t.y;
        }
        if (NVEC > 10u) {
            let t = piece_vector(&pv, 10u);
            accv[10] += t.x;
            accv_b[10] += t.y;
        }
        if (NVEC > 11u) {
            let t = piece_vector(&pv, 11u);
            accv[11] += t.x;
            accv_b[11] += t.y;
        }
        if (NVEC > 12u) {
            let t = piece_vector(&pv, 12u);
            accv[12] += t.x;
            accv_b[12] += t.y;
        }
        if (NVEC > 13u) {
            let t = piece_vector(&pv, 13u);
            accv[13] += t.x;
            accv_b[13] += t.y;
        }
        if (NVEC > 14u) {
            let t = piece_vector(&pv, 14u);
            accv[14] += t.x;
            accv_b[14] += t.y;
        }
        if (NVEC > 15u) {
            let t = piece_vector(&pv, 15u);
            accv[15] += t.x;
            accv_b[15] += t.y;
        }
        a = na;
        b = nb;
    }
    if (NVEC > 0u) {
        store_vector(0u, accv[0], accv_b[0], pair, ra, l);
    }
    if (NVEC > 1u) {
        store_vector(1u, accv[1], accv_b[1], pair, ra, l);
    }
    if (NVEC > 2u) {
        store_vector(2u, accv[2], accv_b[2], pair, ra, l);
    }
    if (NVEC > 3u) {
        store_vector(3u, accv[3], accv_b[3], pair, ra, l);
    }
    if (NVEC > 4u) {
        store_vector(4u, accv[4], accv_b[4], pair, ra, l);
    }
    if (NVEC > 5u) {
        store_vector(5u, accv[5], accv_b[5], pair, ra, l);
    }
    if (NVEC > 6u) {
        store_vector(6u, accv[6], accv_b[6], pair, ra, l);
    }
    if (NVEC > 7u) {
        store_vector(7u, accv[7], accv_b[7], pair, ra, l);
    }
    if (NVEC > 8u) {
        store_vector(8u, accv[8], accv_b[8], pair, ra, l);
    }
    if (NVEC > 9u) {
        store_vector(9u, accv[9], accv_b[9], pair, ra, l);
    }
    if (NVEC > 10u) {
        store_vector(10u, accv[10], accv_b[10], pair, ra, l);
    }
    if (NVEC > 11u) {
        store_vector(11u, accv[11], accv_b[11], pair, ra, l);
    }
    if (NVEC > 12u) {
        store_vector(12u, accv[12], accv_b[12], pair, ra, l);
    }
    if (NVEC > 13u) {
        store_vector(13u, accv[13], accv_b[13], pair, ra, l);
    }
    if (NVEC > 14u) {
        store_vector(14u, accv[14], accv_b[14], pair, ra, l);
    }
    if (NVEC > 15u) {
        store_vector(15u, accv[15], accv_b[15], pair, ra, l);
    }
}
