// prune_score.wgsl: the attention and similarity passes that pruning scores tokens with.
// None of them sends anything to the CPU.
//
// attn_stats: softmax statistics (row max, sum of exp) of n_q query rows of one attention
//   layer, per head.
//   Bindings: 0 params, 1 a = q f32 [*, a_stride], 2 b = k f32 [*, b_stride],
//             3 stats f32 [n_q, heads, 2]
//   One workgroup of WG threads per (query, head). Dispatch (n_q, heads, 1).
// attn_relevance: for each visual key, the softmax probability it receives, averaged over
//   heads and over the n_q queries.
//   Bindings: 0 params, 1 q, 2 k, 3 stats (from attn_stats), 4 out f32 [n_keys]
//   One invocation per visual key. Dispatch (ceil(n_keys / WG), 1, 1).
//   Query i is row q_row0 + i. It sees keys 0 .. kv_len, or with `causal` keys 0 ..= its row.
//   Visual key j is row key0 + j. Query head h reads KV head h / (heads / kv_heads).
// key_mean: the head mean of key rows key0 .. key0 + rows (VisionZip's similarity metric).
//   Bindings: 0 params, 1 a = k f32 [*, a_stride], 4 out f32 [rows, hd]
//   One invocation per output value. Dispatch (ceil(rows * hd / WG), 1, 1).
// normalize_rows: rows row0 .. row0 + rows of a, scaled to unit L2 norm.
//   Bindings: 0 params, 1 a f32 [*, a_stride], 4 out f32 [rows, cols]; UNIT_TEX_OUT (cols
//   a multiple of 4): the unit rows also to 5, an rgba32float texture [cols / 4, rows];
//   A_TEX (with UNIT_TEX_OUT): a read from 6, its texture copy (gpu::Tensor::texels,
//   [a_stride / 4, *]), instead of 1.
//   One invocation per row. Dispatch (ceil(rows / WG), 1, 1).
// gram: dot products of every pair of rows of a unit-norm matrix (cosine similarity).
//   Bindings: 0 params, 1 a f32 [rows, cols], 4 out f32 [rows, rows]; UNIT_TEX: a read from
//   normalize_rows' texture (5) instead, 4 values a texel (CPU devices, whose texel loads
//   beat per-lane storage loads)
//   One invocation per 4x4 block of pairs (8 loads per column for 16 products), 8x8
//   invocations per workgroup; the blocks below the diagonal return at once, those on and
//   above it also write their mirror image. Dispatch (ceil(rows/32), ceil(rows/32), 1).
// gram_rows (GRAM_ROWS, with UNIT_TEX; subgroups of at least 8): the same Gram on CPU
//   devices. An invocation owns rows i and i + GWG (GWG = 32 per workgroup), and a
//   workgroup JB = 4 rows j: lane l of each 8 fetches row j0 + l % 4's texel and the others
//   take it by subgroupShuffle, so a SIMD row of lavapipe makes three texel fetches and
//   four shuffles per 32 products where gram's 4x4 blocks made eight fetches per 64, with
//   their 36 live vectors spilling. Only the workgroups on and above the diagonal are
//   dispatched, block of rows i by block (the linear workgroup index walks the triangle);
//   pair (i, j >= i) is stored with its mirror. Measured (VLM_RUN_PROFILE, DivPrune at
//   B=64, 576 rows of 96 values): 2.4 -> 1.7 ms with one row i and 8 rows j, 1.6 with two
//   and 4 (2.3 with two and 8, whose 16 sums spill), all on a full grid whose lower half
//   returned at once; 1.2 on the triangle (blocks of 128 rows i, or of 64 as now).
//   Dispatch fold(gram_rows_workgroups(rows)) (ops/prune.rs).
// row_min_distance: each row's smallest cosine distance 1 - gram[i, j] to another row
//   (DivPrune's first pick maximises it), so that the single-workgroup max_min does not
//   scan all rows x rows itself.
//   Bindings: 0 params, 1 a = gram f32 [rows, rows], 4 out f32 [rows] (3.0e38 for one row);
//   ROW_MIN_VEC4 (rows a multiple of 4): the Gram from 7 as vec4s instead of 1.
//   One invocation per row. Dispatch (ceil(rows / WG), 1, 1).

