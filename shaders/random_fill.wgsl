// random_fill.wgsl: fill a weight buffer with seeded pseudo-random values, on the GPU, for
// `vlm-run bench --synthetic` (shapes measured without a model file). Values are not a
// trained model's; they only need to be finite and in a realistic range.
//
// fill: 32-bit words w[i], i < words, grid-stride. A word is either two f16 values drawn
// uniformly from [-amp, amp] (f16 weights; quant scales), or 32 random bits (quants):
//   - i >= split, and header_words == 0 or (i - split) % header_words == 0
//                  -> two f16 (the repacked formats' scales, which come after every group's
//                     quant bytes; Q4_K, Q5_K: d and dmin open each super-block's header)
//   - otherwise    -> random bits (quants; the rest of a Q4_K / Q5_K header, its packed
//                     6-bit scales and mins; the highs of Q5_0, Q5_1, Q5_K and Q6_K and
//                     Q6_K's int8 scales, which come before the scales or d's: split is
//                     where those start)
//   F16 weights pass split = 0.
//   Bindings: 0 params {words, split, header_words, seed, amp}, 1 w array<u32> [words]
//   Dispatch (workgroups, 1, 1) of 64 invocations.
struct Params {
    words: u32,
    split: u32,
    header_words: u32,
    seed: u32,
    amp: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<u32>;

// A 32-bit integer hash (the "lowbias32" mixer): consecutive inputs give unrelated outputs.
fn mix32(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

@compute @workgroup_size(64)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 64u;
    for (var i = gid.x; i < p.words; i += stride) {
        let h = mix32(i ^ mix32(p.seed));
        let scales = i >= p.split && (p.header_words == 0u || (i - p.split) % p.header_words == 0u);
        if (scales) {
            // two uniforms in [-1, 1) from the hash's halves
            let lo = f32(h & 0xffffu) / 32768.0 - 1.0;
            let hi = f32(h >> 16u) / 32768.0 - 1.0;
            w[i] = pack2x16float(vec2<f32>(lo, hi) * p.amp);
        } else {
            w[i] = h;
        }
    }
}
