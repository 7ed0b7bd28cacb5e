// gemv.wgsl: the decode matrix-vector product, y[out_col + n] (=|+=) act(W[n, :] · x + bias)
// for one input row, with optional fusions: RMSNorm of x on load (NORM), SwiGLU of a
// [gate; up] weight (GATE_UP), and RoPE with the KV-cache write after a stacked q|k|v
// weight (ROPE).
//
// Bindings: 0 params (uniform Params)
//           1 x     vec4<f32> [k / 4], row 0 of the input (k a multiple of 4); with XUBO a
//                   uniform buffer of XLEN vec4s (a value: k / 4 for gemv, m rows of
//                   x_stride4 for gemm_tokens), and g one of GLEN = k / 4
//           2 w     vec4<u32> words of one weight chunk of n rows:
//                   WF16:  f16 rows padded to row_vec4 * 8 values (row_vec4 = cols4 / 8)
//                   the block types: gpu::tensor::repack's layout (quants, then scales;
//                   Q3_K's 2-bit lows and high bits as Q6_K's and the Q5s' highs;
//                   Q4_K's sub-blocks as Q4_1's blocks, its headers q4_k.wgsl's; Q5_0,
//                   Q5_1, Q5_K as Q4_0, Q4_1, Q4_K with a region of high-bit words, one a
//                   group, before the scales; Q6_K's low nibbles as Q4_1's, then regions of
//                   highs, scales and d's)
//                   (WTEX: the same words in a texture, weight_texture.wgsl)
//           3 bias  f32 [out_col + n]          (BIAS)
//           4 y     f32 [out_col + n]          (GATE_UP: [n / 2])
//           5 y_tex (YTEX, the plain store of gemv, gemm_lanes, gemm_tokens): y's texture copy
//                   (gpu::Tensor::texels), rgba32float, values 4i .. 4i + 3 of row t at
//                   texel (i, t), written with y
//           6 g     vec4<f32> [k / 4]: the RMSNorm weight (NORM)
//           XTEX (gemv, gemm_lanes, gemm_tokens): 1 is x's texture copy (rgba32float,
//                   vec4 i of row t at texel (i, t)) and 6 a texture of RMSNorm weights,
//                   this one in row p.g_row
//           ROPE (decode's stacked q|k|v with rope.wgsl's rope_kv as its epilogue):
//           4 y = the rotated queries [heads * hd], 7 positions u32 [1], 8 table (rope.wgsl),
//           9 k_cache, 10 v_cache f32 [ctx, kv_stride] (row step.kv_offset is written),
//           11 step (uniform Step); with KV_TEX 9 and 10 are the KV cache's rgba32float
//           textures (attention.wgsl's KV_TEX), written at texel row step.kv_offset
//           (LG_ROWS / 2 and HALF multiples of 4, so a lane group's pairs are whole texels)
// Variants: one of WF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q3_K, Q4_K, Q5_K, Q6_K; WTEX; LG_ROWS (value, even); NORM;
//           GATE_UP | ROPE (ROPE with HALF = hd / 2, a value, and optionally KV_TEX, or
//           KV_TEX_COPY for gemm_tokens; either with PAIRS: rows come in pairs); BIAS;
//           ACT_GELU | ACT_QUICK_GELU; ACCUMULATE; SUBGROUPS (lane sums by subgroup
//           shuffles; the host sets it only when subgroups hold at least 8 invocations);
//           TAIL (a value: ceil(k / 32) % 8 where it divides 8; gemv only); K_WHOLE (k a
//           multiple of 32: gemv's x loads need no guard, which lavapipe pays per lane and
//           load: SmolLM2-135M Q4_1's decode GEMVs ran 3-8% faster without it); XUBO with
//           XLEN and GLEN (gemv and gemm_tokens: lavapipe gathers uniform loads in straight-line
//           code but loads storage buffers at per-lane addresses in a loop with a branch per
//           lane); TOKENS_WG (a value: gemm_tokens' workgroup size); TPI (a value:
//           gemm_tokens' input rows per invocation); SHARED_W (gemm_tokens, f16, with
//           subgroups of at least 8 and LG_ROWS <= 8: weight words shared by subgroup
//           shuffles, below); XTEX, YTEX (above; lavapipe fetches a
//           texel for 8 lanes in fewer instructions than it gathers a vec4 from a uniform
//           buffer: SmolLM2-135M Q4_1's norm GEMVs ran 5-10% faster reading x and the
//           norm weight from textures, the residual adds ~2% slower writing one; and than
//           it loads a storage buffer at per-lane addresses: gemm_tokens over 577 rows
//           (examples/gemm_probe.rs, 2 cores) took 1.11 ms against 1.60 for the patch
//           embedding (k = 588), 0.39 against 0.51 for k = 64 → 128, 0.35 against 0.46
//           for k = 128 → 64).
// Geometry: 64 invocations = 8 lane groups of 8 lanes. A lane group computes LG_ROWS rows; its
//   lanes stride over the row's 32-value groups, keep x for one group in registers and
//   reuse it for all LG_ROWS rows, then the 8 lane sums are added (subgroup shuffles, or
//   workgroup memory). TAIL: the groups past the last whole round of 8 go to lane teams
//   (team t = lane % TAIL takes group t of them, its 8 / TAIL lanes split the rows), so
//   that no lane idles there (k = 576: 18 groups, 3 rounds of lane work become 2¼).
//   Q4_0 / Q4_1 / Q4_K nibbles are masked in place, not shifted down; x is pre-scaled to
//   match. A Q4_K sub-block is a Q4_1 block whose d and m come from its super-block's header;
//   the Q5 formats' and Q6_K's nibbles take their high bits into the same bytes (5- or 6-bit
//   quants, masked alike), and a Q5_K sub-block is a Q5_1 block as a Q4_K one is a Q4_1
//   block; Q3_K's 3-bit quants are its 2-bit lows with their high bits, masked alike; Q3_K
//   and Q6_K have one scale for values 0..16 and one for 16..32.
//   GATE_UP: a lane group computes gate rows j..j+LG_ROWS/2 and the same up rows (n/2
//   further on), and writes silu(gate) * up. ROPE: a lane group computes
//   LG_ROWS/2 rotation pairs (rows h*hd + i and h*hd + i + hd/2 of head h) and writes them
//   rotated (query and key heads) or as they are (value heads) to q and the KV cache.
//   Dispatch fold(ceil(rows / (8 * LG_ROWS))), rows = n (GATE_UP, ROPE: n / 2 pairs, 2 rows
//   each).
//   GV_LANES (a value: 8, 16 or 32; GPUs; LG_ROWS <= 4, not with TAIL or KV_TEX): lane groups
//   of GV_LANES lanes, 64 / GV_LANES to a workgroup. WF16: the lanes take 16-byte words lane,
//   lane + GV_LANES, ... of the rows, two words a round, every
//   weight load issued before the sums (rows past the matrix read row 0, never stored); the
//   quant formats: whole 32-value blocks at that stride. x and the row sums stay in
//   registers (no run-time-indexed arrays), lane sums by subgroup shuffles over GV_LANES
//   lanes (SUBGROUPS only where a subgroup holds them) or workgroup memory. Dispatch
//   fold(ceil(rows / (64 / GV_LANES * LG_ROWS))).
// gemm_lanes (with TOKENS, a value): the same lane groups over m input rows, for prefill on
//   CPU devices, where workgroup-memory tiles are slow. A lane group computes LG_ROWS rows
//   for TOKENS input rows. Its lanes stride over units (a quant block of 32 values, or one
//   16-byte word of 8 f16 values, so that k = 64 fills the lanes): the TOKENS rows' x over
//   a unit is loaded once, and each weight row's unit is loaded and decoded once for all
//   TOKENS rows. Then LG_ROWS * TOKENS lane partials are summed. NORM: x's units are
//   scaled by g as they load and their squares summed alongside, so each row's RMS scale
//   multiplies its sums at the end. GATE_UP as in gemv.
//   x is [m, x_stride4] vec4 rows. Dispatch (ceil(outputs / (8 * LG_ROWS)), ceil(m / TOKENS),
//   1), outputs = n (GATE_UP: n / 2 pairs, 2 rows each).
// gemm_tokens (with TOKENS too, for short rows): an invocation takes TPI consecutive input
//   rows and walks all of k, decoding each weight word once for its TPI rows; the
//   workgroup's TOKENS_WG * TPI rows share its LG_ROWS weight rows (uniform loads, no lane
//   sums). Dispatch (ceil(outputs / LG_ROWS), ceil(m / (TOKENS_WG * TPI)), 1), outputs as in
//   gemm_lanes (GATE_UP, ROPE: LG_ROWS / 2 pairs per workgroup). ROPE (a prefill's q|k|v,
//   not with KV_TEX): input row t is rotated at positions[t] into q row t (y, rows of
//   out_stride) and cache row step.kv_offset + t of bindings 9 and 10; with KV_TEX_COPY also
//   into that row of the prefill attention's textures, 12 k_tex and 13 v_tex
//   (texture_storage_2d<rgba32float, write>, attention.wgsl's KV_TEX layout; LG_ROWS / 2 and
//   HALF multiples of 4).
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
    n: u32,
    k: u32,
    row_vec4: u32,
    out_col: u32,
    eps: f32,
    out_stride: u32,
    m: u32,          // gemm_lanes only
    x_stride4: u32,  // gemm_lanes only
    heads: u32,      // ROPE only: q|k|v's query and key heads, and the cache's row stride
    kv_heads: u32,
    kv_stride: u32,
    g_row: u32,      // XTEX with NORM: the RMSNorm weight's row of its texture
    head0: u32,      // gemv's ROPE: w's rows are q|k|v's from head head0 on (a part)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#ifdef XTEX