#include "common"

const WG: u32 = 64u;

struct Params {
    n_q: u32,
    q_row0: u32,
    key0: u32,
    n_keys: u32,
    kv_len: u32,
    causal: u32,
    heads: u32,
    kv_heads: u32,
    a_stride: u32,
    b_stride: u32,
    hd: u32,
    rows: u32,
    cols: u32,
    row0: u32,
    scale: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#ifdef UNIT_TEX_OUT
@group(0) @binding(5) var unit_tex: texture_storage_2d<rgba32float, write>;
#ifdef A_TEX
@group(0) @binding(6) var a_tex: texture_storage_2d<rgba32float, read>;
#endif
#endif
#ifdef UNIT_TEX
@group(0) @binding(5) var unit_tex: texture_storage_2d<rgba32float, read>;
#endif
#ifdef ROW_MIN_VEC4
@group(0) @binding(7) var<storage, read> gram4: array<vec4<f32>>;
#endif

var<workgroup> wg_m: array<f32, WG>;
var<workgroup> wg_l: array<f32, WG>;

// Scaled dot product of query row `qrow` (head h) with key row `krow`.
fn logit(qrow: u32, h: u32, krow: u32) -> f32 {
    let kvh = h / (p.heads / p.kv_heads);
    var s = 0.0;
    for (var d = 0u; d < p.hd; d++) {
        s += a[qrow * p.a_stride + h * p.hd + d] * b[krow * p.b_stride + kvh * p.hd + d];
    }
    return s * p.scale;
}

fn keys_seen(qrow: u32) -> u32 {
    return select(p.kv_len, qrow + 1u, p.causal != 0u);
}

@compute @workgroup_size(WG)
fn attn_stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let qi = wid.x;
    let h = wid.y;
    let qrow = p.q_row0 + qi;
    var m = -3.0e38;
    var l = 0.0;
    for (var j = lid; j < keys_seen(qrow); j += WG) {
        let s = logit(qrow, h, j);
        let m2 = max(m, s);
        l = l * exp(m - m2) + exp(s - m2);
        m = m2;
    }
    wg_m[lid] = m;
    wg_l[lid] = l;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if lid < stride {
            let m1 = wg_m[lid];
            let m2 = wg_m[lid + stride];
            let mm = max(m1, m2);
            wg_l[lid] = wg_l[lid] * exp(m1 - mm) + wg_l[lid + stride] * exp(m2 - mm);
            wg_m[lid] = mm;
        }
        workgroupBarrier();
    }
    if lid == 0u {
        stats[(qi * p.heads + h) * 2u] = wg_m[0];
        stats[(qi * p.heads + h) * 2u + 1u] = wg_l[0];
    }
}

@compute @workgroup_size(WG)
fn attn_relevance(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.n_keys {
        return;
    }
    let krow = p.key0 + j;
    var acc = 0.0;
    for (var qi = 0u; qi < p.n_q; qi++) {
        let qrow = p.q_row0 + qi;
        if krow >= keys_seen(qrow) {
            continue;
        }
        for (var h = 0u; h < p.heads; h++) {
            let m = stats[(qi * p.heads + h) * 2u];
            let l = stats[(qi * p.heads + h) * 2u + 1u];
            acc += exp(logit(qrow, h, krow) - m) / l;
        }
    }
    out[j] = acc / f32(p.n_q * p.heads);
}

