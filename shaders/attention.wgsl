// attention.wgsl: scaled dot-product attention with grouped KV heads (GQA).
// Query head h reads KV head h / (heads / kv_heads). HD (head dim) and KT (keys per tile)
// are value defines.
//
// attention (prefill, fused, online softmax; no score matrix in memory):
//   Bindings: 0 params, 1 q f32 [m, q_stride], 2 k f32 [kv_len, kv_stride],
//             3 v f32 [kv_len, kv_stride], 4 out f32 [m, o_stride]
//   One invocation per query row, QB rows per workgroup; K/V tiles of KT keys are shared
//   through workgroup memory, or with DIRECT_KV (the CPU-device variant) read straight from
//   k and v by every invocation, with no barrier. Causal: query i (position q_pos0 + i)
//   sees keys 0..=q_pos0 + i.
//   Dispatch (ceil(m / QB), heads, 1).
//
// Split-KV decode (one query row per head over cache rows 0..step.kv_len, no score row
// in memory). SPLIT keys per split; `ctx` = splits allotted per head.
//   attn_split: 1 q f32 [heads * HD], 2 k cache, 3 v cache, 5 partials f32
//               [heads, ctx, HD + 2], 6 step. One workgroup of SPLIT invocations per
//               (split, head): one key each, the split's max m and sum l of exp(s - m), and
//               the unnormalised Σ exp(s - m) v. Splits past kv_len write l = 0.
//               Dispatch (ctx, heads, 1).
//   attn_merge: 5 partials, 4 out f32 [heads * HD], 6 step: rescale the splits to their
//               common max and normalise. Dispatch (1, heads, 1).
#include "common"

const QB: u32 = 32u;
// Keys per split of the decode attention (ops::attention::SPLIT).
const SPLIT: u32 = 64u;

struct Params {
    m: u32,
    kv_len: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    o_stride: u32,
    causal: u32,
    q_pos0: u32,
    ctx: u32,
    scale: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<uniform> step: Step;

var<workgroup> k_tile: array<f32, KT * HD>;
var<workgroup> v_tile: array<f32, KT * HD>;

@compute @workgroup_size(QB)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let qi = wid.x * QB + lid;
    let valid = qi < p.m;
    var qv: array<f32, HD>;
    var acc: array<f32, HD>;
    if valid {
        for (var d = 0u; d < HD; d++) {
            qv[d] = q[qi * p.q_stride + h * HD + d] * p.scale;
        }
    }
    // Keys this workgroup needs (uniform), and keys this row may see.
    var kv_end = p.kv_len;
    var my_end = p.kv_len;
    if p.causal != 0u {
        kv_end = min(p.kv_len, p.q_pos0 + min(wid.x * QB + QB, p.m));
        my_end = min(p.kv_len, p.q_pos0 + qi + 1u);
    }
    var mx = -3.0e38;
    var l = 0.0;
#ifdef DIRECT_KV
    // Every invocation walks its own keys, reading K and V rows from the buffers (the lanes
    // of a SIMD batch read the same row), one online-softmax step per key.
    if valid {
        let off = kvh * HD;
        for (var j = 0u; j < my_end; j++) {
            let r = j * p.kv_stride + off;
            var s = 0.0;
            for (var d = 0u; d < HD; d++) {
                s = fma(qv[d], k[r + d], s);
            }
            if s > mx {
                let corr = exp(mx - s);
                l *= corr;
                for (var d = 0u; d < HD; d++) {
                    acc[d] *= corr;
                }
                mx = s;
            }
            let pj = exp(s - mx);
            l += pj;
            for (var d = 0u; d < HD; d++) {
                acc[d] = fma(pj, v[r + d], acc[d]);
            }
        }
    }
#else
    for (var t0 = 0u; t0 < kv_end; t0 += KT) {
        for (var e = lid; e < KT * HD; e += QB) {
            let j = t0 + e / HD;
            let d = e % HD;
            var kk = 0.0;
            var vv = 0.0;
            if j < kv_end {
                kk = k[j * p.kv_stride + kvh * HD + d];
                vv = v[j * p.kv_stride + kvh * HD + d];
            }
            k_tile[e] = kk;
            v_tile[e] = vv;
        }
        workgroupBarrier();
        if valid && t0 < my_end {
            // Scores of the tile first, then one rescale of the running sums per tile.
            let nj = min(KT, my_end - t0);
            var sc: array<f32, KT>;
            var tile_mx = mx;
            for (var jj = 0u; jj < nj; jj++) {
                var s = 0.0;
                for (var d = 0u; d < HD; d++) {
                    s = fma(qv[d], k_tile[jj * HD + d], s);
                }
                sc[jj] = s;
                tile_mx = max(tile_mx, s);
            }
            let corr = exp(mx - tile_mx);
            l *= corr;
            for (var d = 0u; d < HD; d++) {
                acc[d] *= corr;
            }
            for (var jj = 0u; jj < nj; jj++) {
                let pj = exp(sc[jj] - tile_mx);
                l += pj;
                for (var d = 0u; d < HD; d++) {
                    acc[d] = fma(pj, v_tile[jj * HD + d], acc[d]);
                }
            }
            mx = tile_mx;
        }
        workgroupBarrier();
    }
#endif
    if valid {
        let inv = 1.0 / l;
        for (var d = 0u; d < HD; d++) {
            out[qi * p.o_stride + h * HD + d] = acc[d] * inv;
        }
    }
}