// index i = row << 16 | c: texel c of row `row` (x_row; textures are at most 16384 wide)
@group(0) @binding(1) var x_tex: texture_storage_2d<rgba32float, read>;
fn x_at(i: u32) -> vec4<f32> { return textureLoad(x_tex, vec2<u32>(i & 0xffffu, i >> 16u)); }
fn x_row(row: u32) -> u32 { return row << 16u; }
#else
#ifdef XUBO
@group(0) @binding(1) var<uniform> x: array<vec4<f32>, XLEN>;
#else
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
#endif
fn x_at(i: u32) -> vec4<f32> { return x[i]; }
fn x_row(row: u32) -> u32 { return row * p.x_stride4; }
#endif
#ifdef WTEX
#include "weight_texture"
fn w_word(i: u32) -> vec4<u32> { return weight_texel(i); }
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
fn w_word(i: u32) -> vec4<u32> { return w[i]; }
#endif
#ifdef BIAS
@group(0) @binding(3) var<storage, read> bias: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
#ifdef NORM
#ifdef XTEX
@group(0) @binding(6) var g_tex: texture_storage_2d<rgba32float, read>;
fn g_at(i: u32) -> vec4<f32> { return textureLoad(g_tex, vec2<u32>(i, p.g_row)); }
#else
#ifdef XUBO
@group(0) @binding(6) var<uniform> g: array<vec4<f32>, GLEN>;
#else
@group(0) @binding(6) var<storage, read> g: array<vec4<f32>>;
#endif
fn g_at(i: u32) -> vec4<f32> { return g[i]; }
#endif
#endif
#ifdef YTEX
@group(0) @binding(5) var y_tex: texture_storage_2d<rgba32float, write>;
#endif
#ifdef ROPE
@group(0) @binding(7) var<storage, read> positions: array<u32>;
@group(0) @binding(8) var<storage, read> table: array<f32>;
#ifdef KV_TEX
@group(0) @binding(9) var k_tex: texture_storage_2d<rgba32float, write>;
@group(0) @binding(10) var v_tex: texture_storage_2d<rgba32float, write>;
#else
@group(0) @binding(9) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(10) var<storage, read_write> v_cache: array<f32>;
#endif
@group(0) @binding(11) var<uniform> step: Step;
#ifdef KV_TEX
#include "kv_texels"
#endif
#ifdef KV_TEX_COPY
@group(0) @binding(12) var k_tex: texture_storage_2d<rgba32float, write>;
@group(0) @binding(13) var v_tex: texture_storage_2d<rgba32float, write>;
#include "kv_texels"
#endif
#include "rope_kv_store"

#ifdef KV_TEX
// Rotation pairs pi .. pi + 3 (pi a multiple of 4, all in head pi / HALF; HALF = hd / 2 a
// multiple of 4) of q|k|v at positions[0], x1 and x2 their values (i, i + HALF): queries
// into y, keys and values as two whole texels of row step.kv_offset of the cache textures
// (the texel of values i .. i + 3 of KV head kvh at x = (kvh * hd + i) / 4).
fn rope_store4(pi: u32, x1: vec4<f32>, x2: vec4<f32>) {
    let hh = pi / HALF;
    let i = pi % HALF;
    let r = rope_pairs4(2u * HALF, i, positions[0], x1, x2, hh < p.heads + p.kv_heads);
    if hh < p.heads {
        for (var j = 0u; j < 4u; j++) {
            y[hh * 2u * HALF + i + j] = r[0][j];
            y[hh * 2u * HALF + HALF + i + j] = r[1][j];
        }
        return;
    }
    store_kv_texels(hh - p.heads, i, 2u * HALF, step.kv_offset, r[0], r[1]);
}
#else
fn store_q(o: u32, v: f32) {
    y[o] = v;
}

// Rotation pair pi (head pi / HALF, index pi % HALF; HALF = hd / 2) of q|k|v at
// positions[0], into y and cache row step.kv_offset (rope.wgsl's rope_kv for one row).
fn rope_store(pi: u32, x1: f32, x2: f32) {
    let l = QkvLayout(p.heads, p.kv_heads, 2u * HALF, 0u, step.kv_offset * p.kv_stride);
    rope_kv_store(l, pi / HALF, pi % HALF, positions[0], x1, x2);
}
#endif
#endif

const LANES: u32 = 8u;
// The decode GEMV's lanes per lane group: GV_LANES (32 on GPUs, over f16 words or quant
// blocks), else 8.
#ifdef GV_LANES
const GL: u32 = GV_LANES;
#else
const GL: u32 = LANES;
#endif
const WG: u32 = 64u;
#ifdef TAIL
const TEAM: u32 = LANES / TAIL;
#endif

// The 32 values of x for one group, in registers, their sum, and (NORM) the sum of their
// squares before the RMSNorm weight.
struct XGroup {
    v: array<vec4<f32>, 8>,
    sum: f32,
    sq: f32,
    // Q3_K, Q6_K: the sum of values 0..16 alone
    lo: f32,
}

