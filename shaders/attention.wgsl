// attention.wgsl: scaled dot-product attention with grouped KV heads (GQA).
// Query head h reads KV head h / (heads / kv_heads). HD (head dim) and KT (keys per tile)
// are value defines.
//
// attention (prefill, fused, online softmax; no score matrix in memory):
//   Bindings: 0 params, 1 q f32 [m, q_stride], 2 k f32 [kv_len, kv_stride],
//             3 v f32 [kv_len, kv_stride], 4 out f32 [m, o_stride]
//   One invocation per query row, QB = 32 rows per workgroup, K/V tiles of KT keys shared
//   through workgroup memory. Or DIRECT_KV (the CPU-device variant; HD % 4 == 0; QB a value,
//   flags QPI_2 and QPI_4): QPI rows per invocation, K and V read straight from the
//   buffers, 4 keys per softmax block, no barrier. Causal: query i (position q_pos0 + i)
//   sees keys 0..=q_pos0 + i.
//   Dispatch (ceil(m / QB), heads, 1); DIRECT_KV (ceil(m / (QB * QPI)), heads, 1).
//   OUT_TEX (DIRECT_KV only): 7 out_tex rgba32float [o_stride / 4, m], out's texture copy
//   (gpu::Tensor::texels), written with out: values 4c .. 4c + 3 of row i at texel (c, i).
//
// Split-KV decode (one query row per head over cache rows 0..step.kv_len, no score row
// in memory). SPLIT keys per split; `ctx` = splits allotted per head.
//   attn_split: 1 q f32 [heads * HD], 2 k cache, 3 v cache, 5 partials f32
//               [heads, ctx, HD + 2], 6 step. One workgroup of SPLIT invocations per
//               (split, head): one key each, the split's max m and sum l of exp(s - m), and
//               the unnormalised Σ exp(s - m) v. Splits past kv_len write l = 0.
//               Dispatch (ctx, heads, 1).
//   attn_lanes (DECODE_LANES, the CPU-device variant; needs subgroups of >= 8 and HD % 8
//               == 0): the same bindings and grid, no workgroup memory and no barrier. A
//               workgroup is 8 lane groups of 8 lanes; lane group g takes the split's keys
//               8g .. 8g + 8 (a partial of its own), each lane HD / 8 dims of q, K and V, and
//               a key's score is summed over the lanes by subgroup shuffles.
//   attn_lanes_one (DECODE_LANES): the same lane groups in one workgroup per head over all
//               the keys, merged in workgroup memory straight into out: a single dispatch.
//               Bindings 1 q, 2 k, 3 v, 4 out, 6 step; dispatch (1, heads, 1).
//   KV_TEX (either lane kernel): 2 and 3 are a KV cache kept in rgba32float textures (row j
//               of the cache at texel row j; kv_texture.wgsl writes it); HD % 32 == 0.
//   attn_merge: 5 partials, 4 out f32 [heads * HD], 6 step: rescale the partials (one per
//               PART_KEYS keys) to their common max and normalise. Dispatch (1, heads, 1).
#include "common"

#ifndef DIRECT_KV
const QB: u32 = 32u;
#endif
// Keys per split of the decode attention (ops::attention::SPLIT).
const SPLIT: u32 = 64u;
// Keys per partial: a split, or with DECODE_LANES a lane group's 8 keys.
#ifdef DECODE_LANES
const PART_KEYS: u32 = 8u;
#else
const PART_KEYS: u32 = SPLIT;
#endif

#include "attention_params"
#ifdef KV_TEX
// K and V copied into rgba32float textures by kv_texture.wgsl: key j's 16-byte group c of
// the KV row at texel (c, j). The prefill entry point (DIRECT_KV) and the lane-group decode
// ones (DECODE_LANES) are built with it; attn_split is not.
@group(0) @binding(2) var k_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(3) var v_tex: texture_storage_2d<rgba32float, read>;
#else
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<uniform> step: Step;
#ifdef OUT_TEX
@group(0) @binding(7) var out_tex: texture_storage_2d<rgba32float, write>;
#endif

