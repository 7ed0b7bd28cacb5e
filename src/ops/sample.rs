//! Token choice on the GPU: greedy argmax, or temperature + top-p sampling.

use super::{bytes, check_len, Kernel};
use crate::gpu::Gpu;
use anyhow::{bail, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    temperature: f32,
    top_p: f32,
    pad: u32,
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps the whole vocabulary.
    pub top_p: f32,
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
        }
    }

    /// Reject values the kernels cannot use, naming the CLI option.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be a finite number >= 0, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

/// Write the chosen token id of `logits[0..n]` to `token[0]`.
pub fn choose(
    gpu: &Gpu,
    s: Sampling,
    logits: &wgpu::Buffer,
    n: usize,
    token: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Kernel> {
    check_len("logits", logits, n)?;
    s.validate()?;
    let p = Params {
        n: n as u32,
        temperature: s.temperature,
        top_p: s.top_p,
        pad: 0,
    };
    if s.temperature == 0.0 {
        let b = [(1, logits), (2, token)];
        Kernel::new(
            gpu,
            "sample",
            "argmax",
            &gpu.base_defines(),
            bytes(&p),
            &b,
            [1, 1, 1],
        )
    } else {
        let b = [(1, logits), (2, token), (3, step)];
        Kernel::new(
            gpu,
            "sample",
            "sample",
            &gpu.base_defines(),
            bytes(&p),
            &b,
            [1, 1, 1],
        )
    }
}