// Quant bytes to floats through i32 (CPUs convert signed integers in one instruction), each
// byte of w cut to its low `bits` bits (a constant once inlined). Shifted down (bytes_down):
// gemm_lanes decodes a block once for TOKENS rows of x, so it keeps x as is. Masked in place
// and never shifted (bytes_masked), for the decode GEMV: byte j's quant comes out times
// 256^j (exact in f32), so x_group scales x by 256^-j to match (X_NIB).
fn bytes_down(w: u32, bits: u32) -> vec4<f32> {
    let q = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>((1u << bits) - 1u);
    return vec4<f32>(bitcast<vec4<i32>>(q));
}
fn bytes_masked(w: u32, bits: u32) -> vec4<f32> {
    let m = vec4<u32>((1u << bits) - 1u) << vec4<u32>(0u, 8u, 16u, 24u);
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) & m));
}
// A Q4 word's nibbles: the low ones (values 4c .. 4c + 4 of a group), the high (16 + 4c ..).
fn nib_lo(q: u32) -> vec4<f32> {
    return bytes_down(q, 4u);
}
fn nib_hi(q: u32) -> vec4<f32> {
    return bytes_down(q >> 4u, 4u);
}
fn nib_lo_masked(q: u32) -> vec4<f32> {
    return bytes_masked(q, 4u);
}
fn nib_hi_masked(q: u32) -> vec4<f32> {
    return bytes_masked(q >> 4u, 4u);
}
const X_NIB = vec4<f32>(1.0, 1.0 / 256.0, 1.0 / 65536.0, 1.0 / 16777216.0);
// What the decode GEMV scales x by: 1 for f16 words, Q8_0's signed bytes and IQ4_NL's
// levels; X_NIB for the formats whose quants it masks in place (the Q4 formats' nibbles,
// the Q5 formats', Q3_K's and Q6_K's quants with their high bits).
#ifdef WF16
const X_SCALE = vec4<f32>(1.0);
#else
#ifdef Q8_0
const X_SCALE = vec4<f32>(1.0);
#else
#ifdef IQ4_NL
const X_SCALE = vec4<f32>(1.0);
#else
const X_SCALE = X_NIB;
#endif
#endif
#endif
fn i8x4(q: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(q)) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Group gi of the x row starting at vec4 row0 (zero past k), times the RMSNorm weight with
// NORM, and its sums.
fn x_group(row0: u32, gi: u32) -> XGroup {
    var xg: XGroup;
    var tot = vec4<f32>(0.0);
    var sq = vec4<f32>(0.0);
    for (var j = 0u; j < 8u; j++) {
        let c = gi * 8u + j;
#ifdef K_WHOLE
        var v = x_at(row0 + c);
#ifdef NORM
        sq += v * v;
        v *= g_at(c);
#endif
#else
        var v = vec4<f32>(0.0);
        if c < p.k / 4u {
            v = x_at(row0 + c);
#ifdef NORM
            sq += v * v;
            v *= g_at(c);
#endif
        }
#endif
        tot += v;
#ifdef Q6_K
        if j == 3u {
            xg.lo = dot(tot, vec4<f32>(1.0));
        }
#endif
#ifdef Q3_K
        if j == 3u {
            xg.lo = dot(tot, vec4<f32>(1.0));
        }
#endif
        // nibble_dot's masked nibbles come out times 256^j
        xg.v[j] = v * X_SCALE;
    }
    xg.sum = dot(tot, vec4<f32>(1.0));
    xg.sq = dot(sq, vec4<f32>(1.0));
    return xg;
}

#ifdef Q6_K
// A Q6_K sub-block in the GPU layout (gpu::tensor::repack_q6_k): its low nibbles in Q4_1's
// order, its two words of highs (values 0..16, 16..32; value 4c + j's at bits 8j + 2c), and
// d times its two scales (values 0..16, 16..32).
struct Q6Group {
    q: vec4<u32>,
    h: vec2<u32>,
    sc: vec2<f32>,
}

// Group i (row * k / 32 + sub-block; k is whole super-blocks) of the chunk's G groups: the
// nibbles are vec4 i, the highs half of vec4 G + i / 2, the super-block's 16 int8 scales
// vec4 G + G / 2 + i / 8, and its f16 d one of the 8 in vec4 G + G / 2 + G / 8 + i / 64.
fn q6k_group(i: u32) -> Q6Group {
    let groups = p.n * (p.k / 32u);
    var g: Q6Group;
    g.q = w_word(i);
    let h = w_word(groups + (i >> 1u));
    g.h = select(h.xy, h.zw, (i & 1u) == 1u);
    let sb = i >> 3u;
    let j = i & 7u;
    let sc = w_word(groups + groups / 2u + sb)[j >> 1u] >> (16u * (j & 1u));
    let dw = w_word(groups + groups / 2u + groups / 8u + (sb >> 3u));
    let d = unpack2x16float(dw[(sb >> 1u) & 3u])[sb & 1u];
    g.sc = d * vec2<f32>(f32(extractBits(i32(sc), 0u, 8u)), f32(extractBits(i32(sc), 8u, 8u)));
    return g;
}

// Values 4c .. 4c + 4 of a half: the low nibbles in q's bytes (bits 8j .. 8j + 4) with their
// highs from h (bits 8j + 2c), as 6-bit quants in the word's bytes (bytes_masked or
// bytes_down with 6 bits).
fn six_word(q: u32, h: u32, c: u32) -> u32 {
    return (q & 0x0f0f0f0fu) | (((h >> (2u * c)) & 0x03030303u) << 4u);
}
fn six_masked(q: u32, h: u32, c: u32) -> vec4<f32> { return bytes_masked(six_word(q, h, c), 6u); }
fn six(q: u32, h: u32, c: u32) -> vec4<f32> { return bytes_down(six_word(q, h, c), 6u); }
#endif

#ifdef Q3_K
// A Q3_K sub-block in the GPU layout (gpu::tensor::repack_q3_k): its two words of 2-bit
// lows (values 0..16, 16..32; value 4c + j's at bits 8j + 2c), its word of high bits (value
// 16h + 4c + j's at bit 8j + 4h + c) and d times its two scales less 32.
struct Q3Group {
    lo: vec2<u32>,
    h: u32,
    sc: vec2<f32>,
}

// Group i (row * k / 32 + sub-block; k is whole super-blocks) of the chunk's G groups: the
// lows are half of vec4 i / 2, the highs word 2G + i, the super-block's scales words
// 3G + 3 (i / 8) .. + 3, and its f16 d one of the two in word 3G + 3G / 8 + i / 16.
fn q3k_group(i: u32) -> Q3Group {
    let groups = p.n * (p.k / 32u);
    var g: Q3Group;
    let l = w_word(i >> 1u);
    g.lo = select(l.xy, l.zw, (i & 1u) == 1u);
    g.h = scale_word(2u * groups + i, 0u);
    let sb = i >> 3u;
    let s = 3u * groups + 3u * sb;
    let sw = vec3<u32>(scale_word(s, 0u), scale_word(s + 1u, 0u), scale_word(s + 2u, 0u));
    let d = unpack2x16float(scale_word(3u * groups + 3u * (groups / 8u) + (sb >> 1u), 0u))[sb & 1u];
    g.sc = d * q3k_scales(sw, i & 7u);
    return g;
}

// Values 4c .. 4c + 4 of a half: the 2-bit lows of word lo (bits 8j + 2c) with their high
// bits from hs = the highs word >> (4h + c) (bit 8j), as 3-bit quants in the word's bytes
// (bytes_masked or bytes_down with 3 bits).
fn three_word(lo: u32, c: u32, hs: u32) -> u32 {
    return ((lo >> (2u * c)) & 0x03030303u) | ((hs & 0x01010101u) << 2u);
}
fn three_masked(lo: u32, c: u32, hs: u32) -> vec4<f32> {
    return bytes_masked(three_word(lo, c, hs), 3u);
}
fn three(lo: u32, c: u32, hs: u32) -> vec4<f32> { return bytes_down(three_word(lo, c, hs), 3u); }
#endif

#ifdef Q4_K
// The header of the super-block that holds group i (row * k / 32 + sub-block; k is whole
// super-blocks): the scale region's vec4 i / 8.
fn q4k_header(i: u32) -> vec4<u32> {
    return w_word(p.n * (p.k / 32u) + (i >> 3u));
}
#endif
#ifdef Q5_K
// As Q4_K's, after the highs' region (a word a group; the groups are whole super-blocks,
// so the region is whole vec4s).
fn q4k_header(i: u32) -> vec4<u32> {
    let groups = p.n * (p.k / 32u);
    return w_word(groups + groups / 4u + (i >> 3u));
}
#endif

