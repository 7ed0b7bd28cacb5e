// attention_params.wgsl: the parameters (binding 0) and the query (binding 1) that
// attention.wgsl's and flash_attention.wgsl's kernels share; ops::attention::Params.
struct Params {
    m: u32,
    kv_len: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    o_stride: u32,
    causal: u32,
    q_pos0: u32,
    ctx: u32,
    scale: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
