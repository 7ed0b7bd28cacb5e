//! The CLIP vision tower (ViT): patch embedding, CLS and position embeddings, pre-LayerNorm,
//! then pre-LN transformer layers with QuickGELU MLPs. LLaVA reads the hidden states of
//! layer `vision_feature_layer` (−2), so only the layers up to it are loaded and run.

use super::config::ClipVisionConfig;
use crate::gguf::quant::GgmlType;
use crate::gpu::{Gpu, Kernel, Tensor, Weight};
use crate::ops::{self, attention::Heads, matmul::Act};
use crate::weights::{Component, TensorSource};
use anyhow::Result;

/// What loading needs: the device, the checkpoint, and a byte counter for progress.
pub struct Loader<'a> {
    pub gpu: &'a Gpu,
    pub src: &'a dyn TensorSource,
    pub on_bytes: &'a dyn Fn(u64),
}

impl Loader<'_> {
    pub fn weight(&self, c: Component, name: &str, rows: usize, cols: usize) -> Result<Weight> {
        let w = self.src.weight(self.gpu, c, name, rows, cols)?;
        (self.on_bytes)(w.gpu_bytes());
        Ok(w)
    }

    /// A small tensor kept in f32 (norm weights, biases, embeddings).
    pub fn vector(&self, c: Component, name: &str, shape: &[usize]) -> Result<wgpu::Buffer> {
        let data = self.src.f32(c, name, shape)?;
        (self.on_bytes)(4 * data.len() as u64);
        self.gpu.storage_init(name, bytemuck::cast_slice(&data))
    }

    pub fn linear(
        &self,
        c: Component,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear> {
        Ok(Linear {
            w: self.weight(c, &format!("{name}.weight"), out, inp)?,
            b: if bias {
                Some(self.vector(c, &format!("{name}.bias"), &[out])?)
            } else {
                None
            },
        })
    }
}

/// Linear layers that read the same input, either as one weight with their rows stacked
/// (when they share a storage type), or apart.
pub enum Stacked {
    One(Weight),
    Apart(Vec<Weight>),
}

impl Loader<'_> {
    /// The weights `parts` (name, rows), each [rows, cols], stacked by rows into one when
    /// their types agree, so that one dispatch computes them all; else apart, each run of
    /// neighbours of one type stacked (llama.cpp's K-quant mixes give v_proj more bits than
    /// q_proj and k_proj in some layers: q|k and v).
    pub fn stacked(&self, c: Component, parts: &[(String, usize)], cols: usize) -> Result<Stacked> {
        if self.src.generates() {
            let rows = parts.iter().map(|p| p.1).sum();
            let name = format!("{}.weight", parts[0].0);
            return Ok(Stacked::One(self.weight(c, &name, rows, cols)?));
        }
        let mut datas = Vec::new();
        for (name, rows) in parts {
            datas.push(
                self.src
                    .weight_data(c, &format!("{name}.weight"), *rows, cols)?,
            );
        }
        if datas.iter().all(|d| d.0 == datas[0].0) {
            let ty = datas[0].0;
            let rows = parts.iter().map(|p| p.1).sum();
            let data: Vec<u8> = datas.into_iter().flat_map(|d| d.1).collect();
            let w = Weight::upload_data(self.gpu, &parts[0].0, ty, rows, cols, &data)?;
            (self.on_bytes)(w.gpu_bytes());
            return Ok(Stacked::One(w));
        }
        // runs of one type: (first part's name, type, rows, data)
        let mut runs: Vec<(&str, GgmlType, usize, Vec<u8>)> = Vec::new();
        for ((name, rows), (ty, data)) in parts.iter().zip(datas) {
            match runs.last_mut() {
                Some(run) if run.1 == ty => {
                    run.2 += rows;
                    run.3.extend(data);
                }
                _ => runs.push((name, ty, *rows, data)),
            }
        }
        let mut ws = Vec::new();
        for (name, ty, rows, data) in runs {
            let w = Weight::upload_data(self.gpu, name, ty, rows, cols, &data)?;
            (self.on_bytes)(w.gpu_bytes());
            ws.push(w);
        }
        Ok(Stacked::Apart(ws))
    }
}

/// A linear layer: f16 weight [out, in] and an optional f32 bias.
pub struct Linear {
    pub w: Weight,
    pub b: Option<wgpu::Buffer>,
}

