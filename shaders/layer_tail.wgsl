// layer_tail.wgsl: the second half of a Llama decoder layer over a prefill's rows, one
// invocation per token, in one dispatch where it would take three:
//     x += o_proj(attn)                              (residual)
//     h  = RMSNorm(x) * g                            (post-attention norm)
//     x += down(silu(gate · h) * (up · h))           (SwiGLU MLP, residual)
// For decoders narrow enough that a token's rows live in registers (ops::layer_tail::fits),
// on CPU devices, where a dispatch costs tens of microseconds of hand-off to the driver's
// threads and this work is a few thousand multiply-adds per token.
//
// Bindings: 0 params (uniform Params)
//           1 attn  vec4<f32> [m, A / 4], the attention's output rows
//           2 w_o   o_proj [D, A]       \  f16 rows of whole 16-byte words (8 values each),
//           3 w_gu  [gate; up] [2 I, D]  > each in a storage buffer, or in an rgba32uint
//           4 w_down down [D, I]        /   texture (weight_texture.wgsl's layout) with
//                                           WTEX_O, WTEX_GU, WTEX_DOWN
//           5 x     vec4<f32> [m, D / 4], the residual stream, read and written in place
//           6 g     vec4<f32> [D / 4], the post-attention RMSNorm weight
// Variants: WTEX_O, WTEX_GU, WTEX_DOWN. Values: D, A, I (multiples of 8), VMAX (the largest
//           of A / 4, D / 4 and I / 4), TOKENS_WG (the workgroup size).
// Arithmetic: each product sums its row word by word as gemv.wgsl's gemm_tokens does (the
//   two dot products of a word, then into the row's sum), and the norm scales the sums of
//   g * x, so the result is the three-dispatch path's (o_proj with ACCUMULATE, [gate; up]
//   with NORM and GATE_UP, down with ACCUMULATE).
// Dispatch: (ceil(m / TOKENS_WG), 1, 1); invocation t takes token t.
#include "common"
#include "activations"

struct Params {
    m: u32,
    eps: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> attn: array<vec4<f32>>;
#ifdef WTEX_O
@group(0) @binding(2) var w_o: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(2) var<storage, read> w_o: array<vec4<u32>>;
#endif
#ifdef WTEX_GU
@group(0) @binding(3) var w_gu: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(3) var<storage, read> w_gu: array<vec4<u32>>;
#endif
#ifdef WTEX_DOWN
@group(0) @binding(4) var w_down: texture_storage_2d<rgba32uint, read>;
#else
@group(0) @binding(4) var<storage, read> w_down: array<vec4<u32>>;
#endif
@group(0) @binding(5) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> g: array<vec4<f32>>;

const D4: u32 = D / 4u;
const A4: u32 = A / 4u;

// Word i of weight `which` (0 o_proj, 1 [gate; up], 2 down).
fn word(which: u32, i: u32) -> vec4<u32> {
    switch which {
        case 0u: {
#ifdef WTEX_O
            return textureLoad(w_o, weight_texel_at(i));
#else
            return w_o[i];
#endif
        }
        case 1u: {
#ifdef WTEX_GU
            return textureLoad(w_gu, weight_texel_at(i));
#else
            return w_gu[i];
#endif
        }
        default: {
#ifdef WTEX_DOWN
            return textureLoad(w_down, weight_texel_at(i));
#else
            return w_down[i];
#endif
        }
    }
}

// Row `row` of weight `which` (rows of `words` words) · v.
fn row_dot(which: u32, row: u32, words: u32, v: ptr<function, array<vec4<f32>, VMAX>>) -> f32 {
    var acc = 0.0;
    for (var u = 0u; u < words; u++) {
        let q = word(which, row * words + u);
        var s = 0.0;
        s += dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), (*v)[2u * u]);
        s += dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), (*v)[2u * u + 1u]);
        acc += s;
    }
    return acc;
}

@compute @workgroup_size(TOKENS_WG)
fn layer_tail_tokens(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if t >= p.m {
        return;
    }
    var xr: array<vec4<f32>, D4>;
    var v: array<vec4<f32>, VMAX>;
    for (var c = 0u; c < D4; c++) {
        xr[c] = x[t * D4 + c];
    }
    for (var c = 0u; c < A4; c++) {
        v[c] = attn[t * A4 + c];
    }
    // o_proj, added to the residual stream
    for (var j = 0u; j < D; j++) {
        xr[j / 4u][j % 4u] += row_dot(0u, j, A / 8u, &v);
    }
    // RMSNorm on load: v = g * x, the squares of x summed per word as gemm_tokens does, and
    // the row's 1 / rms scales the sums
    var sq = 0.0;
    for (var u = 0u; u < D / 8u; u++) {
        var s = vec4<f32>(0.0);
        for (var j = 2u * u; j < 2u * u + 2u; j++) {
            s += xr[j] * xr[j];
            v[j] = xr[j] * g[j];
        }
        sq += dot(s, vec4<f32>(1.0));
    }
    let scale = inverseSqrt(sq / f32(D) + p.eps);
    var act: array<vec4<f32>, VMAX>;
    for (var i = 0u; i < I; i++) {
        let gate = row_dot(1u, i, D / 8u, &v) * scale;
        let up = row_dot(1u, I + i, D / 8u, &v) * scale;
        act[i / 4u][i % 4u] = silu(gate) * up;
    }
    // down, added to the residual stream
    for (var j = 0u; j < D; j++) {
        xr[j / 4u][j % 4u] += row_dot(2u, j, I / 8u, &act);
    }
    for (var c = 0u; c < D4; c++) {
        x[t * D4 + c] = xr[c];
    }
}
