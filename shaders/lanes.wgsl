// lanes.wgsl: lane groups, the CPU-device way to reduce without workgroup memory or
// barriers. A lane group is 8 consecutive invocations of one subgroup (the includer checks
// that subgroups hold at least 8: gpu::Gpu::lane_groups); lane = local index % 8.

// Sum of v over the 8 lanes of this lane group (every lane gets it).
fn lane_sum(v: f32) -> f32 {
    var s = v + subgroupShuffleXor(v, 4u);
    s += subgroupShuffleXor(s, 2u);
    return s + subgroupShuffleXor(s, 1u);
}

// Sum of v over the n lanes of a lane group of n consecutive invocations (n a power of two,
// at most the subgroup size; every lane gets it).
fn lane_sum_n(v: f32, n: u32) -> f32 {
    var s = v;
    for (var o = n / 2u; o > 0u; o >>= 1u) {
        s += subgroupShuffleXor(s, o);
    }
    return s;
}