// Values 16h + 4c .. 16h + 4c + 4 of a Q5 group: q's nibbles (bits 8j .. 8j + 4, shifted
// down for h = 1 by the caller) with their fifth bits from hs = the highs word >> (4h + c)
// (bit 8j, gpu::tensor::repack_q5), as 5-bit quants in the word's bytes (bytes_masked or
// bytes_down with 5 bits).
fn five_word(q: u32, hs: u32) -> u32 {
    return (q & 0x0f0f0f0fu) | ((hs & 0x01010101u) << 4u);
}
fn five_masked(q: u32, hs: u32) -> vec4<f32> { return bytes_masked(five_word(q, hs), 5u); }
fn five(q: u32, hs: u32) -> vec4<f32> { return bytes_down(five_word(q, hs), 5u); }

// A Q5 group's 32 quants (nibbles q, highs word h) · x over its group, x pre-scaled by X_NIB.
fn five_dot(q: vec4<u32>, h: u32, xg: XGroup) -> f32 {
    return dot(five_masked(q.x, h), xg.v[0]) + dot(five_masked(q.y, h >> 1u), xg.v[1])
        + dot(five_masked(q.z, h >> 2u), xg.v[2]) + dot(five_masked(q.w, h >> 3u), xg.v[3])
        + dot(five_masked(q.x >> 4u, h >> 4u), xg.v[4])
        + dot(five_masked(q.y >> 4u, h >> 5u), xg.v[5])
        + dot(five_masked(q.z >> 4u, h >> 6u), xg.v[6])
        + dot(five_masked(q.w >> 4u, h >> 7u), xg.v[7]);
}

// Word i of the scale region that follows the n * nb groups of QW words.
fn scale_word(i: u32, qw: u32) -> u32 {
    let s = p.n * (p.k / 32u) * qw + i;
    return w_word(s >> 2u)[s & 3u];
}

// A Q4_0 / Q4_1 block's (or Q4_K sub-block's) 32 nibbles (low nibbles values 0..15, high
// 16..31) · x over its group, x pre-scaled by X_NIB.
fn nibble_dot(q: vec4<u32>, xg: XGroup) -> f32 {
    return dot(nib_lo_masked(q.x), xg.v[0]) + dot(nib_lo_masked(q.y), xg.v[1])
        + dot(nib_lo_masked(q.z), xg.v[2]) + dot(nib_lo_masked(q.w), xg.v[3])
        + dot(nib_hi_masked(q.x), xg.v[4]) + dot(nib_hi_masked(q.y), xg.v[5])
        + dot(nib_hi_masked(q.z), xg.v[6]) + dot(nib_hi_masked(q.w), xg.v[7]);
}

// W[row, 32 gi .. 32 gi + 32] · x over that group.
fn group_dot(row: u32, gi: u32, xg: XGroup) -> f32 {
#ifdef WF16
    var acc = 0.0;
    for (var u = 0u; u < 4u; u++) {
        let o = 4u * gi + u;
        if o < p.row_vec4 {
            let q = w_word(row * p.row_vec4 + o);
            acc += dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), xg.v[2u * u])
                + dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), xg.v[2u * u + 1u]);
        }
    }
    return acc;
#endif
#ifdef Q8_0
    let i = row * (p.k / 32u) + gi;
    let a = w_word(2u * i);
    let b = w_word(2u * i + 1u);
    let d = unpack2x16float(scale_word(i >> 1u, 8u))[i & 1u];
    let s = dot(i8x4(a.x), xg.v[0]) + dot(i8x4(a.y), xg.v[1]) + dot(i8x4(a.z), xg.v[2])
        + dot(i8x4(a.w), xg.v[3]) + dot(i8x4(b.x), xg.v[4]) + dot(i8x4(b.y), xg.v[5])
        + dot(i8x4(b.z), xg.v[6]) + dot(i8x4(b.w), xg.v[7]);
    return d * s;
#endif
#ifdef Q4_0
    let i = row * (p.k / 32u) + gi;
    let q = w_word(i);
    let d = unpack2x16float(scale_word(i >> 1u, 4u))[i & 1u];
    return d * (nibble_dot(q, xg) - 8.0 * xg.sum);
#endif
#ifdef Q4_1
    let i = row * (p.k / 32u) + gi;
    let q = w_word(i);
    let dm = unpack2x16float(scale_word(i, 4u));
    return dm.x * nibble_dot(q, xg) + dm.y * xg.sum;
#endif
#ifdef Q4_K
    let i = row * (p.k / 32u) + gi;
    let q = w_word(i);
    let dm = q4k_dm(q4k_header(i), gi & 7u);
    return dm.x * nibble_dot(q, xg) + dm.y * xg.sum;
#endif
#ifdef Q5_0
    // quants, then a highs word a group, then the d's (two a word)
    let i = row * (p.k / 32u) + gi;
    let groups = p.n * (p.k / 32u);
    let d = unpack2x16float(scale_word(groups + (i >> 1u), 4u))[i & 1u];
    return d * (five_dot(w_word(i), scale_word(i, 4u), xg) - 16.0 * xg.sum);
#endif
#ifdef Q5_1
    let i = row * (p.k / 32u) + gi;
    let dm = unpack2x16float(scale_word(p.n * (p.k / 32u) + i, 4u));
    return dm.x * five_dot(w_word(i), scale_word(i, 4u), xg) + dm.y * xg.sum;
#endif
#ifdef Q5_K
    let i = row * (p.k / 32u) + gi;
    let dm = q4k_dm(q4k_header(i), gi & 7u);
    return dm.x * five_dot(w_word(i), scale_word(i, 4u), xg) + dm.y * xg.sum;
#endif
#ifdef IQ4_NL
    // Q4_0's layout; the nibbles index the levels
    let i = row * (p.k / 32u) + gi;
    let q = w_word(i);
    let d = unpack2x16float(scale_word(i >> 1u, 4u))[i & 1u];
    return d * (dot(iq4nl(q.x, 0u), xg.v[0]) + dot(iq4nl(q.y, 0u), xg.v[1])
        + dot(iq4nl(q.z, 0u), xg.v[2]) + dot(iq4nl(q.w, 0u), xg.v[3])
        + dot(iq4nl(q.x, 4u), xg.v[4]) + dot(iq4nl(q.y, 4u), xg.v[5])
        + dot(iq4nl(q.z, 4u), xg.v[6]) + dot(iq4nl(q.w, 4u), xg.v[7]));
#endif
#ifdef Q3_K
    let g = q3k_group(row * (p.k / 32u) + gi);
    let lo = dot(three_masked(g.lo.x, 0u, g.h), xg.v[0])
        + dot(three_masked(g.lo.x, 1u, g.h >> 1u), xg.v[1])
        + dot(three_masked(g.lo.x, 2u, g.h >> 2u), xg.v[2])
        + dot(three_masked(g.lo.x, 3u, g.h >> 3u), xg.v[3]);
    let hi = dot(three_masked(g.lo.y, 0u, g.h >> 4u), xg.v[4])
        + dot(three_masked(g.lo.y, 1u, g.h >> 5u), xg.v[5])
        + dot(three_masked(g.lo.y, 2u, g.h >> 6u), xg.v[6])
        + dot(three_masked(g.lo.y, 3u, g.h >> 7u), xg.v[7]);
    return g.sc.x * (lo - 4.0 * xg.lo) + g.sc.y * (hi - 4.0 * (xg.sum - xg.lo));
#endif
#ifdef Q6_K
    let g = q6k_group(row * (p.k / 32u) + gi);
    let lo = dot(six_masked(g.q.x, g.h.x, 0u), xg.v[0]) + dot(six_masked(g.q.y, g.h.x, 1u), xg.v[1])
        + dot(six_masked(g.q.z, g.h.x, 2u), xg.v[2]) + dot(six_masked(g.q.w, g.h.x, 3u), xg.v[3]);
    let hi = dot(six_masked(g.q.x >> 4u, g.h.y, 0u), xg.v[4])
        + dot(six_masked(g.q.y >> 4u, g.h.y, 1u), xg.v[5])
        + dot(six_masked(g.q.z >> 4u, g.h.y, 2u), xg.v[6])
        + dot(six_masked(g.q.w >> 4u, g.h.y, 3u), xg.v[7]);
    return g.sc.x * (lo - 32.0 * xg.lo) + g.sc.y * (hi - 32.0 * (xg.sum - xg.lo));
