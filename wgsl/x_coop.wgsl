// Activation vectors for rans_gemv_coop.wgsl (issue 5, step 90): up to 16 vectors of K f32
// (K % 512 == 0) into the B tiles its cooperative multiply reads, and per 64-column range the
// sums its bias terms need. One group of 32 invocations per 512-column block b and vector
// slot v (16 slots: slots past P.vectors are written as zeros, the multiply always runs 16);
// invocation l takes the block's piece l (16 columns), as lane l of the fused kernel does.
// * Each vector is scaled per block by a power of two 2^e that puts its largest |x| there in
//   [2^13, 2^14), so that f16 holds it with room, and rounded to f16: exact where f16 holds
//   x 2^e (activations that are f16 or bf16 values, down to 2^-29 of the block's largest),
//   else to 11 bits; 2^-e is stored with the sums to undo the scaling in f32. A block with a
//   NaN or an infinity stores NaN there instead, so that the vector's outputs come out NaN,
//   as the f32 kernels' would.
// * Tile layout (f16): K-tile kt = 8 i + m of block b (16 columns: lanes 4m .. 4m + 3 of the
//   GEMV's group, four columns of each; see lib/coop_tile.wgsl's W tile) holds, at k =
//   4 (l % 4) + j, column 16 l + 4 j + i where the W tile has the window split's order
//   (P.order 0, rans_gemv_coop.wgsl) and column 16 l + 4 i + j where it has the packed order
//   (P.order 1, qgemv4_coop.wgsl); vector v at v * 16 + k (column-major B), from f16 index
//   256 (32 b + kt).
// * Sums: (sum of range m's 64 columns of x, in f32 as given, 2^-e) at vec2 index
//   16 (8 b + m) + v.

// requires: SUBGROUP (the block's largest |x|: subgroupMax over 32 invocations)
// requires: SHADER_F16 (wgpu Features::SHADER_F16: f16 in storage)

enable f16;

struct Params {
    cols: u32,      // K
    vectors: u32,   // 1..16
    blocks: u32,    // K / 512
    wg_x: u32,      // workgroups along x of the 2-D dispatch
    order: u32,     // 0: the window split's column order, 1: the packed one (see above)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;     // vectors x K
@group(0) @binding(2) var<storage, read_write> dst: array<f16>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<f32>>;

@compute @workgroup_size(32)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // workgroup (b, v) = 16 b + v
    let wg = wid.y * P.wg_x + wid.x;
    if (wg >= P.blocks * 16u) {
        return;
    }
    let b = wg >> 4u;
    let v = wg & 15u;
    let l = lid & 31u;
    var xv = array<vec4<f32>, 4>();
    var big = 0.0;
    var bad = false;
    if (v < P.vectors) {
        let base = (v * P.cols + (b << 9u) + (l << 4u)) >> 2u;
        for (var j = 0u; j < 4u; j++) {
            let x = src[base + j];
            xv[j] = x;
            let a = abs(x);
            // (NaN fails every comparison: `bad` catches it and infinities alike)
            bad = bad || !all(a <= vec4<f32>(3.0e38));
            big = max(big, max(max(a.x, a.y), max(a.z, a.w)));
        }
    }
    big = subgroupMax(big);
    bad = subgroupOr(u32(bad)) != 0u;
    // 2^e with big 2^e in [2^13, 2^14): e = 14 - exponent(big), clamped so 2^e and 2^-e are
    // normal f32
    let e = clamp(14 - frexp(max(big, 1.0e-30)).exp, -100, 100);
    let up = ldexp(1.0, e);
    // (NaN made at run time: the bits of a quiet NaN)
    let nan = bitcast<f32>(select(0x7FC00000u, 0u, lid > 4096u));
    let inv = select(ldexp(1.0, -e), nan, bad);
    var part = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let kt = 8u * i + (l >> 2u);
        for (var j = 0u; j < 4u; j++) {
            let x = select(xv[j][i], xv[i][j], P.order == 1u);
            part += x;
            let at = ((b * 32u + kt) << 8u) + (v << 4u) + 4u * (l & 3u) + j;
            dst[at] = f16(select(x * up, 0.0, bad));
        }
    }
    // range m = l / 4: lanes 4m .. 4m + 3's 64 columns
    part += subgroupShuffleXor(part, 1u);
    part += subgroupShuffleXor(part, 2u);
    if ((l & 3u) == 0u) {
        sums[(((b << 3u) + (l >> 2u)) << 4u) + v] = vec2<f32>(part, inv);
    }
}
