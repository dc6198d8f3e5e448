// Plain MLX 4-bit GEMV of up to 16 activation vectors with the multiply on cooperative
// matrices (tensor cores), the baseline of rans_gemv_coop.wgsl (issue 5, step 90): the same
// tiles, multiply and flush (lib/coop_tile.wgsl), with each block's weights read from the
// packed matrix instead of decoded. A workgroup is eight groups of 32 lanes over 16 matrix
// rows (group g: rows 16 w + 2g and + 1); lane l of a group takes columns 16 l .. 16 l + 15 of
// each 512-column block of both rows (two packed u32 a row), as the fused kernel's lane does,
// but writes them to the W tile in their packed order (tile column 128 i + 4 l + j: matrix
// column 16 l + 4 i + j, nibble j of the row's quarter i), and the activation pass lays the
// activations out to match (`CoopOrder::Packed`), so no nibble moves between the load and
// the conversion.
// Needs K % 512 == 0 and MLX groups of 64 or 128; activations from x_coop.wgsl (f16, scaled
// per 512 columns): exact for activations f16 holds after the scaling, the sums f32
// (`GpuQuantizedMatrix::gemv_coop_dispatch` checks the shape). Rows past the matrix read and
// write nothing. Workgroup memory and features as rans_gemv_coop.wgsl's (less the table).
// import: side
// import: coop_tile

// requires: SUBGROUP (32-wide subgroups: the cooperative matrices' layout across lanes)
// requires: COOPERATIVE_MATRIX (wgpu Features::EXPERIMENTAL_COOPERATIVE_MATRIX and SHADER_F16)

enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    rows: u32,
    cols: u32,
    vec_per_row: u32,
    groups_per_row: u32,
    wg_x: u32,
    total_wg: u32,
    zero: u32,
    _pad1: u32,
}

// log2 of the MLX group size (6 or 7), activation vectors (1..16; the multiply always runs 16,
// the outputs of the others are not written).
override GSHIFT: u32 = 6u;
override NVEC: u32 = 16u;
// Diagnostic builds (`GpuQuantizedMatrix::coop_diagnostic_dispatch`; outputs meaningless):
// 1 = the loads, stage and barriers without the multiply and flush, 2 = the kernel with the
// tiles' stores left out (the multiply reads what is there), 3 = the kernel with zero
// weights instead of the loaded ones converted (no conversions), 4 = 1 without the stores
// either (loads and barriers), 5 = 4 without the barriers (the loads alone). 0 = the kernel.
override DIAG: u32 = 0u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;    // packed 4-bit weights
@group(0) @binding(2) var<storage, read> sb: array<vec2<u32>>;   // (scale, bias) per group
// The activations as x_coop.wgsl writes them (see rans_gemv_coop.wgsl).
@group(0) @binding(3) var<storage, read> xb: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read> xs: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // NVEC rows of the outputs

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
) {
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.total_wg) {
        return;
    }
    let g = lid / 32u;
    let l = sg_id & 31u;
    let k = P.cols;
    let nblk = k >> 9u;
    // the group's rows, and the lane's words of them: 2 u32 (a vec2) per 16 columns
    let row_a = wg * 16u + 2u * g;
    let wpr = k >> 4u;
    let wa0 = select(0u, row_a * wpr, row_a < P.rows);
    let wb0 = select(0u, (row_a + 1u) * wpr, row_a + 1u < P.rows);
    // the lane's part of the flush: tile row ft, vectors fv .. fv + 7
    let ft = l >> 1u;
    let fv = (l & 1u) * 8u;
    let frow = wg * 16u + ft;
    let sb_row = select(0u, frow * P.groups_per_row, frow < P.rows);
    // after the row: invocation lid adds up tile row ot's sum for vector ov
    let ot = lid >> 4u;
    let ov = lid & 15u;
    var acc = array<f32, 8>();
    for (var b = 0u; b < nblk; b++) {
        let o = coop_operands(sb_row + (((b << 9u) + (g << 6u)) >> GSHIFT), b, g, fv, lid);
        let at = (b << 5u) + l;
        var pa = vec2<u32>(0u);
        var pb = vec2<u32>(0u);
        if (row_a < P.rows) {
            pa = w[wa0 + at];
        }
        if (row_a + 1u < P.rows) {
            pb = w[wb0 + at];
        }
        // quarter i of each row (columns 4 i .. 4 i + 3) in the low and high halves of n[i]
        let n = vec4<u32>(
            (pa.x & 0xFFFFu) | (pb.x << 16u),
            (pa.x >> 16u) | (pb.x & 0xFFFF0000u),
            (pa.y & 0xFFFFu) | (pb.y << 16u),
            (pa.y >> 16u) | (pb.y & 0xFFFF0000u),
        );
        if (DIAG == 5u) {
            // (the loads alone, kept live through the sum)
            acc[0] += f32(n.x ^ n.w) + f32(o.xb8[l & 7u].x) + o.sbv.x + o.xe[l & 3u].x;
            continue;
        }
        if (DIAG == 2u || DIAG == 4u) {
            // (the stage's barrier alone; the loads kept live through the sum)
            acc[0] += f32(n.x ^ n.w) + f32(o.xb8[l & 7u].x) + o.sbv.x + o.xe[l & 3u].x;
            workgroupBarrier();
        } else if (DIAG == 3u) {
            coop_stage(vec4<u32>(0u), o.xb8, g, l, lid);
            acc[0] += f32(n.x ^ n.w);
        } else {
            coop_stage(n, o.xb8, g, l, lid);
        }
        if (DIAG == 1u || DIAG == 4u) {
            acc[1] += f32(tiles.w[(g * WS + l + b) % 2080u].x);
            workgroupBarrier();
            continue;
        }
        coop_multiply(g);
        coop_flush(&acc, o, g, ft, fv);
    }
    let total = coop_row_total(acc, g, ft, fv, ot, ov);
    let row = wg * 16u + ot;
    if (ov < NVEC && row < P.rows) {
        y[ov * P.rows + row] = total;
    }
}