#ifdef DIRECT_KV
const HD4: u32 = HD / 4u;
// QPI (query rows per invocation: each K and V row loaded serves QPI rows): 4 with the flag
// QPI_4 (which comes with QPI_2), 2 with QPI_2, else 1; fewer for wide heads
// (ops::attention::direct_shape).
#ifdef QPI_4
const QPI: u32 = 4u;
#else
#ifdef QPI_2
const QPI: u32 = 2u;
#else
const QPI: u32 = 1u;
#endif
#endif

// Values 4c .. 4c + 4 of KV head kvh for key j.
#ifdef KV_TEX
fn k4(j: u32, kvh: u32, c: u32) -> vec4<f32> {
    return textureLoad(k_tex, vec2<u32>(kvh * HD4 + c, j));
}
fn v4(j: u32, kvh: u32, c: u32) -> vec4<f32> {
    return textureLoad(v_tex, vec2<u32>(kvh * HD4 + c, j));
}
#else
fn k4(j: u32, kvh: u32, c: u32) -> vec4<f32> {
    let r = j * p.kv_stride + kvh * HD + 4u * c;
    return vec4<f32>(k[r], k[r + 1u], k[r + 2u], k[r + 3u]);
}
fn v4(j: u32, kvh: u32, c: u32) -> vec4<f32> {
    let r = j * p.kv_stride + kvh * HD + 4u * c;
    return vec4<f32>(v[r], v[r + 1u], v[r + 2u], v[r + 3u]);
}
#endif

// The CPU-device variant. Each invocation takes QPI query rows (lid, lid + QB, ...) and walks
// the workgroup's keys in a uniform loop, 4 keys per softmax block, loading each block's K
// and V rows once for its QPI rows (QPI = 1: key by key). Every value lives in a named
// variable or an array indexed only by unrolled loops over the head's vec4s: lavapipe stores
// an array element at a per-lane (non-constant) index lane by lane, which took half the time
// of the earlier form (scores and rows in arrays indexed by loop counters). A key past a
// row's causal end counts zero. Rows past m compute on row m - 1 and store nothing.

// One query row's state: its scaled query, the running max m, the sum l of exp(s - m) and
// the unnormalised output.
struct QRow {
    q: array<vec4<f32>, HD4>,
    acc: array<vec4<f32>, HD4>,
    m: f32,
    l: f32,
    end: u32,
    row: u32,
}

// Four keys' (or values') rows j0 .. j0 + 3 of KV head kvh, each clamped below kv_end.
struct Block4 {
    r0: array<vec4<f32>, HD4>,
    r1: array<vec4<f32>, HD4>,
    r2: array<vec4<f32>, HD4>,
    r3: array<vec4<f32>, HD4>,
}

fn q_row(h: u32, qi: u32) -> QRow {
    var r: QRow;
    let b = min(qi, p.m - 1u) * p.q_stride + h * HD;
    for (var c = 0u; c < HD4; c++) {
        let o = b + 4u * c;
        r.q[c] = vec4<f32>(q[o], q[o + 1u], q[o + 2u], q[o + 3u]) * p.scale;
    }
    r.m = -3.0e38;
    r.end = p.kv_len;
    if p.causal != 0u {
        r.end = min(p.kv_len, p.q_pos0 + qi + 1u);
    }
    r.row = qi;
    return r;
}

fn block4(which: u32, j0: u32, last: u32, kvh: u32) -> Block4 {
    var b: Block4;
    for (var c = 0u; c < HD4; c++) {
        if which == 0u {
            b.r0[c] = k4(min(j0, last), kvh, c);
            b.r1[c] = k4(min(j0 + 1u, last), kvh, c);
            b.r2[c] = k4(min(j0 + 2u, last), kvh, c);
            b.r3[c] = k4(min(j0 + 3u, last), kvh, c);
        } else {
            b.r0[c] = v4(min(j0, last), kvh, c);
            b.r1[c] = v4(min(j0 + 1u, last), kvh, c);
            b.r2[c] = v4(min(j0 + 2u, last), kvh, c);
            b.r3[c] = v4(min(j0 + 3u, last), kvh, c);
        }
    }
    return b;
}

