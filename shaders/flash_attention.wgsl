// flash_attention.wgsl: tiled prefill attention for GPUs (online softmax over tiles of keys,
// causal or not, grouped KV heads; no score matrix in memory). The CPU-device prefill and
// the fallbacks live in attention.wgsl; ops::attention::prefill picks.
//
// Bindings: 0 params and 1 q (attention_params.wgsl): q f32 [m, q_stride], 2 k f32 [kv_len,
//           kv_stride], 3 v f32 [kv_len, kv_stride], 4 out f32 [m, o_stride].
//           Query head h reads KV head h / (heads / kv_heads). Query row i sits at position
//           q_pos0 + i and, causal, sees keys 0 ..= q_pos0 + i.
// Values (ops::flash_attention::FlashShape): HD (head dim, a multiple of 4); OB output column quads
//           per invocation (1, 2 or 4; flags OB_2, and OB_4 with it); WG = 16 * HD / (4 * OB)
//           invocations; VC keys per V chunk (divides BK); STAGE vec4s of staging memory.
// A workgroup takes BQ = 64 query rows of one head and walks the keys in tiles of BK = WG / 4.
// Invocation t owns the row quad rq = t % 16 (rows 4 rq .. 4 rq + 3) and the group g = t / 16:
//   scores: keys 4 g .. 4 g + 3 of the tile, a 4x4 block in four vec4 registers, with Q (scaled)
//           and K staged through workgroup memory DC = 16 dims at a time, both transposed
//           (vec4s across rows or keys), as matmul.wgsl's tiles;
//   softmax: the rows' maxima over the tile meet in workgroup memory; every invocation of a
//           row quad keeps the same running max and its own share of the running sum, and
//           writes its probabilities to p_t (transposed: p_t[key][rq], a vec4 across rows);
//   output: column quads g + NG * o (o < OB, NG = WG / 16) of its 4 rows, in vec4 registers
//           (named, never an indexed array: see matmul.wgsl), V staged VC keys at a time.
// Dispatch (ceil(m / 64), heads, 1).
#include "common"
#include "attention_params"
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const BQ: u32 = 64u;
const RQ: u32 = 16u;
const NG: u32 = WG / RQ;
const BK: u32 = 4u * NG;
const DC: u32 = 16u;
const HD4: u32 = HD / 4u;
// Where the K chunk starts in `stage`, after the Q chunk's DC x RQ vec4s.
const K_AT: u32 = DC * RQ;

var<workgroup> p_t: array<vec4<f32>, BK * RQ>;
var<workgroup> stage: array<vec4<f32>, STAGE>;
var<workgroup> red: array<vec4<f32>, WG>;

// Values d .. d + 3 of row `row` of a [rows, stride] buffer from column `col`, zero from
// `rows` or HD on (a chunk of DC dims may run past a head dim that is no multiple of 16).
fn q_quad(row: u32, col: u32, d: u32) -> vec4<f32> {
    if row >= p.m || d >= HD {
        return vec4<f32>(0.0);
    }
    let o = row * p.q_stride + col + d;
    return vec4<f32>(q[o], q[o + 1u], q[o + 2u], q[o + 3u]);
}
fn k_quad(row: u32, rows: u32, col: u32, d: u32) -> vec4<f32> {
    if row >= rows || d >= HD {
        return vec4<f32>(0.0);
    }
    let o = row * p.kv_stride + col + d;
    return vec4<f32>(k[o], k[o + 1u], k[o + 2u], k[o + 3u]);
}
fn v_quad(row: u32, rows: u32, col: u32, d: u32) -> vec4<f32> {
    if row >= rows {
        return vec4<f32>(0.0);
    }
    let o = row * p.kv_stride + col + d;
    return vec4<f32>(v[o], v[o + 1u], v[o + 2u], v[o + 3u]);
}

fn max4(x: vec4<f32>) -> f32 {
    return max(max(x.x, x.y), max(x.z, x.w));
}
fn sum4(x: vec4<f32>) -> f32 {
    return (x.x + x.y) + (x.z + x.w);
}

// Row `row`'s key end: past it (or past kv_len) a key counts zero.
fn row_end(row: u32) -> u32 {
    if p.causal != 0u {
        return min(p.kv_len, p.q_pos0 + row + 1u);
    }
    return p.kv_len;
}

// Row `row`'s 4 output values of column quad `cq`, normalised, unless the row is past m.
fn store_quad(row: u32, h: u32, cq: u32, a: vec4<f32>, inv: f32) {
    if row < p.m {
        let o = row * p.o_stride + h * HD + 4u * cq;
        let x = a * inv;
        out[o] = x.x;
        out[o + 1u] = x.y;
        out[o + 2u] = x.z;
        out[o + 3u] = x.w;
    }
}

