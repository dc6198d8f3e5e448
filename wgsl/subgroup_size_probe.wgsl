// The subgroup size each invocation of one 128-invocation workgroup runs with, for adapters
// whose reported range does not settle whether the 32-wide subgroup kernels may run
// (src/gpu/mod.rs, `probe_subgroup_size`): wgpu's Metal backend reports 4..64 for every device,
// while an Apple GPU's SIMD groups are 32 wide.

// requires: SUBGROUP (wgpu Features::SUBGROUP; naga 30 takes no `enable subgroups;`)

@group(0) @binding(0) var<storage, read_write> sizes: array<u32, 128>;

@compute @workgroup_size(128)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    sizes[lid] = sg_size;
}