// Keys j0 .. j0 + 3 for one row: the online-softmax update of m, l and acc.
fn row_block(r: ptr<function, QRow>, j0: u32, k: ptr<function, Block4>,
             v: ptr<function, Block4>) {
    var s = vec4<f32>(0.0);
    for (var c = 0u; c < HD4; c++) {
        let qc = (*r).q[c];
        s += vec4<f32>(dot(qc, (*k).r0[c]), dot(qc, (*k).r1[c]), dot(qc, (*k).r2[c]),
                       dot(qc, (*k).r3[c]));
    }
    let valid = vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u) < vec4<u32>((*r).end);
    let sv = select(vec4<f32>(-3.0e38), s, valid);
    let bm = max((*r).m, max(max(sv.x, sv.y), max(sv.z, sv.w)));
    let corr = exp((*r).m - bm);
    let pj = select(vec4<f32>(0.0), exp(s - bm), valid);
    (*r).l = (*r).l * corr + (pj.x + pj.y + pj.z + pj.w);
    for (var c = 0u; c < HD4; c++) {
        (*r).acc[c] = (*r).acc[c] * corr + pj.x * (*v).r0[c] + pj.y * (*v).r1[c]
            + pj.z * (*v).r2[c] + pj.w * (*v).r3[c];
    }
    (*r).m = bm;
}

// One key for one row (QPI = 1, wide heads: a block of 4 keys' rows would hold 8 * HD4
// vec4s, which lavapipe took seconds more to compile for 64-dim heads).
fn row_key(r: ptr<function, QRow>, j: u32, kvh: u32) {
    var s = 0.0;
    for (var c = 0u; c < HD4; c++) {
        s += dot((*r).q[c], k4(j, kvh, c));
    }
    if j < (*r).end {
        let bm = max((*r).m, s);
        let corr = exp((*r).m - bm);
        let pj = exp(s - bm);
        (*r).l = (*r).l * corr + pj;
        for (var c = 0u; c < HD4; c++) {
            (*r).acc[c] = (*r).acc[c] * corr + pj * v4(j, kvh, c);
        }
        (*r).m = bm;
    }
}

fn store_row(r: ptr<function, QRow>, h: u32) {
    let qi = (*r).row;
    if qi < p.m {
        let inv = 1.0 / (*r).l;
        for (var c = 0u; c < HD4; c++) {
            let o = qi * p.o_stride + h * HD + 4u * c;
            let a = (*r).acc[c] * inv;
            out[o] = a.x;
            out[o + 1u] = a.y;
            out[o + 2u] = a.z;
            out[o + 3u] = a.w;
#ifdef OUT_TEX
            textureStore(out_tex, vec2<u32>(h * HD4 + c, qi), a);
#endif
        }
    }
}

@compute @workgroup_size(QB)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let row0 = wid.x * QB * QPI + lid;
    var kv_end = p.kv_len;
    if p.causal != 0u {
        kv_end = min(p.kv_len, p.q_pos0 + min(wid.x * QB * QPI + QB * QPI, p.m));
    }
    var r0 = q_row(h, row0);
#ifdef QPI_2
    var r1 = q_row(h, row0 + QB);
#endif
#ifdef QPI_4
    var r2 = q_row(h, row0 + 2u * QB);
    var r3 = q_row(h, row0 + 3u * QB);
#endif
#ifdef QPI_2
    for (var j0 = 0u; j0 < kv_end; j0 += 4u) {
        var kb = block4(0u, j0, kv_end - 1u, kvh);
        var vb = block4(1u, j0, kv_end - 1u, kvh);
        row_block(&r0, j0, &kb, &vb);
        row_block(&r1, j0, &kb, &vb);
#ifdef QPI_4
        row_block(&r2, j0, &kb, &vb);
        row_block(&r3, j0, &kb, &vb);
#endif
    }
#else
    for (var j = 0u; j < kv_end; j++) {
        row_key(&r0, j, kvh);
    }
#endif
    store_row(&r0, h);
