// kv_texels.wgsl: 4 values of a key or value head as whole texels of a KV row kept in
// rgba32float textures (attention.wgsl's KV_TEX layout: values c .. c + 3 of the row at
// texel x = c / 4). Shared by rope.wgsl's rope_kv (KV_TEX_COPY) and gemv.wgsl's RoPE
// epilogues (decode KV_TEX, prefill KV_TEX_COPY). Needs the includer's `p.kv_heads` and
// write textures `k_tex` and `v_tex`.

// Values i .. i + 3 (a) and i + hd/2 .. (b) of head kv of the q|k|v row's 2 kv_heads key
// and value heads (kv < kv_heads: a key head) into texture row `row`; i a multiple of 4.
fn store_kv_texels(kv: u32, i: u32, hd: u32, row: u32, a: vec4<f32>, b: vec4<f32>) {
    let at = (kv % p.kv_heads) * hd + i;
    let lo = vec2<u32>(at / 4u, row);
    let hi = vec2<u32>((at + hd / 2u) / 4u, row);
    if kv < p.kv_heads {
        textureStore(k_tex, lo, a);
        textureStore(k_tex, hi, b);
    } else {
        textureStore(v_tex, lo, a);
        textureStore(v_tex, hi, b);
    }
}
