// Fused GEMV on the indexed bf16 form (layout in wgsl/lib/indexed16.wgsl): y = W x for one f32
// activation vector, f32 accumulation. Weights are rebuilt two at a time as a word of two
// bf16 patterns, then widened like plain bf16: no entropy decoder, no table, 12 bits read
// instead of 16.
//
// Same shape as the plain bf16 kernel (bf16_plain_gemv.wgsl), so the two compare fairly: one
// workgroup = RPW rows x 32 threads; per iteration a thread takes one unit of 16 weights
// (24 bytes) and the matching x as vec4<f32>. Then the row's threads add its escapes, and the
// 32 partial sums are reduced by a tree in workgroup memory.

// import: indexed16

// Diagnostic variants for measuring the limit (BENCHMARKS.md, issue 7), never used for results:
// 1 = the same loads, next to no arithmetic (what the access pattern alone costs);
// 2 = the full arithmetic on weights every row reads from row 0 (cache-resident: what the
//     arithmetic alone costs).
override DIAG: u32 = 0u;


const TPR: u32 = 32u;         // threads per row
const RPW: u32 = 8u;          // rows per workgroup
const WG: u32 = 256u;         // = TPR * RPW

@group(0) @binding(0) var<uniform> P: IndexedParams;
@group(0) @binding(1) var<storage, read> codes: array<vec2<u32>>;   // R * K / 16
@group(0) @binding(2) var<storage, read> raw: array<vec4<u32>>;     // R * K / 16
@group(0) @binding(3) var<storage, read> esc_rows: array<u32>;      // R + 1
@group(0) @binding(4) var<storage, read> esc: array<vec2<u32>>;     // escapes
@group(0) @binding(5) var<storage, read> xv: array<vec4<f32>>;      // K / 4
@group(0) @binding(6) var<storage, read_write> y: array<f32>;       // R

var<workgroup> red: array<f32, WG>;

// Four weights (pairs p0, p0 + 1 of code word c, raw word r) against x.
fn quad(c: u32, r: u32, p0: u32, x: vec4<f32>) -> f32 {
    let a = dense_pair(pair_code(c, p0), pair_raw(r, 0u));
    let b = dense_pair(pair_code(c, p0 + 1u), pair_raw(r, 1u));
    let w = vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xFFFF0000u),
        bitcast<f32>(b << 16u), bitcast<f32>(b & 0xFFFF0000u));
    return dot(w, x);
}

// One unit of 16 weights against x[4 * xi .. 4 * xi + 16].
fn dot16(c: vec2<u32>, r: vec4<u32>, xi: u32) -> f32 {
    return quad(c.x, r.x, 0u, xv[xi]) + quad(c.x, r.y, 2u, xv[xi + 1u])
        + quad(c.y, r.z, 0u, xv[xi + 2u]) + quad(c.y, r.w, 2u, xv[xi + 3u]);
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let rl = lid / TPR;
    let l = lid % TPR;
    let row = wg * RPW + rl;
    let n16 = P.cols / 16u;
    var acc = 0.0;
    var acc_esc = 0.0;
    if (row < P.rows) {
        // loaded first, so that their latency hides behind the dense loop
        let e_begin = esc_rows[row];
        let e_end = esc_rows[row + 1u];
        let base = select(row * n16, 0u, DIAG == 2u);
        // One unit per iteration: two (measured 2% slower on an H200: the compiler, holding
        // 32 registers, issued the second unit's loads only after using the first's) or one
        // prefetched ahead (10% slower) were tried.
        for (var i = l; i < n16; i += TPR) {
            if (DIAG == 1u) {
                let c = codes[base + i];
                let r = raw[base + i];
                let xi = 4u * i;
                acc += bitcast<f32>((c.x ^ c.y ^ r.x ^ r.y ^ r.z ^ r.w) & 0x3FFFFFFFu)
                    * (xv[xi].x + xv[xi + 1u].y + xv[xi + 2u].z + xv[xi + 3u].w);
            } else {
                acc += dot16(codes[base + i], raw[base + i], 4u * i);
            }
        }
        // escapes: the true weight in, the dense slot's value out
        for (var e = e_begin + l; e < e_end; e += TPR) {
            let v = esc[e];
            let xe = xv[v.x / 4u][v.x % 4u];
            acc_esc += bitcast<f32>(v.y << 16u) * xe - P.escape_slot * xe;
        }
    }
    red[lid] = acc * P.scale + acc_esc;
    workgroupBarrier();
    for (var s = TPR / 2u; s > 0u; s = s >> 1u) {
        if (l < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    if (l == 0u && row < P.rows) {
        y[row] = red[lid];
    }
}
