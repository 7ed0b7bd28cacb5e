// rope.wgsl: rotary position embedding, rotate-half layout (HF Llama), in place.
// For each row r, head h and i < hd/2, with (c, s) = table[positions[r]]:
//   x1 = x[r, h, i], x2 = x[r, h, i + hd/2]
//   x[r, h, i] = x1 c - x2 s,   x[r, h, i + hd/2] = x2 c + x1 s
//
// Bindings: 0 params
//           1 x          f32 [rows, row_stride], heads * hd columns rotated
//           2 positions  u32 [rows]    position id of each row (kept tokens keep theirs)
//           3 table      f32 [max_pos, hd]: cos of the hd/2 frequencies, then their sin
// Dispatch: one invocation per (row, head, i), WG_SIZE per workgroup, fold.
//
// rope_kv (variant KV_CACHE): the attention input step after a stacked q|k|v projection.
// Row r of qkv holds heads query heads, then kv_heads key heads, then kv_heads value heads.
// The rotated queries go to q_out[r]; the rotated keys and the values go to cache row
// step.kv_offset + r.
// Bindings: 1 qkv f32 [rows, row_stride], 2 positions, 3 table, 4 q_out f32 [rows, q_stride],
//           5 k_cache, 6 v_cache f32 [ctx, kv_stride], 7 step (uniform Step)
// Dispatch: one invocation per (row, head of q|k|v, i < hd/2), fold.
// KV_TEX_COPY (with KV_CACHE; hd/2 a multiple of 4): a prefill's keys and values also go to
// the prefill attention's rgba32float textures (attention.wgsl's KV_TEX: the KV row at
// texel row step.kv_offset + r), so that no kv_texture.wgsl copy runs. An invocation takes
// 4 pairs (i .. i + 3, i a multiple of 4), whose values i .. i + 3 and i + hd/2 .. are whole
// texels. Bindings 8 k_tex, 9 v_tex. Dispatch: one invocation per (row, head, i / 4), fold.
#include "common"

const WG_SIZE: u32 = 64u;

struct Params {
    rows: u32,
    heads: u32,
    hd: u32,
    row_stride: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
#ifdef KV_CACHE
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(7) var<uniform> step: Step;
#include "rope_kv_store"

fn store_q(o: u32, v: f32) {
    q_out[o] = v;
}

#ifdef KV_TEX_COPY
@group(0) @binding(8) var k_tex: texture_storage_2d<rgba32float, write>;
@group(0) @binding(9) var v_tex: texture_storage_2d<rgba32float, write>;
#include "kv_texels"
const PAIRS_EACH: u32 = 4u;
#else
const PAIRS_EACH: u32 = 1u;
#endif

@compute @workgroup_size(WG_SIZE)
fn rope_kv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.hd / 2u;
    let runs = half / PAIRS_EACH;
    let per_row = (p.heads + 2u * p.kv_heads) * runs;
    let idx = linear_wg(wid, nwg) * WG_SIZE + lid;
    if idx >= p.rows * per_row {
        return;
    }
    let r = idx / per_row;
    let hh = (idx % per_row) / runs;
    let i = (idx % runs) * PAIRS_EACH;
    let src = r * p.row_stride + hh * p.hd;
    let l = QkvLayout(p.heads, p.kv_heads, p.hd, r * p.q_stride,
                      (step.kv_offset + r) * p.kv_stride);
    let pos = positions[r];
    var lo: vec4<f32>;
    var hi: vec4<f32>;
    for (var t = 0u; t < PAIRS_EACH; t++) {
        let x1 = qkv[src + i + t];
        let x2 = qkv[src + half + i + t];
        rope_kv_store(l, hh, i + t, pos, x1, x2);
#ifdef KV_TEX_COPY
        // the same values as texels: keys rotated, values as they are
        var y = vec2<f32>(x1, x2);
        if hh < p.heads + p.kv_heads {
            y = rope_pair(p.hd, i + t, pos, x1, x2);
        }
        lo[t] = y.x;
        hi[t] = y.y;
#endif
    }
#ifdef KV_TEX_COPY
    if hh < p.heads {
        return;
    }
    store_kv_texels(hh - p.heads, i, p.hd, step.kv_offset + r, lo, hi);
#endif
}
#else
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn rope(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let half = p.hd / 2u;
    let idx = linear_wg(wid, nwg) * WG_SIZE + lid;
    if idx >= p.rows * p.heads * half {
        return;
    }
    let i = idx % half;
    let h = (idx / half) % p.heads;
    let r = idx / (half * p.heads);
    let pos = positions[r];
    let c = table[pos * p.hd + i];
    let s = table[pos * p.hd + half + i];
    let base = r * p.row_stride + h * p.hd;
    let x1 = x[base + i];
    let x2 = x[base + half + i];
    x[base + i] = x1 * c - x2 * s;
    x[base + half + i] = x2 * c + x1 * s;
}
#endif
