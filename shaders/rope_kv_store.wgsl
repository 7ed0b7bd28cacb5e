// rope_kv_store.wgsl: where one rotation pair of a stacked q|k|v row goes, shared by
// rope.wgsl's rope_kv and gemv.wgsl's ROPE epilogue. Query and key heads are rotated
// (rotate-half, HF Llama) at rotary position `pos`; queries go to the includer's
// `store_q`, keys to the K cache and values, unrotated, to the V cache.
//
// Needs the includer's binding `table` (f32 [max_pos, hd]: cos of the hd/2 frequencies,
// then their sin); rope_kv_store (not with KV_TEX) also `k_cache` and `v_cache` (f32, rows
// of kv_stride) and `fn store_q(o: u32, v: f32)`.

// Pair i < hd/2 of a query or key head at rotary position `pos`: (x1, x2) rotated.
fn rope_pair(hd: u32, i: u32, pos: u32, x1: f32, x2: f32) -> vec2<f32> {
    let c = table[pos * hd + i];
    let s = table[pos * hd + hd / 2u + i];
    return vec2<f32>(x1 * c - x2 * s, x2 * c + x1 * s);
}

// Pairs i .. i + 3 of a head at rotary position `pos`, x1 and x2 their values (i .., i +
// hd/2 ..): rotated when `rotate` (query and key heads), else as they are (value heads).
fn rope_pairs4(hd: u32, i: u32, pos: u32, x1: vec4<f32>, x2: vec4<f32>, rotate: bool)
    -> array<vec4<f32>, 2> {
    var a = x1;
    var b = x2;
    if rotate {
        for (var j = 0u; j < 4u; j++) {
            let r = rope_pair(hd, i + j, pos, x1[j], x2[j]);
            a[j] = r.x;
            b[j] = r.y;
        }
    }
    return array<vec4<f32>, 2>(a, b);
}

#ifndef KV_TEX
// Head layout of the q|k|v row and the destinations of one pair: q values from q_row,
// cache row cache_row (an offset in values).
struct QkvLayout {
    heads: u32,
    kv_heads: u32,
    hd: u32,
    q_row: u32,
    cache_row: u32,
}

// Pair i < hd/2 of head hh (of heads + 2 kv_heads): values (x1, x2) = (i, i + hd/2).
fn rope_kv_store(l: QkvLayout, hh: u32, i: u32, pos: u32, x1: f32, x2: f32) {
    let half = l.hd / 2u;
    if hh >= l.heads + l.kv_heads {
        let o = l.cache_row + (hh - l.heads - l.kv_heads) * l.hd + i;
        v_cache[o] = x1;
        v_cache[o + half] = x2;
        return;
    }
    let r = rope_pair(l.hd, i, pos, x1, x2);
    if hh < l.heads {
        let o = l.q_row + hh * l.hd + i;
        store_q(o, r.x);
        store_q(o + half, r.y);
    } else {
        let o = l.cache_row + (hh - l.heads) * l.hd + i;
        k_cache[o] = r.x;
        k_cache[o + half] = r.y;
    }
}
#endif
