// Activation rows for qgemm_coop.wgsl (issue 5, step 97): M rows of K f32 (K % 4 == 0) to
// f16, one workgroup a row. Each row is scaled by the power of two 2^e that puts its largest
// |x| in [2^13, 2^14), so that f16 holds it with room, and rounded to f16: exact where f16
// holds x 2^e (activations that are f16 or bf16 values, down to 2^-27 of the row's largest
// before f16's subnormals), else to 11 bits. 2^-e is stored per row to undo the scaling on
// the f32 sums; a row with a NaN or an infinity stores NaN there instead, so that its outputs
// come out NaN, as the f32 kernels' would.

// requires: SHADER_F16 (wgpu Features::SHADER_F16: f16 in storage)

enable f16;

struct Params {
    cols: u32,  // K
    rows: u32,  // M
    wg_x: u32,  // workgroups along x of the 2-D dispatch
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;        // M x K
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f16>>;  // M x K, scaled
@group(0) @binding(3) var<storage, read_write> inv: array<f32>;        // M: 2^-e (or NaN)

var<workgroup> big_of: array<f32, 256>;
var<workgroup> bad_of: array<u32, 256>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * P.wg_x + wid.x;
    // (uniform across the workgroup: the barriers below are reached by all or none)
    if (row >= P.rows) {
        return;
    }
    let n4 = P.cols >> 2u;
    let base = row * n4;
    var big = 0.0;
    var bad = false;
    for (var i = lid; i < n4; i += 256u) {
        let a = abs(src[base + i]);
        // (NaN fails every comparison: `bad` catches it and infinities alike)
        bad = bad || !all(a <= vec4<f32>(3.0e38));
        big = max(big, max(max(a.x, a.y), max(a.z, a.w)));
    }
    big_of[lid] = big;
    bad_of[lid] = u32(bad);
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            big_of[lid] = max(big_of[lid], big_of[lid + s]);
            bad_of[lid] = bad_of[lid] | bad_of[lid + s];
        }
        workgroupBarrier();
    }
    let largest = big_of[0];
    let any_bad = bad_of[0] != 0u;
    // 2^e with largest 2^e in [2^13, 2^14): e = 14 - exponent(largest), clamped so 2^e and
    // 2^-e are normal f32
    let e = clamp(14 - frexp(max(largest, 1.0e-30)).exp, -100, 100);
    let up = ldexp(1.0, e);
    for (var i = lid; i < n4; i += 256u) {
        dst[base + i] = vec4<f16>(src[base + i] * up);
    }
    if (lid == 0u) {
        // (NaN made at run time: the bits of a quiet NaN)
        let nan = bitcast<f32>(select(0x7FC00000u, 0u, row > P.rows));
        inv[row] = select(ldexp(1.0, -e), nan, any_bad);
    }
}
