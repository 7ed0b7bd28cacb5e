//! Token embedding gather, and the CLIP patch embedding (im2col, then a GEMM, then CLS and
//! position embeddings).

use super::{bytes, check_len, Kernel};
use crate::gpu::{fold_workgroups, Gpu, Tensor, Weight};
use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    d: u32,
    d4: u32,
    row0: u32,
    rows: u32,
    grid: u32,
    patch_size: u32,
    img: u32,
}

fn grid(gpu: &Gpu, n: usize) -> [u32; 3] {
    fold_workgroups((n as u32).div_ceil(64), gpu.caps.max_workgroups_per_dim)
}

/// `out[t] = table[ids[t]]` for the `out.rows` ids; one dispatch per row chunk of the table,
/// then a copy into out's texture copy where it has one ([`Tensor::texels`]). Ids outside
/// the table leave their row untouched (callers validate ids on the CPU).
pub fn gather(gpu: &Gpu, ids: &wgpu::Buffer, table: &Weight, out: &Tensor) -> Result<Vec<Kernel>> {
    let mut ks = gather_rows(gpu, ids, table, out)?;
    if let Some(tex) = &out.texels {
        ks.push(super::attention::rows_to_texels(gpu, out, tex, 0)?);
    }
    Ok(ks)
}

fn gather_rows(gpu: &Gpu, ids: &wgpu::Buffer, table: &Weight, out: &Tensor) -> Result<Vec<Kernel>> {
    if out.cols != table.cols {
        bail!(
            "embed: table width {} vs output width {}",
            table.cols,
            out.cols
        );
    }
    let n = out.rows * out.cols;
    if let Some(flag) = table.ty.shader_flag() {
        return gather_quantized(gpu, ids, table, out, flag);
    }
    table
        .chunks
        .iter()
        .map(|c| {
            let p = Params {
                n: out.rows as u32,
                d: table.cols as u32,
                d4: table.cols4 as u32,
                row0: c.row0 as u32,
                rows: c.rows as u32,
                ..Default::default()
            };
            Kernel::with_weight(
                gpu,
                "embed",
                "embed_gather",
                &gpu.base_defines(),
                bytes(&p),
                &[(1, ids), (3, &out.buf)],
                c,
                Vec::new(),
                grid(gpu, n),
            )
        })
        .collect()
}

/// `gather` from a quantized table: rows are dequantised on the fly (matmul_quant.wgsl).
fn gather_quantized(
    gpu: &Gpu,
    ids: &wgpu::Buffer,
    table: &Weight,
    out: &Tensor,
    flag: &str,
) -> Result<Vec<Kernel>> {
    // TN: the GEMM tile, which sizes the module's workgroup arrays.
    let defines = gpu
        .base_defines()
        .with_flag(flag)
        .with("TN", gpu.gemm_tile().threads());
    table
        .chunks
        .iter()
        .map(|c| {
            let p = super::matmul::Params {
                m: out.rows as u32,
                n: c.rows as u32,
                k: table.cols as u32,
                k4: table.row_bytes as u32,
                x_stride: 0,
                out_stride: out.cols as u32,
                out_col: c.row0 as u32,
                pad: 0,
            };
            Kernel::with_weight(
                gpu,
                "matmul_quant",
                "embed_rows",
                &defines,
                bytes(&p),
                &[(5, ids), (4, &out.buf)],
                c,
                Vec::new(),
                grid(gpu, out.rows * out.cols),
            )
        })
        .collect()
}

/// Pixels [3, img, img] to patch rows [grid², 3·patch²] in the conv weight's (c, ky, kx) order.
pub fn im2col(
    gpu: &Gpu,
    pixels: &wgpu::Buffer,
    img: usize,
    patch: usize,
    out: &Tensor,
) -> Result<Kernel> {
    let g = img / patch;
    if out.rows != g * g || out.cols != 3 * patch * patch {
        bail!("im2col: output must be {}x{}", g * g, 3 * patch * patch);
    }
    check_len("pixels", pixels, 3 * img * img)?;
    let p = Params {
        grid: g as u32,
        patch_size: patch as u32,
        img: img as u32,
        ..Default::default()
    };
    let bindings = [(4, pixels), (3, &out.buf)];
    let mut n = g * g * 3 * patch; // one invocation per pixel row of a patch
    let mut defines = gpu.base_defines();
    let mut textures = Vec::new();
    if let Some(t) = &out.texels {
        if !im2col_writes_texels(patch, img) {
            bail!("im2col: patches of {patch} cannot write their texture copy");
        }
        defines.flag("OUT_TEX");
        textures.push((7, wgpu::BindingResource::TextureView(t)));
        n /= 2; // two pixel rows each
    }
    Kernel::with_resources(
        gpu,
        "embed",
        "im2col",
        &defines,
        bytes(&p),
        &bindings,
        textures,
        grid(gpu, n),
    )
}

/// Whether im2col can also write its output's texture copy ([`Tensor::texels`], OUT_TEX):
/// even patch and image sizes, so that two pixel rows are whole texels and pairs of values.
pub fn im2col_writes_texels(patch: usize, img: usize) -> bool {
    patch.is_multiple_of(2) && img.is_multiple_of(2)
}

/// `out[0] = cls + pos[0]; out[1 + i] = patches[i] + pos[1 + i]`.
pub fn clip_embed(
    gpu: &Gpu,
    patches: &Tensor,
    cls: &wgpu::Buffer,
    pos: &wgpu::Buffer,
    out: &Tensor,
) -> Result<Kernel> {
    let d = patches.cols;
    if out.rows != patches.rows + 1 || out.cols != d {
        bail!("clip_embed: output must be {}x{d}", patches.rows + 1);
    }
    check_len("class_embedding", cls, d)?;
    check_len("position_embedding", pos, (patches.rows + 1) * d)?;
    let p = Params {
        n: patches.rows as u32,
        d: d as u32,
        ..Default::default()
    };
    let bindings = [(4, &patches.buf), (5, cls), (6, pos), (3, &out.buf)];
    let n = out.rows * d;
    Kernel::new(
        gpu,
        "embed",
        "clip_embed",
        &gpu.base_defines(),
        bytes(&p),
        &bindings,
        grid(gpu, n),
    )
}