#endif
}

#ifndef SUBGROUPS
var<workgroup> red: array<f32, WG>; // NORM: the lanes' sums of x²
var<workgroup> part: array<f32, WG * LG_ROWS>;
#endif

#ifdef SUBGROUPS
#include "lanes"
#endif

// Output row r of this lane group.
fn row_of(base: u32, r: u32) -> u32 {
#ifdef GATE_UP
    if r >= LG_ROWS / 2u {
        return p.n / 2u + base + r - LG_ROWS / 2u;
    }
#endif
#ifdef ROPE
    let pi = base + r % (LG_ROWS / 2u);
    return (pi / HALF) * (2u * HALF) + pi % HALF + select(0u, HALF, r >= LG_ROWS / 2u);
#else
    return base + r;
#endif
}

// Whether row r of the lane group at `base` exists.
fn in_range(base: u32, r: u32, valid: u32) -> bool {
#ifdef PAIRS
    return base + r % (LG_ROWS / 2u) < valid;
#else
    return base + r < valid;
#endif
}

#ifdef GV_LANES
// x over 16-byte word o of a weight row (values 8o .. 8o + 8; zero past k), times the
// RMSNorm weight with NORM, and the sum of the unscaled squares.
struct XWord {
    a: vec4<f32>,
    b: vec4<f32>,
    sq: f32,
}

fn x_word(o: u32) -> XWord {
    var xw: XWord;
    if 2u * o < p.k / 4u {
        xw.a = x_at(2u * o);
#ifdef NORM
        xw.sq = dot(xw.a, xw.a);
        xw.a *= g_at(2u * o);
#endif
    }
    if 2u * o + 1u < p.k / 4u {
        xw.b = x_at(2u * o + 1u);
#ifdef NORM
        xw.sq += dot(xw.b, xw.b);
        xw.b *= g_at(2u * o + 1u);
#endif
    }
    return xw;
}

fn word_dot(q: vec4<u32>, xw: XWord) -> f32 {
    return dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), xw.a)
        + dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), xw.b);
}

// x_group for the quant formats' blocks on GPUs: the 8 vec4s loaded, scaled and stored at
// constant indices (x_group's loop would index the array at run time, which GPU compilers
// keep in local memory). k is whole blocks: no guard.
fn x_block(gi: u32) -> XGroup {
    var xg: XGroup;
    let c = gi * 8u;
    var v0 = x_at(c);
    var v1 = x_at(c + 1u);
    var v2 = x_at(c + 2u);
    var v3 = x_at(c + 3u);
    var v4 = x_at(c + 4u);
    var v5 = x_at(c + 5u);
    var v6 = x_at(c + 6u);
    var v7 = x_at(c + 7u);
#ifdef NORM
    xg.sq = dot(v0, v0) + dot(v1, v1) + dot(v2, v2) + dot(v3, v3) + dot(v4, v4)
        + dot(v5, v5) + dot(v6, v6) + dot(v7, v7);
    v0 *= g_at(c);
    v1 *= g_at(c + 1u);
    v2 *= g_at(c + 2u);
    v3 *= g_at(c + 3u);
    v4 *= g_at(c + 4u);
    v5 *= g_at(c + 5u);
    v6 *= g_at(c + 6u);
    v7 *= g_at(c + 7u);
#endif
    xg.lo = dot((v0 + v1) + (v2 + v3), vec4<f32>(1.0));
    xg.sum = xg.lo + dot((v4 + v5) + (v6 + v7), vec4<f32>(1.0));
    // nibble_dot's masked nibbles come out times 256^j
    let nib = X_SCALE;
    xg.v[0] = v0 * nib;
    xg.v[1] = v1 * nib;
    xg.v[2] = v2 * nib;
    xg.v[3] = v3 * nib;
    xg.v[4] = v4 * nib;
    xg.v[5] = v5 * nib;
    xg.v[6] = v6 * nib;
    xg.v[7] = v7 * nib;
    return xg;
}

// Block gi of the LG_ROWS rows `rows`, each times x over it (as words_dot).
fn blocks_dot(rows: vec4<u32>, gi: u32, xg: XGroup) -> vec4<f32> {
    var d = vec4<f32>(0.0);
    d.x = group_dot(rows.x, gi, xg);
    if LG_ROWS > 1u {
        d.y = group_dot(rows.y, gi, xg);
    }
    if LG_ROWS > 2u {
        d.z = group_dot(rows.z, gi, xg);
    }
    if LG_ROWS > 3u {
        d.w = group_dot(rows.w, gi, xg);
    }
    return d;
}

// Word o of the LG_ROWS rows at word offsets roff, each times x: every load issued before
// any sum needs it (LG_ROWS is a constant, so the unused rows fold away).
fn words_dot(roff: vec4<u32>, o: u32, xw: XWord) -> vec4<f32> {
    var d = vec4<f32>(0.0);
    d.x = word_dot(w_word(roff.x + o), xw);
    if LG_ROWS > 1u {
        d.y = word_dot(w_word(roff.y + o), xw);
    }
    if LG_ROWS > 2u {
        d.z = word_dot(w_word(roff.z + o), xw);
    }
    if LG_ROWS > 3u {
        d.w = word_dot(w_word(roff.w + o), xw);
    }
    return d;
}
#endif

@compute @workgroup_size(64)
fn gemv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = lid % GL;
    let lg = linear_wg(wid, nwg) * (WG / GL) + lid / GL;
#ifdef PAIRS
    let base = lg * (LG_ROWS / 2u);
    let valid = p.n / 2u;
#else
    let base = lg * LG_ROWS;
    let valid = p.n;
#endif
#ifdef GV_LANES
    // GPUs (LG_ROWS <= 4): the lanes take 16-byte f16 words (two a round) or quant
    // blocks lane, lane + GV_LANES, ... of the rows, so that a lane group's loads are
    // contiguous, and keep x and the row sums in registers. A vec4, not an array: GPU
    // compilers keep loop-indexed arrays in local memory (matmul.wgsl's gemm ran 50x slower
    // that way on an H100). Rows past the matrix read row 0 and are never stored.
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    var rows = vec4<u32>(0u);
    for (var r = 0u; r < LG_ROWS; r++) {
        if in_range(base, r, valid) {
            rows[r] = row_of(base, r);
        }
    }
#ifdef WF16
    let roff = rows * p.row_vec4;
    // two words a round: the second word's loads issue before the first's sums (on an H100
    // 4096 x 4096 took 13.2 us against 14.5 with one; four measured level with two)
    for (var o = lane; o < p.row_vec4; o += 2u * GL) {
        let xa = x_word(o);
        ss += xa.sq;
        acc += words_dot(roff, o, xa);
        let o2 = o + GL;
        let xb = x_word(o2); // zero past the row
        ss += xb.sq;
        acc += words_dot(roff, min(o2, p.row_vec4 - 1u), xb);
    }
#else
    // the quant formats: the lanes take 32-value blocks lane, lane + GV_LANES, ... (k is
    // whole blocks)
    for (var gi = lane; gi < p.k / 32u; gi += GL) {
        let xg = x_block(gi);
        ss += xg.sq;
        acc += blocks_dot(rows, gi, xg);
    }
#endif
#else
    var acc: array<f32, LG_ROWS>;
    var ss = 0.0; // NORM: this lane's part of the sum of x²
    let groups = (p.k + 31u) / 32u;
