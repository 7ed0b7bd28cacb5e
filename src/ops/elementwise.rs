//! Element-wise kernels: add, SwiGLU, GELU, QuickGELU, and row copies.

use super::{bytes, Kernel};
use crate::gpu::{fold_workgroups, Gpu, Tensor};
use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    src_stride: u32,
    src_row0: u32,
    dst_stride: u32,
    dst_row0: u32,
    dst_col: u32,
    pad: u32,
}

fn grid(gpu: &Gpu, n: usize) -> [u32; 3] {
    fold_workgroups((n as u32).div_ceil(64), gpu.caps.max_workgroups_per_dim)
}

fn same_shape(op: &str, ts: &[&Tensor]) -> Result<usize> {
    let (r, c) = (ts[0].rows, ts[0].cols);
    if ts.iter().any(|t| t.rows != r || t.cols != c) {
        bail!("{op}: operands differ in shape");
    }
    Ok(r * c)
}

/// y = a + b.
pub fn add(gpu: &Gpu, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<Kernel> {
    let n = same_shape("add", &[a, b, y])?;
    let p = Params {
        n: n as u32,
        ..Default::default()
    };
    let bindings = [(1, &a.buf), (2, &b.buf), (3, &y.buf)];
    Kernel::new(
        gpu,
        "elementwise",
        "add",
        &gpu.base_defines(),
        bytes(&p),
        &bindings,
        grid(gpu, n),
    )
}

/// y = silu(gate) * up.
/// y[r, c] = silu(gu[r, c]) · gu[r, m + c] for the stacked gate|up rows `gu` [rows, 2m] and
/// y [rows, m].
pub fn swiglu(gpu: &Gpu, gu: &Tensor, y: &Tensor) -> Result<Kernel> {
    if gu.rows != y.rows || gu.cols != 2 * y.cols {
        bail!(
            "swiglu: gate|up {}x{} for output {}x{}",
            gu.rows,
            gu.cols,
            y.rows,
            y.cols
        );
    }
    let n = y.rows * y.cols;
    let p = Params {
        n: n as u32,
        cols: y.cols as u32,
        ..Default::default()
    };
    let bindings = [(1, &gu.buf), (3, &y.buf)];
    Kernel::new(
        gpu,
        "elementwise",
        "swiglu",
        &gpu.base_defines(),
        bytes(&p),
        &bindings,
        grid(gpu, n),
    )
}

/// y = gelu(y) (exact, erf) in place.
pub fn gelu(gpu: &Gpu, y: &Tensor) -> Result<Kernel> {
    let n = y.rows * y.cols;
    let p = Params {
        n: n as u32,
        ..Default::default()
    };
    Kernel::new(
        gpu,
        "elementwise",
        "gelu",
        &gpu.base_defines(),
        bytes(&p),
        &[(3, &y.buf)],
        grid(gpu, n),
    )
}

/// y = quick_gelu(y) in place.
pub fn quick_gelu(gpu: &Gpu, y: &Tensor) -> Result<Kernel> {
    let n = y.rows * y.cols;
    let p = Params {
        n: n as u32,
        ..Default::default()
    };
    let d = gpu.base_defines();
    Kernel::new(
        gpu,
        "elementwise",
        "quick_gelu_inplace",
        &d,
        bytes(&p),
        &[(3, &y.buf)],
        grid(gpu, n),
    )
}

/// Where copied rows land.
pub struct RowDest<'a> {
    pub buf: &'a wgpu::Buffer,
    pub stride: usize,
    pub row0: usize,
    pub col: usize,
    /// Add the pass's `Step::kv_offset` to `row0` (KV-cache writes).
    pub step: Option<&'a wgpu::Buffer>,
    /// Also write the copied values into this texture copy of dst
    /// ([`crate::gpu::Tensor::texels`], [stride / 4, rows] texels): with whole texels (cols
    /// and col multiples of 4) and no `step`.
    pub texels: Option<&'a wgpu::TextureView>,
}

/// Copy `rows` rows of `src` starting at `src_row0` (all its columns) into `dst`.
pub fn copy_rows(
    gpu: &Gpu,
    src: &Tensor,
    src_row0: usize,
    rows: usize,
    dst: RowDest,
) -> Result<Kernel> {
    if src_row0 + rows > src.rows || dst.col + src.cols > dst.stride {
        bail!(
            "copy_rows: rows {src_row0}..+{rows} of {}x{}",
            src.rows,
            src.cols
        );
    }
    let mut n = rows * src.cols;
    let p = Params {
        n: n as u32,
        cols: src.cols as u32,
        src_stride: src.cols as u32,
        src_row0: src_row0 as u32,
        dst_stride: dst.stride as u32,
        dst_row0: dst.row0 as u32,
        dst_col: dst.col as u32,
        pad: 0,
    };
    let mut defines = gpu.base_defines();
    let mut bindings = vec![(1, &src.buf), (3, dst.buf)];
    if let Some(step) = dst.step {
        defines.flag("STEP_OFFSET");
        bindings.push((4, step));
    }
    let mut textures = Vec::new();
    if let Some(t) = dst.texels {
        if dst.step.is_some() || !src.cols.is_multiple_of(4) || !dst.col.is_multiple_of(4) {
            bail!(
                "copy_rows: {}-column rows at column {} are no whole texels",
                src.cols,
                dst.col
            );
        }
        defines.flag("Y_TEX");
        textures.push((5, wgpu::BindingResource::TextureView(t)));
        n /= 4; // an invocation per texel
    }
    Kernel::with_resources(
        gpu,
        "elementwise",
        "copy_rows",
        &defines,
        bytes(&p),
        &bindings,
        textures,
        grid(gpu, n),
    )
}
