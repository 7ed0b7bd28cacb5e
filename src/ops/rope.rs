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
