//! The Llama decoder: RMSNorm, grouped-query attention with rotary embeddings and a KV cache,
//! SwiGLU MLP, and the LM head. A forward pass over `rows` tokens is a list of kernels
//! encoded into one compute pass; prefill and decode differ only in their attention kernels.

use super::clip::{Linear, Loader};
use super::config::LlamaConfig;
use crate::gpu::{Gpu, Kernel, Tensor, Weight};
use crate::ops::{self, attention::Heads, elementwise::RowDest, matmul::Act, sample::Sampling};
use crate::weights::{names, Component};
use anyhow::{bail, Result};

struct DecoderLayer {
    input_layernorm: wgpu::Buffer,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: wgpu::Buffer,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    embed_tokens: Weight,
    layers: Vec<DecoderLayer>,
    norm: wgpu::Buffer,
    /// None when the head is tied to embed_tokens.
    lm_head: Option<Weight>,
    rope_table: wgpu::Buffer,
}

/// The KV cache, allocated for exactly the rows a request can use. f32, [ctx, kv_heads·hd]
/// per layer for K and for V.
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub ctx: usize,
}

impl KvCache {
    pub fn new(gpu: &Gpu, cfg: &LlamaConfig, ctx: usize) -> Result<Self> {
        let w = cfg.kv_heads() * cfg.head_dim();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            k.push(Tensor::new(gpu, &format!("kv.k{l}"), ctx, w)?);
            v.push(Tensor::new(gpu, &format!("kv.v{l}"), ctx, w)?);
        }
        Ok(Self { k, v, ctx })
    }

    /// Bytes the cache allocates: Σ_layers 2 · ctx · d_kv · 4.
    pub fn bytes(&self) -> u64 {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| 4 * (t.rows * t.cols) as u64)
            .sum()
    }
}

/// Prefill runs the prompt from cache row 0 with the fused attention kernel; decode runs one
/// token at cache row `step.kv_offset` against rows `0..step.kv_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Prefill,
    Decode,
}

/// What a forward pass reads and writes besides its own scratch.
pub struct PassIo<'a> {
    pub cache: &'a KvCache,
    /// u32 [rows]: the rotary position of each row.
    pub positions: &'a wgpu::Buffer,
    /// The per-pass [`crate::gpu::Step`] uniform.
    pub step: &'a wgpu::Buffer,
    /// u32 [1]: receives the chosen token.
    pub token: &'a wgpu::Buffer,
    pub sampling: Sampling,
}

/// One forward pass: write the input embeddings into `x`, encode `kernels`, and the chosen
/// token lands in `PassIo::token` (the last row's logits stay in `logits`).
pub struct DecoderPass {
    pub x: Tensor,
    pub kernels: Vec<Kernel>,
    pub logits: Tensor,
}

