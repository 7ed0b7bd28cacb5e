//! The Llama decoder: RMSNorm, grouped-query attention with rotary embeddings and a KV cache,
//! SwiGLU MLP, and the LM head. A forward pass over `rows` tokens is a list of kernels
//! encoded into one compute pass; prefill and decode differ only in their attention kernels.

use super::clip::{Linear, Loader, Stacked};
use super::config::LlamaConfig;
use crate::gguf::quant::GgmlType;
use crate::gpu::Step;
use crate::gpu::{Gpu, Kernel, Tensor, Weight};
use crate::ops::attention::{DecodeKv, Heads, KvTextures, PrefillKv};
use crate::ops::layer_tail::TailWeights;
use crate::ops::matmul::{Act, Epilogue};
use crate::ops::rope::RopeKv;
use crate::ops::{self, elementwise::RowDest, sample::Sampling};
use crate::weights::Component;
use anyhow::{bail, Result};

/// A decoder layer. q_proj, k_proj and v_proj are stacked into one weight (`qkv`), and
/// gate_proj and up_proj into another (`gate_up`), when their storage types agree.
struct DecoderLayer {
    input_layernorm: wgpu::Buffer,
    qkv: Stacked,
    o_proj: Linear,
    post_attention_layernorm: wgpu::Buffer,
    gate_up: Stacked,
    down_proj: Linear,
}

impl DecoderLayer {
    /// The layer's matrices, stacked ones as they are held.
    fn matrices(&self) -> Vec<&Weight> {
        let mut out = Vec::new();
        for s in [&self.qkv, &self.gate_up] {
            match s {
                Stacked::One(w) => out.push(w),
                Stacked::Apart(ws) => out.extend(ws),
            }
        }
        out.push(&self.o_proj.w);
        out.push(&self.down_proj.w);
        out
    }
}

pub struct Llama {
    pub cfg: LlamaConfig,
    embed_tokens: Weight,
    layers: Vec<DecoderLayer>,
    norm: wgpu::Buffer,
    /// None when the head is tied to embed_tokens.
    lm_head: Option<Weight>,
    /// RoPE's cos/sin table for the positions requests have needed so far (grown by
    /// [`Llama::rope_table`]; a config's context can be millions of positions).
    rope: std::sync::Mutex<Option<(usize, wgpu::Buffer)>>,
    /// Every RMSNorm weight as a row of one rgba32float texture (layer i's input norm at row
    /// 2i, its post-attention norm at 2i + 1, the final norm last), for the decode GEMVs
    /// that read x from its texture copy; on devices that do ([`crate::gpu::Caps::x_textures`]).
    norm_texels: Option<wgpu::TextureView>,
}

/// The KV cache, allocated for exactly the rows a request can use: f32, `[ctx[l], kv_heads·hd]`
/// per layer l for K and for V. Layers may differ: after pruning at layer K, the layers from
/// K on hold only the kept tokens.
///
/// On devices that read textures faster than buffers (CPU drivers), a layer whose decode
/// attention can read textures ([`Heads::decode_textures`]) keeps its cache in a pair of
/// rgba32float textures ([`KvTextures`]) instead of buffers: its prefill writes one pair of
/// buffers that such layers share (rows for the longest prefill) and copies them in, and a
/// decode step's fused q|k|v GEMV writes its new row straight in where it can
/// (`RopeKv::into_textures`), or else into a one-row pair that is copied in. Other layers on
/// such devices share one texture pair for their prefill attention.
pub struct KvCache {
    /// Per layer, what q|k|v write in prefill: the cache itself, or the shared prefill
    /// buffers of a layer in textures.
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub ctx: Vec<usize>,
    /// Per layer: the textures that hold its cache.
    in_textures: Vec<Option<KvTextures>>,
    /// The prefill attention's texture pair for layers in buffers (CPU devices).
    prefill_textures: Option<KvTextures>,
    /// Layers in textures: the row a decode step writes, and a Step whose kv_offset is 0.
    new_row: Option<(Tensor, Tensor, wgpu::Buffer)>,
    d_kv: usize,
}