@compute @workgroup_size(WG)
fn key_mean(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.rows * p.hd {
        return;
    }
    let r = i / p.hd;
    let d = i % p.hd;
    var s = 0.0;
    for (var h = 0u; h < p.heads; h++) {
        s += a[(p.key0 + r) * p.a_stride + h * p.hd + d];
    }
    out[i] = s / f32(p.heads);
}

@compute @workgroup_size(WG)
fn normalize_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if r >= p.rows {
        return;
    }
#ifdef A_TEX
    // texel by texel, the squares summed value by value as below
    var s = 0.0;
    for (var c = 0u; c < p.cols / 4u; c++) {
        let v = textureLoad(a_tex, vec2<u32>(c, p.row0 + r));
        s += v.x * v.x;
        s += v.y * v.y;
        s += v.z * v.z;
        s += v.w * v.w;
    }
    let inv = 1.0 / max(sqrt(s), 1e-12);
    for (var c = 0u; c < p.cols / 4u; c++) {
        let v = textureLoad(a_tex, vec2<u32>(c, p.row0 + r)) * inv;
        let o = r * p.cols + 4u * c;
        out[o] = v.x;
        out[o + 1u] = v.y;
        out[o + 2u] = v.z;
        out[o + 3u] = v.w;
        textureStore(unit_tex, vec2<u32>(c, r), v);
    }
#else
    let base = (p.row0 + r) * p.a_stride;
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let v = a[base + c];
        s += v * v;
    }
    let inv = 1.0 / max(sqrt(s), 1e-12);
    for (var c = 0u; c < p.cols; c++) {
        out[r * p.cols + c] = a[base + c] * inv;
    }
#ifdef UNIT_TEX_OUT
    for (var c = 0u; c < p.cols; c += 4u) {
        let v = vec4<f32>(a[base + c], a[base + c + 1u], a[base + c + 2u], a[base + c + 3u]);
        textureStore(unit_tex, vec2<u32>(c / 4u, r), v * inv);
    }
#endif
#endif
}

// gram's block of pairs per invocation: GB rows i by GB rows j.
const GB: u32 = 4u;

@compute @workgroup_size(8, 8)
fn gram(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i0 = gid.y * GB;
    let j0 = gid.x * GB;
    // the matrix is symmetric: the blocks on and above the diagonal write their mirror too
    if i0 >= p.rows || j0 >= p.rows || j0 < i0 {
        return;
    }
    // rows past the end repeat the last row and are not stored
    let last = p.rows - 1u;
    var acc: array<vec4<f32>, GB>;
#ifdef UNIT_TEX
    for (var c = 0u; c < p.cols / 4u; c++) {
        var aj: array<vec4<f32>, GB>;
        for (var u = 0u; u < GB; u++) {
            aj[u] = textureLoad(unit_tex, vec2<u32>(c, min(j0 + u, last)));
        }
        for (var t = 0u; t < GB; t++) {
            let ai = textureLoad(unit_tex, vec2<u32>(c, min(i0 + t, last)));
            // value by value, in the buffer variant's order, so that both give equal bits
            for (var e = 0u; e < 4u; e++) {
                acc[t] += ai[e] * vec4<f32>(aj[0][e], aj[1][e], aj[2][e], aj[3][e]);
            }
        }
    }
#else
    for (var c = 0u; c < p.cols; c++) {
        let aj = vec4<f32>(a[min(j0, last) * p.cols + c], a[min(j0 + 1u, last) * p.cols + c],
                           a[min(j0 + 2u, last) * p.cols + c], a[min(j0 + 3u, last) * p.cols + c]);
        for (var t = 0u; t < GB; t++) {
            acc[t] += a[min(i0 + t, last) * p.cols + c] * aj;
        }
    }
#endif
    for (var t = 0u; t < GB; t++) {
        for (var u = 0u; u < GB; u++) {
            if i0 + t < p.rows && j0 + u < p.rows {
                out[(i0 + t) * p.rows + j0 + u] = acc[t][u];
                out[(j0 + u) * p.rows + i0 + t] = acc[t][u];
            }
        }
    }
}