impl Linear {
    pub fn ops(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        y: &Tensor,
        act: Act,
        accumulate: bool,
    ) -> Result<Vec<Kernel>> {
        ops::matmul::linear(gpu, x, &self.w, self.b.as_ref(), y, act, accumulate)
    }
}

struct LayerNorm {
    w: wgpu::Buffer,
    b: wgpu::Buffer,
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct ClipVisionTower {
    pub cfg: ClipVisionConfig,
    patch_embedding: Weight,
    class_embedding: wgpu::Buffer,
    position_embedding: wgpu::Buffer,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
}

/// The buffers of one encoder run, allocated once per image size.
pub struct VisionPass {
    pub kernels: Vec<Kernel>,
    /// Hidden states after the last layer run, [1 + patches, d] (CLS first).
    pub out: Tensor,
    /// That layer's queries and keys (pruning reads the CLS attention from them).
    pub q: Tensor,
    pub k: Tensor,
    pub heads: Heads,
}

impl ClipVisionTower {
    /// The matrices of the first encoder layer: what the GEMM autotuner times.
    pub fn layer_weights(&self) -> Vec<&Weight> {
        self.layers.first().map_or(Vec::new(), |l| {
            [&l.q_proj, &l.k_proj, &l.v_proj, &l.out_proj, &l.fc1, &l.fc2]
                .map(|lin| &lin.w)
                .to_vec()
        })
    }

    /// Encoder layers that run (up to the feature layer).
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    pub fn patches(&self) -> usize {
        let g = self.cfg.image_size / self.cfg.patch_size;
        g * g
    }

