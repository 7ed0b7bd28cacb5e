// matmul_quant.wgsl: y[m, out_col + n] (=|+=) act(sum_k x[m, k] * W[n, k] + bias[out_col + n])
// with W in a ggml block format, read in place (no dequantised copy in memory).
//
// Bindings: 0 params (uniform Params)
//           1 x     f32 [m, x_stride], columns 0..k used (k a multiple of 32)
//           2 w     u32 words, repacked at upload (gpu::tensor::repack): the 16 (Q4, and
//                   the Q5s' and Q6_K's low nibbles) or 32 (Q8) quant bytes of group (n, g)
//                   at word (n*nb + g)*QW, then the scales from word n_rows*nb*QW on (Q4_1:
//                   one d|m word per group; Q4_0/Q8_0: one f16 d per group, two per word;
//                   Q4_K: one 4-word header per 256-value super-block, q4_k.wgsl; Q5_0,
//                   Q5_1, Q5_K: one word of high bits per group first, then their Q4_0,
//                   Q4_1, Q4_K scales; Q6_K: two words of 2-bit highs per group, then 4
//                   words of int8 scales per super-block, then its f16 d's, two per word;
//                   Q3_K: two words of 2-bit lows per group (QW 2), one of high bits, then
//                   3 words of packed scales per super-block, q3_k.wgsl, then its d's)
//           3 bias  f32 [out_col + n] (only with BIAS)
//           4 y     f32 [m, out_stride]
//           5 ids   u32 [m] (embed_rows only)
// Variants: one of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q3_K, Q4_K, Q5_K, Q6_K; BIAS; ACT_GELU | ACT_QUICK_GELU; ACCUMULATE;
//           WTEX (w's words in a texture, weight_texture.wgsl).
// Every format is read as groups of 32 consecutive values: the block itself (Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, IQ4_NL: Q4_0's layout, its nibbles indexing iq4_nl.wgsl's levels), or one of the 8 sub-blocks of a 256-value super-block (Q3_K, Q4_K,
// Q5_K, Q6_K; their low nibbles are repacked in Q4_1's order, Q3_K's 2-bit lows as Q6_K's
// highs).
// Entry points (one input row is gemv.wgsl's, which reads every block type):
//   gemm: (4*TN)x(4*TN) output tile per workgroup of TNxTN invocations (TN, a value define:
//         16 or 8, as in matmul.wgsl), each computing a 4x4 block of outputs in vec4
//         registers, K in steps of one group (32) through workgroup memory, dequantised
//         on load.
//         Dispatch (ceil(n / (4*TN)), ceil(m / (4*TN)), 1).
//   embed_rows: y[t, c] = W[ids[t] - out_col, c] for ids inside this chunk (n rows), one
//         invocation per (t, c) of m x k. Dispatch fold(ceil(m * k / 64)).
#include "common"
#include "linear_store"
#ifdef Q4_K
#include "q4_k"
#endif
#ifdef Q5_K
#include "q4_k"
#endif
#ifdef Q3_K
#include "q3_k"
#endif
#ifdef IQ4_NL
#include "iq4_nl"
#endif

struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_bytes: u32, // (bytes per row; every format is repacked, so no kernel reads it)
    x_stride: u32,
    out_stride: u32,
    out_col: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
#ifdef WTEX
#include "weight_texture"
fn w_u32(i: u32) -> u32 { return weight_texel(i >> 2u)[i & 3u]; }
#else
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn w_u32(i: u32) -> u32 { return w[i]; }
#endif
#ifdef BIAS
@group(0) @binding(3) var<storage, read> bias: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> ids: array<u32>;

#ifdef Q4_0
const QW: u32 = 4u;
#endif
#ifdef Q4_1
const QW: u32 = 4u;
#endif
#ifdef Q8_0
const QW: u32 = 8u;
#endif
#ifdef Q4_K
const QW: u32 = 4u;
#endif
#ifdef Q6_K
const QW: u32 = 4u;
#endif
#ifdef Q5_0
const QW: u32 = 4u;
#endif
#ifdef Q5_1
const QW: u32 = 4u;
#endif
#ifdef Q5_K
const QW: u32 = 4u;
#endif
#ifdef Q3_K
const QW: u32 = 2u;
#endif
#ifdef IQ4_NL
const QW: u32 = 4u;
#endif

// Repacked formats: word index of group (row, g)'s quants, and its scale word / f16.
fn packed_group(row: u32, g: u32) -> u32 {
    return row * (p.k / 32u) + g;
}
fn scales_base() -> u32 {
    return p.n * (p.k / 32u) * QW;
}
fn packed_half(i: u32) -> f32 {
    return unpack2x16float(w_u32(scales_base() + (i >> 1u)))[i & 1u];
}

// A group's 32 values are q[l] * scale + offset (q as unsigned or signed integers), with
// a different scale for values 16..32 in Q6_K. Group = (byte offsets, scales).
struct Group {
    // Word index of the group's quants (Q6_K: its low nibbles).
    qs: u32,
    // Q5_0, Q5_1, Q3_K, Q5_K, Q6_K: word index of the group's word (Q6_K: two words) of
    // highs.
    qh: u32,
    scale0: f32,
    scale1: f32,
    offset: f32,
}

