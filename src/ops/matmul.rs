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
struct Params {
    m: u32,
    n: u32,
    k: u32,
    k4: u32,
    x_stride: u32,
    out_stride: u32,
    out_col: u32,
    pad: u32,
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
    if let Some(flag) = w.ty.shader_flag() {
        defines.flag(flag);
        return linear_quantized(gpu, x, w, bias, y, &defines);
    }
    let mut kernels = Vec::new();
    for chunk in &w.chunks {
        let params = Params {
            m: m as u32,
            n: chunk.rows as u32,
            k: w.cols as u32,
            k4: w.cols4 as u32,
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
            let groups = (chunk.rows as u32).div_ceil(4);
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
            "matmul",
            entry,
            &defines,
            bytes(&params),
            &bindings,
            grid,
        )?);
    }
    Ok(kernels)
}

/// `linear` over a weight in a ggml block format: the quantized kernels read the blocks in
/// place (matmul_quant.wgsl), 8 rows per GEMV workgroup and 64×64 GEMM tiles.
fn linear_quantized(
    gpu: &Gpu,
    x: &Tensor,
    w: &Weight,
    bias: Option<&wgpu::Buffer>,
    y: &Tensor,
    defines: &crate::gpu::shader::Defines,
) -> Result<Vec<Kernel>> {
    let m = x.rows;
    let mut kernels = Vec::new();
    for chunk in &w.chunks {
        let params = Params {
            m: m as u32,
            n: chunk.rows as u32,
            k: w.cols as u32,
            k4: w.row_bytes as u32,
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
            let groups = (chunk.rows as u32).div_ceil(8);
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
            "matmul_quant",
            entry,
            defines,
            bytes(&params),
            &bindings,
            grid,
        )?);
    }
    Ok(kernels)
}
