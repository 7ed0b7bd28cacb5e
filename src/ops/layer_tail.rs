//! The second half of a decoder layer over a prefill's rows in one dispatch
//! (`layer_tail.wgsl`): o_proj and its residual add, the post-attention RMSNorm, SwiGLU's
//! [gate; up] and down with its residual add, one invocation per token. Where it applies
//! ([`fits`]) it replaces three `gemm_tokens` dispatches per layer: on lavapipe a dispatch
//! costs 35-90 µs of hand-off to the driver's two threads besides its work.

use super::{bytes, check_len, Kernel};
use crate::gguf::quant::GgmlType;
use crate::gpu::{GemmTile, Gpu, Tensor, Weight};
use anyhow::{bail, Result};

/// Tokens per workgroup: one SIMD row of lavapipe's 256-bit lanes.
const TOKENS_WG: usize = 8;

/// The widest decoder this kernel takes, by hidden size and by attention width (the values
/// a token holds in registers), and by intermediate size. Wider decoders keep the
/// three-dispatch path, whose kernels split a product's rows over workgroups.
pub const MAX_WIDTH: usize = 64;
pub const MAX_INTERMEDIATE: usize = 256;

/// The weights of a layer's second half.
pub struct TailWeights<'a> {
    pub o_proj: &'a Weight,
    /// [gate; up], 2·I rows.
    pub gate_up: &'a Weight,
    pub down: &'a Weight,
    /// The post-attention RMSNorm weight `[D]` and its epsilon.
    pub norm: (&'a wgpu::Buffer, f32),
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    eps: f32,
    pad: [u32; 2],
}

/// Whether `layer_tail` runs a layer's second half over m > 1 rows: on devices whose table
/// picks the lane kernels (CPU devices), for f16 weights in one chunk each, of widths that
/// are multiples of 8 up to [`MAX_WIDTH`] and [`MAX_INTERMEDIATE`].
pub fn fits(gpu: &Gpu, m: usize, w: &TailWeights) -> bool {
    let (d, a, i) = (w.o_proj.rows, w.o_proj.cols, w.down.cols);
    let all = [w.o_proj, w.gate_up, w.down];
    m > 1
        && gpu.gemm_tile() == GemmTile::Lanes
        && all
            .iter()
            .all(|w| w.ty == GgmlType::F16 && w.chunks.len() == 1)
        && [d, a, i].iter().all(|v| v.is_multiple_of(8))
        && d <= MAX_WIDTH
        && a <= MAX_WIDTH
        && i <= MAX_INTERMEDIATE
        && w.gate_up.rows == 2 * i
        && w.gate_up.cols == d
        && w.down.rows == d
}

fn is_texture(w: &Weight) -> bool {
    w.chunks[0].store.is_texture()
}

/// `x[t] += o_proj(attn[t])`, then `x[t] += down(SwiGLU(RMSNorm(x[t])))` for every row t, where
/// [`fits`] says so; the caller runs the three products otherwise.
pub fn layer_tail(gpu: &Gpu, attn: &Tensor, x: &Tensor, w: &TailWeights) -> Result<Kernel> {
    let m = x.rows;
    if !fits(gpu, m, w) {
        bail!("layer_tail: these weights or {m} rows take the three-product path");
    }
    let (d, a, i) = (w.o_proj.rows, w.o_proj.cols, w.down.cols);
    if x.cols != d || attn.cols != a || attn.rows < m {
        bail!(
            "layer_tail: attention {}x{} and residual {}x{} for o_proj {d}x{a}",
            attn.rows,
            attn.cols,
            m,
            x.cols
        );
    }
    let (g, eps) = w.norm;
    check_len("layer_tail norm", g, d)?;
    let mut defines = gpu.base_defines();
    defines
        .set("D", format!("{d}u"))
        .set("A", format!("{a}u"))
        .set("I", format!("{i}u"))
        .set("VMAX", format!("{}u", d.max(a).max(i) / 4))
        .set("TOKENS_WG", format!("{TOKENS_WG}u"));
    for (flag, w) in [
        ("WTEX_O", w.o_proj),
        ("WTEX_GU", w.gate_up),
        ("WTEX_DOWN", w.down),
    ] {
        if is_texture(w) {
            defines.flag(flag);
        }
    }
    let params = Params {
        m: m as u32,
        eps,
        pad: [0; 2],
    };
    let resources = vec![
        (2, w.o_proj.chunks[0].store.binding()),
        (3, w.gate_up.chunks[0].store.binding()),
        (4, w.down.chunks[0].store.binding()),
    ];
    let groups = m.div_ceil(TOKENS_WG) as u32;
    if groups > gpu.caps.max_workgroups_per_dim {
        bail!(
            "layer_tail: {m} rows need {groups} workgroups, over the device's {} per dimension",
            gpu.caps.max_workgroups_per_dim
        );
    }
    Kernel::with_resources(
        gpu,
        "layer_tail",
        "layer_tail_tokens",
        &defines,
        bytes(&params),
        &[(1, &attn.buf), (5, &x.buf), (6, g)],
        resources,
        [groups, 1, 1],
    )
}
