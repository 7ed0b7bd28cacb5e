// matmul.wgsl: y[m, out_col + n] (=|+=) act(sum_k x[m, k] * W[n, k] + bias[out_col + n])
//
// Bindings: 0 params (uniform Params)
//           1 x     f32 [m, x_stride], columns 0..k used
//           2 w     W4  [n, k4 / 4]   (f16 rows padded to k4, see common.wgsl; WTEX: the
//                   same bytes in a texture, weight_texture.wgsl)
//           3 bias  f32 [out_col + n] (only with BIAS)
//           4 y     f32 [m, out_stride]
// Variants: BIAS, ACT_GELU | ACT_QUICK_GELU, ACCUMULATE (y += result, for residual adds),
//           F16, SUBGROUPS, WTEX.
// Entry points:
//   gemm: (4*TN)x(4*TN) output tile per workgroup of TNxTN invocations, each computing 4x4
//         outputs, K in steps of 16 through workgroup memory. TN (value: 16 or 8, a 64x64 or
//         32x32 tile) comes from the device's tile table or the autotuner (ops::matmul::Tile).
//         Dispatch (ceil(n/(4*TN)), ceil(m/(4*TN)), 1).
//   gemv: m == 1. ROWS=4 output rows per workgroup of WG_SIZE invocations striding over K
//         with vec4 loads, then a workgroup reduction. Dispatch fold(ceil(n/4)).
#include "common"
#include "linear_store"

struct Params {
    m: u32,
    n: u32,
    k: u32,
    k4: u32,
    x_stride: u32,
    out_stride: u32,
    out_col: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#ifdef WTEX
#include "weight_texture"
fn w_w4(i: u32) -> vec4<f32> { return weight_texel_w4(i); }
#else
@group(0) @binding(2) var<storage, read> w: array<W4>;
fn w_w4(i: u32) -> vec4<f32> { return w4(w[i]); }
#endif
#ifdef BIAS
@group(0) @binding(3) var<storage, read> bias: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const BM: u32 = 4u * TN;
const BN: u32 = 4u * TN;
const BK: u32 = 16u;
const THREADS: u32 = TN * TN;

var<workgroup> a_tile: array<f32, BK * BM>; // [BK][BM]
var<workgroup> b_tile: array<f32, BK * BN>; // [BK][BN]

@compute @workgroup_size(TN, TN)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * TN + tx;
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    var acc: array<array<f32, 4>, 4>;
    let tiles = (p.k4 + BK - 1u) / BK;
    for (var t = 0u; t < tiles; t++) {
        let k0 = t * BK;
        // x: BM rows x BK values, one value per load.
        for (var i = 0u; i < BK * BM / THREADS; i++) {
            let idx = tid + THREADS * i;
            let ml = idx / BK;
            let kl = idx % BK;
            let m = m0 + ml;
            let k = k0 + kl;
            var v = 0.0;
            if m < p.m && k < p.k {
                v = x[m * p.x_stride + k];
            }
            a_tile[kl * BM + ml] = v;
        }
        // W: BN rows x BK values, one vec4 per load.
        for (var i = 0u; i < BK * BN / 4u / THREADS; i++) {
            let idx = tid + THREADS * i;
            let nl = idx / 4u;
            let kq = (idx % 4u) * 4u;
            let n = n0 + nl;
            let k = k0 + kq;
            var v = vec4<f32>(0.0);
            if n < p.n && k < p.k4 {
                v = w_w4((n * p.k4 + k) / 4u);
            }
            b_tile[kq * BN + nl] = v.x;
            b_tile[(kq + 1u) * BN + nl] = v.y;
            b_tile[(kq + 2u) * BN + nl] = v.z;
            b_tile[(kq + 3u) * BN + nl] = v.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = a_tile[kk * BM + ty + TN * i];
                b[i] = b_tile[kk * BN + tx + TN * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            let m = m0 + ty + TN * i;
            let n = n0 + tx + TN * j;
            if m < p.m && n < p.n {
                store(m, n, acc[i][j]);
            }
        }
    }
}

const WG_SIZE: u32 = 64u;
const ROWS: u32 = 4u;

var<workgroup> gemv_part: array<vec4<f32>, WG_SIZE>;

fn load_x4(k: u32) -> vec4<f32> {
    if k + 3u < p.k {
        return vec4<f32>(x[k], x[k + 1u], x[k + 2u], x[k + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if k + i < p.k {
            v[i] = x[k + i];
        }
    }
    return v;
}

@compute @workgroup_size(WG_SIZE)
fn gemv(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SUBGROUPS
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(num_subgroups) n_sg: u32,
#endif
) {
    let row0 = linear_wg(wid, nwg) * ROWS;
    if row0 >= p.n {
        return;
    }
    let quads = p.k4 / 4u;
    var acc = vec4<f32>(0.0);
    for (var c = lid; c < quads; c += WG_SIZE) {
        let xv = load_x4(c * 4u);
        for (var r = 0u; r < ROWS; r++) {
            if row0 + r < p.n {
                acc[r] += dot(xv, w_w4((row0 + r) * quads + c));
            }
        }
    }
#ifdef SUBGROUPS
    let s = subgroupAdd(acc);
    if sg_lane == 0u {
        gemv_part[sg_id] = s;
    }
    workgroupBarrier();
    if lid == 0u {
        var t = vec4<f32>(0.0);
        for (var i = 0u; i < n_sg; i++) {
            t += gemv_part[i];
        }
        for (var r = 0u; r < ROWS; r++) {
            if row0 + r < p.n {
                store(0u, row0 + r, t[r]);
            }
        }
    }
#else
    gemv_part[lid] = acc;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            gemv_part[lid] += gemv_part[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        let t = gemv_part[0];
        for (var r = 0u; r < ROWS; r++) {
            if row0 + r < p.n {
                store(0u, row0 + r, t[r]);
            }
        }
    }
#endif
}
