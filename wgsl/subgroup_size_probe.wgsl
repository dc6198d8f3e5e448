// The subgroup size each invocation of one 128-invocation workgroup runs with, where the
// subgroup operations behave as that size says (src/gpu/mod.rs, `probe_subgroup_size`): it
// settles whether the 32-wide subgroup kernels may run where the adapter's report does not
// (wgpu's Metal backend reports 4..64 for every device, while an Apple GPU's SIMD groups are
// 32 wide), and keeps every subgroup kernel off a driver whose operations disagree with the
// size it reports (lavapipe with 1024-bit vectors reports 32 and runs 16). An invocation
// writes its size where `subgroupAdd` and `subgroupBallot` count it, `subgroupExclusiveAdd`
// and `subgroupShuffle` agree with its id, and its subgroup is that many consecutive local
// invocations from a multiple of the size (the layout the 32-wide kernels take); 0 elsewhere.

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

@group(0) @binding(0) var<storage, read_write> sizes: array<u32, 128>;

@compute @workgroup_size(128)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    // (every operation in uniform control flow: no short-circuit around them)
    let n = max(sg_size, 1u);
    let next = (sg_id + 1u) % n;
    let added = subgroupAdd(1u);
    let b = subgroupBallot(true);
    let balloted = countOneBits(b.x) + countOneBits(b.y) + countOneBits(b.z) + countOneBits(b.w);
    let below = subgroupExclusiveAdd(1u);
    let shuffled = subgroupShuffle(sg_id, next);
    let first = subgroupShuffle(lid, 0u);
    var ok = sg_size > 0u && sg_id < sg_size;
    ok = ok && added == sg_size && balloted == sg_size && below == sg_id && shuffled == next;
    ok = ok && first == lid - sg_id && first % n == 0u;
    sizes[lid] = select(0u, sg_size, ok);
}