impl KvCache {
    /// A cache of `ctx[l]` rows for layer l, whose prefill passes write at most
    /// `prefill_rows` rows.
    pub fn new(gpu: &Gpu, cfg: &LlamaConfig, ctx: &[usize], prefill_rows: usize) -> Result<Self> {
        if ctx.len() != cfg.num_hidden_layers {
            bail!(
                "KV cache: {} layer sizes for {} layers",
                ctx.len(),
                cfg.num_hidden_layers
            );
        }
        let w = cfg.kv_heads() * cfg.head_dim();
        let h = Heads {
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            hd: cfg.head_dim(),
        };
        let textures = h.decode_textures(gpu);
        let in_textures: Vec<_> = ctx
            .iter()
            .map(|&rows| textures.then(|| KvTextures::new(gpu, h, rows)).flatten())
            .collect();
        let prefill_rows = prefill_rows.max(1);
        let mut shared = None;
        let mut k = Vec::new();
        let mut v = Vec::new();
        let mut prefill_textures = None;
        for (l, &rows) in ctx.iter().enumerate() {
            if in_textures[l].is_some() {
                if shared.is_none() {
                    shared = Some((
                        Tensor::new(gpu, "kv.k_prefill", prefill_rows, w)?,
                        Tensor::new(gpu, "kv.v_prefill", prefill_rows, w)?,
                    ));
                }
                let (sk, sv) = shared.as_ref().expect("made above");
                k.push(sk.clone());
                v.push(sv.clone());
            } else {
                k.push(Tensor::new(gpu, &format!("kv.k{l}"), rows, w)?);
                v.push(Tensor::new(gpu, &format!("kv.v{l}"), rows, w)?);
                if prefill_textures.is_none() {
                    prefill_textures = KvTextures::new(gpu, h, prefill_rows);
                }
            }
        }
        let new_row = match shared {
            Some(_) => Some((
                Tensor::new(gpu, "kv.k_new", 1, w)?,
                Tensor::new(gpu, "kv.v_new", 1, w)?,
                gpu.uniform_init("step.new_row", bytemuck::bytes_of(&Step::default())),
            )),
            None => None,
        };
        Ok(Self {
            k,
            v,
            ctx: ctx.to_vec(),
            in_textures,
            prefill_textures,
            new_row,
            d_kv: w,
        })
    }

    /// Bytes the cache holds: `Σ_layers 2 · ctx[l] · d_kv · 4`, in buffers or textures (the
    /// shared prefill and new-row buffers of layers in textures not counted).
    pub fn bytes(&self) -> u64 {
        self.ctx.iter().map(|&r| 8 * (r * self.d_kv) as u64).sum()
    }

    /// The textures that hold layer l's cache, if it is kept in textures.
    pub fn textures(&self, l: usize) -> Option<&KvTextures> {
        self.in_textures[l].as_ref()
    }

    /// The textures that layer l's prefill attention reads K and V from, if any.
    fn prefill_textures(&self, l: usize) -> Option<&KvTextures> {
        self.textures(l).or(self.prefill_textures.as_ref())
    }
}

/// Whether a stacked q|k|v projection applied RoPE and wrote the KV cache itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Roped {
    /// No: the separate `rope_kv` kernel follows (and any other projection).
    Apart,
    /// The decode GEMV did, into `RopeKv`'s buffers.
    Fused,
    /// The decode GEMV did, straight into `RopeKv::into_textures`.
    IntoTextures,
    /// The prefill's q|k|v product did (`gemm_tokens`), into the buffers and into the
    /// prefill attention's textures.
    IntoPrefillTextures,
}

