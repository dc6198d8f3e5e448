// Plain quantized GEMV over MLX packed weights (2, 4 or 8 bits): y = W x, one f32 activation
// vector. The baseline the fused rANS kernel must beat; follows MLX's qmv_fast:
//
// * a workgroup is GROUPS groups of 32 lanes; each group owns ROWS consecutive output rows;
// * per step each lane reads one vec4<u32> (16 bytes) of packed weights of each of its rows and
//   the matching 128/BITS activations, which it pre-scales by 2^-(BITS*i) (i = the value's
//   position in its u32 word) so a masked value `w & (MASK << BITS*i)`, converted to f32, needs no
//   shift: f32(q << BITS*i) * x * 2^-(BITS*i) == q * x exactly (powers of two);
// * the result is scale * sum(q*x) + bias * sum(x) per group;
// * the 32 lanes' partial sums are reduced through workgroup memory once at the end.
//
// Rows must hold a whole number of vec4<u32> (K * BITS % 128 == 0); the host checks.

struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,     // vec4<u32> of packed weights per row = K * BITS / 128
    groups_per_row: u32,  // K / GS
    wg_x: u32,            // workgroups along x of the 2-D dispatch
    total_wg: u32,
    _pad0: u32,
    _pad1: u32,
}

override BITS: u32 = 4u;
override GS: u32 = 64u;

const GROUPS: u32 = 2u;
const ROWS: u32 = 4u;
override PW: u32 = 32u / BITS;       // values per u32 word
override HV: u32 = PW / 4u;          // vec4 of values per u32 word
override WPL: u32 = 4u * PW;         // values per lane per step (128 / BITS)

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<f32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> red: array<f32, 256>;   // GROUPS * ROWS * 32
var<workgroup> red2: array<f32, 64>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let g = lid / 32u;
    let l = lid % 32u;
    let row0 = (wg * GROUPS + g) * ROWS;
    let vpr = P.vec_per_row;
    let gpr = P.groups_per_row;
    let vmask = (1u << BITS) - 1u;

    // masks and pre-scales of the HV vec4 slices of one word
    var mk: array<vec4<u32>, 4>;
    var ps: array<vec4<f32>, 4>;
    for (var h = 0u; h < HV; h++) {
        let s0 = BITS * (4u * h);
        mk[h] = vec4<u32>(vmask << s0, vmask << (s0 + BITS), vmask << (s0 + 2u * BITS),
            vmask << (s0 + 3u * BITS));
        ps[h] = vec4<f32>(ldexp(1.0, -i32(s0)), ldexp(1.0, -i32(s0 + BITS)),
            ldexp(1.0, -i32(s0 + 2u * BITS)), ldexp(1.0, -i32(s0 + 3u * BITS)));
    }

    var rowoff: array<u32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        rowoff[r] = min(row0 + r, P.rows - 1u);
    }

    var acc = array<f32, ROWS>(0.0, 0.0, 0.0, 0.0);
    let nsteps = (vpr + 31u) / 32u;
    for (var s = 0u; s < nsteps; s++) {
        let v = s * 32u + l;
        if (v < vpr) {
            let k0 = v * WPL;          // first weight of this lane
            let xb = k0 / 4u;          // first vec4 of x
            var xp: array<vec4<f32>, 16>;   // pre-scaled x, 4 * HV used
            var xw = vec4<f32>(0.0);        // sum of x per word
            for (var c = 0u; c < 4u; c++) {
                var sw = vec4<f32>(0.0);
                for (var h = 0u; h < HV; h++) {
                    let xx = X[xb + c * HV + h];
                    sw += xx;
                    xp[c * HV + h] = xx * ps[h];
                }
                xw[c] = sw.x + sw.y + sw.z + sw.w;
            }
            let xsum = xw.x + xw.y + xw.z + xw.w;
            for (var r = 0u; r < ROWS; r++) {
                let row = rowoff[r];
                let wv = W[row * vpr + v];
                if (WPL <= GS) {
                    var d = 0.0;
                    for (var c = 0u; c < 4u; c++) {
                        let wc = vec4<u32>(wv[c]);
                        for (var h = 0u; h < HV; h++) {
                            d += dot(vec4<f32>(wc & mk[h]), xp[c * HV + h]);
                        }
                    }
                    let q = sb[row * gpr + k0 / GS];
                    acc[r] += q.x * d + q.y * xsum;
                } else {
                    // a lane's values span several groups (2-bit, GS = 32): per word
                    for (var c = 0u; c < 4u; c++) {
                        let wc = vec4<u32>(wv[c]);
                        var d = 0.0;
                        for (var h = 0u; h < HV; h++) {
                            d += dot(vec4<f32>(wc & mk[h]), xp[c * HV + h]);
                        }
                        let q = sb[row * gpr + (k0 + c * PW) / GS];
                        acc[r] += q.x * d + q.y * xw[c];
                    }
                }
            }
        }
    }

    for (var r = 0u; r < ROWS; r++) {
        red[(g * ROWS + r) * 32u + l] = acc[r];
    }
    workgroupBarrier();
    // 64 invocations: 8 rows x 8 parts of 4 lanes
    let rl = lid / 8u;
    let part = lid % 8u;
    let b = rl * 32u + part * 4u;
    red2[lid] = red[b] + red[b + 1u] + red[b + 2u] + red[b + 3u];
    workgroupBarrier();
    if (lid < GROUPS * ROWS) {
        var t = 0.0;
        for (var k = 0u; k < 8u; k++) {
            t += red2[lid * 8u + k];
        }
        let row = wg * GROUPS * ROWS + lid;
        if (row < P.rows) {
            Y[row] = t;
        }
    }
}