// The super-block header that holds group i (Q4_K, Q5_K), from word `base` of the regions
// after the quants: four words a super-block (q4_k.wgsl).
fn k_header(base: u32, i: u32) -> vec4<u32> {
    let h = base + 4u * (i >> 3u);
    return vec4<u32>(w_u32(h), w_u32(h + 1u), w_u32(h + 2u), w_u32(h + 3u));
}

fn group(row: u32, g: u32) -> Group {
    var r: Group;
    let i = packed_group(row, g);
    // groups in the chunk; the quants take QW words each, then come the other regions
    let groups = scales_base() / QW;
    r.qs = i * QW;
    // the Q5 formats: one word of fifth bits a group, before their scales
    r.qh = 4u * groups + i;
#ifdef Q4_0
    r.scale0 = packed_half(i);
    r.offset = -8.0 * r.scale0;
#endif
#ifdef Q4_1
    let dm = unpack2x16float(w_u32(scales_base() + i));
    r.scale0 = dm.x;
    r.offset = dm.y;
#endif
#ifdef Q8_0
    r.scale0 = packed_half(i);
#endif
#ifdef IQ4_NL
    r.scale0 = packed_half(i);
#endif
#ifdef Q4_K
    let dm = q4k_dm(k_header(scales_base(), i), g & 7u);
    r.scale0 = dm.x;
    r.offset = dm.y;
#endif
#ifdef Q5_0
    r.scale0 = unpack2x16float(w_u32(5u * groups + (i >> 1u)))[i & 1u];
    r.offset = -16.0 * r.scale0;
#endif
#ifdef Q5_1
    let dm = unpack2x16float(w_u32(5u * groups + i));
    r.scale0 = dm.x;
    r.offset = dm.y;
#endif
#ifdef Q5_K
    let dm = q4k_dm(k_header(5u * groups, i), g & 7u);
    r.scale0 = dm.x;
    r.offset = dm.y;
#endif
#ifdef Q3_K
    // regions after the lows (2 words a group): highs (a word a group), scales (3 words a
    // super-block), d's
    let sb = i >> 3u;
    let s = 3u * groups + 3u * sb;
    let sc = q3k_scales(vec3<u32>(w_u32(s), w_u32(s + 1u), w_u32(s + 2u)), g & 7u);
    let d = unpack2x16float(w_u32(3u * groups + 3u * (groups / 8u) + (sb >> 1u)))[sb & 1u];
    r.qh = 2u * groups + i;
    r.scale0 = d * sc.x;
    r.scale1 = d * sc.y;
#endif
#ifdef Q6_K
    // regions after the low nibbles (4 words a group): highs (2 words a group), scales (4
    // words a super-block: scales 2j and 2j + 1 of sub-block j in word j / 2), d's
    let sb = i >> 3u;
    let sc = w_u32(6u * groups + 4u * sb + ((g & 7u) >> 1u)) >> (16u * (g & 1u));
    let d = unpack2x16float(w_u32(6u * groups + groups / 2u + (sb >> 1u)))[sb & 1u];
    r.qh = 4u * groups + 2u * i;
    r.scale0 = d * f32(extractBits(i32(sc), 0u, 8u));
    r.scale1 = d * f32(extractBits(i32(sc), 8u, 8u));
#else
#ifndef Q3_K
    r.scale1 = r.scale0;
#endif
#endif
    return r;
}

fn u8x4(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 0xffu), f32((q >> 8u) & 0xffu), f32((q >> 16u) & 0xffu), f32(q >> 24u));
}

// Q4_0 / Q4_1 / Q4_K: values 0..16 are the low nibbles of bytes 0..16, values 16..32 the high ones.
fn nibbles(gr: Group, l: u32) -> vec4<f32> {
    let wd = w_u32(gr.qs + ((l & 15u) >> 2u));
    return u8x4((wd >> select(0u, 4u, l >= 16u)) & 0x0f0f0f0fu);
}

// Q5_0 / Q5_1 / Q5_K: the nibbles with their fifth bits, value 16h + 4c + j's at bit
// 8j + 4h + c of the group's highs word (gpu::tensor::repack_q5).
fn fives(gr: Group, l: u32) -> vec4<f32> {
    let hs = select(0u, 4u, l >= 16u) + ((l & 15u) >> 2u);
    let hi = ((w_u32(gr.qh) >> hs) & 0x01010101u) << 4u;
    let wd = w_u32(gr.qs + ((l & 15u) >> 2u));
    return u8x4(((wd >> select(0u, 4u, l >= 16u)) & 0x0f0f0f0fu) | hi);
}