#ifdef QPI_2
    store_row(&r1, h);
#endif
#ifdef QPI_4
    store_row(&r2, h);
    store_row(&r3, h);
#endif
}
#else
#ifndef KV_TEX
var<workgroup> k_tile: array<f32, KT * HD>;
var<workgroup> v_tile: array<f32, KT * HD>;

@compute @workgroup_size(QB)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let qi = wid.x * QB + lid;
    let valid = qi < p.m;
    // Keys this workgroup needs (uniform), and keys this row may see.
    var kv_end = p.kv_len;
    var my_end = p.kv_len;
    if p.causal != 0u {
        kv_end = min(p.kv_len, p.q_pos0 + min(wid.x * QB + QB, p.m));
        my_end = min(p.kv_len, p.q_pos0 + qi + 1u);
    }
    var mx = -3.0e38;
    var l = 0.0;
    var qv: array<f32, HD>;
    var acc: array<f32, HD>;
    if valid {
        for (var d = 0u; d < HD; d++) {
            qv[d] = q[qi * p.q_stride + h * HD + d] * p.scale;
        }
    }
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
    if valid {
        let inv = 1.0 / l;
        for (var d = 0u; d < HD; d++) {
            out[qi * p.o_stride + h * HD + d] = acc[d] * inv;
        }
    }
}
#endif
#endif

#ifndef KV_TEX
var<workgroup> q_sh: array<f32, HD>;
var<workgroup> s_sh: array<f32, SPLIT>;
var<workgroup> p_sh: array<f32, SPLIT>;

