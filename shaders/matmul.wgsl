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
//   gemm: (4*TN)x(4*TN) output tile per workgroup of TNxTN invocations, each computing a 4x4
//         block of outputs in vec4 registers, K in steps of 16 through workgroup memory. TN (value: 16 or 8, a 64x64 or
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

// The tiles hold vec4s across the output side: a_tile[kk][m / 4], b_tile[kk][n / 4], so
// that an invocation reads its 4 rows and its 4 columns as one vec4 each.
var<workgroup> a_tile: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>;

// x[m, k .. k + 4], zero past p.m and p.k.
fn load_x_quad(m: u32, k: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if m < p.m {
        let o = m * p.x_stride + k;
        if k + 3u < p.k {
            v = vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
        } else {
            for (var c = 0u; c < 4u; c++) {
                if k + c < p.k {
                    v[c] = x[o + c];
                }
            }
        }
    }
    return v;
}

// Invocation (tx, ty) computes outputs rows m0 + 4 ty .. + 4, columns n0 + 4 tx .. + 4, in
// four vec4 registers (one per row). Every value stays in a named register, never in an
// indexed array: a GPU compiler that does not unroll the loops would otherwise keep such
// arrays in local memory (measured on an H100: 0.2-0.34 TFLOP/s with indexed arrays).
@compute @workgroup_size(TN, TN)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * TN + tx;
    let n0 = wid.x * BN;
    let m0 = wid.y * BM;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let tiles = (p.k4 + BK - 1u) / BK;
    for (var t = 0u; t < tiles; t++) {
        let k0 = t * BK;
        // x and W: BM (= BN) rows x BK values each, 4 values (along k) per load
        for (var i = 0u; i < BK * BM / 4u / THREADS; i++) {
            let idx = tid + THREADS * i;
            let rl = idx / 4u;
            let kq = (idx % 4u) * 4u;
            let slot = rl / 4u;
            let c = rl % 4u;
            let xv = load_x_quad(m0 + rl, k0 + kq);
            a_tile[kq * (BM / 4u) + slot][c] = xv.x;
            a_tile[(kq + 1u) * (BM / 4u) + slot][c] = xv.y;
            a_tile[(kq + 2u) * (BM / 4u) + slot][c] = xv.z;
            a_tile[(kq + 3u) * (BM / 4u) + slot][c] = xv.w;
            let n = n0 + rl;
            let k = k0 + kq;
            var wv = vec4<f32>(0.0);
            if n < p.n && k < p.k4 {
                wv = w_w4((n * p.k4 + k) / 4u);
            }
            b_tile[kq * (BN / 4u) + slot][c] = wv.x;
            b_tile[(kq + 1u) * (BN / 4u) + slot][c] = wv.y;
            b_tile[(kq + 2u) * (BN / 4u) + slot][c] = wv.z;
            b_tile[(kq + 3u) * (BN / 4u) + slot][c] = wv.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = a_tile[kk * (BM / 4u) + ty];
            let b = b_tile[kk * (BN / 4u) + tx];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }
    store_row(m0 + 4u * ty, n0 + 4u * tx, acc0);
    store_row(m0 + 4u * ty + 1u, n0 + 4u * tx, acc1);
    store_row(m0 + 4u * ty + 2u, n0 + 4u * tx, acc2);
    store_row(m0 + 4u * ty + 3u, n0 + 4u * tx, acc3);
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
