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
// Two build options measure where the per-vector time goes (BENCHMARKS.md issue 5, step 88;
// `GpuQuantizedMatrix::gemv_many_diagnostic_dispatch`): PAIRS = 2 gives a group four rows (two
// pairs), so each activation load serves four rows instead of two (same arithmetic per row,
// same outputs); XMODE = 1 makes every vector read vector 0's activations and XMODE = 2 loads
// only vector 0's and derives the others by one add a value (diagnostics: wrong outputs).
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
// Row pairs a group of 32 lanes: 1 or 2 (see the top).
override PAIRS: u32 = 1u;
// 0 = the GEMV; 1, 2 = diagnostics (see the top).
override XMODE: u32 = 0u;
// The activations come in lane order (`ecq::gpu::x_lane_order`; rans_gemv_blocked.wgsl's
// XLANES): a group's four 16-byte loads of a block's activations then read four runs of 512
// contiguous bytes instead of each touching all 16 of the block's 128-byte lines.
override XLANES: bool = false;

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
// vector's, in vec4), the rows' weights as floats and their (scale, bias) (fc.. qd: the second
// pair, PAIRS = 2), and vector 0's activations (XMODE = 2).
struct PieceVectors {
    x0: u32,
    xrow: u32,
    fa: array<vec4<f32>, 4>,
    fb: array<vec4<f32>, 4>,
    qa: vec2<f32>,
    qb: vec2<f32>,
    fc: array<vec4<f32>, 4>,
    fd: array<vec4<f32>, 4>,
    qc: vec2<f32>,
    qd: vec2<f32>,
    y: array<vec4<f32>, 4>,
}

// Vector j's terms of the block for the group's rows (z, w: the second pair's, PAIRS = 2).
fn piece_vector(p: ptr<function, PieceVectors>, j: u32) -> vec4<f32> {
    var xi = j * (*p).xrow + (*p).x0;
    if (XMODE == 1u) {
        xi = (*p).x0;
    }
    // (lane order: piece u's vec4 c at 128 (u / 32) + c nb + u % 32, nb = 32 but in a last
    // run of fewer pieces; the loads below at xi + c step)
    var step = 1u;
    if (XLANES) {
        let u = (*p).x0 >> 2u;
        let run = u & ~31u;
        step = min(32u, ((*p).xrow >> 2u) - run);
        xi = j * (*p).xrow + (run << 2u) + (u & 31u);
    }
    var x0: vec4<f32>;
    var x1: vec4<f32>;
    var x2: vec4<f32>;
    var x3: vec4<f32>;
    if (XMODE == 2u) {
        let d = vec4<f32>(f32(j));
        x0 = (*p).y[0] + d;
        x1 = (*p).y[1] + d;
        x2 = (*p).y[2] + d;
        x3 = (*p).y[3] + d;
    } else {
        x0 = X[xi];
        x1 = X[xi + step];
        x2 = X[xi + 2u * step];
        x3 = X[xi + 3u * step];
    }
    let xs = dot((x0 + x1) + (x2 + x3), vec4<f32>(1.0));
    let qa = (*p).qa;
    let qb = (*p).qb;
    var t = vec4<f32>(
        qa.x * dot(piece_qx((*p).fa, x0, x1, x2, x3), PLACE) + qa.y * xs,
        qb.x * dot(piece_qx((*p).fb, x0, x1, x2, x3), PLACE) + qb.y * xs,
        0.0,
        0.0,
    );
    if (PAIRS > 1u) {
        let qc = (*p).qc;
        let qd = (*p).qd;
        t.z = qc.x * dot(piece_qx((*p).fc, x0, x1, x2, x3), PLACE) + qc.y * xs;
        t.w = qd.x * dot(piece_qx((*p).fd, x0, x1, x2, x3), PLACE) + qd.y * xs;
    }
    return t;
}

