// common.wgsl: included first by every kernel file.
//
// Weights are f16, rows padded to a multiple of 4 values, read 4 at a time as `W4`:
//   F16 defined:  vec4<f16>, native half loads (needs the shader-f16 feature).
//   otherwise:    vec2<u32>, two packed halves per word, unpacked with unpack2x16float.
// Activations are always f32.
#ifdef F16
enable f16;
alias W4 = vec4<f16>;
fn w4(v: W4) -> vec4<f32> { return vec4<f32>(v); }
#else
alias W4 = vec2<u32>;
fn w4(v: W4) -> vec4<f32> { return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)); }
#endif

// Linear index of a workgroup in a grid folded into 2-D (see gpu::fold_workgroups).
fn linear_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Where word i of a weight chunk held in a texture lies (weight_texture.wgsl): 512 texels
// (8 KiB) per texture row, gpu::TEX_ROW_TEXELS.
const TEX_ROW_SHIFT: u32 = 9u;
fn weight_texel_at(i: u32) -> vec2<u32> {
    return vec2<u32>(i & ((1u << TEX_ROW_SHIFT) - 1u), i >> TEX_ROW_SHIFT);
}

// The per-pass values shared by several kernels (gpu::Step).
struct Step {
    kv_offset: u32,
    kv_len: u32,
    rand: f32,
    pad: u32,
}
