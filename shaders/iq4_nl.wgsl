// iq4_nl.wgsl (included by gemv.wgsl and matmul_quant.wgsl): IQ4_NL's 16 levels
// (gguf::quant::IQ4NL_VALUES), which its nibbles index; a block is Q4_0's layout (16 bytes
// of nibbles, then d) and value l is d * level[nibble l]. The levels are signed bytes, 4 to
// a word (level n is byte n % 4 of word n / 4), picked by vector selects and shifts: a
// constant array indexed at run time cost lavapipe 25 times the whole decode step.
const IQ4NL_WORDS = vec4<u32>(0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u);

// The levels of the four nibbles at bits 8j + shift of q (shift 0: a group's values 4c ..
// 4c + 4, shift 4: 16 + 4c ..).
fn iq4nl(q: u32, shift: u32) -> vec4<f32> {
    let n = (vec4<u32>(q) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(15u);
    let k = IQ4NL_WORDS;
    let b4 = (n & vec4<u32>(4u)) != vec4<u32>(0u);
    let w = select(select(vec4<u32>(k.x), vec4<u32>(k.y), b4), select(vec4<u32>(k.z),
                   vec4<u32>(k.w), b4), n >= vec4<u32>(8u));
    let byte = (w >> ((n & vec4<u32>(3u)) * 8u)) << vec4<u32>(24u);
    return vec4<f32>(bitcast<vec4<i32>>(byte) >> vec4<u32>(24u));
}
