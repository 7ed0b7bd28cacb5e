// decode_attention.wgsl: the GPUs' decode attention. One query row per head over KV cache
// rows 0 .. step.kv_len, in splits of SPLIT keys then a merge, or (short caches) in one
// workgroup per head that walks the splits in turn; no score row in memory. Query head h
// reads KV head h / (heads / kv_heads). Values: HD (head dim, a multiple of 16) and LK
// (lanes per key in the scores: 8 where HD % 32 == 0, else 4).
// Every loop over loads has a constant trip count and issues its loads before the sums,
// so that a workgroup waits out about one memory latency per phase (ops::decode_attention).
//
// decode_split: bindings 0 params, 1 q f32 [heads * HD], 2 k and 3 v caches f32
//   [ctx, kv_stride] (all read as vec4: HD and kv_stride are multiples of 4), 5 partials
//   f32 [heads, p.ctx, HD + 2], 6 step. One workgroup of WG invocations per (split, head);
//   dispatch (ceil(ctx / SPLIT), heads, 1). Writes what attention.wgsl's attn_split writes:
//   per split the unnormalised Σ exp(s - m) v over its keys, then its max m and its Σ exp(s - m)
//   (0 for a split past kv_len).
//   Its phases, functions that decode_one shares:
//   1. scores (chunk_scores): invocation t takes key t / LK of each pass of WG / LK keys
//      (PASSES passes cover SPLIT keys) and, as lane t % LK, the key row's quads lane,
//      lane + LK, ...: each load of LK lanes reads LK * 16 contiguous bytes. The lanes'
//      sums meet in `s_part`; the split's max by a tree over its SPLIT scores.
//   2. softmax (chunk_weights): p = exp(s - max), in place of the scores.
//   3. output (chunk_share, share_totals): invocation t takes column quad t % HQ and key
//      group t / HQ (KG groups: keys g, g + KG, ...); the groups' sums meet in `v_part`.
// decode_merge: bindings 5 partials, 4 out f32 [heads * HD], 6 step. One workgroup of WG per
//   head; dispatch (1, heads, 1). The splits' maxima by a tree, then invocation t sums
//   column quad t % HQ of splits t / HQ, t / HQ + KG, ... rescaled to the common max; the
//   groups meet in `v_part` and the quad is divided by the rescaled Σ exp.
// decode_one: bindings 1 q, 2 k, 3 v, 4 out, 6 step. One workgroup of WG per head; dispatch
//   (1, heads, 1). decode_split's three phases for chunks of SPLIT keys 0, SPLIT, ... below
//   kv_len in turn, each chunk raising the running max and rescaling the running sums by
//   exp(old max - new max); then the key groups' sums meet as in decode_merge. For caches
//   of up to ops::decode_attention::ONE_KEYS rows: one dispatch a layer instead of two.
#include "common"
#include "attention_params"

const WG: u32 = 256u;
// Keys per split (ops::attention::SPLIT, attention.wgsl's SPLIT: the same partials).
const SPLIT: u32 = 64u;
const HQ: u32 = HD / 4u;
// scores: quads per lane, keys per pass, passes per split
const QPL: u32 = HQ / LK;
const KPP: u32 = WG / LK;
const PASSES: u32 = SPLIT / KPP;
// output: key (or split) groups of HQ invocations, and keys per group in a split
const KG: u32 = WG / HQ;
const KPG: u32 = (SPLIT + KG - 1u) / KG;

@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<uniform> step: Step;

var<workgroup> s_part: array<f32, SPLIT * LK>;
var<workgroup> s_key: array<f32, SPLIT>;
var<workgroup> tree: array<f32, WG>;
var<workgroup> v_part: array<vec4<f32>, WG>;
var<workgroup> l_part: array<f32, WG>;

fn q4(h: u32, c: u32) -> vec4<f32> {
    let b = h * HD + 4u * c;
    return vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
}

