//! LayerNorm (CLIP) and RMSNorm (Llama).

use super::{bytes, check_len, Kernel};
use crate::gpu::{fold_workgroups, Gpu, Tensor};
use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    in_row0: u32,
    eps: f32,
}

/// Rows per workgroup of the ROW_LANES variant: its 8 lane groups (norm.wgsl's
/// WG_SIZE / 8).
const ROWS_PER_LANE_WG: usize = 8;

/// Whether norms run the CPU-device variant (a lane group per row, no barriers): on CPU
/// devices with lane groups. A workgroup per row with barrier reductions took ~1 ms per
/// CLIP LayerNorm of 577 rows on lavapipe.
pub fn row_lanes(gpu: &Gpu) -> bool {
    gpu.caps.cpu && gpu.lane_groups()
}

/// Normalise rows `in_row0 .. in_row0 + y.rows` of x into y. `beta` selects LayerNorm;
/// without it the op is RMSNorm.
pub fn norm(
    gpu: &Gpu,
    x: &Tensor,
    in_row0: usize,
    gamma: &wgpu::Buffer,
    beta: Option<&wgpu::Buffer>,
    eps: f32,
    y: &Tensor,
) -> Result<Kernel> {
    let d = x.cols;
    if y.cols != d || in_row0 + y.rows > x.rows {
        bail!(
            "norm: rows {in_row0}.. of {}x{d} into {}x{}",
            x.rows,
            y.rows,
            y.cols
        );
    }
    check_len("norm gamma", gamma, d)?;
    let params = Params {
        rows: y.rows as u32,
        d: d as u32,
        in_row0: in_row0 as u32,
        eps,
    };
    let lanes = row_lanes(gpu);
    let groups = if lanes {
        y.rows.div_ceil(ROWS_PER_LANE_WG)
    } else {
        y.rows
    };
    let grid = fold_workgroups(groups as u32, gpu.caps.max_workgroups_per_dim);
    let mut defines = gpu.base_defines();
    if lanes {
        defines.flag("ROW_LANES");
    }
    let mut bindings = vec![(1, &x.buf), (2, gamma), (4, &y.buf)];
    let mut textures = Vec::new();
    if let Some(t) = &y.texels {
        if !(lanes && norms_write_texels(gpu, d)) {
            bail!(
                "norm: {}x{d} rows cannot write their texture copy here",
                y.rows
            );
        }
        defines.flag("Y_TEX");
        textures.push((5, wgpu::BindingResource::TextureView(t)));
        // LayerNorm reads x's texture copy where it has one
        if let Some(xt) = x.texels.as_ref().filter(|_| beta.is_some()) {
            defines.flag("X_TEX");
            textures.push((6, wgpu::BindingResource::TextureView(xt)));
            bindings.retain(|(b, _)| *b != 1);
        }
    }
    let entry = match beta {
        Some(b) => {
            check_len("norm beta", b, d)?;
            defines.flag("LAYER_NORM");
            bindings.push((3, b));
            "layer_norm"
        }
        None => "rms_norm",
    };
    Kernel::with_resources(
        gpu,
        "norm",
        entry,
        &defines,
        bytes(&params),
        &bindings,
        textures,
        grid,
    )
}

/// Whether a norm of rows of width d can also write its output's texture copy
/// ([`crate::gpu::Tensor::texels`], norm.wgsl's Y_TEX): the lane-group variant, whole texels.
pub fn norms_write_texels(gpu: &Gpu, d: usize) -> bool {
    row_lanes(gpu) && d.is_multiple_of(4)
}
