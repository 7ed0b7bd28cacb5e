// activations.wgsl: scalar activation functions, included by matmul (fused epilogues)
// and elementwise (standalone kernels).

// CLIP's QuickGELU: x * sigmoid(1.702 x).
fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7); WGSL has no erf.
fn erf_approx(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    return sign(x) * (1.0 - poly * exp(-a * a));
}

// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as in LLaVA's projector.
fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476));
}

// SiLU, the gate of Llama's SwiGLU.
fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}
