//! Attention: a fused prefill kernel (online softmax, causal or not) and split-KV decode
//! attention (a pass over key splits, then a merge).

use super::{bytes, Kernel};
use crate::gpu::{Gpu, Tensor};
use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    kv_len: u32,
    heads: u32,
    kv_heads: u32,
    q_stride: u32,
    kv_stride: u32,
    o_stride: u32,
    causal: u32,
    q_pos0: u32,
    ctx: u32,
    scale: f32,
    pad: u32,
}

/// Head layout shared by the attention ops.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
}

impl Heads {
    fn check(&self, q: &Tensor, k: &Tensor) -> Result<()> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            bail!(
                "attention: {} heads cannot share {} KV heads",
                self.heads,
                self.kv_heads
            );
        }
        if q.cols < self.heads * self.hd || k.cols < self.kv_heads * self.hd {
            bail!("attention: q or k is narrower than its heads");
        }
        Ok(())
    }

    fn defines(&self, gpu: &Gpu) -> Result<crate::gpu::shader::Defines> {
        // Keys per workgroup-memory tile: K and V tiles of KT x hd f32 must fit.
        let kt = (gpu.caps.workgroup_memory as usize / (8 * self.hd)).min(32);
        if kt == 0 {
            bail!(
                "attention: head dim {} needs more than the device's {} bytes of workgroup memory",
                self.hd,
                gpu.caps.workgroup_memory
            );
        }
        let mut d = gpu.base_defines().with("HD", self.hd).with("KT", kt);
        if !gpu.attention_tiles() {
            // the CPU-device variant: K/V read straight from the buffers, no barriers
            d.flag("DIRECT_KV");
        }
        Ok(d)
    }
}

/// Fused attention for `q.rows` query rows over the first `kv_len` rows of k and v.
/// Causal: query row i sits at position `q_pos0 + i` and sees keys up to that position.
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    gpu: &Gpu,
    h: Heads,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kv_len: usize,
    causal: bool,
    q_pos0: usize,
    out: &Tensor,
) -> Result<Kernel> {
    h.check(q, k)?;
    if kv_len > k.rows || out.rows < q.rows || out.cols < h.heads * h.hd {
        bail!(
            "attention: {kv_len} keys of {} rows, output {}x{}",
            k.rows,
            out.rows,
            out.cols
        );
    }
    let p = Params {
        m: q.rows as u32,
        kv_len: kv_len as u32,
        heads: h.heads as u32,
        kv_heads: h.kv_heads as u32,
        q_stride: q.cols as u32,
        kv_stride: k.cols as u32,
        o_stride: out.cols as u32,
        causal: causal as u32,
        q_pos0: q_pos0 as u32,
        ctx: 0,
        scale: 1.0 / (h.hd as f32).sqrt(),
        pad: 0,
    };
    let grid = [(q.rows as u32).div_ceil(32), h.heads as u32, 1];
    let bindings = [(1, &q.buf), (2, &k.buf), (3, &v.buf), (4, &out.buf)];
    Kernel::new(
        gpu,
        "attention",
        "attention",
        &h.defines(gpu)?,
        bytes(&p),
        &bindings,
        grid,
    )
}

/// Keys per split of the decode attention (attention.wgsl's SPLIT).
const SPLIT: usize = 64;

/// Scratch for [`decode`] over a cache of `ctx` rows: per head and split, HD + 2 values.
pub fn decode_partials(gpu: &Gpu, h: Heads, ctx: usize) -> Result<Tensor> {
    Tensor::new(
        gpu,
        "attn.partials",
        h.heads,
        ctx.div_ceil(SPLIT) * (h.hd + 2),
    )
}

/// Split-KV decode attention of one query row over the KV cache rows `0 .. step.kv_len`:
/// one pass over splits of SPLIT keys, then a merge. `partials` comes from
/// [`decode_partials`] for a context of at least the cache's rows.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    gpu: &Gpu,
    h: Heads,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    partials: &Tensor,
    step: &wgpu::Buffer,
    out: &Tensor,
) -> Result<Vec<Kernel>> {
    h.check(q, k_cache)?;
    let splits = k_cache.rows.div_ceil(SPLIT);
    if partials.rows != h.heads || partials.cols < splits * (h.hd + 2) {
        bail!(
            "attention: partials must hold {} splits of {} heads",
            splits,
            h.heads
        );
    }
    let p = Params {
        m: 1,
        heads: h.heads as u32,
        kv_heads: h.kv_heads as u32,
        kv_stride: k_cache.cols as u32,
        ctx: (partials.cols / (h.hd + 2)) as u32,
        scale: 1.0 / (h.hd as f32).sqrt(),
        ..Default::default()
    };
    let d = h.defines(gpu)?;
    let split = Kernel::new(
        gpu,
        "attention",
        "attn_split",
        &d,
        bytes(&p),
        &[
            (1, &q.buf),
            (2, &k_cache.buf),
            (3, &v_cache.buf),
            (5, &partials.buf),
            (6, step),
        ],
        [splits as u32, h.heads as u32, 1],
    )?;
    let merge = Kernel::new(
        gpu,
        "attention",
        "attn_merge",
        &d,
        bytes(&p),
        &[(5, &partials.buf), (4, &out.buf), (6, step)],
        [1, h.heads as u32, 1],
    )?;
    Ok(vec![split, merge])
}