// The max of tree[0 .. n) into tree[0] (n a power of two, at most WG). Every invocation of
// the workgroup calls it: its barriers are the workgroup's.
fn tree_max(t: u32, n: u32) {
    for (var w = n / 2u; w > 0u; w /= 2u) {
        if t < w {
            tree[t] = max(tree[t], tree[t + w]);
        }
        workgroupBarrier();
    }
}

// The KG groups' vec4 sums in v_part (group g at g * HQ + c) and scalar sums in l_part
// (group g at g): invocation c < HQ's quad total, and the scalars' total.
fn group_sums(c: u32) -> vec4<f32> {
    var a = vec4<f32>(0.0);
    for (var g = 0u; g < KG; g++) {
        a += v_part[g * HQ + c];
    }
    return a;
}
fn group_scalars() -> f32 {
    var l = 0.0;
    for (var g = 0u; g < KG; g++) {
        l += l_part[g];
    }
    return l;
}

// A chunk's scores: keys j0 .. j0 + SPLIT of head h (KV row offset `head` in quads, `row`
// quads per cache row) against the query, scaled, masked past n, in s_key and tree; then
// their max in tree[0]. Keys past n read row n - 1.
fn chunk_scores(t: u32, h: u32, j0: u32, n: u32, row: u32, head: u32) {
    let lane = t % LK;
    let kk = t / LK;
    var s0 = 0.0;
    var s1 = 0.0;
    let r0 = min(j0 + kk, n - 1u) * row + head;
    let r1 = min(j0 + kk + KPP, n - 1u) * row + head;
    for (var i = 0u; i < QPL; i++) {
        let c = lane + i * LK;
        let qc = q4(h, c);
        let k0 = k[r0 + c];
        if PASSES == 2u {
            let k1 = k[r1 + c];
            s1 += dot(qc, k1);
        }
        s0 += dot(qc, k0);
    }
    s_part[kk * LK + lane] = s0;
    if PASSES == 2u {
        s_part[(kk + KPP) * LK + lane] = s1;
    }
    workgroupBarrier();
    if t < SPLIT {
        var s = 0.0;
        for (var l = 0u; l < LK; l++) {
            s += s_part[t * LK + l];
        }
        s = select(-3.0e38, s * p.scale, j0 + t < n);
        s_key[t] = s;
        tree[t] = s;
    }
    workgroupBarrier();
    tree_max(t, SPLIT);
}

// The chunk's weights p = exp(s - mx) in place of its scores (0 past n).
fn chunk_weights(t: u32, j0: u32, n: u32, mx: f32) {
    if t < SPLIT {
        s_key[t] = select(0.0, exp(s_key[t] - mx), j0 + t < n);
    }
    workgroupBarrier();
}

// Invocation t's share of the chunk's Σ p v (column quad t % HQ over the keys of group
// t / HQ) in .xyzw of `acc`, and of its Σ p in `l`; zeros for t / HQ past the KG groups.
struct Share {
    acc: vec4<f32>,
    l: f32,
}

fn chunk_share(t: u32, j0: u32, n: u32, row: u32, head: u32) -> Share {
    let c = t % HQ;
    let g = t / HQ;
    var acc = vec4<f32>(0.0);
    var l = 0.0;
    if g < KG {
        for (var i = 0u; i < KPG; i++) {
            let tk = min(g + i * KG, SPLIT - 1u);
            let vk = v[min(j0 + tk, n - 1u) * row + head + c];
            let pk = select(0.0, s_key[tk], g + i * KG < SPLIT);
            acc += pk * vk;
            l += pk;
        }
    }
    return Share(acc, l);
}

// The invocations' shares summed over the key groups: into v_part and l_part, then the
// column quad t < HQ's total and the Σ p total (for every t < HQ).
fn share_totals(t: u32, s: Share) -> Share {
    let g = t / HQ;
    if g < KG {
        v_part[t] = s.acc;
        if t % HQ == 0u {
            l_part[g] = s.l;
        }
    }
    workgroupBarrier();
    if t < HQ {
        return Share(group_sums(t), group_scalars());
    }
    return Share(vec4<f32>(0.0), 0.0);
}