// Vector j's sums of the group's rows from `r0` (2 PAIRS of them), written by lane 0 where
// the rows exist.
fn store_vector(j: u32, acc: vec4<f32>, r0: u32, l: u32) {
    let t = subgroupAdd(acc.x);
    let tb = subgroupAdd(acc.y);
    if (l == 0u && r0 < P.rows) {
        Y[j * P.rows + r0] = t;
        if (r0 + 1u < P.rows) {
            Y[j * P.rows + r0 + 1u] = tb;
        }
    }
    if (PAIRS > 1u) {
        let tc = subgroupAdd(acc.z);
        let td = subgroupAdd(acc.w);
        if (l == 0u && r0 + 2u < P.rows) {
            Y[j * P.rows + r0 + 2u] = tc;
            if (r0 + 3u < P.rows) {
                Y[j * P.rows + r0 + 3u] = td;
            }
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
    let r0 = (wg * 4u + lid / 32u) * 2u * PAIRS;
    let last = P.rows - 1u;
    let ra = min(r0, last);
    let rb = min(r0 + 1u, last);
    let rc = min(r0 + 2u, last);
    let rd = min(r0 + 3u, last);
    let n2 = P.vec_per_row;
    let end = n2 - 1u;
    let wa = ra * n2;
    let wb = rb * n2;
    let wc = rc * n2;
    let wd = rd * n2;
    let sa0 = ra * P.groups_per_row;
    let sb0 = rb * P.groups_per_row;
    let sc0 = rc * P.groups_per_row;
    let sd0 = rd * P.groups_per_row;
    let xrow = P.cols >> 2u;
    var accv = array<vec4<f32>, MAX_NVEC>();
    var v = l;
    var a = W[wa + min(v, end)];
    var b = W[wb + min(v, end)];
    var c = vec2<u32>();
    var d = vec2<u32>();
    if (PAIRS > 1u) {
        c = W[wc + min(v, end)];
        d = W[wd + min(v, end)];
    }
    for (; v < n2; v += 32u) {
        let vn = min(v + 32u, end);
        let na = W[wa + vn];
        let nb = W[wb + vn];
        var nc = vec2<u32>();
        var nd = vec2<u32>();
        if (PAIRS > 1u) {
            nc = W[wc + vn];
            nd = W[wd + vn];
        }
        let gi = (v * 16u) / GS;
        var pv: PieceVectors;
        pv.x0 = v * 4u;
        pv.xrow = xrow;
        pv.fa = piece_floats(a, magic);
        pv.fb = piece_floats(b, magic);
        pv.qa = side(sa0 + gi);
        pv.qb = side(sb0 + gi);
        if (PAIRS > 1u) {
            pv.fc = piece_floats(c, magic);
            pv.fd = piece_floats(d, magic);
            pv.qc = side(sc0 + gi);
            pv.qd = side(sd0 + gi);
        }
        if (XMODE == 2u) {
            pv.y = array<vec4<f32>, 4>(X[pv.x0], X[pv.x0 + 1u], X[pv.x0 + 2u], X[pv.x0 + 3u]);
        }
        // (written out per vector, constant indices: the accumulators stay in registers
        // whether or not the driver unrolls a loop over them)
        if (NVEC > 0u) {
            accv[0] += piece_vector(&pv, 0u);
        }
        if (NVEC > 1u) {
            accv[1] += piece_vector(&pv, 1u);
        }
        if (NVEC > 2u) {
            accv[2] += piece_vector(&pv, 2u);
        }
        if (NVEC > 3u) {
            accv[3] += piece_vector(&pv, 3u);
        }
        if (NVEC > 4u) {
            accv[4] += piece_vector(&pv, 4u);
        }
        if (NVEC > 5u) {
            accv[5] += piece_vector(&pv, 5u);
        }
        if (NVEC > 6u) {
            accv[6] += piece_vector(&pv, 6u);
        }
        if (NVEC > 7u) {
            accv[7] += piece_vector(&pv, 7u);
        }
        if (NVEC > 8u) {
            accv[8] += piece_vector(&pv, 8u);
        }
        if (NVEC > 9u) {
            accv[9] += piece_vector(&pv, 9u);
        }
        if (NVEC > 10u) {
            accv[10] += piece_vector(&pv, 10u);
        }
        if (NVEC > 11u) {
            accv[11] += piece_vector(&pv, 11u);
        }
        if (NVEC > 12u) {
            accv[12] += piece_vector(&pv, 12u);
        }
        if (NVEC > 13u) {
            accv[13] += piece_vector(&pv, 13u);
        }
        if (NVEC > 14u) {
            accv[14] += piece_vector(&pv, 14u);
        }
        if (NVEC > 15u) {
            accv[15] += piece_vector(&pv, 15u);
        }
        a = na;
        b = nb;
        c = nc;
        d = nd;
    }
    if (NVEC > 0u) {
        store_vector(0u, accv[0], r0, l);
    }
    if (NVEC > 1u) {
        store_vector(1u, accv[1], r0, l);
    }
    if (NVEC > 2u) {
        store_vector(2u, accv[2], r0, l);
    }
    if (NVEC > 3u) {
        store_vector(3u, accv[3], r0, l);
    }
    if (NVEC > 4u) {
        store_vector(4u, accv[4], r0, l);
    }
    if (NVEC > 5u) {
        store_vector(5u, accv[5], r0, l);
    }
    if (NVEC > 6u) {
        store_vector(6u, accv[6], r0, l);
    }
    if (NVEC > 7u) {
        store_vector(7u, accv[7], r0, l);
    }
    if (NVEC > 8u) {
        store_vector(8u, accv[8], r0, l);
    }
    if (NVEC > 9u) {
        store_vector(9u, accv[9], r0, l);
    }
    if (NVEC > 10u) {
        store_vector(10u, accv[10], r0, l);
    }
    if (NVEC > 11u) {
        store_vector(11u, accv[11], r0, l);
    }
    if (NVEC > 12u) {
        store_vector(12u, accv[12], r0, l);
    }
    if (NVEC > 13u) {
        store_vector(13u, accv[13], r0, l);
    }
    if (NVEC > 14u) {
        store_vector(14u, accv[14], r0, l);
    }
    if (NVEC > 15u) {
        store_vector(15u, accv[15], r0, l);
    }
}