#ifdef TAIL
    let rounds = groups - TAIL; // whole rounds of 8 groups
#else
    let rounds = groups;
#endif
    for (var gi = lane; gi < rounds; gi += LANES) {
        let xg = x_group(0u, gi);
        ss += xg.sq;
        for (var r = 0u; r < LG_ROWS; r++) {
            let row = row_of(base, r);
            if in_range(base, r, valid) {
                acc[r] += group_dot(row, gi, xg);
            }
        }
    }
#ifdef TAIL
    // The last TAIL groups (TAIL divides 8): lane team t = lane % TAIL takes group rounds + t,
    // and its TEAM = 8 / TAIL lanes share the rows (lane j = lane / TAIL takes rows j,
    // j + TEAM, ...), so that no lane idles while two walk one more round. The lane sums
    // below add the teams' rows as they add the rounds.
    {
        let gi = rounds + lane % TAIL;
        let j = lane / TAIL; // this lane's place in its team
        let xg = x_group(0u, gi);
        ss += select(0.0, xg.sq, j == 0u); // one lane per group counts its squares
        for (var s = 0u; s < (LG_ROWS + TEAM - 1u) / TEAM; s++) {
            let r = s * TEAM + j;
            if r < LG_ROWS && in_range(base, r, valid) {
                acc[r] += group_dot(row_of(base, r), gi, xg);
            }
        }
    }
#endif
#endif

#ifdef SUBGROUPS
    for (var r = 0u; r < LG_ROWS; r++) {
        acc[r] = lane_sum_n(acc[r], GL);
    }
    ss = lane_sum_n(ss, GL);
#else
    for (var r = 0u; r < LG_ROWS; r++) {
        part[lid * LG_ROWS + r] = acc[r];
    }
    red[lid] = ss;
    workgroupBarrier();
    if lane == 0u {
        for (var r = 0u; r < LG_ROWS; r++) {
            var t = 0.0;
            for (var i = 0u; i < GL; i++) {
                t += part[(lid + i) * LG_ROWS + r];
            }
            acc[r] = t;
        }
        var t_ss = 0.0;
        for (var i = 0u; i < GL; i++) {
            t_ss += red[lid + i];
        }
        ss = t_ss;
    }
#endif
    if lane != 0u {
        return;
    }
#ifdef NORM
    // RMSNorm is linear in x: the row sums over g * x take 1 / rms at the end, from the
    // squares summed on the way (no pass over x of its own)
    let scale = inverseSqrt(ss / f32(p.k) + p.eps);
    for (var r = 0u; r < LG_ROWS; r++) {
        acc[r] *= scale;
    }
#endif
#ifdef GATE_UP
    for (var r = 0u; r < LG_ROWS / 2u; r++) {
        if base + r < valid {
            y[p.out_col + base + r] = silu(acc[r]) * acc[r + LG_ROWS / 2u];
        }
    }
#endif
#ifdef ROPE
#ifdef KV_TEX
    // whole texels: LG_ROWS / 2 and valid are multiples of 4
    for (var r = 0u; r < LG_ROWS / 2u; r += 4u) {
        if base + r < valid {
            let h = LG_ROWS / 2u;
            rope_store4(p.head0 * HALF + base + r,
                        vec4<f32>(acc[r], acc[r + 1u], acc[r + 2u], acc[r + 3u]),
                        vec4<f32>(acc[h + r], acc[h + r + 1u], acc[h + r + 2u], acc[h + r + 3u]));
        }
    }
#else
    for (var r = 0u; r < LG_ROWS / 2u; r++) {
        if base + r < valid {
            rope_store(p.head0 * HALF + base + r, acc[r], acc[r + LG_ROWS / 2u]);
        }
    }
#endif
#endif
#ifndef PAIRS
#ifdef YTEX
    // y's texture copy too: whole texels (LG_ROWS, valid and out_col multiples of 4)
    for (var r = 0u; r < LG_ROWS; r += 4u) {
        if base + r < valid {
            var t: vec4<f32>;
            for (var j = 0u; j < 4u; j++) {
                t[j] = store(0u, base + r + j, acc[r + j]);
            }
            textureStore(y_tex, vec2<u32>((p.out_col + base + r) / 4u, 0u), t);
        }
    }
#else
    for (var r = 0u; r < LG_ROWS; r++) {
        if base + r < valid {
            store(0u, base + r, acc[r]);
        }
    }
#endif
#endif
}

#ifdef TOKENS
#ifndef SUBGROUPS
var<workgroup> part_t: array<f32, WG * TOKENS>;
#endif

// gemm_lanes' lane step, a unit: for f16 rows one 16-byte word of weights (8 values), so that
// short rows (the encoders' k = 64) still fill the 8 lanes; for the quant formats a block.
#ifdef WF16
const GV4: u32 = 2u;
#else
const GV4: u32 = 8u;
#endif

// x over one unit (zero past k, times g with NORM), its sum, and the sum of the unscaled
// squares (NORM).
struct XUnit {
    v: array<vec4<f32>, GV4>,
    sum: f32,
    sq: f32,
}

// One weight row over one unit, decoded once for all TOKENS rows of x: W = d * v + m.
struct WUnit {
    v: array<vec4<f32>, GV4>,
    d: f32,
    m: f32,
}

// The RMSNorm weight over one unit, loaded once for the TOKENS rows (ones without NORM).
fn g_unit(ui: u32) -> array<vec4<f32>, GV4> {
    var gu: array<vec4<f32>, GV4>;
    for (var j = 0u; j < GV4; j++) {
        gu[j] = vec4<f32>(1.0);
#ifdef NORM
        let c = ui * GV4 + j;
        if c < p.k / 4u {
            gu[j] = g_at(c);
        }
#endif
    }
    return gu;
}

fn x_unit(row0: u32, ui: u32, gu: array<vec4<f32>, GV4>) -> XUnit {
    var xu: XUnit;
    var tot = vec4<f32>(0.0);
    var sq = vec4<f32>(0.0);
    for (var j = 0u; j < GV4; j++) {
        let c = ui * GV4 + j;
        var v = vec4<f32>(0.0);
        if c < p.k / 4u {
            v = x_at(row0 + c);
        }
#ifdef NORM
        sq += v * v;
        v *= gu[j];
#endif
        xu.v[j] = v;
        tot += v;
    }
    xu.sum = dot(tot, vec4<f32>(1.0));
    xu.sq = dot(sq, vec4<f32>(1.0));
    return xu;
}

// The 32 nibbles of a Q4_0 / Q4_1 block's (or Q4_K sub-block's) 16 quant bytes, in value
// order (low nibbles are values 0..15, high nibbles 16..31).
fn block_nibbles(q: vec4<u32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(nib_lo(q.x), nib_lo(q.y), nib_lo(q.z), nib_lo(q.w),
                               nib_hi(q.x), nib_hi(q.y), nib_hi(q.z), nib_hi(q.w));
}

// A Q5 group's 32 quants in value order: nibbles q with the fifth bits of highs word h.
fn block_fives(q: vec4<u32>, h: u32) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(five(q.x, h), five(q.y, h >> 1u), five(q.z, h >> 2u),
                               five(q.w, h >> 3u), five(q.x >> 4u, h >> 4u),
                               five(q.y >> 4u, h >> 5u), five(q.z >> 4u, h >> 6u),
                               five(q.w >> 4u, h >> 7u));
}

// One 16-byte word of f16 weights as a unit.
fn f16_unit(q: vec4<u32>) -> WUnit {
    var wu: WUnit;
    wu.d = 1.0;
    wu.v[0] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    wu.v[1] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    return wu;
}

