// lanes.wgsl: lane groups, the CPU-device way to reduce without workgroup memory or
// barriers. A lane group is 8 consecutive invocations of one subgroup (the includer checks
// that subgroups hold at least 8: gpu::Gpu::lane_groups); lane = local index % 8.

// Sum of v over the 8 lanes of this lane group (every lane gets it).
fn lane_sum(v: f32) -> f32 {
    var s = v + subgroupShuffleXor(v, 4u);
    s += subgroupShuffleXor(s, 2u);
    return s + subgroupShuffleXor(s, 1u);
}