@compute @workgroup_size(WG)
fn flash_attention(@builtin(local_invocation_index) t: u32,
                   @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.y;
    let kvh = h / (p.heads / p.kv_heads);
    let m0 = wid.x * BQ;
    let rq = t % RQ;
    let g = t / RQ;
    // The keys this workgroup's rows see (uniform), and each of its own 4 rows' ends.
    var kv_end = p.kv_len;
    if p.causal != 0u {
        kv_end = min(p.kv_len, p.q_pos0 + min(m0 + BQ, p.m));
    }
    let r0 = m0 + 4u * rq;
    let ends = vec4<u32>(row_end(r0), row_end(r0 + 1u), row_end(r0 + 2u), row_end(r0 + 3u));
    var m_run = vec4<f32>(-3.0e38);
    var l_run = vec4<f32>(0.0);
    // acc<o><r>: row 4 rq + r, column quad g + NG * o
    var acc00 = vec4<f32>(0.0);
    var acc01 = vec4<f32>(0.0);
    var acc02 = vec4<f32>(0.0);
    var acc03 = vec4<f32>(0.0);
#ifdef OB_2
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0);
    var acc13 = vec4<f32>(0.0);
#endif
#ifdef OB_4
    var acc20 = vec4<f32>(0.0);
    var acc21 = vec4<f32>(0.0);
    var acc22 = vec4<f32>(0.0);
    var acc23 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0);
    var acc31 = vec4<f32>(0.0);
    var acc32 = vec4<f32>(0.0);
    var acc33 = vec4<f32>(0.0);
