// norm.wgsl: LayerNorm (CLIP) and RMSNorm (Llama) over rows of width d.
//
// Bindings: 0 params
//           1 x      f32 [in_row0 + rows, d]
//           2 gamma  f32 [d]
//           3 beta   f32 [d]          (LAYER_NORM only)
//           4 y      f32 [rows, d]    (row r of y is row in_row0 + r of x)
// Variants: LAYER_NORM (entry layer_norm, else entry rms_norm), SUBGROUPS.
// Dispatch: one workgroup of WG_SIZE per row, fold(rows).
#include "common"
#include "reduce"

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