// K values b .. b + 4 of one cache row, and the scaled query's dims d .. d + 4.
fn k_quad(b: u32) -> vec4<f32> {
    return vec4<f32>(k[b], k[b + 1u], k[b + 2u], k[b + 3u]);
}
fn q_quad(d: u32) -> vec4<f32> {
    return vec4<f32>(q_sh[d], q_sh[d + 1u], q_sh[d + 2u], q_sh[d + 3u]);
}
// One V column at cache rows r, r + st, r + 2 st, r + 3 st, and the weights of keys t .. t + 4.
fn v_col4(r: u32, st: u32) -> vec4<f32> {
    return vec4<f32>(v[r], v[r + st], v[r + 2u * st], v[r + 3u * st]);
}
fn p_quad(t: u32) -> vec4<f32> {
    return vec4<f32>(p_sh[t], p_sh[t + 1u], p_sh[t + 2u], p_sh[t + 3u]);
}

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
        // 32 dims a round, their loads issued before the sums, into 4 chains: a GPU compiler
        // that does not unroll the loop would otherwise wait out one load's latency per dim
        // (83 us a layer on an H100 at 72 keys; 41 with rounds of 8 dims, 34 with 16 or 32)
        let b = j * p.kv_stride + kvh * HD;
        var a0 = 0.0;
        var a1 = 0.0;
        var a2 = 0.0;
        var a3 = 0.0;
        var d = 0u;
        for (; d + 32u <= HD; d += 32u) {
            let k0 = k_quad(b + d);
            let k1 = k_quad(b + d + 4u);
            let k2 = k_quad(b + d + 8u);
            let k3 = k_quad(b + d + 12u);
            let k4 = k_quad(b + d + 16u);
            let k5 = k_quad(b + d + 20u);
            let k6 = k_quad(b + d + 24u);
            let k7 = k_quad(b + d + 28u);
            a0 += dot(q_quad(d), k0) + dot(q_quad(d + 16u), k4);
            a1 += dot(q_quad(d + 4u), k1) + dot(q_quad(d + 20u), k5);
            a2 += dot(q_quad(d + 8u), k2) + dot(q_quad(d + 24u), k6);
            a3 += dot(q_quad(d + 12u), k3) + dot(q_quad(d + 28u), k7);
        }
        for (; d < HD; d++) {
            a0 = fma(q_sh[d], k[b + d], a0);
        }
        sv = (a0 + a1) + (a2 + a3);
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
    // Dims lid and lid + SPLIT together (then the next 2 * SPLIT, past 128 dims), 16 keys
    // a round: both dims' 32 loads before their sums, as the scores.
    let st = p.kv_stride;
    for (var d = lid; d < HD; d += 2u * SPLIT) {
        let d2 = d + SPLIT;
        let has2 = d2 < HD;
        let b = j0 * st + kvh * HD + d;
        let b2 = j0 * st + kvh * HD + select(d, d2, has2);
        var a0 = 0.0;
        var a1 = 0.0;
        var c0 = 0.0;
        var c1 = 0.0;
        var t = 0u;
        for (; t + 16u <= count; t += 16u) {
            let r = b + t * st;
            let r2 = b2 + t * st;
            let v0 = v_col4(r, st);
            let v1 = v_col4(r + 4u * st, st);
            let v2 = v_col4(r + 8u * st, st);
            let v3 = v_col4(r + 12u * st, st);
            let w0 = v_col4(r2, st);
            let w1 = v_col4(r2 + 4u * st, st);
            let w2 = v_col4(r2 + 8u * st, st);
            let w3 = v_col4(r2 + 12u * st, st);
            let p0 = p_quad(t);
            let p1 = p_quad(t + 4u);
            let p2 = p_quad(t + 8u);
            let p3 = p_quad(t + 12u);
            a0 += dot(p0, v0) + dot(p2, v2);
            a1 += dot(p1, v1) + dot(p3, v3);
            c0 += dot(p0, w0) + dot(p2, w2);
            c1 += dot(p1, w1) + dot(p3, w3);
        }
        for (; t < count; t++) {
            a0 = fma(p_sh[t], v[b + t * st], a0);
            c0 = fma(p_sh[t], v[b2 + t * st], c0);
        }
        scores[o + d] = a0 + a1;
        if has2 {
            scores[o + d2] = c0 + c1;
        }
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

#endif

#ifdef DECODE_LANES
const DL: u32 = HD / 8u;
#include "lanes"

// One lane group's online-softmax state: its lane's HD / 8 dims of q (scaled) and of the
// unnormalised Σ exp(s - mx) v, the running max and the sum of exp(s - mx).
struct LaneState {
    qv: array<f32, DL>,
    acc: array<f32, DL>,
    mx: f32,
    l: f32,
}

fn lane_state(h: u32, lane: u32) -> LaneState {
    var st: LaneState;
    for (var i = 0u; i < DL; i++) {
        st.qv[i] = q[h * HD + lane * DL + i] * p.scale;
    }
    st.mx = -3.0e38;
    return st;
}

// This lane's DL dims of key row j of KV head kvh, from K (which 0) or V (which 1). KV_TEX
// (CPU devices; DL a multiple of 4): from a cache kept in rgba32float textures, whose texel
// loads lavapipe gathers for a SIMD row at once where it loops over the lanes for a storage
// buffer at per-lane addresses.
fn lane_dims(which: u32, j: u32, kvh: u32, lane: u32) -> array<f32, DL> {
    var d: array<f32, DL>;
#ifdef KV_TEX
    for (var i4 = 0u; i4 < DL / 4u; i4++) {
        let at = vec2<u32>(kvh * (HD / 4u) + lane * (DL / 4u) + i4, j);
        var t: vec4<f32>;
        if which == 0u {
            t = textureLoad(k_tex, at);
        } else {
            t = textureLoad(v_tex, at);
        }
        d[4u * i4] = t.x;
        d[4u * i4 + 1u] = t.y;
        d[4u * i4 + 2u] = t.z;
        d[4u * i4 + 3u] = t.w;
    }
#else
    let r = j * p.kv_stride + kvh * HD + lane * DL;
    for (var i = 0u; i < DL; i++) {
        if which == 0u {
            d[i] = k[r + i];
        } else {
            d[i] = v[r + i];
        }
    }
#endif
    return d;
}

// Keys j0 .. j0 + 8 into the state. A fixed 8 keys, so that every lane of a subgroup reaches
// each shuffle; keys past n read the last row and are not counted.
fn lane_keys(st: ptr<function, LaneState>, j0: u32, n: u32, kvh: u32, lane: u32) {
    for (var t = 0u; t < 8u; t++) {
        let j = j0 + t;
        let kd = lane_dims(0u, min(j, n - 1u), kvh, lane);
        var s = 0.0;
        for (var i = 0u; i < DL; i++) {
            s = fma((*st).qv[i], kd[i], s);
        }
        s = lane_sum(s);
        if j < n {
            let vd = lane_dims(1u, j, kvh, lane);
            let m_new = max((*st).mx, s);
            let corr = exp((*st).mx - m_new);
            let pj = exp(s - m_new);
            (*st).l = (*st).l * corr + pj;
            for (var i = 0u; i < DL; i++) {
                (*st).acc[i] = fma(pj, vd[i], (*st).acc[i] * corr);
            }
            (*st).mx = m_new;
        }
    }
}

// A lane group's state as a partial at `o` of the partials: HD sums, then max and sum.
fn lane_partial(st: LaneState, o: u32, lane: u32) {
    for (var i = 0u; i < DL; i++) {
        scores[o + lane * DL + i] = st.acc[i];
    }
    if lane == 0u {
        scores[o + HD] = st.mx;
        scores[o + HD + 1u] = st.l;
    }
}

@compute @workgroup_size(64)
fn attn_lanes(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n = step.kv_len;
    if wid.x * SPLIT >= n {
        return; // the whole workgroup: past the keys of this step
    }
    let lane = lid % 8u;
    let part = wid.x * 8u + lid / 8u;
    let h = wid.y;
    var st = lane_state(h, lane);
    lane_keys(&st, part * 8u, n, h / (p.heads / p.kv_heads), lane);
    lane_partial(st, (h * p.ctx + part) * (HD + 2u), lane);
}

var<workgroup> lg_part: array<f32, 8u * (HD + 2u)>;

// attn_lanes_one: one workgroup per head takes all the keys, in rounds of 64 (lane group g:
// keys 64 r + 8 g .. + 8), and merges its 8 lane groups through workgroup memory (one
// barrier) into `out`: no partials and no merge dispatch. For caches of at most
// ops::attention::ONE_PASS_KEYS rows. Bindings: 1 q, 2 k cache, 3 v cache, 4 out, 6 step.
// Dispatch (1, heads, 1).
@compute @workgroup_size(64)
fn attn_lanes_one(@builtin(local_invocation_index) lid: u32,
                  @builtin(workgroup_id) wid: vec3<u32>) {
    let n = step.kv_len;
    let lane = lid % 8u;
    let g = lid / 8u;
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    var st = lane_state(h, lane);
    let rounds = (n + SPLIT - 1u) / SPLIT;
    for (var rd = 0u; rd < rounds; rd++) {
        lane_keys(&st, rd * SPLIT + g * 8u, n, kvh, lane);
    }
    let o = g * (HD + 2u);
    for (var i = 0u; i < DL; i++) {
        lg_part[o + lane * DL + i] = st.acc[i];
    }
    if lane == 0u {
        lg_part[o + HD] = st.mx;
        lg_part[o + HD + 1u] = st.l;
    }
    workgroupBarrier();
    // lane groups without keys hold mx = -3e38 and l = 0: their weight is 0
    var mx = -3.0e38;
    for (var i = 0u; i < 8u; i++) {
        mx = max(mx, lg_part[i * (HD + 2u) + HD]);
    }
    var l = 0.0;
    for (var i = 0u; i < 8u; i++) {
        l += exp(lg_part[i * (HD + 2u) + HD] - mx) * lg_part[i * (HD + 2u) + HD + 1u];
    }
    for (var d = lid; d < HD; d += 64u) {
        var a = 0.0;
        for (var i = 0u; i < 8u; i++) {
            a += exp(lg_part[i * (HD + 2u) + HD] - mx) * lg_part[i * (HD + 2u) + d];
        }
        out[h * HD + d] = a / l;
    }
}
#endif

@compute @workgroup_size(64)
fn attn_merge(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let splits = (step.kv_len + PART_KEYS - 1u) / PART_KEYS;
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
