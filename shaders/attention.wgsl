// attention.wgsl: scaled dot-product attention with grouped KV heads (GQA).
// Query head h reads KV head h / (heads / kv_heads). HD (head dim) and KT (keys per tile)
// are value defines.
//
// attention (prefill, fused, online softmax; no score matrix in memory):
//   Bindings: 0 params, 1 q f32 [m, q_stride], 2 k f32 [kv_len, kv_stride],
//             3 v f32 [kv_len, kv_stride], 4 out f32 [m, o_stride]
//   One invocation per query row, QB rows per workgroup; K/V tiles of KT keys are shared
//   through workgroup memory. Causal: query i (position q_pos0 + i) sees keys 0..=q_pos0 + i.
//   Dispatch (ceil(m / QB), heads, 1).
//
// attn_scores / attn_values (decode, one query row per head, kv_len = step.kv_len):
//   attn_scores: 1 q f32 [heads * HD], 2 k cache, 5 scores f32 [heads, ctx], 6 step
//                one invocation per (key, head). Dispatch (ceil(kv_len / QB), heads, 1).
//   (softmax.wgsl with STEP_LEN then normalises the score rows.)
//   attn_values: 5 scores, 3 v cache, 4 out f32 [heads * HD], 6 step
//                one invocation per (dim, head). Dispatch (ceil(HD / QB), heads, 1).
#include "common"

const QB: u32 = 32u;

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
        if valid {
            for (var jj = 0u; jj < KT; jj++) {
                if t0 + jj >= my_end {
                    break;
                }
                var s = 0.0;
                for (var d = 0u; d < HD; d++) {
                    s = fma(qv[d], k_tile[jj * HD + d], s);
                }
                let new_mx = max(mx, s);
                let corr = exp(mx - new_mx);
                let pj = exp(s - new_mx);
                l = l * corr + pj;
                for (var d = 0u; d < HD; d++) {
                    acc[d] = acc[d] * corr + pj * v_tile[jj * HD + d];
                }
                mx = new_mx;
            }
        }
        workgroupBarrier();
    }
    if valid {
        let inv = 1.0 / l;
        for (var d = 0u; d < HD; d++) {
            out[qi * p.o_stride + h * HD + d] = acc[d] * inv;
        }
    }
}

@compute @workgroup_size(QB)
fn attn_scores(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let j = wid.x * QB + lid;
    if j >= step.kv_len {
        return;
    }
    var s = 0.0;
    for (var d = 0u; d < HD; d++) {
        s = fma(q[h * HD + d], k[j * p.kv_stride + kvh * HD + d], s);
    }
    scores[h * p.ctx + j] = s * p.scale;
}

@compute @workgroup_size(QB)
fn attn_values(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let d = wid.x * QB + lid;
    if d >= HD {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < step.kv_len; j++) {
        acc = fma(scores[h * p.ctx + j], v[j * p.kv_stride + kvh * HD + d], acc);
    }
    out[h * HD + d] = acc;
}