#endif
    for (var t0 = 0u; t0 < kv_end; t0 += BK) {
        // Scores: s<r> holds row 4 rq + r against keys t0 + 4 g .. + 3.
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        for (var d0 = 0u; d0 < HD; d0 += DC) {
            // Q: BQ rows x DC dims; K: BK keys x DC dims; a quad (4 dims) per load.
            for (var i = t; i < BQ * (DC / 4u); i += WG) {
                let row = i / (DC / 4u);
                let dq = 4u * (i % (DC / 4u));
                let x = q_quad(m0 + row, h * HD, d0 + dq) * p.scale;
                let slot = row / 4u;
                let c = row % 4u;
                stage[dq * RQ + slot][c] = x.x;
                stage[(dq + 1u) * RQ + slot][c] = x.y;
                stage[(dq + 2u) * RQ + slot][c] = x.z;
                stage[(dq + 3u) * RQ + slot][c] = x.w;
            }
            for (var i = t; i < BK * (DC / 4u); i += WG) {
                let key = i / (DC / 4u);
                let dq = 4u * (i % (DC / 4u));
                let x = k_quad(t0 + key, kv_end, kvh * HD, d0 + dq);
                let slot = key / 4u;
                let c = key % 4u;
                stage[K_AT + dq * NG + slot][c] = x.x;
                stage[K_AT + (dq + 1u) * NG + slot][c] = x.y;
                stage[K_AT + (dq + 2u) * NG + slot][c] = x.z;
                stage[K_AT + (dq + 3u) * NG + slot][c] = x.w;
            }
            workgroupBarrier();
            for (var dd = 0u; dd < DC; dd++) {
                let a = stage[dd * RQ + rq];
                let b = stage[K_AT + dd * NG + g];
                s0 = fma(vec4<f32>(a.x), b, s0);
                s1 = fma(vec4<f32>(a.y), b, s1);
                s2 = fma(vec4<f32>(a.z), b, s2);
                s3 = fma(vec4<f32>(a.w), b, s3);
            }
            workgroupBarrier();
        }
        // Softmax: mask, the rows' tile maxima through `red`, probabilities to p_t.
        let j = vec4<u32>(t0 + 4u * g) + vec4<u32>(0u, 1u, 2u, 3u);
        let ok0 = j < vec4<u32>(ends.x);
        let ok1 = j < vec4<u32>(ends.y);
        let ok2 = j < vec4<u32>(ends.z);
        let ok3 = j < vec4<u32>(ends.w);
        let low = vec4<f32>(-3.0e38);
        s0 = select(low, s0, ok0);
        s1 = select(low, s1, ok1);
        s2 = select(low, s2, ok2);
        s3 = select(low, s3, ok3);
        red[g * RQ + rq] = vec4<f32>(max4(s0), max4(s1), max4(s2), max4(s3));
        workgroupBarrier();
        var mt = m_run;
        for (var gg = 0u; gg < NG; gg++) {
            mt = max(mt, red[gg * RQ + rq]);
        }
        let corr = exp(m_run - mt);
        m_run = mt;
        let p0 = select(vec4<f32>(0.0), exp(s0 - mt.x), ok0);
        let p1 = select(vec4<f32>(0.0), exp(s1 - mt.y), ok1);
        let p2 = select(vec4<f32>(0.0), exp(s2 - mt.z), ok2);
        let p3 = select(vec4<f32>(0.0), exp(s3 - mt.w), ok3);
        l_run = l_run * corr + vec4<f32>(sum4(p0), sum4(p1), sum4(p2), sum4(p3));
        let key0 = 4u * g;
        p_t[key0 * RQ + rq] = vec4<f32>(p0.x, p1.x, p2.x, p3.x);
        p_t[(key0 + 1u) * RQ + rq] = vec4<f32>(p0.y, p1.y, p2.y, p3.y);
        p_t[(key0 + 2u) * RQ + rq] = vec4<f32>(p0.z, p1.z, p2.z, p3.z);
        p_t[(key0 + 3u) * RQ + rq] = vec4<f32>(p0.w, p1.w, p2.w, p3.w);
        acc00 *= corr.x;
        acc01 *= corr.y;
        acc02 *= corr.z;
        acc03 *= corr.w;
#ifdef OB_2
        acc10 *= corr.x;
        acc11 *= corr.y;
        acc12 *= corr.z;
        acc13 *= corr.w;
#endif
#ifdef OB_4
        acc20 *= corr.x;
        acc21 *= corr.y;
        acc22 *= corr.z;
        acc23 *= corr.w;
        acc30 *= corr.x;
        acc31 *= corr.y;
        acc32 *= corr.z;
        acc33 *= corr.w;
#endif
        workgroupBarrier();
        // Output: P (BQ x BK) times V (BK x HD), V staged VC keys at a time.
        for (var c0 = 0u; c0 < BK && t0 + c0 < kv_end; c0 += VC) {
            for (var i = t; i < VC * HD4; i += WG) {
                let key = i / HD4;
                stage[i] = v_quad(t0 + c0 + key, kv_end, kvh * HD, 4u * (i % HD4));
            }
            workgroupBarrier();
            for (var kk = 0u; kk < VC; kk++) {
                let pw = p_t[(c0 + kk) * RQ + rq];
                let v0 = stage[kk * HD4 + g];
                acc00 = fma(vec4<f32>(pw.x), v0, acc00);
                acc01 = fma(vec4<f32>(pw.y), v0, acc01);
                acc02 = fma(vec4<f32>(pw.z), v0, acc02);
                acc03 = fma(vec4<f32>(pw.w), v0, acc03);
#ifdef OB_2
                let v1 = stage[kk * HD4 + g + NG];
                acc10 = fma(vec4<f32>(pw.x), v1, acc10);
                acc11 = fma(vec4<f32>(pw.y), v1, acc11);
                acc12 = fma(vec4<f32>(pw.z), v1, acc12);
                acc13 = fma(vec4<f32>(pw.w), v1, acc13);
#endif
#ifdef OB_4
                let v2 = stage[kk * HD4 + g + 2u * NG];
                let v3 = stage[kk * HD4 + g + 3u * NG];
                acc20 = fma(vec4<f32>(pw.x), v2, acc20);
                acc21 = fma(vec4<f32>(pw.y), v2, acc21);
                acc22 = fma(vec4<f32>(pw.z), v2, acc22);
                acc23 = fma(vec4<f32>(pw.w), v2, acc23);
                acc30 = fma(vec4<f32>(pw.x), v3, acc30);
                acc31 = fma(vec4<f32>(pw.y), v3, acc31);
                acc32 = fma(vec4<f32>(pw.z), v3, acc32);
                acc33 = fma(vec4<f32>(pw.w), v3, acc33);
#endif
            }
            workgroupBarrier();
        }
    }
    // Each row's sum: the shares of its row quad's NG invocations.
    red[g * RQ + rq] = l_run;
    workgroupBarrier();
    var l = vec4<f32>(0.0);
    for (var gg = 0u; gg < NG; gg++) {
        l += red[gg * RQ + rq];
    }
    let inv = 1.0 / l;
    store_quad(r0, h, g, acc00, inv.x);
    store_quad(r0 + 1u, h, g, acc01, inv.y);
    store_quad(r0 + 2u, h, g, acc02, inv.z);
    store_quad(r0 + 3u, h, g, acc03, inv.w);
#ifdef OB_2
    store_quad(r0, h, g + NG, acc10, inv.x);
    store_quad(r0 + 1u, h, g + NG, acc11, inv.y);
    store_quad(r0 + 2u, h, g + NG, acc12, inv.z);
    store_quad(r0 + 3u, h, g + NG, acc13, inv.w);
#endif
#ifdef OB_4
    store_quad(r0, h, g + 2u * NG, acc20, inv.x);
    store_quad(r0 + 1u, h, g + 2u * NG, acc21, inv.y);
    store_quad(r0 + 2u, h, g + 2u * NG, acc22, inv.z);
    store_quad(r0 + 3u, h, g + 2u * NG, acc23, inv.w);
    store_quad(r0, h, g + 3u * NG, acc30, inv.x);
    store_quad(r0 + 1u, h, g + 3u * NG, acc31, inv.y);
    store_quad(r0 + 2u, h, g + 3u * NG, acc32, inv.z);
    store_quad(r0 + 3u, h, g + 3u * NG, acc33, inv.w);
#endif
}