/// What follows a stacked projection in a decoder layer.
#[derive(Clone, Copy)]
enum Then<'a> {
    /// RoPE over q|k|v into the KV cache (a prefill: also into these textures where the
    /// product can write them).
    Rope(&'a RopeKv<'a>, Option<&'a KvTextures>),
    /// SwiGLU over [gate; up].
    SwiGlu,
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
    /// u32 `[rows]`: the rotary position of each row.
    pub positions: &'a wgpu::Buffer,
    /// The per-pass [`crate::gpu::Step`] uniform.
    pub step: &'a wgpu::Buffer,
    /// From this layer on, use this step uniform instead (their caches hold fewer rows after
    /// pruning at that layer).
    pub late_step: Option<(usize, &'a wgpu::Buffer)>,
    /// u32 `[1]`: receives the chosen token.
    pub token: &'a wgpu::Buffer,
    pub sampling: Sampling,
    /// RoPE's table, covering every position of the request ([`Llama::rope_table`]).
    pub rope_table: &'a wgpu::Buffer,
}

impl PassIo<'_> {
    fn step_for(&self, layer: usize) -> &wgpu::Buffer {
        match self.late_step {
            Some((k, s)) if layer >= k => s,
            _ => self.step,
        }
    }
}

/// One forward pass: write the input embeddings into `x`, encode `kernels`, and the chosen
/// token lands in `PassIo::token` (the last row's logits stay in `logits`).
pub struct DecoderPass {
    pub x: Tensor,
    pub kernels: Vec<Kernel>,
    pub logits: Tensor,
}

/// Activations of a forward pass over `rows` tokens.
pub struct Scratch {
    pub rows: usize,
    /// The residual stream: input embeddings in, hidden states between layers.
    pub x: Tensor,
    hn: Tensor,
    /// The last layer's queries, after RoPE (pruning reads layer K−1's).
    pub q: Tensor,
    /// q|k|v projections, before RoPE.
    qkv: Tensor,
    attn: Tensor,
    /// gate|up projections.
    gu: Tensor,
    act: Tensor,
}

