// linear_store.wgsl: the epilogue of matmul.wgsl and matmul_quant.wgsl, included by both.
// Writes one output y[m, out_col + n] = act(acc + bias[out_col + n]) (or adds it, with
// ACCUMULATE), and returns the value y then holds; store_row, the 4 outputs of a tile row.
// Needs the including file's `p` (m, n, out_stride, out_col), `bias` (with BIAS) and `y`
// bindings.
#include "activations"

fn store(m: u32, n: u32, acc: f32) -> f32 {
    var v = acc;
#ifdef BIAS
    v += bias[p.out_col + n];
#endif
#ifdef ACT_GELU
    v = gelu_erf(v);
#endif
#ifdef ACT_QUICK_GELU
    v = quick_gelu(v);
#endif
    let o = m * p.out_stride + p.out_col + n;
#ifdef ACCUMULATE
    v += y[o];
#endif
    y[o] = v;
    return v;
}

// Outputs (m, n .. n + 4) that exist.
fn store_row(m: u32, n: u32, v: vec4<f32>) {
    if m >= p.m {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if n + j < p.n {
            store(m, n + j, v[j]);
        }
    }
}
