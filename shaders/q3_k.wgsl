// q3_k.wgsl (included by gemv.wgsl and matmul_quant.wgsl): Q3_K's scales in the GPU layout
// (gpu::tensor::repack_q3_k). A super-block is 8 sub-blocks of 32 values, each with two
// 6-bit scales (values 0..16 and 16..32), kept as the file's 12 packed bytes in three words
// s: scale i's low 4 bits are bits 4(i / 8) .. of byte i % 8, its high 2 bits bits
// 2(i / 4) .. of byte 8 + i % 4. Value l of sub-block j is d * (scale - 32) * (q_l - 4)
// for its 3-bit q_l.

// Scale i (0..16) less 32.
fn q3k_scale(s: vec3<u32>, i: u32) -> f32 {
    let b = i & 7u;
    let lo = (select(s.x, s.y, b >= 4u) >> (8u * (b & 3u) + 4u * (i >> 3u))) & 15u;
    let hi = (s.z >> (8u * (i & 3u) + 2u * (i >> 2u))) & 3u;
    return f32(lo | (hi << 4u)) - 32.0;
}

// Sub-block j's two scales less 32.
fn q3k_scales(s: vec3<u32>, j: u32) -> vec2<f32> {
    return vec2<f32>(q3k_scale(s, 2u * j), q3k_scale(s, 2u * j + 1u));
}
