// kv_texture.wgsl: K and V rows copied from their f32 buffers into rgba32float textures for
// attention.wgsl's KV_TEX variants: the prefill attention, which re-reads every K and V row
// once per query tile, and on CPU devices the decode attention over a KV cache kept in
// textures. CPU drivers (lavapipe) load storage buffers lane by lane but fetch texels for a
// whole SIMD row at once (see gpu::WeightStore), so one pass here saves many there.
//
// Bindings: 0 params, 1 k f32 [rows, stride], 2 v f32 [rows, stride],
//           3 k_out, 4 v_out: texture_storage_2d<rgba32float, write> of width4 x >= rows,
//           5 step (STEP_ROW only: uniform Step).
// One invocation per texel (key j, group c of 4 values): out(c, j) = in[j * stride + 4c ..].
// STEP_ROW (decode, rows = 1): k and v hold the one row this step's q|k|v wrote, and it goes
// to texture row step.kv_offset, so that the textures hold the cache for the decode
// attention's KV_TEX variant.
// Dispatch fold(ceil(rows * width4 / 64)).
// K_ONLY: one tensor, k into k_out at texture rows row0 .. (ops::attention::rows_to_texels:
// a decode step's embedded token into its residual stream's texture, see
// gpu::Tensor::texels; the RMSNorm weights into the decode GEMV's texture of them).
#include "common"

struct Params {
    rows: u32,
    stride: u32,
    width4: u32,
    row0: u32, // the first texture row written (not with STEP_ROW)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var k_out: texture_storage_2d<rgba32float, write>;
@group(0) @binding(4) var v_out: texture_storage_2d<rgba32float, write>;
#ifdef STEP_ROW
@group(0) @binding(5) var<uniform> step: Step;
#endif

@compute @workgroup_size(64)
fn kv_texture(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_wg(wid, nwg) * 64u + lid;
    if i >= p.rows * p.width4 {
        return;
    }
    let j = i / p.width4;
    let c = i % p.width4;
    let o = j * p.stride + 4u * c;
#ifdef STEP_ROW
    let at = vec2<u32>(c, step.kv_offset + j);
#else
    let at = vec2<u32>(c, p.row0 + j);
#endif
    textureStore(k_out, at, vec4<f32>(k[o], k[o + 1u], k[o + 2u], k[o + 3u]));
#ifndef K_ONLY
    textureStore(v_out, at, vec4<f32>(v[o], v[o + 1u], v[o + 2u], v[o + 3u]));
#endif
}