var<workgroup> q_sh: array<f32, HD>;
var<workgroup> s_sh: array<f32, SPLIT>;
var<workgroup> p_sh: array<f32, SPLIT>;

@compute @workgroup_size(SPLIT)
fn attn_split(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let sp = wid.x;
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    for (var d = lid; d < HD; d += SPLIT) {
        q_sh[d] = q[h * HD + d] * p.scale;
    }
    workgroupBarrier();
    let j0 = sp * SPLIT;
    let j = j0 + lid;
    let n = step.kv_len;
    var sv = -3.0e38;
    if j < n {
        var acc = 0.0;
        for (var d = 0u; d < HD; d++) {
            acc = fma(q_sh[d], k[j * p.kv_stride + kvh * HD + d], acc);
        }
        sv = acc;
    }
    s_sh[lid] = sv;
    workgroupBarrier();
    var mx = -3.0e38;
    for (var t = 0u; t < SPLIT; t++) {
        mx = max(mx, s_sh[t]);
    }
    p_sh[lid] = select(0.0, exp(sv - mx), j < n);
    workgroupBarrier();
    let count = min(SPLIT, max(n, j0) - j0);
    let o = (h * p.ctx + sp) * (HD + 2u);
    for (var d = lid; d < HD; d += SPLIT) {
        var acc = 0.0;
        for (var t = 0u; t < count; t++) {
            acc = fma(p_sh[t], v[(j0 + t) * p.kv_stride + kvh * HD + d], acc);
        }
        scores[o + d] = acc;
    }
    if lid == 0u {
        var l = 0.0;
        for (var t = 0u; t < count; t++) {
            l += p_sh[t];
        }
        scores[o + HD] = mx;
        scores[o + HD + 1u] = l;
    }
}

@compute @workgroup_size(64)
fn attn_merge(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let splits = (step.kv_len + SPLIT - 1u) / SPLIT;
    var mx = -3.0e38;
    for (var sp = 0u; sp < splits; sp++) {
        mx = max(mx, scores[(h * p.ctx + sp) * (HD + 2u) + HD]);
    }
    var l = 0.0;
    for (var sp = 0u; sp < splits; sp++) {
        let o = (h * p.ctx + sp) * (HD + 2u);
        l += exp(scores[o + HD] - mx) * scores[o + HD + 1u];
    }
    for (var d = lid; d < HD; d += 64u) {
        var acc = 0.0;
        for (var sp = 0u; sp < splits; sp++) {
            let o = (h * p.ctx + sp) * (HD + 2u);
            acc += exp(scores[o + HD] - mx) * scores[o + d];
        }
        out[h * HD + d] = acc / l;
    }
}
