//! Rotary position embedding (rotate-half), with a cos/sin table computed once on the CPU.

use super::{
    attention::{Heads, KvTextures},
    bytes, Kernel,
};
use crate::gpu::{fold_workgroups, Gpu, Tensor};
use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    hd: u32,
    row_stride: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    pad: u32,
}

/// The table the kernel reads: for each position, cos of the hd/2 frequencies, then their sin.
/// Frequencies and angles are rounded to f32 as HF transformers computes them.
pub fn rope_table(theta: f64, hd: usize, max_pos: usize) -> Vec<f32> {
    let half = hd / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / hd as f64)) as f32)
        .collect();
    let mut t = vec![0f32; max_pos * hd];
    for pos in 0..max_pos {
        for i in 0..half {
            let angle = (pos as f32 * inv_freq[i]) as f64;
            t[pos * hd + i] = angle.cos() as f32;
            t[pos * hd + half + i] = angle.sin() as f32;
        }
    }
    t
}

/// Rotate the first `heads * hd` columns of every row of x in place, at `positions[row]`.
pub fn rope(
    gpu: &Gpu,
    x: &Tensor,
    heads: usize,
    hd: usize,
    positions: &wgpu::Buffer,
    table: &wgpu::Buffer,
) -> Result<Kernel> {
    if heads * hd > x.cols || !hd.is_multiple_of(2) {
        bail!("rope: {heads} heads of {hd} in rows of {}", x.cols);
    }
    let p = Params {
        rows: x.rows as u32,
        heads: heads as u32,
        hd: hd as u32,
        row_stride: x.cols as u32,
        kv_heads: 0,
        q_stride: 0,
        kv_stride: 0,
        pad: 0,
    };
    let n = (x.rows * heads * hd / 2) as u32;
    let grid = fold_workgroups(n.div_ceil(64), gpu.caps.max_workgroups_per_dim);
    let bindings = [(1, &x.buf), (2, positions), (3, table)];
    Kernel::new(
        gpu,
        "rope",
        "rope",
        &gpu.base_defines(),
        bytes(&p),
        &bindings,
        grid,
    )
}

/// The attention input step after the stacked q|k|v projection: rotate the queries into
/// `q`, rotate the keys into the K cache and copy the values into the V cache, at cache rows
/// `step.kv_offset + r`, for the rotary positions `positions[r]` from `table`. Either its
/// own kernel ([`rope_kv`]) or, in decode, the q|k|v GEMV's epilogue
/// (`ops::matmul::Epilogue::rope`).
#[derive(Clone, Copy)]
pub struct RopeKv<'a> {
    pub heads: Heads,
    pub positions: &'a wgpu::Buffer,
    pub table: &'a wgpu::Buffer,
    pub q: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub step: &'a wgpu::Buffer,
    /// Decode into a cache kept in textures: where the q|k|v GEMV fuses this step and its
    /// lane groups hold whole texels ([`crate::ops::matmul::rope_into_textures`]), it writes
    /// K and V straight to row `kv_offset` of this Step in these textures, and leaves
    /// `k_cache` and `v_cache` alone. The separate [`rope_kv`] kernel never does.
    pub into_textures: Option<(&'a KvTextures, &'a wgpu::Buffer)>,
}

impl RopeKv<'_> {
    /// An error unless `rows` rows of `cols` stacked q|k|v values fit the destinations.
    pub fn check(&self, rows: usize, cols: usize) -> Result<()> {
        let Heads {
            heads,
            kv_heads,
            hd,
        } = self.heads;
        if (heads + 2 * kv_heads) * hd > cols
            || !hd.is_multiple_of(2)
            || self.q.cols < heads * hd
            || self.q.rows < rows
            || self.k_cache.cols < kv_heads * hd
            || self.v_cache.cols < kv_heads * hd
        {
            bail!("rope_kv: {heads}+2x{kv_heads} heads of {hd} in rows of {cols}");
        }
        Ok(())
    }
}

/// [`RopeKv`] as its own kernel over the rows of `qkv`.
pub fn rope_kv(gpu: &Gpu, qkv: &Tensor, dst: &RopeKv) -> Result<Kernel> {
    rope_kv_kernel(gpu, qkv, dst, None)
}

/// [`rope_kv`] for a prefill (rows from cache row `step.kv_offset` = 0 on) that also writes
/// the keys and values into `tex`, for the prefill attention's `KV_TEX` variant, so that no
/// copy runs ([`crate::ops::attention::PrefillKv::Filled`]). None where it cannot: a head
/// dim whose half is no multiple of 4 (a texel holds 4 values), or textures too small.
pub fn rope_kv_into_textures(
    gpu: &Gpu,
    qkv: &Tensor,
    dst: &RopeKv,
    tex: &KvTextures,
) -> Result<Option<Kernel>> {
    if !(dst.heads.hd / 2).is_multiple_of(4) || !tex.holds(dst.heads, qkv.rows) {
        return Ok(None);
    }
    rope_kv_kernel(gpu, qkv, dst, Some(tex)).map(Some)
}

fn rope_kv_kernel(
    gpu: &Gpu,
    qkv: &Tensor,
    dst: &RopeKv,
    tex: Option<&KvTextures>,
) -> Result<Kernel> {
    dst.check(qkv.rows, qkv.cols)?;
    let Heads {
        heads,
        kv_heads,
        hd,
    } = dst.heads;
    let p = Params {
        rows: qkv.rows as u32,
        heads: heads as u32,
        hd: hd as u32,
        row_stride: qkv.cols as u32,
        kv_heads: kv_heads as u32,
        q_stride: dst.q.cols as u32,
        kv_stride: dst.k_cache.cols as u32,
        pad: 0,
    };
    // an invocation per rotation pair, or per 4 of them
    let pairs_each = if tex.is_some() { 4 } else { 1 };
    let n = (qkv.rows * (heads + 2 * kv_heads) * hd / 2 / pairs_each) as u32;
    let grid = fold_workgroups(n.div_ceil(64), gpu.caps.max_workgroups_per_dim);
    let bindings = [
        (1, &qkv.buf),
        (2, dst.positions),
        (3, dst.table),
        (4, &dst.q.buf),
        (5, &dst.k_cache.buf),
        (6, &dst.v_cache.buf),
        (7, dst.step),
    ];
    let mut defines = gpu.base_defines().with_flag("KV_CACHE");
    let mut textures = Vec::new();
    if let Some(t) = tex {
        defines.flag("KV_TEX_COPY");
        let (k, v) = t.views();
        textures.push((8, wgpu::BindingResource::TextureView(k)));
        textures.push((9, wgpu::BindingResource::TextureView(v)));
    }
    Kernel::with_resources(
        gpu,
        "rope",
        "rope_kv",
        &defines,
        bytes(&p),
        &bindings,
        textures,
        grid,
    )
}