// One weight row over unit ui: every format sets d (f16 through f16_unit), all but Q8_0 and
// Q6_K m.
fn w_unit(row: u32, ui: u32) -> WUnit {
    var wu: WUnit;
#ifdef WF16
    wu = f16_unit(w_word(row * p.row_vec4 + ui));
#endif
#ifdef Q8_0
    let i = row * (p.k / 32u) + ui;
    let a = w_word(2u * i);
    let b = w_word(2u * i + 1u);
    wu.d = unpack2x16float(scale_word(i >> 1u, 8u))[i & 1u];
    wu.v = array<vec4<f32>, GV4>(i8x4(a.x), i8x4(a.y), i8x4(a.z), i8x4(a.w),
                                 i8x4(b.x), i8x4(b.y), i8x4(b.z), i8x4(b.w));
#endif
#ifdef Q4_0
    let i = row * (p.k / 32u) + ui;
    let q = w_word(i);
    wu.d = unpack2x16float(scale_word(i >> 1u, 4u))[i & 1u];
    wu.m = -8.0 * wu.d;
    wu.v = block_nibbles(q);
#endif
#ifdef Q4_1
    let i = row * (p.k / 32u) + ui;
    let q = w_word(i);
    let dm = unpack2x16float(scale_word(i, 4u));
    wu.d = dm.x;
    wu.m = dm.y;
    wu.v = block_nibbles(q);
#endif
#ifdef Q4_K
    let i = row * (p.k / 32u) + ui;
    let q = w_word(i);
    let dm = q4k_dm(q4k_header(i), ui & 7u);
    wu.d = dm.x;
    wu.m = dm.y;
    wu.v = block_nibbles(q);
#endif
#ifdef Q5_0
    let i = row * (p.k / 32u) + ui;
    wu.d = unpack2x16float(scale_word(p.n * (p.k / 32u) + (i >> 1u), 4u))[i & 1u];
    wu.m = -16.0 * wu.d;
    wu.v = block_fives(w_word(i), scale_word(i, 4u));
#endif
#ifdef Q5_1
    let i = row * (p.k / 32u) + ui;
    let dm = unpack2x16float(scale_word(p.n * (p.k / 32u) + i, 4u));
    wu.d = dm.x;
    wu.m = dm.y;
    wu.v = block_fives(w_word(i), scale_word(i, 4u));
#endif
#ifdef Q5_K
    let i = row * (p.k / 32u) + ui;
    let dm = q4k_dm(q4k_header(i), ui & 7u);
    wu.d = dm.x;
    wu.m = dm.y;
    wu.v = block_fives(w_word(i), scale_word(i, 4u));
#endif
#ifdef IQ4_NL
    let i = row * (p.k / 32u) + ui;
    let q = w_word(i);
    wu.d = unpack2x16float(scale_word(i >> 1u, 4u))[i & 1u];
    wu.v = array<vec4<f32>, GV4>(iq4nl(q.x, 0u), iq4nl(q.y, 0u), iq4nl(q.z, 0u), iq4nl(q.w, 0u),
                                 iq4nl(q.x, 4u), iq4nl(q.y, 4u), iq4nl(q.z, 4u), iq4nl(q.w, 4u));
#endif
#ifdef Q3_K
    // the two scales folded into the values: d 1, m 0
    let g = q3k_group(row * (p.k / 32u) + ui);
    wu.d = 1.0;
    wu.v = array<vec4<f32>, GV4>(
        (three(g.lo.x, 0u, g.h) - 4.0) * g.sc.x, (three(g.lo.x, 1u, g.h >> 1u) - 4.0) * g.sc.x,
        (three(g.lo.x, 2u, g.h >> 2u) - 4.0) * g.sc.x, (three(g.lo.x, 3u, g.h >> 3u) - 4.0) * g.sc.x,
        (three(g.lo.y, 0u, g.h >> 4u) - 4.0) * g.sc.y, (three(g.lo.y, 1u, g.h >> 5u) - 4.0) * g.sc.y,
        (three(g.lo.y, 2u, g.h >> 6u) - 4.0) * g.sc.y, (three(g.lo.y, 3u, g.h >> 7u) - 4.0) * g.sc.y);
#endif
#ifdef Q6_K
    // the two scales folded into the values: d 1, m 0
    let g = q6k_group(row * (p.k / 32u) + ui);
    wu.d = 1.0;
    let lo = g.q;
    let hi = g.q >> vec4<u32>(4u);
    wu.v = array<vec4<f32>, GV4>(
        (six(lo.x, g.h.x, 0u) - 32.0) * g.sc.x, (six(lo.y, g.h.x, 1u) - 32.0) * g.sc.x,
        (six(lo.z, g.h.x, 2u) - 32.0) * g.sc.x, (six(lo.w, g.h.x, 3u) - 32.0) * g.sc.x,
        (six(hi.x, g.h.y, 0u) - 32.0) * g.sc.y, (six(hi.y, g.h.y, 1u) - 32.0) * g.sc.y,
        (six(hi.z, g.h.y, 2u) - 32.0) * g.sc.y, (six(hi.w, g.h.y, 3u) - 32.0) * g.sc.y);
#endif
    return wu;
}

fn unit_dot(wu: WUnit, xu: XUnit) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < GV4; j++) {
        s += dot(wu.v[j], xu.v[j]);
    }
    return wu.d * s + wu.m * xu.sum;
}

// Each token's value summed over the lane group; lane 0 gets the sums (every lane with
// SUBGROUPS). Called from uniform control flow: it may hold workgroup barriers.
fn token_sums(lid: u32, v: array<f32, TOKENS>) -> array<f32, TOKENS> {
    var s = v;
#ifdef SUBGROUPS
    for (var t = 0u; t < TOKENS; t++) {
        s[t] = lane_sum(v[t]);
    }
#else
    for (var t = 0u; t < TOKENS; t++) {
        part_t[lid * TOKENS + t] = v[t];
    }
    workgroupBarrier();
    if lid % LANES == 0u {
        for (var t = 0u; t < TOKENS; t++) {
            var a = 0.0;
            for (var i = 0u; i < LANES; i++) {
                a += part_t[(lid + i) * TOKENS + t];
            }
            s[t] = a;
        }
    }
    workgroupBarrier();
#endif
    return s;
}