impl Llama {
    pub fn load(l: &Loader, cfg: &LlamaConfig, tie_fallback: bool) -> Result<Self> {
        let (d, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (hd, nh, nkv) = (cfg.head_dim(), cfg.num_attention_heads, cfg.kv_heads());
        let c = Component::Language;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let n = |s: &str| format!("layers.{i}.{s}");
            layers.push(DecoderLayer {
                input_layernorm: l.vector(c, &n("input_layernorm.weight"), &[d])?,
                q_proj: l.linear(c, &n("self_attn.q_proj"), nh * hd, d, false)?,
                k_proj: l.linear(c, &n("self_attn.k_proj"), nkv * hd, d, false)?,
                v_proj: l.linear(c, &n("self_attn.v_proj"), nkv * hd, d, false)?,
                o_proj: l.linear(c, &n("self_attn.o_proj"), d, nh * hd, false)?,
                post_attention_layernorm: l.vector(
                    c,
                    &n("post_attention_layernorm.weight"),
                    &[d],
                )?,
                gate_proj: l.linear(c, &n("mlp.gate_proj"), m, d, false)?,
                up_proj: l.linear(c, &n("mlp.up_proj"), m, d, false)?,
                down_proj: l.linear(c, &n("mlp.down_proj"), d, m, false)?,
            });
        }
        let has_head = l
            .ckpt
            .resolve(&names(Component::LmHead, "weight"))
            .is_some();
        let lm_head = if has_head || !(cfg.tie_word_embeddings || tie_fallback) {
            Some(l.weight(Component::LmHead, "weight", v, d)?)
        } else {
            None
        };
        let table = ops::rope::rope_table(cfg.theta(), hd, cfg.max_position_embeddings);
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens: l.weight(c, "embed_tokens.weight", v, d)?,
            layers,
            norm: l.vector(c, "norm.weight", &[d])?,
            lm_head,
            rope_table: l
                .gpu
                .storage_init("rope_table", bytemuck::cast_slice(&table))?,
        })
    }

    fn heads(&self) -> Heads {
        Heads {
            heads: self.cfg.num_attention_heads,
            kv_heads: self.cfg.kv_heads(),
            hd: self.cfg.head_dim(),
        }
    }

    /// Kernels that gather the embeddings of `ids` (u32 [out.rows]) into `out`.
    pub fn embed(&self, gpu: &Gpu, ids: &wgpu::Buffer, out: &Tensor) -> Result<Vec<Kernel>> {
        ops::embed::gather(gpu, ids, &self.embed_tokens, out)
    }

    /// Build a forward pass over `rows` tokens. Scratch is allocated here, once per request.
    pub fn pass(&self, gpu: &Gpu, rows: usize, mode: Mode, io: &PassIo) -> Result<DecoderPass> {
        let c = &self.cfg;
        let (d, m, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let h = self.heads();
        if mode == Mode::Decode && rows != 1 {
            bail!("decode runs one token at a time");
        }
        if rows > io.cache.ctx {
            bail!("{rows} tokens do not fit the KV cache of {}", io.cache.ctx);
        }
        let eps = c.rms_norm_eps as f32;
        let x = Tensor::new(gpu, "llm.x", rows, d)?;
        let hn = Tensor::new(gpu, "llm.h", rows, d)?;
        let q = Tensor::new(gpu, "llm.q", rows, h.heads * hd)?;
        let k = Tensor::new(gpu, "llm.k", rows, h.kv_heads * hd)?;
        let v = Tensor::new(gpu, "llm.v", rows, h.kv_heads * hd)?;
        let attn = Tensor::new(gpu, "llm.attn", rows, h.heads * hd)?;
        let gate = Tensor::new(gpu, "llm.gate", rows, m)?;
        let up = Tensor::new(gpu, "llm.up", rows, m)?;
        let act = Tensor::new(gpu, "llm.act", rows, m)?;
        let last = Tensor::new(gpu, "llm.last", 1, d)?;
        let logits = Tensor::new(gpu, "llm.logits", 1, c.vocab_size)?;
        let scores = match mode {
            Mode::Decode => Some(Tensor::new(gpu, "llm.scores", h.heads, io.cache.ctx)?),
            Mode::Prefill => None,
        };

        let mut ks = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            ks.push(ops::norm::norm(
                gpu,
                &x,
                0,
                &layer.input_layernorm,
                None,
                eps,
                &hn,
            )?);
            ks.extend(layer.q_proj.ops(gpu, &hn, &q, Act::None, false)?);
            ks.extend(layer.k_proj.ops(gpu, &hn, &k, Act::None, false)?);
            ks.extend(layer.v_proj.ops(gpu, &hn, &v, Act::None, false)?);
            ks.push(ops::rope::rope(
                gpu,
                &q,
                h.heads,
                hd,
                io.positions,
                &self.rope_table,
            )?);
            ks.push(ops::rope::rope(
                gpu,
                &k,
                h.kv_heads,
                hd,
                io.positions,
                &self.rope_table,
            )?);
            for (src, cache) in [(&k, &io.cache.k[l]), (&v, &io.cache.v[l])] {
                let dst = RowDest {
                    buf: &cache.buf,
                    stride: cache.cols,
                    row0: 0,
                    col: 0,
                    step: Some(io.step),
                };
                ks.push(ops::elementwise::copy_rows(gpu, src, 0, rows, dst)?);
            }
            let (kc, vc) = (&io.cache.k[l], &io.cache.v[l]);
            match &scores {
                None => ks.push(ops::attention::prefill(
                    gpu, h, &q, kc, vc, rows, true, 0, &attn,
                )?),
                Some(s) => ks.extend(ops::attention::decode(
                    gpu, h, &q, kc, vc, s, io.step, &attn,
                )?),
            }
            ks.extend(layer.o_proj.ops(gpu, &attn, &x, Act::None, true)?);
            ks.push(ops::norm::norm(
                gpu,
                &x,
                0,
                &layer.post_attention_layernorm,
                None,
                eps,
                &hn,
            )?);
            ks.extend(layer.gate_proj.ops(gpu, &hn, &gate, Act::None, false)?);
            ks.extend(layer.up_proj.ops(gpu, &hn, &up, Act::None, false)?);
            ks.push(ops::elementwise::swiglu(gpu, &gate, &up, &act)?);
            ks.extend(layer.down_proj.ops(gpu, &act, &x, Act::None, true)?);
        }
        ks.push(ops::norm::norm(
            gpu,
            &x,
            rows - 1,
            &self.norm,
            None,
            eps,
            &last,
        )?);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        ks.extend(ops::matmul::linear(
            gpu,
            &last,
            head,
            None,
            &logits,
            Act::None,
            false,
        )?);
        ks.push(ops::sample::choose(
            gpu,
            io.sampling,
            &logits.buf,
            c.vocab_size,
            io.token,
            io.step,
        )?);
        Ok(DecoderPass {
            x,
            kernels: ks,
            logits,
        })
    }
}
