//! Linear layers: GEMM for many rows (prefill, encoder), GEMV for one row (decode).

use super::{bytes, Kernel};
use crate::gpu::{fold_workgroups, Gpu, Tensor, Weight};
use anyhow::{bail, Result};

/// Activation fused into the epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Gelu,
    QuickGelu,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// The parameter block of matmul.wgsl and matmul_quant.wgsl (whose `embed_rows` reads it
/// too: m ids, n table rows from row `out_col`, k columns, `k4` bytes per row).
pub(crate) struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub k4: u32,
    pub x_stride: u32,
    pub out_stride: u32,
    pub out_col: u32,
    pub pad: u32,
}

/// y[.., 0..w.rows] (=|+=) act(x · wᵀ + bias). x: [m, ≥ w.cols]; y: [m, ≥ w.rows].
/// A weight split into row chunks becomes one dispatch per chunk, each writing its columns.
pub fn linear(
    gpu: &Gpu,
    x: &Tensor,
    w: &Weight,
    bias: Option<&wgpu::Buffer>,
    y: &Tensor,
    act: Act,
    accumulate: bool,
) -> Result<Vec<Kernel>> {
    let m = x.rows;
    if x.cols < w.cols || y.cols < w.rows || y.rows < m {
        bail!(
            "linear: x {}x{}, w {}x{}, y {}x{} do not fit",
            x.rows,
            x.cols,
            w.rows,
            w.cols,
            y.rows,
            y.cols
        );
    }
    let mut defines = gpu.base_defines();
    if bias.is_some() {
        defines.flag("BIAS");
    }
    match act {
        Act::None => {}
        Act::Gelu => {
            defines.flag("ACT_GELU");
        }
        Act::QuickGelu => {
            defines.flag("ACT_QUICK_GELU");
        }
    }
    if accumulate {
        defines.flag("ACCUMULATE");
    }
    // f16 weights: matmul.wgsl (k4 = padded row length, 4 GEMV rows per workgroup).
    // ggml blocks: matmul_quant.wgsl reads them in place (k4 = bytes per row, 8 GEMV rows).
    let (family, k4, gemv_rows) = match w.ty.shader_flag() {
        Some(flag) => {
            defines.flag(flag);
            ("matmul_quant", w.row_bytes, 8)
        }
        None => ("matmul", w.cols4, 4),
    };
    let mut kernels = Vec::new();
    for chunk in &w.chunks {
        let params = Params {
            m: m as u32,
            n: chunk.rows as u32,
            k: w.cols as u32,
            k4: k4 as u32,
            x_stride: x.cols as u32,
            out_stride: y.cols as u32,
            out_col: chunk.row0 as u32,
            pad: 0,
        };
        let mut bindings = vec![(1, &x.buf), (2, &chunk.buf), (4, &y.buf)];
        if let Some(b) = bias {
            bindings.push((3, b));
        }
        let (entry, grid) = if m == 1 {
            let groups = (chunk.rows as u32).div_ceil(gemv_rows);
            (
                "gemv",
                fold_workgroups(groups, gpu.caps.max_workgroups_per_dim),
            )
        } else {
            let grid = [(chunk.rows as u32).div_ceil(64), (m as u32).div_ceil(64), 1];
            if grid[0] > gpu.caps.max_workgroups_per_dim
                || grid[1] > gpu.caps.max_workgroups_per_dim
            {
                bail!(
                    "linear: {m}x{} output exceeds the dispatch limit",
                    chunk.rows
                );
            }
            ("gemm", grid)
        };
        kernels.push(Kernel::new(
            gpu,
            family,
            entry,
            &defines,
            bytes(&params),
            &bindings,
            grid,
        )?);
    }
    Ok(kernels)
}
