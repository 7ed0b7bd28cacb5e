//! Rotary position embedding (rotate-half), with a cos/sin table computed once on the CPU.

use super::{bytes, Kernel};
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

/// Where [`rope_kv`] writes: the rotated queries, and the KV cache rows from `step.kv_offset`.
pub struct KvDest<'a> {
    pub q: &'a Tensor,
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub step: &'a wgpu::Buffer,
}

/// From stacked q|k|v rows (`qkv`): rotate the queries into `dst.q`, rotate the keys into
/// the K cache and copy the values into the V cache, at cache rows `step.kv_offset + r`.
pub fn rope_kv(
    gpu: &Gpu,
    qkv: &Tensor,
    h: super::attention::Heads,
    positions: &wgpu::Buffer,
    table: &wgpu::Buffer,
    dst: KvDest,
) -> Result<Kernel> {
    let (heads, kv_heads, hd) = (h.heads, h.kv_heads, h.hd);
    if (heads + 2 * kv_heads) * hd > qkv.cols
        || !hd.is_multiple_of(2)
        || dst.q.cols < heads * hd
        || dst.q.rows < qkv.rows
        || dst.k_cache.cols < kv_heads * hd
    {
        bail!(
            "rope_kv: {heads}+2x{kv_heads} heads of {hd} in rows of {}",
            qkv.cols
        );
    }
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
    let n = (qkv.rows * (heads + 2 * kv_heads) * hd / 2) as u32;
    let grid = fold_workgroups(n.div_ceil(64), gpu.caps.max_workgroups_per_dim);
    let bindings = [
        (1, &qkv.buf),
        (2, positions),
        (3, table),
        (4, &dst.q.buf),
        (5, &dst.k_cache.buf),
        (6, &dst.v_cache.buf),
        (7, dst.step),
    ];
    Kernel::new(
        gpu,
        "rope",
        "rope_kv",
        &gpu.base_defines().with_flag("KV_CACHE"),
        bytes(&p),
        &bindings,
        grid,
    )
}
