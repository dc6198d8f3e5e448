// Fused GEMV on the indexed bf16 form (layout in wgsl/lib/indexed16.wgsl): y = W x for one f32
// activation vector, f32 accumulation. Weights are rebuilt two at a time as a word of two
// bf16 patterns, then widened like plain bf16: no entropy decoder, no table, 12 bits read
// instead of 16.
//
// Same shape as the plain bf16 kernel (bf16_plain_gemv.wgsl), so the two compare fairly: one
// workgroup = 8 warps of 32 threads (wgsl/lib/gemv_rows.wgsl shares out the rows); per
// iteration a thread takes one unit of 16 weights (three vec2<u32>, 24 bytes) of each of its
// rows and the matching x as vec4<f32>. Then the row's threads add its escapes, and the
// partial sums are reduced by a tree in workgroup memory.
//
// The library runs it with ROWS = 2 and SPLIT: a pair of warps shares two rows, so each x load
// serves two rows (with one row per warp, the x loads, not the weights, set the time on an
// H200). Units of 32 weights (three vec4<u32>) were 1.8-2.3x slower there: over 32 registers,
// the compiler issued the x loads one octet at a time.

// import: indexed16
// import: gemv_rows

// Diagnostic variants for measuring the limit (BENCHMARKS.md, issue 7), never used for results:
// 1 = the same loads, next to no arithmetic (what the access pattern alone costs);
// 2 = the full arithmetic on weights every row reads from row 0 (cache-resident: what the
//     arithmetic alone costs);
// 3 = as 1 without the x loads; 4 = as 1 without the escape offsets and loop.
override DIAG: u32 = 0u;

@group(0) @binding(0) var<uniform> P: IndexedParams;
@group(0) @binding(1) var<storage, read> words: array<vec2<u32>>;  // R * K * 3 / 16
@group(0) @binding(2) var<storage, read> esc_rows: array<u32>;     // R + 1
@group(0) @binding(3) var<storage, read> esc: array<vec2<u32>>;    // escapes
@group(0) @binding(4) var<storage, read> xv: array<vec4<f32>>;     // K / 4
@group(0) @binding(5) var<storage, read_write> y: array<f32>;      // R

fn lo(p: u32) -> f32 {
    return bitcast<f32>(p << 16u);
}

fn hi(p: u32) -> f32 {
    return bitcast<f32>(p & 0xFFFF0000u);
}

// One octet (words a, b, c) against x0, x1.
fn octet(a: u32, b: u32, c: u32, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
    let t = octet_targets(a, b, c);
    let p0 = dense_pair(t.x);
    let p1 = dense_pair(t.y);
    let p2 = dense_pair(t.z);
    let p3 = dense_pair(t.w);
    return dot(vec4<f32>(lo(p0), hi(p0), lo(p1), hi(p1)), x0)
        + dot(vec4<f32>(lo(p2), hi(p2), lo(p3), hi(p3)), x1);
}

// Unit u of row `row` (n units per row) against x[4 * xi .. 4 * xi + 16].
fn unit(row: u32, u: u32, n: u32, x: array<vec4<f32>, 4>) -> f32 {
    let at = unit_words(row, u, n);
    let a = words[at.x];
    let b = words[at.x + at.y];
    let c = words[at.x + 2u * at.y];
    if (DIAG == 1u || DIAG == 4u) {
        let v = a ^ b ^ c;
        return bitcast<f32>((v.x ^ v.y) & 0x3FFFFFFFu) * (x[0].x + x[1].y + x[2].z + x[3].w);
    }
    if (DIAG == 3u) {
        let v = a ^ b ^ c;
        return bitcast<f32>((v.x ^ v.y) & 0x3FFFFFFFu);
    }
    return octet(a.x, b.x, c.x, x[0], x[1]) + octet(a.y, b.y, c.y, x[2], x[3]);
}

// The escapes of `row` against x: the true weight in, the dense slot's value out.
fn escapes(row: u32, first: u32, step: u32) -> f32 {
    var acc = 0.0;
    if (DIAG == 4u) {
        return acc;
    }
    let e_end = esc_rows[row + 1u];
    for (var e = esc_rows[row] + first; e < e_end; e += step) {
        let v = esc[e];
        let xe = xv[v.x / 4u][v.x % 4u];
        acc += bitcast<f32>(v.y << 16u) * xe - P.escape_slot * xe;
    }
    return acc;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    // rows row (and row + 1 with two rows); this thread's first unit and stride
    let rs = warp_rows(wg, lid);
    let row = rs.x;
    let first = rs.y;
    let step = rs.z;
    let has1 = (ROWS == 2u || SPLIT) && row + 1u < P.rows;
    let n = P.cols / 16u;
    var acc0 = 0.0;
    var acc1 = 0.0;
    if (row < P.rows) {
        let w0 = select(row, 0u, DIAG == 2u);
        let w1 = select(row + 1u, 0u, DIAG == 2u);
        for (var u = first; u < n; u += step) {
            let xi = 4u * u;
            var x = array<vec4<f32>, 4>();
            if (DIAG != 3u) {
                x = array<vec4<f32>, 4>(xv[xi], xv[xi + 1u], xv[xi + 2u], xv[xi + 3u]);
            }
            acc0 += unit(w0, u, n, x);
            if (has1) {
                acc1 += unit(w1, u, n, x);
            }
        }
        acc0 = acc0 * P.scale + escapes(row, first, step);
        if (has1) {
            acc1 = acc1 * P.scale + escapes(row + 1u, first, step);
        }
    }
    reduce_rows_into_y(wg, lid, row, acc0, acc1);
}
