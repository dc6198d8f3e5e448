// Shared by the cooperative-matrix GEMVs of up to 16 activation vectors (rans_gemv_coop.wgsl,
// the fused one, and qgemv4_coop.wgsl, its plain baseline; BENCHMARKS.md issue 5, step 90):
// the weight and activation tiles in workgroup memory, the multiply on 16x16x16 f16
// cooperative matrices, and the flush of each group's products into its lanes' sums. A
// workgroup is eight groups of 32 lanes; group g holds matrix rows 2g and 2g + 1 of the
// workgroup's 16 (tile rows), and a block is 512 columns. Uses the importing kernel's `xb`
// (the activation tiles, x_coop.wgsl's layout), `xs` (sums and scalings) and `side`.
// Every function with a barrier must be called by all 256 invocations in uniform control flow.

// W tile row stride in vec4<f16>: 520 f16 (512 columns + 8), a multiple of 16 bytes (the
// cooperative loads' alignment) whose rows start 4 banks apart, so that the eight rows a
// 16-byte load phase reads fall in different banks.
const WS: u32 = 130u;

// The tiles the cooperative loads and stores use. They must be 16-byte aligned, and the
// driver aligns a workgroup variable only to its element type: with the D tiles an array of
// f32 placed after the W tile, the NVIDIA driver (580) laid them out so that its cooperative
// stores overwrote a neighbouring variable and its loads read shifted rows (BENCHMARKS.md
// issue 5, step 90). In one struct led by a vec4<f32> array all members sit at multiples
// of 16 bytes from a 16-byte-aligned base. Both operands come from workgroup memory: the same
// driver compiles a cooperative load from a storage buffer to 16-bit loads one element at a
// time (64 a lane for eight tiles), from workgroup memory to `ldmatrix`.
struct Tiles {
    // Group g's D (16 tile rows x 16 vectors, row-major; 64 vec4) at vec4 64 g; after a row
    // of blocks, the groups' sums.
    d: array<vec4<f32>, 512>,
    // The block's activation tiles as x_coop.wgsl lays them out (K-tile kt: 16 columns x 16
    // vectors, column-major, at vec4 64 kt).
    b: array<vec4<f16>, 2048>,
    // The W tile: 16 rows x 512 columns of a block as f16, column 128 i + 4 l + j holding
    // lane l's weight of matrix column 16 l + 4 j + i (so K-tile 8 i + m holds lanes
    // 4m .. 4m + 3's columns i, 4 + i, 8 + i, 12 + i, and each lane's four stores a row write
    // 32 consecutive 8-byte words).
    w: array<vec4<f16>, 2080>,
}
var<workgroup> tiles: Tiles;

// Four weights, nibbles 0..3 of n, as f16 (exact). The tile must be f16 (here vec4<f16>):
// the NVIDIA driver's compiler (580) failed on cooperative f16 loads through a u32 pointer,
// and naga 30 takes no bitcast from u32 to f16 pairs, so the nibbles are converted.
fn q_f16(n: u32) -> vec4<f16> {
    return vec4<f16>(vec4<u32>(n, n >> 4u, n >> 8u, n >> 12u) & vec4<u32>(15u));
}

// What a block's flush and multiply read that does not depend on its weights, loaded before
// the weights are decoded or read so that the loads' latency passes meanwhile: the (scale,
// bias) of the lane's tile row for the group's 64 columns, the sums and scalings of the
// lane's 8 vectors there, and this invocation's eighth of the block's activation tiles.
struct CoopOperands {
    sbv: vec2<f32>,
    xe: array<vec4<f32>, 4>,
    xb8: array<vec4<f16>, 8>,
}

// Block b's operands for group g, the lane's vectors fv .. fv + 7 and the (scale, bias) at
// side index `sb_at`; invocation `lid` (of 256) loads its eighth of the tiles.
fn coop_operands(sb_at: u32, b: u32, g: u32, fv: u32, lid: u32) -> CoopOperands {
    var o: CoopOperands;
    o.sbv = side(sb_at);
    let xi = ((((b << 3u) + g) << 4u) + fv) >> 1u;
    o.xe = array<vec4<f32>, 4>(xs[xi], xs[xi + 1u], xs[xi + 2u], xs[xi + 3u]);
    for (var j = 0u; j < 8u; j++) {
        o.xb8[j] = xb[(b << 11u) + (j << 8u) + lid];
    }
    return o;
}

