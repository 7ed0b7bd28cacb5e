// norm.wgsl: LayerNorm (CLIP) and RMSNorm (Llama) over rows of width d.
//
// Bindings: 0 params
//           1 x      f32 [in_row0 + rows, d]
//           2 gamma  f32 [d]
//           3 beta   f32 [d]          (LAYER_NORM only)
//           4 y      f32 [rows, d]    (row r of y is row in_row0 + r of x)
//           5 y_tex  rgba32float [d / 4, rows]: y's texture copy (Y_TEX), values 4c .. 4c + 3
//                    of row r at texel (c, r)
//           6 x_tex  rgba32float [d / 4, *]: x's texture copy (X_TEX), read instead of 1
// Variants: LAYER_NORM (entry layer_norm, else entry rms_norm), SUBGROUPS, ROW_LANES, Y_TEX
//           (with ROW_LANES and d a multiple of 4: y written to y_tex too, each lane
//           storing whole texels: values 4c .. 4c + 3 for c = lane, lane + 8, ...), X_TEX
//           (LAYER_NORM with ROW_LANES and Y_TEX: x read texel by texel from x_tex, the
//           same texels per lane; lavapipe fetches a texel for 8 lanes where it loads a
//           storage buffer lane by lane).
// Dispatch: one workgroup of WG_SIZE per row, its sums by reduce.wgsl; fold(rows).
//   ROW_LANES (the CPU-device variant; lane groups of 8, see lanes.wgsl): each of the
//   workgroup's 8 lane groups takes one row, its lanes every 8th value, summed by
//   subgroup shuffles: no workgroup memory, no barrier. Dispatch fold(ceil(rows / 8)).
#include "common"
#include "reduce"
#ifdef ROW_LANES
#include "lanes"
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
#ifdef Y_TEX
@group(0) @binding(5) var y_tex: texture_storage_2d<rgba32float, write>;
#endif
#ifdef X_TEX
@group(0) @binding(6) var x_tex: texture_storage_2d<rgba32float, read>;
#endif

// The sum of v over the invocations that share this row.
fn row_sum(v: f32, lane: Lane) -> f32 {
#ifdef ROW_LANES
    return lane_sum(v);
#else
    return wg_sum(v, lane);
#endif
}

@compute @workgroup_size(WG_SIZE)
#ifdef LAYER_NORM
fn layer_norm(ids: Ids) {
#else
fn rms_norm(ids: Ids) {
#endif
    let lane = lane_of(ids);
    // This invocation's row, and its values first, first + step, ... of that row.
#ifdef ROW_LANES
    let row = linear_wg(ids.wid, ids.nwg) * (WG_SIZE / 8u) + ids.lid / 8u;
    let first = ids.lid % 8u;
    let step = 8u;
#else
    let row = linear_wg(ids.wid, ids.nwg);
    let first = ids.lid;
    let step = WG_SIZE;
#endif
    // Past the last row: compute on it and store nothing (the sums need every lane).
    let src = (p.in_row0 + min(row, p.rows - 1u)) * p.d;
    let dst = row * p.d;
#ifdef X_TEX
    let xrow = p.in_row0 + min(row, p.rows - 1u);
    var s = 0.0;
    for (var c = first; c < p.d / 4u; c += step) {
        let t = textureLoad(x_tex, vec2<u32>(c, xrow));
        s += t.x;
        s += t.y;
        s += t.z;
        s += t.w;
    }
    let mean = row_sum(s, lane) / f32(p.d);
    var v = 0.0;
    for (var c = first; c < p.d / 4u; c += step) {
        let t = textureLoad(x_tex, vec2<u32>(c, xrow)) - mean;
        v += t.x * t.x;
        v += t.y * t.y;
        v += t.z * t.z;
        v += t.w * t.w;
    }
    let inv = inverseSqrt(row_sum(v, lane) / f32(p.d) + p.eps);
    if row < p.rows {
        for (var c = first; c < p.d / 4u; c += step) {
            let i = 4u * c;
            let g = vec4<f32>(gamma[i], gamma[i + 1u], gamma[i + 2u], gamma[i + 3u]);
            let b = vec4<f32>(beta[i], beta[i + 1u], beta[i + 2u], beta[i + 3u]);
            let t = (textureLoad(x_tex, vec2<u32>(c, xrow)) - mean) * inv * g + b;
            y[dst + i] = t.x;
            y[dst + i + 1u] = t.y;
            y[dst + i + 2u] = t.z;
            y[dst + i + 3u] = t.w;
            textureStore(y_tex, vec2<u32>(c, row), t);
        }
    }
#else
#ifdef LAYER_NORM
    var s = 0.0;
    for (var i = first; i < p.d; i += step) {
        s += x[src + i];
    }
    let mean = row_sum(s, lane) / f32(p.d);
    var v = 0.0;
    for (var i = first; i < p.d; i += step) {
        let c = x[src + i] - mean;
        v += c * c;
    }
    let inv = inverseSqrt(row_sum(v, lane) / f32(p.d) + p.eps);
    if row < p.rows {
#ifdef Y_TEX
        for (var c = first; c < p.d / 4u; c += step) {
            var t: vec4<f32>;
            for (var j = 0u; j < 4u; j++) {
                let i = 4u * c + j;
                t[j] = (x[src + i] - mean) * inv * gamma[i] + beta[i];
                y[dst + i] = t[j];
            }
            textureStore(y_tex, vec2<u32>(c, row), t);
        }
#else
        for (var i = first; i < p.d; i += step) {
            y[dst + i] = (x[src + i] - mean) * inv * gamma[i] + beta[i];
        }
#endif
    }
#else
    var s = 0.0;
    for (var i = first; i < p.d; i += step) {
        let v = x[src + i];
        s += v * v;
    }
    let inv = inverseSqrt(row_sum(s, lane) / f32(p.d) + p.eps);
    if row < p.rows {
#ifdef Y_TEX
        for (var c = first; c < p.d / 4u; c += step) {
            var t: vec4<f32>;
            for (var j = 0u; j < 4u; j++) {
                let i = 4u * c + j;
                t[j] = x[src + i] * inv * gamma[i];
                y[dst + i] = t[j];
            }
            textureStore(y_tex, vec2<u32>(c, row), t);
        }
#else
        for (var i = first; i < p.d; i += step) {
            y[dst + i] = x[src + i] * inv * gamma[i];
        }
#endif
    }
#endif
#endif
}
