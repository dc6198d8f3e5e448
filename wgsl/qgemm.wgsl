// Plain batched quantized matmul over MLX packed weights (2, 4 or 8 bits): Y = X W^T for M
// activation rows. The prefill baseline of rans_gemm.wgsl, with the same multiply so the two
// differ only in where the weights come from (packed words here, the rANS decoder there).
//
// One workgroup = 4 groups of 32 lanes owns 4 consecutive rows (group g: row 4*wg + g). Per
// slice of 256 weights the lanes of group g read their row's packed words (coalesced),
// dequantize them (scale * q + bias, f32) into the slice buffer `wbuf` (one vec4 per column:
// the 4 rows), then all 128 invocations multiply the slice with the activations: invocation i
// owns activation rows i, i+128, i+256, i+384 (M <= 512 per dispatch; the host splits larger
// M) and keeps one vec4 accumulator (the 4 rows) per activation row.
//
// The host splits the activation rows across workgroups (m_block rows each) when the matrix
// has few rows, with the same rule as for rans_gemm.wgsl.
//
// Needs K * BITS % 32 == 0 and whole u32 words per group (the host checks).
// import: side
// import: gemm_slice

struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    words_per_row: u32,  // K * bits / 32
    groups_per_row: u32,
    group_size: u32,
    wg_x: u32,
    total_wg: u32,
    m: u32,
    xs4: u32,            // vec4 per activation row = ceil(K / 4)
    y_stride: u32,       // floats per output row of Y
    m_block: u32,        // activation rows per workgroup (a multiple of 128, <= 512)
    total_grid: u32,     // total_wg * ceil(m / m_block): workgroups launched
    kparts: u32,         // invocations sharing an activation row (lib/gemm_slice.wgsl)
    _pad1: u32,
    _pad2: u32,
}

const SLICE: u32 = 256u;
const WG: u32 = 128u;           // invocations per workgroup

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Wq: array<u32>;
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;  // (scale, bias) per group
@group(0) @binding(3) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

var<workgroup> wbuf: array<vec4<f32>, 256>;

fn store_row(m: u32, acc: vec4<f32>, rowv: vec4<u32>) {
    let yb = m * P.y_stride;
    let ok = rowv < vec4<u32>(P.rows);
    if (ok.x) { Y[yb + rowv.x] = acc.x; }
    if (ok.y) { Y[yb + rowv.y] = acc.y; }
    if (ok.z) { Y[yb + rowv.z] = acc.z; }
    if (ok.w) { Y[yb + rowv.w] = acc.w; }
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wgi = wid.y * P.wg_x + wid.x;
    if (wgi >= P.total_grid) {
        return;
    }
    // workgroup wgi owns 4 rows for activation rows [m_lo, m_hi)
    let wg = wgi % P.total_wg;
    let m_lo = (wgi / P.total_wg) * P.m_block;
    let m_hi = min(P.m, m_lo + P.m_block);
    let g = lid / 32u;
    let l = lid % 32u;
    let b = P.bits;
    let per_word = 32u / b;
    let qmask = (1u << b) - 1u;
    let rowv = vec4<u32>(wg * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    let row = rowv[g];
    let row_ok = row < P.rows;
    // this invocation's activation rows and its share of each slice's columns
    let part = lid % P.kparts;
    let rstride = WG / P.kparts;
    let m0 = m_lo + lid / P.kparts;
    let m1 = m0 + rstride;
    let m2 = m0 + 2u * rstride;
    let m3 = m0 + 3u * rstride;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let n_slices = (P.cols + SLICE - 1u) / SLICE;
    for (var s = 0u; s < n_slices; s++) {
        let kbase = s * SLICE;
        let klen = min(SLICE, P.cols - kbase);
        let n4 = (klen + 3u) / 4u;
        // load and dequantize: 256 weights = 8 * bits words per row
        let nw = (klen * b + 31u) / 32u;
        for (var wi = l; wi < SLICE / per_word; wi += 32u) {
            let c0 = wi * per_word;
            if (row_ok && wi < nw) {
                let word = Wq[row * P.words_per_row + kbase / per_word + wi];
                let sbv = side(row * P.groups_per_row + (kbase + c0) / P.group_size);
                for (var i = 0u; i < per_word; i++) {
                    let q = f32((word >> (b * i)) & qmask);
                    wbuf[wslot(c0 + i)][g] = sbv.x * q + sbv.y;
                }
            } else {
                for (var i = 0u; i < per_word; i++) {
                    wbuf[wslot(c0 + i)][g] = 0.0;
                }
            }
        }
        workgroupBarrier();
        let k4 = kbase / 4u;
        if (m0 < m_hi) { acc0 += dot_slice(m0, k4, n4, part); }
        if (m1 < m_hi) { acc1 += dot_slice(m1, k4, n4, part); }
        if (m2 < m_hi) { acc2 += dot_slice(m2, k4, n4, part); }
        if (m3 < m_hi) { acc3 += dot_slice(m3, k4, n4, part); }
        workgroupBarrier();
    }
    // (the parts of each activation row summed; the loop ended with a barrier)
    acc0 = sum_parts(acc0, lid, part);
    acc1 = sum_parts(acc1, lid, part);
    acc2 = sum_parts(acc2, lid, part);
    acc3 = sum_parts(acc3, lid, part);
    let lead = part == 0u;
    if (lead && m0 < m_hi) { store_row(m0, acc0, rowv); }
    if (lead && m1 < m_hi) { store_row(m1, acc1, rowv); }
    if (lead && m2 < m_hi) { store_row(m2, acc2, rowv); }
    if (lead && m3 < m_hi) { store_row(m3, acc3, rowv); }
}