impl Llama {
    pub fn load(l: &Loader, cfg: &LlamaConfig, tie_fallback: bool) -> Result<Self> {
        let (d, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (hd, nh, nkv) = (cfg.head_dim(), cfg.num_attention_heads, cfg.kv_heads());
        let c = Component::Language;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let n = |s: &str| format!("layers.{i}.{s}");
            let qkv = [
                (n("self_attn.q_proj"), nh * hd),
                (n("self_attn.k_proj"), nkv * hd),
                (n("self_attn.v_proj"), nkv * hd),
            ];
            let gate_up = [(n("mlp.gate_proj"), m), (n("mlp.up_proj"), m)];
            layers.push(DecoderLayer {
                input_layernorm: l.vector(c, &n("input_layernorm.weight"), &[d])?,
                qkv: l.stacked(c, &qkv, d)?,
                o_proj: l.linear(c, &n("self_attn.o_proj"), d, nh * hd, false)?,
                post_attention_layernorm: l.vector(
                    c,
                    &n("post_attention_layernorm.weight"),
                    &[d],
                )?,
                gate_up: l.stacked(c, &gate_up, d)?,
                down_proj: l.linear(c, &n("mlp.down_proj"), d, m, false)?,
            });
        }
        let has_head = l.src.has(Component::LmHead, "weight");
        let lm_head = if has_head || !(cfg.tie_word_embeddings || tie_fallback) {
            Some(l.weight(Component::LmHead, "weight", v, d)?)
        } else {
            None
        };
        let norm = l.vector(c, "norm.weight", &[d])?;
        let norms: Vec<&wgpu::Buffer> = (layers.iter())
            .flat_map(|l| [&l.input_layernorm, &l.post_attention_layernorm])
            .chain([&norm])
            .collect();
        let norm_texels = norm_texels(l.gpu, d, &norms)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens: l.weight(c, "embed_tokens.weight", v, d)?,
            layers,
            norm,
            lm_head,
            rope: Default::default(),
            norm_texels,
        })
    }

    /// RoPE's table for positions `0..positions` at least (at most the config's context),
    /// on the device. Built on first use and rebuilt larger when a request needs more (to a
    /// power of two of at least 2048 positions, within the context), so that the table costs
    /// what requests use rather than the config's whole context; a table past the device's
    /// binding limit is an error that names it.
    pub fn rope_table(&self, gpu: &Gpu, positions: usize) -> Result<wgpu::Buffer> {
        let mut held = self.rope.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, table)) = held.as_ref() {
            if *n >= positions {
                return Ok(table.clone());
            }
        }
        let max = self.cfg.max_position_embeddings;
        let n = (positions.checked_next_power_of_two())
            .unwrap_or(positions)
            .max(2048)
            .min(max)
            .max(positions);
        let hd = self.cfg.head_dim();
        let bytes = (n as u64).saturating_mul(4 * hd as u64);
        if bytes > gpu.caps.max_binding {
            bail!(
                "the RoPE table for {n} positions needs {bytes} bytes, past the device's \
                 storage-binding limit of {} bytes: ask for fewer tokens",
                gpu.caps.max_binding
            );
        }
        let table = ops::rope::rope_table(self.cfg.theta(), hd, n);
        let table = gpu.storage_init("rope_table", bytemuck::cast_slice(&table))?;
        *held = Some((n, table.clone()));
        Ok(table)
    }

    /// Whether every product that adds into the residual stream in decode (o_proj and
    /// down_proj) also writes its texture copy (`ops::matmul::gemv_writes_texels`), so
    /// that a decode step can keep one.
    fn residual_in_texels(&self) -> bool {
        self.norm_texels.is_some()
            && (self.layers.iter()).all(|l| {
                ops::matmul::gemv_writes_texels(&l.o_proj.w, 0)
                    && ops::matmul::gemv_writes_texels(&l.down_proj.w, 0)
            })
    }

    /// Row `row` of the norm weights' texture, where there is one.
    fn norm_texel_row(&self, row: usize) -> Option<(&wgpu::TextureView, u32)> {
        self.norm_texels.as_ref().map(|t| (t, row as u32))
    }

    /// The matrices of the first layer, which every layer repeats: what the GEMM autotuner
    /// times.
    pub fn layer_weights(&self) -> Vec<&Weight> {
        self.layers
            .first()
            .map_or_else(Vec::new, DecoderLayer::matrices)
    }

    /// Bytes of weights one decode step reads: every layer's matrices and norms, the final
    /// norm and the LM head (one embedding row aside).
    pub fn decode_weight_bytes(&self) -> u64 {
        let d = self.cfg.hidden_size as u64;
        let layers: u64 = (self.layers.iter())
            .map(|l| l.matrices().iter().map(|w| w.gpu_bytes()).sum::<u64>() + 2 * 4 * d)
            .sum();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        layers + 4 * d + head.gpu_bytes()
    }

    /// Bytes of the decoder's matrices on the device (every layer's, the embedding table and
    /// an untied LM head) per storage type, most bytes first: the mix of types a GGUF file
    /// (Q4_K_M's Q4_K and Q6_K, say) or a synthetic model's fallback gives.
    pub fn matrix_bytes_by_type(&self) -> Vec<(GgmlType, u64)> {
        let mut by: Vec<(GgmlType, u64)> = Vec::new();
        let matrices = (self.layers.iter().flat_map(DecoderLayer::matrices))
            .chain([&self.embed_tokens])
            .chain(self.lm_head.as_ref());
        for w in matrices {
            match by.iter_mut().find(|e| e.0 == w.ty) {
                Some(e) => e.1 += w.gpu_bytes(),
                None => by.push((w.ty, w.gpu_bytes())),
            }
        }
        by.sort_by_key(|e| std::cmp::Reverse(e.1));
        by
    }

    pub fn heads(&self) -> Heads {
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

    /// Scratch for a pass over `rows` tokens (allocated once per request).
    pub fn scratch(&self, gpu: &Gpu, rows: usize) -> Result<Scratch> {
        let c = &self.cfg;
        let (d, m, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let h = self.heads();
        Ok(Scratch {
            rows,
            x: Tensor::activation(gpu, "llm.x", rows, d)?,
            hn: Tensor::activation(gpu, "llm.h", rows, d)?,
            q: Tensor::new(gpu, "llm.q", rows, h.heads * hd)?,
            qkv: Tensor::new(gpu, "llm.qkv", rows, (h.heads + 2 * h.kv_heads) * hd)?,
            attn: Tensor::activation(gpu, "llm.attn", rows, h.heads * hd)?,
            gu: Tensor::new(gpu, "llm.gate_up", rows, 2 * m)?,
            act: Tensor::activation(gpu, "llm.act", rows, m)?,
        })
    }

    /// Scratch whose residual stream is `x` (the compacted rows after pruning).
    pub fn scratch_over(&self, gpu: &Gpu, x: Tensor) -> Result<Scratch> {
        let mut s = self.scratch(gpu, x.rows)?;
        s.x = x;
        Ok(s)
    }

    /// Copy all rows of `rows` into `x` from row `at` on (the visual tokens into the prompt).
    pub fn place_rows(&self, gpu: &Gpu, rows: &Tensor, x: &Tensor, at: usize) -> Result<Kernel> {
        let dst = RowDest {
            buf: &x.buf,
            stride: x.cols,
            row0: at,
            col: 0,
            step: None,
            texels: None,
        };
        ops::elementwise::copy_rows(gpu, rows, 0, rows.rows, dst)
    }

    /// Kernels of decoder layers `layers` over the rows of `s`, whose rotary positions are
    /// `positions`. Prefill (`decode_scores` None) writes cache rows from 0; decode writes
    /// cache row `step.kv_offset` and attends over `step.kv_len` rows.
    pub fn layer_ops(
        &self,
        gpu: &Gpu,
        layers: std::ops::Range<usize>,
        s: &Scratch,
        positions: &wgpu::Buffer,
        io: &PassIo,
        decode_scores: Option<&Tensor>,
    ) -> Result<Vec<Kernel>> {
        let h = self.heads();
        let rows = s.rows;
        let mut ks = Vec::new();
        for l in layers {
            let layer = &self.layers[l];
            let step = io.step_for(l);
            let (mut kc, mut vc) = (&io.cache.k[l], &io.cache.v[l]);
            let mut rope_step = step;
            // decode into a layer kept in textures: the fused q|k|v GEMV writes this step's
            // row straight into row step.kv_offset of the textures where it can; otherwise
            // q|k|v write the one new row and the attention copies it there
            let decode_tex = match (decode_scores, io.cache.textures(l), &io.cache.new_row) {
                (Some(_), Some(t), Some((k_new, v_new, zero))) => {
                    (kc, vc, rope_step) = (k_new, v_new, zero);
                    Some(t)
                }
                _ => None,
            };
            // (a layer in textures: its prefill buffers, and the textures it copies them to)
            let fits = kc
                .rows
                .min(io.cache.textures(l).map_or(usize::MAX, |t| t.rows()));
            if rows > fits {
                bail!("{rows} tokens do not fit layer {l}'s KV cache of {fits}");
            }
            // Attention input: RMSNorm, q|k|v, RoPE, into the cache.
            let rope = RopeKv {
                heads: h,
                positions,
                table: io.rope_table,
                q: &s.q,
                k_cache: kc,
                v_cache: vc,
                step: rope_step,
                into_textures: decode_tex.map(|t| (t, step)),
            };
            let prefill_tex = io
                .cache
                .prefill_textures(l)
                .filter(|_| decode_scores.is_none());
            let roped = self.stacked_ops(
                gpu,
                s,
                &layer.qkv,
                (&layer.input_layernorm, 2 * l),
                Then::Rope(&rope, prefill_tex),
                &mut ks,
            )?;
            // prefill: where the attention reads K and V from textures, the q|k|v product or
            // RoPE's pass writes them there too where it can, saving the copy's dispatch
            let mut kv = PrefillKv::copy(prefill_tex);
            if let (Roped::IntoPrefillTextures, Some(t)) = (roped, prefill_tex) {
                kv = PrefillKv::Filled(t);
            }
            if roped == Roped::Apart {
                let into = match (decode_scores, kv) {
                    (None, PrefillKv::Copy(t)) => {
                        ops::rope::rope_kv_into_textures(gpu, &s.qkv, &rope, t)?.map(|k| (k, t))
                    }
                    _ => None,
                };
                match into {
                    Some((k, t)) => {
                        ks.push(k);
                        kv = PrefillKv::Filled(t);
                    }
                    None => ks.push(ops::rope::rope_kv(gpu, &s.qkv, &rope)?),
                }
            }
            match decode_scores {
                None => ks.extend(ops::attention::prefill(
                    gpu, h, &s.q, kc, vc, rows, true, 0, &s.attn, kv,
                )?),
                Some(partials) => {
                    let kv = match decode_tex {
                        Some(tex) => DecodeKv::Textures {
                            tex,
                            new_row: (roped != Roped::IntoTextures).then_some((kc, vc)),
                        },
                        None => DecodeKv::Buffers { k: kc, v: vc },
                    };
                    ks.extend(ops::attention::decode(
                        gpu, h, &s.q, kv, partials, step, &s.attn,
                    )?)
                }
            }
            // a prefill over a narrow decoder on CPU devices: o_proj, the MLP and both
            // residual adds in one dispatch
            if let Some(tail) = self.tail_weights(layer).filter(|_| decode_scores.is_none()) {
                if ops::layer_tail::fits(gpu, rows, &tail) {
                    ks.push(ops::layer_tail::layer_tail(gpu, &s.attn, &s.x, &tail)?);
                    continue;
                }
            }
            ks.extend(layer.o_proj.ops(gpu, &s.attn, &s.x, Act::None, true)?);
            // MLP: RMSNorm, SwiGLU(gate, up), down.
            self.stacked_ops(
                gpu,
                s,
                &layer.gate_up,
                (&layer.post_attention_layernorm, 2 * l + 1),
                Then::SwiGlu,
                &mut ks,
            )?;
            ks.extend(layer.down_proj.ops(gpu, &s.act, &s.x, Act::None, true)?);
        }
        Ok(ks)
    }

    /// A layer's o_proj, MLP and post-attention norm as `layer_tail` takes them: None where
    /// a product has a bias or gate and up are apart.
    fn tail_weights<'a>(&self, layer: &'a DecoderLayer) -> Option<TailWeights<'a>> {
        match (&layer.gate_up, &layer.o_proj.b, &layer.down_proj.b) {
            (Stacked::One(gate_up), None, None) => Some(TailWeights {
                o_proj: &layer.o_proj.w,
                gate_up,
                down: &layer.down_proj.w,
                norm: (
                    &layer.post_attention_layernorm,
                    self.cfg.rms_norm_eps as f32,
                ),
            }),
            _ => None,
        }
    }

    /// RMSNorm of `s.x` with `norm`, then the stacked projection `w`: q|k|v into `s.qkv`,
    /// or [gate; up] with SwiGLU into `s.act` through `s.gu`. Where gemv.wgsl reads w's
    /// format and runs the rows (decode; prefill on devices whose table picks the lane
    /// kernel) the projection and SwiGLU are one dispatch, with the norm fused too where
    /// that pays. In decode the q|k|v GEMV also applies RoPE and writes the KV cache where
    /// it can, and says so (then the caller runs no `rope_kv`).
    fn stacked_ops(
        &self,
        gpu: &Gpu,
        s: &Scratch,
        w: &Stacked,
        (norm, norm_row): (&wgpu::Buffer, usize),
        then: Then,
        ks: &mut Vec<Kernel>,
    ) -> Result<Roped> {
        let eps = self.cfg.rms_norm_eps as f32;
        let swiglu = matches!(then, Then::SwiGlu);
        let norm_op = || ops::norm::norm(gpu, &s.x, 0, norm, None, eps, &s.hn);
        if let Stacked::One(w) = w {
            let y = if swiglu { &s.act } else { &s.qkv };
            let on_load = s.rows == 1 || ops::matmul::lanes_norm_pays(w);
            let e = Epilogue {
                norm: on_load.then_some((norm, eps)),
                norm_texels: self.norm_texel_row(norm_row).filter(|_| on_load),
                gate_up: swiglu,
                ..Default::default()
            };
            if let Then::Rope(rope, tex) = then {
                if s.rows > 1 && ops::matmul::rope_by_token(gpu, s.rows, w) {
                    // a prefill's q|k|v by token, RoPE and the cache writes its epilogue
                    let tex = tex.filter(|t| ops::matmul::copy_fits(rope.heads, t, s.rows));
                    let with_rope = Epilogue {
                        rope: Some(*rope),
                        kv_copy: tex,
                        ..e
                    };
                    if let Some(fused) = ops::matmul::fused(gpu, &s.x, w, rope.q, with_rope)? {
                        ks.extend(fused);
                        return Ok(if tex.is_some() {
                            Roped::IntoPrefillTextures
                        } else {
                            Roped::Fused
                        });
                    }
                }
            }
            if let (Then::Rope(rope, _), 1) = (then, s.rows) {
                let with_rope = Epilogue {
                    rope: Some(*rope),
                    ..e
                };
                if let Some(fused) = ops::matmul::gemv(gpu, &s.x, w, rope.q, with_rope)? {
                    ks.extend(fused);
                    return Ok(if ops::matmul::rope_into_textures(gpu, w, rope) {
                        Roped::IntoTextures
                    } else {
                        Roped::Fused
                    });
                }
            }
            let x = if on_load { &s.x } else { &s.hn };
            if let Some(fused) = ops::matmul::fused(gpu, x, w, y, e)? {
                if !on_load {
                    ks.push(norm_op()?);
                }
                ks.extend(fused);
                return Ok(Roped::Apart);
            }
        }
        if let (Stacked::Apart(parts), Then::Rope(rope, _), 1) = (w, then, s.rows) {
            if let Some(roped) = self.rope_parts(gpu, s, parts, (norm, norm_row), rope, ks)? {
                return Ok(roped);
            }
        }
        ks.push(norm_op()?);
        let y = if swiglu { &s.gu } else { &s.qkv };
        let parts: Vec<&Weight> = match w {
            Stacked::One(w) => vec![w],
            Stacked::Apart(ws) => ws.iter().collect(),
        };
        let mut col = 0;
        for w in parts {
            ks.extend(ops::matmul::linear_at(
                gpu,
                &s.hn,
                w,
                None,
                y,
                col,
                Act::None,
                false,
            )?);
            col += w.rows;
        }
        if swiglu {
            ks.push(ops::elementwise::swiglu(gpu, &s.gu, &s.act)?);
        }
        Ok(Roped::Apart)
    }

    /// Decode's q|k|v held in parts (their storage types differ): one GEMV a part, each
    /// with the norm on load and RoPE with the KV-cache write as its epilogue, as one
    /// stacked weight's would be; into the cache's textures only where every part can write
    /// them. None (nothing pushed) where the GEMV does not take a part.
    fn rope_parts(
        &self,
        gpu: &Gpu,
        s: &Scratch,
        parts: &[Weight],
        (norm, norm_row): (&wgpu::Buffer, usize),
        rope: &RopeKv,
        ks: &mut Vec<Kernel>,
    ) -> Result<Option<Roped>> {
        let into_tex = (parts.iter()).all(|w| ops::matmul::rope_into_textures(gpu, w, rope));
        let rope = RopeKv {
            into_textures: rope.into_textures.filter(|_| into_tex),
            ..*rope
        };
        let mut kernels = Vec::new();
        let mut from = 0;
        for w in parts {
            let e = Epilogue {
                norm: Some((norm, self.cfg.rms_norm_eps as f32)),
                norm_texels: self.norm_texel_row(norm_row),
                rope: Some(rope),
                rope_from: Some(from),
                ..Default::default()
            };
            match ops::matmul::gemv(gpu, &s.x, w, rope.q, e)? {
                Some(k) => kernels.extend(k),
                None => return Ok(None),
            }
            from += w.rows / rope.heads.hd;
        }
        ks.extend(kernels);
        Ok(Some(if into_tex {
            Roped::IntoTextures
        } else {
            Roped::Fused
        }))
    }

    /// Final norm of row `row` of `x`, the LM head into `logits`, and the token choice.
    pub fn head_ops(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        row: usize,
        logits: &Tensor,
        io: &PassIo,
    ) -> Result<Vec<Kernel>> {
        let c = &self.cfg;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let choose = ops::sample::choose(
            gpu,
            io.sampling,
            &logits.buf,
            c.vocab_size,
            io.token,
            io.step,
        )?;
        if x.rows == 1 {
            let e = Epilogue {
                norm: Some((&self.norm, c.rms_norm_eps as f32)),
                norm_texels: self.norm_texel_row(2 * self.layers.len()),
                ..Default::default()
            };
            if let Some(mut ks) = ops::matmul::gemv(gpu, x, head, logits, e)? {
                ks.push(choose);
                return Ok(ks);
            }
        }
        let last = Tensor::new(gpu, "llm.last", 1, c.hidden_size)?;
        let mut ks = vec![ops::norm::norm(
            gpu,
            x,
            row,
            &self.norm,
            None,
            c.rms_norm_eps as f32,
            &last,
        )?];
        ks.extend(ops::matmul::linear(
            gpu,
            &last,
            head,
            None,
            logits,
            Act::None,
            false,
        )?);
        ks.push(choose);
        Ok(ks)
    }

    /// Build a forward pass over `rows` tokens through every layer. Scratch is allocated
    /// here, once per request.
    pub fn pass(&self, gpu: &Gpu, rows: usize, mode: Mode, io: &PassIo) -> Result<DecoderPass> {
        if mode == Mode::Decode && rows != 1 {
            bail!("decode runs one token at a time");
        }
        let mut s = self.scratch(gpu, rows)?;
        // decode on devices that read x faster from textures: the residual stream in one
        // too, which the embedding and the residual adds write and the norm GEMVs read
        if mode == Mode::Decode && self.residual_in_texels() {
            s.x = s.x.with_texels(gpu, "llm.x_texels");
        }
        let scores = match mode {
            Mode::Decode => {
                let ctx = io.cache.ctx.iter().copied().max().unwrap_or(1);
                Some(ops::attention::decode_partials(gpu, self.heads(), ctx)?)
            }
            Mode::Prefill => None,
        };
        let logits = Tensor::new(gpu, "llm.logits", 1, self.cfg.vocab_size)?;
        let mut ks = self.layer_ops(
            gpu,
            0..self.layers.len(),
            &s,
            io.positions,
            io,
            scores.as_ref(),
        )?;
        ks.extend(self.head_ops(gpu, &s.x, rows - 1, &logits, io)?);
        Ok(DecoderPass {
            x: s.x,
            kernels: ks,
            logits,
        })
    }
}

/// The RMSNorm weights `norms` (d values each) as the rows of one rgba32float texture, on
/// devices whose decode GEMVs read x and the norm from textures; None elsewhere.
fn norm_texels(gpu: &Gpu, d: usize, norms: &[&wgpu::Buffer]) -> Result<Option<wgpu::TextureView>> {
    if !gpu.caps.x_textures || !d.is_multiple_of(4) {
        return Ok(None);
    }
    let Some(tex) = gpu.rgba32float_texture("llm.norm_texels", d / 4, norms.len()) else {
        return Ok(None);
    };
    let copies = (norms.iter().enumerate())
        .map(|(row, g)| {
            let g = Tensor {
                buf: (*g).clone(),
                rows: 1,
                cols: d,
                texels: None,
            };
            ops::attention::rows_to_texels(gpu, &g, &tex, row)
        })
        .collect::<Result<Vec<_>>>()?;
    gpu.run(&copies.iter().collect::<Vec<_>>())?;
    Ok(Some(tex))
}