// The four integer quants of values l .. l + 4 (l a multiple of 4) of a group.
fn quads(gr: Group, l: u32) -> vec4<f32> {
#ifdef Q8_0
    let v = i32(w_u32(gr.qs + (l >> 2u)));
    return vec4<f32>(f32(extractBits(v, 0u, 8u)), f32(extractBits(v, 8u, 8u)),
                     f32(extractBits(v, 16u, 8u)), f32(extractBits(v, 24u, 8u)));
#endif
#ifdef IQ4_NL
    return iq4nl(w_u32(gr.qs + ((l & 15u) >> 2u)), select(0u, 4u, l >= 16u));
#endif
#ifdef Q3_K
    // values l .. l + 4: the 2-bit lows at bits 2c of each byte of the half's word, their
    // high bits at bit 4h + c of each byte of the highs word
    let c = (l & 15u) >> 2u;
    let hi16 = select(0u, 1u, l >= 16u);
    let lo = (w_u32(gr.qs + hi16) >> (2u * c)) & 0x03030303u;
    let hi = ((w_u32(gr.qh) >> (4u * hi16 + c)) & 0x01010101u) << 2u;
    return u8x4(lo | hi) - 4.0;
#endif
#ifdef Q6_K
    // values l .. l + 4: the low nibbles as Q4_1's, their highs at bits 2c of each byte
    let c = (l & 15u) >> 2u;
    let hi16 = select(0u, 1u, l >= 16u);
    let lo = (w_u32(gr.qs + c) >> (4u * hi16)) & 0x0f0f0f0fu;
    let hi = ((w_u32(gr.qh + hi16) >> (2u * c)) & 0x03030303u) << 4u;
    return u8x4(lo | hi) - 32.0;
#endif
#ifdef Q4_K
    return nibbles(gr, l);
#endif
#ifdef Q5_0
    return fives(gr, l);
#endif
#ifdef Q5_1
    return fives(gr, l);
#endif
#ifdef Q5_K
    return fives(gr, l);
#endif
#ifdef Q4_0
    return nibbles(gr, l);
#endif
#ifdef Q4_1
    return nibbles(gr, l);
#endif
}

fn scale_of(gr: Group, l: u32) -> f32 {
    return select(gr.scale0, gr.scale1, l >= 16u);
}

fn x4(m: u32, k: u32) -> vec4<f32> {
    let o = m * p.x_stride + k;
    return vec4<f32>(x[o], x[o + 1u], x[o + 2u], x[o + 3u]);
}

const BM: u32 = 4u * TN;
const BN: u32 = 4u * TN;
const BK: u32 = 32u;
const THREADS: u32 = TN * TN;

// The tiles hold vec4s across the output side, a_tile[kk][m / 4] and b_tile[kk][n / 4], and
// an invocation's 4x4 outputs (rows m0 + 4 ty .., columns n0 + 4 tx ..) stay in four vec4
// registers: no indexed arrays, which GPU compilers keep in local memory (matmul.wgsl).
var<workgroup> a_tile: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>;

// Values kl .. kl + 8 (a, then b) of tile row `row` into column `row` of the k-major tile.
fn put8(tile: u32, row: u32, kl: u32, a: vec4<f32>, b: vec4<f32>) {
    let slot = row / 4u;
    let c = row % 4u;
    let w = BM / 4u; // BM == BN
    for (var j = 0u; j < 4u; j++) {
        if tile == 0u {
            a_tile[(kl + j) * w + slot][c] = a[j];
            a_tile[(kl + 4u + j) * w + slot][c] = b[j];
        } else {
            b_tile[(kl + j) * w + slot][c] = a[j];
            b_tile[(kl + 4u + j) * w + slot][c] = b[j];
        }
    }
}

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
    let groups = p.k / BK;
    for (var g = 0u; g < groups; g++) {
        let k0 = g * BK;
        // x: BM rows x 32 values; each load takes 8 of one row.
        for (var i = 0u; i < BM * 4u / THREADS; i++) {
            let idx = tid + THREADS * i;
            let ml = idx / 4u;
            let kl = (idx % 4u) * 8u;
            let m = m0 + ml;
            var a = vec4<f32>(0.0);
            var b = vec4<f32>(0.0);
            if m < p.m {
                a = x4(m, k0 + kl);
                b = x4(m, k0 + kl + 4u);
            }
            put8(0u, ml, kl, a, b);
        }
        // W: BN rows x one group; each load dequantises 8 values of one row.
        for (var i = 0u; i < BN * 4u / THREADS; i++) {
            let idx = tid + THREADS * i;
            let nl = idx / 4u;
            let kl = (idx % 4u) * 8u;
            let n = n0 + nl;
            var a = vec4<f32>(0.0);
            var b = vec4<f32>(0.0);
            if n < p.n {
                let gr = group(n, g);
                let s = scale_of(gr, kl);
                a = quads(gr, kl) * s + gr.offset;
                b = quads(gr, kl + 4u) * s + gr.offset;
            }
            put8(1u, nl, kl, a, b);
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

@compute @workgroup_size(64)
fn embed_rows(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_wg(wid, nwg) * 64u + lid;
    if i >= p.m * p.k {
        return;
    }
    let t = i / p.k;
    let c = i % p.k;
    let id = ids[t];
    if id < p.out_col || id >= p.out_col + p.n {
        return;
    }
    let gr = group(id - p.out_col, c / 32u);
    let l = c % 32u;
    let q = quads(gr, l & ~3u);
    y[t * p.out_stride + c] = q[l & 3u] * scale_of(gr, l) + gr.offset;
}
