// norm.wgsl: LayerNorm (CLIP) and RMSNorm (Llama) over rows of width d.
//
// Bindings: 0 params
//           1 x      f32 [in_row0 + rows, d]
//           2 gamma  f32 [d]
//           3 beta   f32 [d]          (LAYER_NORM only)
//           4 y      f32 [rows, d]    (row r of y is row in_row0 + r of x)
// Variants: LAYER_NORM (entry layer_norm, else entry rms_norm), SUBGROUPS.
// Dispatch: one workgroup of WG_SIZE per row, fold(rows).
//   ROW_LANES (the CPU-device variant; lane groups of 8, see lanes.wgsl): each of the
//   workgroup's 8 lane groups takes one row, its lanes every 8th value, summed by
//   subgroup shuffles: no workgroup memory, no barrier. Dispatch fold(ceil(rows / 8)).
#include "common"
#ifdef ROW_LANES
#include "lanes"
#else
#include "reduce"
#endif

const WG_SIZE: u32 = 64u;

struct Params {
    rows: u32,
    d: u32,
    in_row0: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
#ifdef LAYER_NORM
@group(0) @binding(3) var<storage, read> beta: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

#ifdef ROW_LANES
@compute @workgroup_size(WG_SIZE)
#ifdef LAYER_NORM
fn layer_norm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
#else
fn rms_norm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
#endif
    let lane = lid % 8u;
    let row = linear_wg(wid, nwg) * (WG_SIZE / 8u) + lid / 8u;
    // A lane group past the last row computes on it and stores nothing (no early return:
    // the shuffles need all 8 lanes).
    let src = (p.in_row0 + min(row, p.rows - 1u)) * p.d;
    let dst = row * p.d;
#ifdef LAYER_NORM
    var s = 0.0;
    for (var i = lane; i < p.d; i += 8u) {
        s += x[src + i];
    }
    let mean = lane_sum(s) / f32(p.d);
    var v = 0.0;
    for (var i = lane; i < p.d; i += 8u) {
        let c = x[src + i] - mean;
        v += c * c;
    }
    let inv = inverseSqrt(lane_sum(v) / f32(p.d) + p.eps);
    if row < p.rows {
        for (var i = lane; i < p.d; i += 8u) {
            y[dst + i] = (x[src + i] - mean) * inv * gamma[i] + beta[i];
        }
    }
#else
    var s = 0.0;
    for (var i = lane; i < p.d; i += 8u) {
        let v = x[src + i];
        s += v * v;
    }
    let inv = inverseSqrt(lane_sum(s) / f32(p.d) + p.eps);
    if row < p.rows {
        for (var i = lane; i < p.d; i += 8u) {
            y[dst + i] = x[src + i] * inv * gamma[i];
        }
    }
#endif
}
#else
@compute @workgroup_size(WG_SIZE)
#ifdef LAYER_NORM
fn layer_norm(ids: Ids) {
#else
fn rms_norm(ids: Ids) {
#endif
    let row = linear_wg(ids.wid, ids.nwg);
    if row >= p.rows {
        return;
    }
    let lane = lane_of(ids);
    let src = (p.in_row0 + row) * p.d;
    let dst = row * p.d;
#ifdef LAYER_NORM
    var s = 0.0;
    for (var i = ids.lid; i < p.d; i += WG_SIZE) {
        s += x[src + i];
    }
    let mean = wg_sum(s, lane) / f32(p.d);
    var v = 0.0;
    for (var i = ids.lid; i < p.d; i += WG_SIZE) {
        let c = x[src + i] - mean;
        v += c * c;
    }
    let inv = inverseSqrt(wg_sum(v, lane) / f32(p.d) + p.eps);
    for (var i = ids.lid; i < p.d; i += WG_SIZE) {
        y[dst + i] = (x[src + i] - mean) * inv * gamma[i] + beta[i];
    }
#else
    var s = 0.0;
    for (var i = ids.lid; i < p.d; i += WG_SIZE) {
        let v = x[src + i];
        s += v * v;
    }
    let inv = inverseSqrt(wg_sum(s, lane) / f32(p.d) + p.eps);
    for (var i = ids.lid; i < p.d; i += WG_SIZE) {
        y[dst + i] = x[src + i] * inv * gamma[i];
    }
#endif
}
#endif
