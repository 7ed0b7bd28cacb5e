// q4_k.wgsl (included by gemv.wgsl and matmul_quant.wgsl): Q4_K's super-block header in the
// GPU layout (gpu::tensor::repack). A super-block is 8 sub-blocks of 32 values; its quants
// are 8 words of 16 bytes among every sub-block's (Q4_1's nibble order), and its header is
// one 16-byte word after all of them: d and dmin (two f16 in .x), then the file's 12 bytes
// of packed 6-bit (scale, min) pairs in .yzw. Value l of sub-block j is
// d * scale_j * q_l - dmin * min_j.

// Byte b (0..12) of the packed scales in h.yzw.
fn q4k_byte(h: vec4<u32>, b: u32) -> u32 {
    let w = select(select(h.w, h.z, b < 8u), h.y, b < 4u);
    return (w >> (8u * (b & 3u))) & 0xffu;
}

// Sub-block j's (d * scale_j, -dmin * min_j): what its quants (0..15) multiply and what is
// added to each value, as Q4_1's d and m.
fn q4k_dm(h: vec4<u32>, j: u32) -> vec2<f32> {
    let dd = unpack2x16float(h.x);
    var sc: u32;
    var mn: u32;
    if j < 4u {
        sc = q4k_byte(h, j) & 63u;
        mn = q4k_byte(h, j + 4u) & 63u;
    } else {
        let lo = q4k_byte(h, j + 4u);
        sc = (lo & 15u) | ((q4k_byte(h, j - 4u) >> 6u) << 4u);
        mn = (lo >> 4u) | ((q4k_byte(h, j) >> 6u) << 4u);
    }
    return vec2<f32>(dd.x * f32(sc), -dd.y * f32(mn));
}