#ifdef GRAM_ROWS
// gram_rows' block of rows j per workgroup, shared by lane shuffles.
const JB: u32 = 4u;

const GWG: u32 = 32u;
// Rows i per gram_rows invocation: i and i + GWG, each shuffled texel of rows j serving both.
const IPI: u32 = 2u;

@compute @workgroup_size(GWG)
fn gram_rows(@builtin(local_invocation_index) lid: u32,
             @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(subgroup_invocation_id) sid: u32) {
    // workgroup t of the triangle: block b of rows i takes the blocks of rows j from
    // b * GWG * IPI / JB on (gram_rows_workgroups in ops/prune.rs)
    var t = linear_wg(wid, nwg);
    let j_blocks = (p.rows + JB - 1u) / JB;
    let i_blocks = (p.rows + GWG * IPI - 1u) / (GWG * IPI);
    var b = 0u;
    for (var k = 0u; k + 1u < i_blocks; k++) {
        let count = j_blocks - min(j_blocks, b * (GWG * IPI / JB));
        if t >= count {
            t -= count;
            b += 1u;
        }
    }
    let i0 = b * GWG * IPI;
    let j0 = (min(j_blocks, b * (GWG * IPI / JB)) + t) * JB;
    if j0 >= p.rows {
        return;
    }
    let last = p.rows - 1u;
    let lane = sid % 8u;
    var acc0: array<f32, JB>;
    var acc1: array<f32, JB>;
    let ia = i0 + lid;
    let ib = ia + GWG;
    let cols4 = p.cols / 4u;
    for (var c = 0u; c < cols4; c++) {
        let a0 = textureLoad(unit_tex, vec2<u32>(c, min(ia, last)));
        let a1 = textureLoad(unit_tex, vec2<u32>(c, min(ib, last)));
        let mine = textureLoad(unit_tex, vec2<u32>(c, min(j0 + lane % JB, last)));
        for (var r = 0u; r < JB; r++) {
            let aj = subgroupShuffle(mine, sid - lane + r);
            acc0[r] += a0.x * aj.x;
            acc0[r] += a0.y * aj.y;
            acc0[r] += a0.z * aj.z;
            acc0[r] += a0.w * aj.w;
            acc1[r] += a1.x * aj.x;
            acc1[r] += a1.y * aj.y;
            acc1[r] += a1.z * aj.z;
            acc1[r] += a1.w * aj.w;
        }
    }
    for (var r = 0u; r < JB; r++) {
        let j = j0 + r;
        if ia < p.rows && j < p.rows && j >= ia {
            out[ia * p.rows + j] = acc0[r];
            out[j * p.rows + ia] = acc0[r];
        }
        if ib < p.rows && j < p.rows && j >= ib {
            out[ib * p.rows + j] = acc1[r];
            out[j * p.rows + ib] = acc1[r];
        }
    }
}
#endif


@compute @workgroup_size(WG)
fn row_min_distance(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= p.rows {
        return;
    }
    var v = 3.0e38;
#ifdef ROW_MIN_VEC4
    // the row 4 values a load (rows a multiple of 4); the row's own entry counts as
    // 1 - (-3e38), above any distance
    let n4 = p.rows / 4u;
    for (var q = 0u; q < n4; q++) {
        let j = q * 4u;
        let g = gram4[i * n4 + q];
        let own = vec4<u32>(j, j + 1u, j + 2u, j + 3u) == vec4<u32>(i);
        let d = 1.0 - select(g, vec4<f32>(-3.0e38), own);
        v = min(v, min(min(d.x, d.y), min(d.z, d.w)));
    }
#else
    for (var j = 0u; j < p.rows; j++) {
        if j != i {
            v = min(v, 1.0 - a[i * p.rows + j]);
        }
    }
#endif
    out[i] = v;
}
