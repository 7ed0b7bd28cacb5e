//! LLaVA: the CLIP vision tower, the projector (Linear → GELU → Linear), and the Llama
//! decoder, loaded from a llava-hf checkpoint directory.

use super::clip::{ClipVisionTower, Linear, Loader, VisionPass};
use super::config::{LlavaConfig, PreprocessorConfig};
use super::llama::Llama;
use crate::gpu::{Gpu, Kernel, Tensor};
use crate::ops::{self, elementwise::RowDest, matmul::Act};
use crate::prune::stages::{self, StageBuffers};
use crate::prune::{Method, Plan, PruneOptions};
use crate::weights::{Checkpoint, Component, TensorSource};
use anyhow::{bail, Result};
use std::path::Path;
use std::sync::Arc;

pub struct Projector {
    linear_1: Linear,
    linear_2: Linear,
}

pub struct Llava {
    pub cfg: LlavaConfig,
    pub preprocessor: PreprocessorConfig,
    /// None for a text-only model (a GGUF decoder without an mmproj file).
    pub vision: Option<ClipVisionTower>,
    pub projector: Option<Projector>,
    pub llm: Llama,
    /// Bytes of weights on the GPU.
    pub weight_bytes: u64,
}

/// The image's visual tokens: [visual tokens kept, text hidden], ready for the decoder.
/// The kernels come in three lists so that each stage can be timed.
pub struct EncodePass {
    /// The vision tower's pass (shared with [`Llava::encode_pass_from`]'s cache).
    pub vision: Arc<VisionPass>,
    /// The tower's kernels still have to run (false when its output was reused).
    pub run_tower: bool,
    /// Encoder-side pruning (empty without it).
    pub prune: Vec<Kernel>,
    /// Feature selection (CLS dropped) and the projector.
    pub projector: Vec<Kernel>,
    /// Pruning after the projector (DivPrune).
    pub prune_after: Vec<Kernel>,
    pub out: Tensor,
    /// The pruning stage's buffers (selection, scores), if one ran.
    pub stage: Option<StageBuffers>,
}

impl EncodePass {
    /// The tower's kernels, or none when its output is reused.
    pub fn tower(&self) -> Vec<&Kernel> {
        if self.run_tower {
            self.vision.kernels.iter().collect()
        } else {
            Vec::new()
        }
    }

