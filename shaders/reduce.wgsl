// reduce.wgsl: workgroup-wide sum and max over WG_SIZE invocations (a const the includer
// declares; a power of two). Call from uniform control flow only.
//   SUBGROUPS defined: subgroupAdd / subgroupMax, then one partial per subgroup through
//                      workgroup memory. No subgroup size is assumed.
//   otherwise:         a halving tree in workgroup memory.
// Entry points take `ids: Ids` and pass `lane_of(ids)` to the reductions.

var<workgroup> red_buf: array<f32, WG_SIZE>;

struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SUBGROUPS
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(num_subgroups) n_sg: u32,
#endif
}

struct Lane {
    lid: u32,
    sg_id: u32,
    sg_lane: u32,
    n_sg: u32,
}

fn lane_of(ids: Ids) -> Lane {
#ifdef SUBGROUPS
    return Lane(ids.lid, ids.sg_id, ids.sg_lane, ids.n_sg);
#else
    return Lane(ids.lid, 0u, 0u, 1u);
#endif
}

fn wg_sum(v: f32, lane: Lane) -> f32 {
#ifdef SUBGROUPS
    let s = subgroupAdd(v);
    if lane.sg_lane == 0u {
        red_buf[lane.sg_id] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < lane.n_sg; i++) {
        t += red_buf[i];
    }
    workgroupBarrier();
    return t;
#else
    red_buf[lane.lid] = v;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lane.lid < s {
            red_buf[lane.lid] += red_buf[lane.lid + s];
        }
        workgroupBarrier();
    }
    let t = red_buf[0];
    workgroupBarrier();
    return t;
#endif
}

fn wg_max(v: f32, lane: Lane) -> f32 {
#ifdef SUBGROUPS
    let s = subgroupMax(v);
    if lane.sg_lane == 0u {
        red_buf[lane.sg_id] = s;
    }
    workgroupBarrier();
    var t = red_buf[0];
    for (var i = 1u; i < lane.n_sg; i++) {
        t = max(t, red_buf[i]);
    }
    workgroupBarrier();
    return t;
#else
    red_buf[lane.lid] = v;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lane.lid < s {
            red_buf[lane.lid] = max(red_buf[lane.lid], red_buf[lane.lid + s]);
        }
        workgroupBarrier();
    }
    let t = red_buf[0];
    workgroupBarrier();
    return t;
#endif
}
