// weight_texture.wgsl: a weight chunk held in a 2-D rgba32uint texture instead of a storage
// buffer (the WTEX variant of every kernel that reads weights; gpu::WeightStore).
// The chunk's 16-byte words lie in row-major order, TEX_ROW_TEXELS words per texture row:
// word i is texel (i % TEX_ROW_TEXELS, i / TEX_ROW_TEXELS). Why: CPU drivers (lavapipe)
// load image texels with vector gathers but storage buffers lane by lane, so the same words
// read 2-5x faster from a texture there (examples/load_probe.rs measures the ways). It is
// bound as a read-only storage texture, not a sampled one: lavapipe's sampled textureLoad
// takes its mip level per lane and gathers each lane's level size and offset, an image
// load has no level (1.5-2x the sampled reads in load_probe).
//
// Bindings: 2 wt texture_storage_2d<rgba32uint, read> (the chunk). The including file reads
//           it through weight_texel (16-byte words) or weight_texel_w4 (f16 quads), under an
//           accessor named after its element type. (common.wgsl's weight_texel_at places
//           a word; layer_tail.wgsl binds three chunks with it.)

@group(0) @binding(2) var wt: texture_storage_2d<rgba32uint, read>;

// The chunk's 16-byte word i.
fn weight_texel(i: u32) -> vec4<u32> {
    return textureLoad(wt, weight_texel_at(i));
}

// W4 element i of f16 weights (8 bytes: 4 halves, see common.wgsl) as f32: half a texel.
fn weight_texel_w4(i: u32) -> vec4<f32> {
    let t = weight_texel(i >> 1u);
    let h = select(t.xy, t.zw, (i & 1u) == 1u);
    return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
}