@compute @workgroup_size(64)
fn gemm_lanes(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lane = lid % LANES;
    let lg = wid.x * (WG / LANES) + lid / LANES;
#ifdef GATE_UP
    let base = lg * (LG_ROWS / 2u);
    let valid = p.n / 2u;
#else
    let base = lg * LG_ROWS;
    let valid = p.n;
#endif
    let t0 = wid.y * TOKENS;
    var acc: array<array<f32, TOKENS>, LG_ROWS>;
    var sq: array<f32, TOKENS>; // NORM: each row's sum of squares
#ifdef WF16
    let units = p.row_vec4;
#else
    let units = p.k / 32u;
#endif
    for (var ui = lane; ui < units; ui += LANES) {
        // x rows past m repeat row m - 1 and are not stored
        let gu = g_unit(ui);
        var xs: array<XUnit, TOKENS>;
        for (var t = 0u; t < TOKENS; t++) {
            xs[t] = x_unit(x_row(min(t0 + t, p.m - 1u)), ui, gu);
#ifdef NORM
            sq[t] += xs[t].sq;
#endif
        }
        for (var r = 0u; r < LG_ROWS; r++) {
            if in_range(base, r, valid) {
                let wu = w_unit(row_of(base, r), ui);
                for (var t = 0u; t < TOKENS; t++) {
                    acc[r][t] += unit_dot(wu, xs[t]);
                }
            }
        }
    }
    for (var r = 0u; r < LG_ROWS; r++) {
        acc[r] = token_sums(lid, acc[r]);
    }
#ifdef NORM
    // RMSNorm is linear in g * x: each row's sums take its 1 / rms at the end
    let ss = token_sums(lid, sq);
    for (var t = 0u; t < TOKENS; t++) {
        let scale = inverseSqrt(ss[t] / f32(p.k) + p.eps);
        for (var r = 0u; r < LG_ROWS; r++) {
            acc[r][t] *= scale;
        }
    }
#endif
    if lane != 0u {
        return;
    }
    for (var t = 0u; t < TOKENS; t++) {
        if t0 + t >= p.m {
            break;
        }
#ifdef GATE_UP
        for (var r = 0u; r < LG_ROWS / 2u; r++) {
            if base + r < valid {
                store(t0 + t, base + r, silu(acc[r][t]) * acc[r + LG_ROWS / 2u][t]);
            }
        }
#else
#ifdef YTEX
        // y's texture copy too, row t0 + t: whole texels (LG_ROWS, valid and out_col
        // multiples of 4)
        for (var r = 0u; r < LG_ROWS; r += 4u) {
            if base + r < valid {
                var v: vec4<f32>;
                for (var j = 0u; j < 4u; j++) {
                    v[j] = store(t0 + t, base + r + j, acc[r + j][t]);
                }
                textureStore(y_tex, vec2<u32>((p.out_col + base + r) / 4u, t0 + t), v);
            }
        }
#else
        for (var r = 0u; r < LG_ROWS; r++) {
            if base + r < valid {
                store(t0 + t, base + r, acc[r][t]);
            }
        }
#endif
#endif
    }
}
// gemm_tokens: the same units with the roles of lanes turned round. Every invocation owns TPI
// input rows (tokens) and walks all of k itself; the workgroup's tokens share LG_ROWS weight
// rows, so each weight unit is read at an address uniform over the workgroup and no lane
// sums are needed. lavapipe still gathers such a load lane by lane, so each weight unit it
// loads and decodes serves the invocation's TPI tokens, and with SHARED_W (LG_ROWS <= 8)
// lane l of every 8 fetches the word of row l alone and each lane takes row r's word from
// lane r by a subgroup shuffle: one fetch of 8 different words where there were 8 fetches
// of one word (lavapipe, 2 cores: the tiny fixtures' encoder products 20-23% faster). Each
// token's sums run in the same order whatever TPI is and with or without SHARED_W.
// Geometry in the header.
@compute @workgroup_size(TOKENS_WG)
#ifdef SHARED_W
fn gemm_tokens(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(subgroup_invocation_id) sid: u32) {
#else
fn gemm_tokens(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
#endif
#ifdef PAIRS
    let base = wid.x * (LG_ROWS / 2u);
    let valid = p.n / 2u;
#else
    let base = wid.x * LG_ROWS;
    let valid = p.n;
#endif
    let t0 = (wid.y * TOKENS_WG + lid) * TPI;
    // rows past m repeat row m - 1 and are not stored
    var row0: array<u32, TPI>;
    for (var j = 0u; j < TPI; j++) {
        row0[j] = x_row(min(t0 + j, p.m - 1u));
    }
#ifdef WF16
    let units = p.row_vec4;
#else
    let units = p.k / 32u;
#endif
    var acc: array<array<f32, TPI>, LG_ROWS>;
    var sq: array<f32, TPI>;
    for (var ui = 0u; ui < units; ui++) {
        let gu = g_unit(ui);
        var xu: array<XUnit, TPI>;
        for (var j = 0u; j < TPI; j++) {
            xu[j] = x_unit(row0[j], ui, gu);
            sq[j] += xu[j].sq;
        }
#ifdef SHARED_W
        // lane l of each 8 fetches row l's word, and every lane takes row r's from lane r
        let lane = sid % 8u;
        let mine = w_word(row_of(base, select(0u, lane, in_range(base, lane, valid))) * p.row_vec4 + ui);
#endif
        for (var r = 0u; r < LG_ROWS; r++) {
#ifdef SHARED_W
            let q = subgroupShuffle(mine, sid - lane + r);
#endif
            if in_range(base, r, valid) {
                // one weight load and decode for the TPI tokens
#ifdef SHARED_W
                let wu = f16_unit(q);
#else
                let wu = w_unit(row_of(base, r), ui);
#endif
                for (var j = 0u; j < TPI; j++) {
                    acc[r][j] += unit_dot(wu, xu[j]);
                }
            }
        }
    }
    for (var j = 0u; j < TPI; j++) {
        var a: array<f32, LG_ROWS>;
        for (var r = 0u; r < LG_ROWS; r++) {
            a[r] = acc[r][j];
        }
        token_epilogue(t0 + j, base, valid, sq[j], a);
    }
}

// Token t's LG_ROWS sums from row `base` on: RMSNorm's scale (NORM), then SwiGLU (GATE_UP),
// RoPE with the cache writes (ROPE), or the plain store.
fn token_epilogue(t: u32, base: u32, valid: u32, sq: f32, sums: array<f32, LG_ROWS>) {
    if t >= p.m {
        return;
    }
    var acc = sums;
    var scale = 1.0;
#ifdef NORM
    // RMSNorm is linear in g * x: the row's 1 / rms scales its sums
    scale = inverseSqrt(sq / f32(p.k) + p.eps);
#endif
    for (var r = 0u; r < LG_ROWS; r++) {
        acc[r] *= scale;
    }
#ifdef GATE_UP
    for (var r = 0u; r < LG_ROWS / 2u; r++) {
        if base + r < valid {
            store(t, base + r, silu(acc[r]) * acc[r + LG_ROWS / 2u]);
        }
    }
#endif
#ifdef ROPE
    rope_token(t, base, valid, acc);
#endif
#ifndef PAIRS
#ifdef YTEX
    // y's texture copy too, row t: whole texels (LG_ROWS, valid and out_col multiples of 4)
    for (var r = 0u; r < LG_ROWS; r += 4u) {
        if base + r < valid {
            var v: vec4<f32>;
            for (var j = 0u; j < 4u; j++) {
                v[j] = store(t, base + r + j, acc[r + j]);
            }
            textureStore(y_tex, vec2<u32>((p.out_col + base + r) / 4u, t), v);
        }
    }
#else
    for (var r = 0u; r < LG_ROWS; r++) {
        if base + r < valid {
            store(t, base + r, acc[r]);
        }
    }
#endif
#endif
}

#ifdef ROPE
#ifndef KV_TEX
// gemm_tokens' ROPE epilogue (a prefill's stacked q|k|v; rope.wgsl's rope_kv for its rows):
// the workgroup's LG_ROWS / 2 rotation pairs from pair `base` of token t, rotated at
// positions[t], into q row t (y) and cache row step.kv_offset + t. KV_TEX_COPY: keys and
// values also into that row of the prefill attention's textures (LG_ROWS / 2 and HALF
// multiples of 4, so that 4 pairs from `base` on are two whole texels of one head).
fn rope_token(t: u32, base: u32, valid: u32, acc: array<f32, LG_ROWS>) {
    let H = LG_ROWS / 2u;
    let pos = positions[t];
    let l = QkvLayout(p.heads, p.kv_heads, 2u * HALF, t * p.out_stride,
                      (step.kv_offset + t) * p.kv_stride);
    for (var r = 0u; r < H; r++) {
        if base + r < valid {
            rope_kv_store(l, (base + r) / HALF, (base + r) % HALF, pos, acc[r], acc[H + r]);
        }
    }
#ifdef KV_TEX_COPY
    for (var r = 0u; r < H; r += 4u) {
        let pi = base + r;
        let hh = pi / HALF;
        if pi < valid && hh >= p.heads {
            let x1 = vec4<f32>(acc[r], acc[r + 1u], acc[r + 2u], acc[r + 3u]);
            let x2 = vec4<f32>(acc[H + r], acc[H + r + 1u], acc[H + r + 2u], acc[H + r + 3u]);
            let v = rope_pairs4(2u * HALF, pi % HALF, pos, x1, x2, hh < p.heads + p.kv_heads);
            store_kv_texels(hh - p.heads, pi % HALF, 2u * HALF, step.kv_offset + t, v[0], v[1]);
        }
    }
#endif
}
#endif
#endif
#endif