// The block's tiles: lane l of group g writes its 16 columns of rows 2g (nibbles 0..3 of each
// n[i]) and 2g + 1 (nibbles 4..7), every invocation its eighth of the activation tiles; then a
// barrier.
fn coop_stage(n: vec4<u32>, xb8: array<vec4<f16>, 8>, g: u32, l: u32, lid: u32) {
    let ra = (2u * g) * WS + l;
    for (var i = 0u; i < 4u; i++) {
        tiles.w[ra + 32u * i] = q_f16(n[i]);
        tiles.w[ra + WS + 32u * i] = q_f16(n[i] >> 16u);
    }
    for (var j = 0u; j < 8u; j++) {
        tiles.b[(j << 8u) + lid] = xb8[j];
    }
    workgroupBarrier();
}

// Group g's product of the staged block: K-tiles g, 8 + g, 16 + g and 24 + g, i.e. columns
// 64 g .. 64 g + 63, D (16 rows x 16 vectors) = sum W (16 x 16) B (16 x 16), into its D tile;
// then a barrier.
fn coop_multiply(g: u32) {
    var dm = coop_mat16x16<f32, C>();
    for (var i = 0u; i < 4u; i++) {
        let kt = 8u * i + g;
        // (stride 4 vec4: 16 f16 a column)
        let bm = coopLoad<coop_mat16x16<f16, B>>(&tiles.b[kt << 6u], 4u);
        let a = coopLoadT<coop_mat16x16<f16, A>>(&tiles.w[4u * kt], WS);
        dm = coopMultiplyAdd(a, bm, dm);
    }
    // (stride 4 vec4: 16 f32 a row)
    coopStoreT(dm, &tiles.d[g << 6u], 4u);
    workgroupBarrier();
}

// The lane's part of group g's D (tile row ft, vectors fv .. fv + 7) into its sums: scale
// times D times the vector's scaling, plus bias times the sum of the activations.
fn coop_flush(acc: ptr<function, array<f32, 8>>, o: CoopOperands, g: u32, ft: u32, fv: u32) {
    let di = (g << 6u) + (ft << 2u) + (fv >> 2u);
    for (var h = 0u; h < 2u; h++) {
        let dv = tiles.d[di + h];
        let e0 = o.xe[2u * h];
        let e1 = o.xe[2u * h + 1u];
        (*acc)[4u * h] += o.sbv.x * (dv.x * e0.y) + o.sbv.y * e0.x;
        (*acc)[4u * h + 1u] += o.sbv.x * (dv.y * e0.w) + o.sbv.y * e0.z;
        (*acc)[4u * h + 2u] += o.sbv.x * (dv.z * e1.y) + o.sbv.y * e1.x;
        (*acc)[4u * h + 3u] += o.sbv.x * (dv.w * e1.w) + o.sbv.y * e1.z;
    }
}

// After a row of blocks: the eight groups' sums of each (tile row, vector) added up; returns
// tile row ot's for vector ov (invocation lid: ot = lid / 16, ov = lid % 16).
fn coop_row_total(acc: array<f32, 8>, g: u32, ft: u32, fv: u32, ot: u32, ov: u32) -> f32 {
    workgroupBarrier();
    let di = (g << 6u) + (ft << 2u) + (fv >> 2u);
    tiles.d[di] = vec4<f32>(acc[0], acc[1], acc[2], acc[3]);
    tiles.d[di + 1u] = vec4<f32>(acc[4], acc[5], acc[6], acc[7]);
    workgroupBarrier();
    var total = 0.0;
    for (var gg = 0u; gg < 8u; gg++) {
        total += tiles.d[(gg << 6u) + (ot << 2u) + (ov >> 2u)][ov & 3u];
    }
    return total;
}