    pub fn load(l: &Loader, cfg: &ClipVisionConfig, layers_to_run: usize) -> Result<Self> {
        let (d, p, m) = (cfg.hidden_size, cfg.patch_size, cfg.intermediate_size);
        let v = Component::Vision;
        let n_pos = (cfg.image_size / p).pow(2) + 1;
        let conv = l
            .src
            .f16(v, "embeddings.patch_embedding.weight", &[d, 3, p, p])?;
        (l.on_bytes)(2 * conv.len() as u64);
        let ln = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                w: l.vector(v, &format!("{name}.weight"), &[d])?,
                b: l.vector(v, &format!("{name}.bias"), &[d])?,
            })
        };
        let mut layers = Vec::new();
        for i in 0..layers_to_run {
            let n = |s: &str| format!("encoder.layers.{i}.{s}");
            layers.push(EncoderLayer {
                layer_norm1: ln(&n("layer_norm1"))?,
                q_proj: l.linear(v, &n("self_attn.q_proj"), d, d, true)?,
                k_proj: l.linear(v, &n("self_attn.k_proj"), d, d, true)?,
                v_proj: l.linear(v, &n("self_attn.v_proj"), d, d, true)?,
                out_proj: l.linear(v, &n("self_attn.out_proj"), d, d, true)?,
                layer_norm2: ln(&n("layer_norm2"))?,
                fc1: l.linear(v, &n("mlp.fc1"), m, d, true)?,
                fc2: l.linear(v, &n("mlp.fc2"), d, m, true)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            patch_embedding: Weight::upload(l.gpu, "patch_embedding", d, 3 * p * p, &conv)?,
            class_embedding: l.vector(v, "embeddings.class_embedding", &[d])?,
            position_embedding: l.vector(v, "embeddings.position_embedding.weight", &[n_pos, d])?,
            pre_layrnorm: ln("pre_layrnorm")?,
            layers,
        })
    }

    /// Encode the vision tower over `pixels` ([3, image_size, image_size] f32, normalised).
    pub fn pass(&self, gpu: &Gpu, pixels: &wgpu::Buffer) -> Result<VisionPass> {
        let c = &self.cfg;
        let (d, m, p) = (c.hidden_size, c.intermediate_size, c.patch_size);
        let n = self.patches();
        let t = n + 1;
        let eps = c.layer_norm_eps as f32;
        let heads = Heads {
            heads: c.num_attention_heads,
            kv_heads: c.num_attention_heads,
            hd: d / c.num_attention_heads,
        };

        // The inputs of the layers' products also as texels where the kernels that write
        // them can (CPU devices: the by-token GEMM reads a texel for 8 lanes at once).
        let texels = |x: Tensor, label: &str, writer_can: bool| match writer_can {
            true if ops::matmul::reads_texels(gpu, x.rows) => x.with_texels(gpu, label),
            _ => x,
        };
        let cols = Tensor::new(gpu, "vision.im2col", n, 3 * p * p)?;
        let cols = texels(
            cols,
            "vision.im2col_texels",
            ops::embed::im2col_writes_texels(p, c.image_size),
        );
        let patches = Tensor::new(gpu, "vision.patches", n, d)?;
        let embed = Tensor::new(gpu, "vision.embed", t, d)?;
        let x = Tensor::new(gpu, "vision.x", t, d)?;
        // the residual stream too, for the LayerNorms, where all its writers can write it
        let residual_texels = ops::norm::norms_write_texels(gpu, d)
            && (self.layers.iter()).all(|l| {
                ops::matmul::lanes_write_texels(gpu, t, &l.out_proj.w, 0)
                    && ops::matmul::lanes_write_texels(gpu, t, &l.fc2.w, 0)
            });
        let x = texels(x, "vision.x_texels", residual_texels);
        let h = Tensor::new(gpu, "vision.h", t, d)?;
        let h = texels(h, "vision.h_texels", ops::norm::norms_write_texels(gpu, d));
        let q = Tensor::new(gpu, "vision.q", t, d)?;
        let mut k = Tensor::new(gpu, "vision.k", t, d)?;
        let mut v = Tensor::new(gpu, "vision.v", t, d)?;
        // the attention's K/V textures as k's and v's texture copies, which their products
        // write (YTEX) where they can: no copy dispatch per layer then
        let kv_tex = ops::attention::KvTextures::new(gpu, heads, t);
        let kv_filled = kv_tex.as_ref().filter(|_| {
            (self.layers.iter()).all(|l| {
                ops::matmul::lanes_write_texels(gpu, t, &l.k_proj.w, 0)
                    && ops::matmul::lanes_write_texels(gpu, t, &l.v_proj.w, 0)
            })
        });
        if let Some(kv) = kv_filled {
            let (kt, vt) = kv.views();
            k.texels = Some(kt.clone());
            v.texels = Some(vt.clone());
        }
        let attn = Tensor::new(gpu, "vision.attn", t, d)?;
        let attn_texels = ops::attention::writes_texels(gpu, heads, &attn);
        let attn = texels(attn, "vision.attn_texels", attn_texels);
        let mlp = Tensor::new(gpu, "vision.mlp", t, m)?;
        let fc1_texels =
            (self.layers.iter()).all(|l| ops::matmul::lanes_write_texels(gpu, t, &l.fc1.w, 0));
        let mlp = texels(mlp, "vision.mlp_texels", fc1_texels);

        let mut ks = vec![ops::embed::im2col(gpu, pixels, c.image_size, p, &cols)?];
        ks.extend(ops::matmul::linear(
            gpu,
            &cols,
            &self.patch_embedding,
            None,
            &patches,
            Act::None,
            false,
        )?);
        ks.push(ops::embed::clip_embed(
            gpu,
            &patches,
            &self.class_embedding,
            &self.position_embedding,
            &embed,
        )?);
        let pre = &self.pre_layrnorm;
        ks.push(ops::norm::norm(
            gpu,
            &embed,
            0,
            &pre.w,
            Some(&pre.b),
            eps,
            &x,
        )?);
        let kv = match kv_filled {
            Some(kv) => ops::attention::PrefillKv::Filled(kv),
            None => ops::attention::PrefillKv::copy(kv_tex.as_ref()),
        };
        for layer in &self.layers {
            let ln1 = &layer.layer_norm1;
            ks.push(ops::norm::norm(gpu, &x, 0, &ln1.w, Some(&ln1.b), eps, &h)?);
            ks.extend(layer.q_proj.ops(gpu, &h, &q, Act::None, false)?);
            ks.extend(layer.k_proj.ops(gpu, &h, &k, Act::None, false)?);
            ks.extend(layer.v_proj.ops(gpu, &h, &v, Act::None, false)?);
            ks.extend(ops::attention::prefill(
                gpu, heads, &q, &k, &v, t, false, 0, &attn, kv,
            )?);
            ks.extend(layer.out_proj.ops(gpu, &attn, &x, Act::None, true)?);
            let ln2 = &layer.layer_norm2;
            ks.push(ops::norm::norm(gpu, &x, 0, &ln2.w, Some(&ln2.b), eps, &h)?);
            ks.extend(layer.fc1.ops(gpu, &h, &mlp, Act::QuickGelu, false)?);
            ks.extend(layer.fc2.ops(gpu, &mlp, &x, Act::None, true)?);
        }
        Ok(VisionPass {
            kernels: ks,
            out: x,
            q,
            k,
            heads,
        })
    }
}
