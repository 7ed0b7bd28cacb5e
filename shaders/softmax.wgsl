// softmax.wgsl: in-place softmax over rows of length n (n = step.kv_len with STEP_LEN).
//
// Bindings: 0 params {rows, n, stride}
//           1 x     f32 [rows, stride], columns 0..n
//           2 step  (STEP_LEN only)
// Dispatch: one workgroup of WG_SIZE per row, fold(rows).
#include "common"
#include "reduce"

const WG_SIZE: u32 = 64u;

struct Params {
    rows: u32,
    n: u32,
    stride: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
#ifdef STEP_LEN
@group(0) @binding(2) var<uniform> step: Step;
#endif

@compute @workgroup_size(WG_SIZE)
fn softmax(ids: Ids) {
    let row = linear_wg(ids.wid, ids.nwg);
    if row >= p.rows {
        return;
    }
    let lane = lane_of(ids);
#ifdef STEP_LEN
    let n = step.kv_len;
#else
    let n = p.n;
#endif
    let base = row * p.stride;
    var m = -3.0e38;
    for (var i = ids.lid; i < n; i += WG_SIZE) {
        m = max(m, x[base + i]);
    }
    m = wg_max(m, lane);
    var s = 0.0;
    for (var i = ids.lid; i < n; i += WG_SIZE) {
        let e = exp(x[base + i] - m);
        x[base + i] = e;
        s += e;
    }
    let inv = 1.0 / wg_sum(s, lane);
    for (var i = ids.lid; i < n; i += WG_SIZE) {
        x[base + i] *= inv;
    }
}