    pub fn kernels(&self) -> Vec<&Kernel> {
        self.tower()
            .into_iter()
            .chain(&self.prune)
            .chain(&self.projector)
            .chain(&self.prune_after)
            .collect()
    }
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
        Self::from_source(gpu, cfg, preprocessor, &ckpt, true, on_bytes)
    }

    /// Load the model `cfg` describes from `src`; without `with_vision`, the decoder only.
    pub fn from_source(
        gpu: &Gpu,
        cfg: LlavaConfig,
        preprocessor: PreprocessorConfig,
        src: &dyn TensorSource,
        with_vision: bool,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Self> {
        let total = std::cell::Cell::new(0u64);
        let count = |b: u64| {
            total.set(total.get() + b);
            on_bytes(b)
        };
        let l = Loader {
            gpu,
            src,
            on_bytes: &count,
        };
        let (vision, projector) = if with_vision {
            let vision =
                ClipVisionTower::load(&l, &cfg.vision_config, cfg.vision_layers_to_run()?)?;
            let (dv, dt) = (cfg.vision_config.hidden_size, cfg.text_config.hidden_size);
            let bias = cfg.multimodal_projector_bias;
            let p = Component::Projector;
            let projector = Projector {
                linear_1: l.linear(p, "linear_1", dt, dv, bias)?,
                linear_2: l.linear(p, "linear_2", dt, dt, bias)?,
            };
            (Some(vision), Some(projector))
        } else {
            (None, None)
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
        let g = self.grid();
        g * g + self.cfg.keep_cls() as usize
    }

    /// FLOPs (2 per multiply-add) of the vision tower up to the feature layer: patch
    /// embedding, then per layer q/k/v/o projections, attention and the MLP.
    pub fn encoder_flops(&self) -> u64 {
        let v = &self.cfg.vision_config;
        let (d, m, p) = (
            v.hidden_size as u64,
            v.intermediate_size as u64,
            v.patch_size as u64,
        );
        let Some(vision) = &self.vision else {
            return 0;
        };
        let n = vision.patches() as u64;
        let t = n + 1;
        let layers = vision.layers() as u64;
        2 * n * 3 * p * p * d + layers * (2 * t * d * 4 * d + 4 * t * t * d + 4 * t * d * m)
    }

    /// FLOPs of the projector over `rows` tokens.
    pub fn projector_flops(&self, rows: usize) -> u64 {
        let (dv, dt) = (
            self.cfg.vision_config.hidden_size as u64,
            self.cfg.text_config.hidden_size as u64,
        );
        2 * rows as u64 * (dv * dt + dt * dt)
    }

    /// The side of the patch grid (24 for LLaVA-1.5).
    pub fn grid(&self) -> usize {
        self.cfg.vision_config.image_size / self.cfg.vision_config.patch_size
    }

    /// Vision tower, feature selection, encoder-side pruning (`plan`) and projector over
    /// `pixels`.
    pub fn encode_pass(
        &self,
        gpu: &Gpu,
        pixels: &wgpu::Buffer,
        prune: Option<(&Plan, &PruneOptions)>,
    ) -> Result<EncodePass> {
        let Some(vision) = &self.vision else {
            bail!("this model has no vision encoder: give its --mmproj file to use --image");
        };
        self.encode_pass_from(gpu, Arc::new(vision.pass(gpu, pixels)?), true, prune)
    }

    /// [`Llava::encode_pass`] over a tower pass built before; `run_tower` false reuses its
    /// output as it stands (the same image encoded by an earlier request).
    pub fn encode_pass_from(
        &self,
        gpu: &Gpu,
        vp: Arc<VisionPass>,
        run_tower: bool,
        prune: Option<(&Plan, &PruneOptions)>,
    ) -> Result<EncodePass> {
        let Some(projector) = &self.projector else {
            bail!("this model has no vision encoder: give its --mmproj file to use --image");
        };
        let n = self.visual_tokens();
        let first = usize::from(!self.cfg.keep_cls());
        let (dv, dt) = (
            self.cfg.vision_config.hidden_size,
            self.cfg.text_config.hidden_size,
        );
        let prune = prune.filter(|(plan, _)| !plan.is_identity() && plan.method.encoder_side());
        if prune.is_some() && self.cfg.keep_cls() {
            bail!("pruning needs vision_feature_select_strategy \"default\" (CLS dropped)");
        }
        let mut stage = None;
        let mut prune_ks = Vec::new();
        let mut select_ks = Vec::new();
        let mut prune_after = Vec::new();
        let before_projector = prune.filter(|(plan, _)| plan.method != Method::DivPrune);
        let feats = if let Some((plan, opts)) = before_projector {
            let es = stages::encoder_stage(
                gpu,
                plan,
                opts,
                vp.heads,
                &vp.q,
                &vp.k,
                &vp.out,
                self.grid(),
            )?;
            prune_ks = es.kernels;
            stage = Some(es.buffers);
            es.feats
        } else {
            let feats = Tensor::new(gpu, "projector.in", n, dv)?;
            // linear_1 reads feats' texture copy where it can (CPU devices)
            let feats = match ops::matmul::reads_texels(gpu, n) && dv.is_multiple_of(4) {
                true => feats.with_texels(gpu, "projector.in_texels"),
                false => feats,
            };
            let dst = RowDest {
                buf: &feats.buf,
                stride: dv,
                row0: 0,
                col: 0,
                step: None,
                texels: feats.texels.as_ref(),
            };
            select_ks.push(ops::elementwise::copy_rows(gpu, &vp.out, first, n, dst)?);
            feats
        };
        let rows = feats.rows;
        let mid = Tensor::new(gpu, "projector.mid", rows, dt)?;
        // linear_2 reads mid's texture copy where linear_1 can write one (CPU devices)
        let mid = match ops::matmul::lanes_write_texels(gpu, rows, &projector.linear_1.w, 0)
            && ops::matmul::reads_texels(gpu, rows)
        {
            true => mid.with_texels(gpu, "projector.mid_texels"),
            false => mid,
        };
        let mut out = Tensor::new(gpu, "projector.out", rows, dt)?;
        // DivPrune's normalisation reads out's texture copy where linear_2 can write one
        let divprune = prune.is_some_and(|(plan, _)| plan.method == Method::DivPrune);
        if divprune
            && ops::matmul::lanes_write_texels(gpu, rows, &projector.linear_2.w, 0)
            && ops::matmul::reads_texels(gpu, rows)
        {
            out = out.with_texels(gpu, "projector.out_texels");
        }
        let mut ks = select_ks;
        ks.extend(
            projector
                .linear_1
                .ops(gpu, &feats, &mid, Act::Gelu, false)?,
        );
        ks.extend(projector.linear_2.ops(gpu, &mid, &out, Act::None, false)?);
        if let Some((plan, _)) = prune.filter(|(plan, _)| plan.method == Method::DivPrune) {
            let (dk, kept, buffers) = stages::projector_stage(gpu, plan, &out)?;
            prune_after = dk;
            stage = Some(buffers);
            out = kept;
        }
        Ok(EncodePass {
            vision: vp,
            run_tower,
            prune: prune_ks,
            projector: ks,
            prune_after,
            out,
            stage,
        })
    }
}