// Column quad c of head h's output.
fn store_out(h: u32, c: u32, a: vec4<f32>) {
    let b = h * HD + 4u * c;
    out[b] = a.x;
    out[b + 1u] = a.y;
    out[b + 2u] = a.z;
    out[b + 3u] = a.w;
}

@compute @workgroup_size(WG)
fn decode_split(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let sp = wid.x;
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let n = step.kv_len;
    let j0 = sp * SPLIT;
    let o = (h * p.ctx + sp) * (HD + 2u);
    if j0 >= n {
        // a split past this step's keys (the whole workgroup): an empty partial
        if t == 0u {
            partials[o + HD] = -3.0e38;
            partials[o + HD + 1u] = 0.0;
        }
        return;
    }
    let row = p.kv_stride / 4u;
    let head = kvh * HQ;
    chunk_scores(t, h, j0, n, row, head);
    let mx = tree[0];
    chunk_weights(t, j0, n, mx);
    let total = share_totals(t, chunk_share(t, j0, n, row, head));
    if t < HQ {
        let b = o + 4u * t;
        partials[b] = total.acc.x;
        partials[b + 1u] = total.acc.y;
        partials[b + 2u] = total.acc.z;
        partials[b + 3u] = total.acc.w;
    }
    if t == 0u {
        partials[o + HD] = mx;
        partials[o + HD + 1u] = total.l;
    }
}

// One workgroup per head over the whole cache: decode_split's phases per chunk of SPLIT
// keys, with the running max raised and the running sums rescaled chunk by chunk (an online
// softmax), then the output written. No partials, no merge.
@compute @workgroup_size(WG)
fn decode_one(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let n = step.kv_len;
    let row = p.kv_stride / 4u;
    let head = kvh * HQ;
    var m = -3.0e38;
    var run = Share(vec4<f32>(0.0), 0.0);
    for (var j0 = 0u; j0 < n; j0 += SPLIT) {
        chunk_scores(t, h, j0, n, row, head);
        // every chunk holds a key (j0 < n), so m_new is a real score and the first
        // chunk's rescale exp(-3e38 - m_new) is 0
        let m_new = max(m, tree[0]);
        chunk_weights(t, j0, n, m_new);
        let r = exp(m - m_new);
        let s = chunk_share(t, j0, n, row, head);
        run = Share(run.acc * r + s.acc, run.l * r + s.l);
        m = m_new;
    }
    let total = share_totals(t, run);
    if t < HQ {
        store_out(h, t, total.acc / total.l);
    }
}

@compute @workgroup_size(WG)
fn decode_merge(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let splits = (step.kv_len + SPLIT - 1u) / SPLIT;
    let base = h * p.ctx;
    var m = -3.0e38;
    for (var sp = t; sp < splits; sp += WG) {
        m = max(m, partials[(base + sp) * (HD + 2u) + HD]);
    }
    tree[t] = m;
    workgroupBarrier();
    tree_max(t, WG);
    let mx = tree[0];

    let c = t % HQ;
    let g = t / HQ;
    var acc = vec4<f32>(0.0);
    var l = 0.0;
    if g < KG {
        for (var sp = g; sp < splits; sp += KG) {
            let o = (base + sp) * (HD + 2u);
            let w = exp(partials[o + HD] - mx);
            let b = o + 4u * c;
            let a = vec4<f32>(partials[b], partials[b + 1u], partials[b + 2u], partials[b + 3u]);
            acc += w * a;
            l += w * partials[o + HD + 1u];
        }
    }
    let total = share_totals(t, Share(acc, l));
    if t < HQ {
        store_out(h, t, total.acc / total.l);
    }
}
