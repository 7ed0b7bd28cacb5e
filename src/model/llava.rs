//! LLaVA: the CLIP vision tower, the projector (Linear → GELU → Linear), and the Llama
//! decoder, loaded from a llava-hf checkpoint directory.

use super::clip::{ClipVisionTower, Linear, Loader};
use super::config::{LlavaConfig, PreprocessorConfig};
use super::llama::Llama;
use crate::gpu::{Gpu, Kernel, Tensor};
use crate::ops::{self, elementwise::RowDest, matmul::Act};
use crate::weights::{Checkpoint, Component};
use anyhow::{bail, Result};
use std::path::Path;

pub struct Projector {
    linear_1: Linear,
    linear_2: Linear,
}

pub struct Llava {
    pub cfg: LlavaConfig,
    pub preprocessor: PreprocessorConfig,
    pub vision: ClipVisionTower,
    pub projector: Projector,
    pub llm: Llama,
    /// Bytes of weights on the GPU.
    pub weight_bytes: u64,
}

/// The image's visual tokens: [visual_tokens, text hidden], ready for the decoder.
pub struct EncodePass {
    pub kernels: Vec<Kernel>,
    pub out: Tensor,
}

impl Llava {
    /// Load a llava-hf checkpoint. `on_bytes` is told of every tensor uploaded (progress).
    pub fn load(gpu: &Gpu, dir: &Path, on_bytes: &dyn Fn(u64)) -> Result<Self> {
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        let cfg = LlavaConfig::load(dir)?;
        let preprocessor = PreprocessorConfig::load_or_default(dir, cfg.vision_config.image_size)?;
        let ckpt = Checkpoint::open(dir)?;
        let total = std::cell::Cell::new(0u64);
        let count = |b: u64| {
            total.set(total.get() + b);
            on_bytes(b)
        };
        let l = Loader {
            gpu,
            ckpt: &ckpt,
            on_bytes: &count,
        };
        let vision = ClipVisionTower::load(&l, &cfg.vision_config, cfg.vision_layers_to_run()?)?;
        let (dv, dt) = (cfg.vision_config.hidden_size, cfg.text_config.hidden_size);
        let bias = cfg.multimodal_projector_bias;
        let p = Component::Projector;
        let projector = Projector {
            linear_1: l.linear(p, "linear_1", dt, dv, bias)?,
            linear_2: l.linear(p, "linear_2", dt, dt, bias)?,
        };
        let tie = cfg.tie_word_embeddings.unwrap_or(false);
        let llm = Llama::load(&l, &cfg.text_config, tie)?;
        gpu.check()?;
        Ok(Self {
            weight_bytes: total.get(),
            cfg,
            preprocessor,
            vision,
            projector,
            llm,
        })
    }

    /// Visual tokens per image (patches, plus CLS with the "full" strategy).
    pub fn visual_tokens(&self) -> usize {
        self.vision.patches() + self.cfg.keep_cls() as usize
    }

    /// Vision tower, feature selection and projector over `pixels`.
    pub fn encode_pass(&self, gpu: &Gpu, pixels: &wgpu::Buffer) -> Result<EncodePass> {
        let vp = self.vision.pass(gpu, pixels)?;
        let n = self.visual_tokens();
        let first = usize::from(!self.cfg.keep_cls());
        let (dv, dt) = (
            self.cfg.vision_config.hidden_size,
            self.cfg.text_config.hidden_size,
        );
        let feats = Tensor::new(gpu, "projector.in", n, dv)?;
        let mid = Tensor::new(gpu, "projector.mid", n, dt)?;
        let out = Tensor::new(gpu, "projector.out", n, dt)?;
        let mut ks = vp.kernels;
        let dst = RowDest {
            buf: &feats.buf,
            stride: dv,
            row0: 0,
            col: 0,
            step: None,
        };
        ks.push(ops::elementwise::copy_rows(gpu, &vp.out, first, n, dst)?);
        ks.extend(
            self.projector
                .linear_1
                .ops(gpu, &feats, &mid, Act::Gelu, false)?,
        );
        ks.extend(
            self.projector
                .linear_2
                .ops(gpu, &mid, &out, Act::None, false)?,
        );
        Ok(EncodePass { kernels: ks, out })
    }
}
