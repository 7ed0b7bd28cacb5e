//! The pruning stages as GPU passes inside a request's pipeline:
//! - [`encoder_stage`]: between the vision tower (layer −2) and the projector: FasterVLM,
//!   VisionZip, ARP (and so PosPrune's first stage);
//! - [`projector_stage`]: after the projector: DivPrune;
//! - [`decoder_stage`]: at decoder layer K, from layer K−1's attention: FastV, PoRe, PBC+MMR
//!   (PosPrune's second stage). It compacts the hidden states and position ids; the layers
//!   from K on then run, and cache, only the kept rows.
//!
//! Nothing here reads GPU memory: scores, selections and hidden states stay on the device.
//! [`StageBuffers::trace`] reads them back on request (tests, keep maps, `--json`).

use super::calibrate::LayerProfile;
use super::{arp, visionzip, Method, PbcQuery, Plan, PruneOptions};
use crate::gpu::{Gpu, Kernel, Tensor};
use crate::ops::attention::Heads;
use crate::ops::prune::{self as op, Queries, SelectParams};
use anyhow::{bail, Result};
use serde::Serialize;

/// The device buffers of one pruning stage, alive for the request.
pub struct StageBuffers {
    pub stage: &'static str,
    /// Candidates the stage chose from, and how many it kept.
    pub n: usize,
    pub kept: usize,
    /// The raw scores (attention) of the candidates.
    pub scores: Tensor,
    /// Reweighted scores (PoRe) or corrected relevance (PBC).
    pub reweighted: Option<Tensor>,
    /// Cosine similarities of the candidates (MMR, DivPrune, VisionZip keys).
    pub gram: Option<Tensor>,
    /// u32 `[kept]`: sorted indices among the candidates.
    pub keep: wgpu::Buffer,
    /// u32 `[kept]`: raster positions (0..N) of the survivors.
    pub raster: wgpu::Buffer,
    /// VisionZip: u32 `[n]`, the kept slot each merged token joined, or u32::MAX.
    pub assign: Option<wgpu::Buffer>,
    /// VisionZip: the head-mean keys, whose Gram matrix only a full trace computes (the
    /// selection compares each token with its few targets, from the unit keys).
    keys: Option<Tensor>,
    _scratch: Vec<wgpu::Buffer>,
}

/// A stage's decisions and inputs, read back from the GPU.
#[derive(Clone, Debug, Serialize)]
pub struct StageTrace {
    pub stage: &'static str,
    pub keep: Vec<u32>,
    pub raster: Vec<u32>,
    #[serde(skip)]
    pub scores: Vec<f32>,
    #[serde(skip)]
    pub reweighted: Option<Vec<f32>>,
    #[serde(skip)]
    pub gram: Option<Vec<f32>>,
    #[serde(skip)]
    pub assign: Option<Vec<u32>>,
}

fn read_u32(gpu: &Gpu, b: &wgpu::Buffer, n: usize) -> Result<Vec<u32>> {
    Ok(bytemuck::pod_collect_to_vec(&gpu.read_bytes(
        b,
        0,
        4 * n as u64,
    )?))
}

impl StageBuffers {
    /// Read the stage back (after the pipeline has run). `full` adds scores and matrices.
    pub fn trace(&self, gpu: &Gpu, full: bool) -> Result<StageTrace> {
        let opt = |t: &Option<Tensor>| -> Result<Option<Vec<f32>>> {
            match t {
                Some(t) if full => Ok(Some(t.read(gpu)?)),
                _ => Ok(None),
            }
        };
        Ok(StageTrace {
            stage: self.stage,
            keep: read_u32(gpu, &self.keep, self.kept)?,
            raster: read_u32(gpu, &self.raster, self.kept)?,
            scores: if full {
                self.scores.read(gpu)?
            } else {
                Vec::new()
            },
            reweighted: opt(&self.reweighted)?,
            gram: match &self.keys {
                Some(keys) if full => Some(key_gram(gpu, keys)?),
                _ => opt(&self.gram)?,
            },
            assign: match &self.assign {
                Some(a) if full => Some(read_u32(gpu, a, self.n)?),
                _ => None,
            },
        })
    }
}

/// The cosine Gram matrix of `keys`' rows, computed and read back (traces only).
fn key_gram(gpu: &Gpu, keys: &Tensor) -> Result<Vec<f32>> {
    let n = keys.rows;
    let unit = Tensor::new(gpu, "trace.key_unit", n, keys.cols)?;
    let gram = Tensor::new(gpu, "trace.key_gram", n, n)?;
    let ks = op::cosine_gram(gpu, keys, 0..n, &unit, &gram)?;
    gpu.run(&ks.iter().collect::<Vec<_>>())?;
    gram.read(gpu)
}

fn u32_buffer(gpu: &Gpu, label: &str, n: usize) -> Result<wgpu::Buffer> {
    gpu.storage_buffer(label, 4 * n as u64)
}

/// The identity raster map 0..n (candidates that are all N patches in raster order).
pub fn identity(gpu: &Gpu, n: usize) -> Result<wgpu::Buffer> {
    let v: Vec<u32> = (0..n as u32).collect();
    gpu.storage_init("prune.identity", bytemuck::cast_slice(&v))
}

/// What the encoder stage produces: the kept patches' features, ready for the projector.
pub struct EncoderStage {
    pub kernels: Vec<Kernel>,
    pub feats: Tensor,
    pub buffers: StageBuffers,
}

/// FasterVLM, VisionZip or ARP on the vision tower's last layer run (layer −2). `out` holds
/// [CLS, patches] rows; `q` and `k` are that layer's. `grid` is the patch grid side.
#[allow(clippy::too_many_arguments)]
pub fn encoder_stage(
    gpu: &Gpu,
    plan: &Plan,
    opts: &PruneOptions,
    h: Heads,
    q: &Tensor,
    k: &Tensor,
    out: &Tensor,
    grid: usize,
) -> Result<EncoderStage> {
    let n = plan.encoded;
    let b = plan.encoder_keep;
    if out.rows != n + 1 {
        bail!("encoder pruning expects a CLS row before the {n} patches");
    }
    let cls = Tensor::new(gpu, "prune.cls_attention", n, 1)?;
    let stats = gpu.storage_buffer("prune.stats", 8 * h.heads as u64)?;
    let queries = Queries {
        rows: 0..1,
        causal: false,
        kv_len: n + 1,
    };
    let mut ks = op::attention_relevance(gpu, h, q, k, &queries, 1..n + 1, &stats, &cls)?;
    let keep = u32_buffer(gpu, "prune.keep_encoder", b)?;
    let flags = u32_buffer(gpu, "prune.flags", 2 * n)?;
    let feats = Tensor::new(gpu, "projector.in", b, out.cols)?;
    let mut scratch = vec![stats];
    let mut keys = None;
    let mut assign_b = None;
    match plan.method {
        Method::FasterVlm => {
            ks.push(op::select(
                gpu,
                "top_k",
                None,
                SelectParams::new(n, b),
                &[(1, &cls.buf), (3, &keep), (5, &flags)],
            )?);
            ks.push(op::gather_rows(gpu, &keep, out, 1, &feats)?);
        }
        Method::Arp | Method::PosPrune => {
            arp::check(n, grid, opts.arp_regions)?;
            let r = opts.arp_regions;
            if r * r > 64 {
                bail!("--arp-regions {r} gives more than 64 regions");
            }
            let budget = u32_buffer(gpu, "prune.arp_budget", r * r)?;
            let p = SelectParams {
                grid: grid as u32,
                regions: r as u32,
                floor_count: arp::floor_count(opts.arp_floor, b, r * r) as u32,
                ..SelectParams::new(n, b)
            };
            ks.push(op::select(
                gpu,
                "arp_budget",
                None,
                p,
                &[(1, &cls.buf), (6, &budget)],
            )?);
            ks.push(op::select(
                gpu,
                "top_k",
                Some("REGIONS"),
                p,
                &[(1, &cls.buf), (3, &keep), (5, &flags), (6, &budget)],
            )?);
            ks.push(op::gather_rows(gpu, &keep, out, 1, &feats)?);
            scratch.push(budget);
        }
        Method::VisionZip => {
            let (dominant, contextual) = visionzip::split(b, opts.visionzip_contextual);
            let km = Tensor::new(gpu, "prune.key_mean", n, h.hd)?;
            let unit = Tensor::new(gpu, "prune.key_unit", n, h.hd)?;
            let assign = u32_buffer(gpu, "prune.assign", n)?;
            ks.push(op::key_mean(gpu, h, k, 1..n + 1, &km)?);
            ks.push(op::normalize_rows(gpu, &km, 0..n, &unit)?);
            let p = SelectParams {
                dominant: dominant as u32,
                contextual: contextual as u32,
                cols: h.hd as u32,
                ..SelectParams::new(n, b)
            };
            ks.push(op::select(
                gpu,
                "visionzip",
                Some("KEY_ROWS"),
                p,
                &[
                    (1, &cls.buf),
                    (2, &unit.buf),
                    (3, &keep),
                    (5, &flags),
                    (9, &assign),
                ],
            )?);
            ks.push(op::merge_rows(
                gpu, &keep, &assign, &flags, n, out, 1, &feats,
            )?);
            assign_b = Some(assign);
            keys = Some(km);
            scratch.push(unit.buf);
        }
        m => bail!("{m} does not prune at the encoder"),
    }
    scratch.push(flags);
    let raster = keep.clone();
    Ok(EncoderStage {
        kernels: ks,
        feats,
        buffers: StageBuffers {
            stage: "encoder",
            n,
            kept: b,
            scores: cls,
            reweighted: None,
            gram: None,
            keep,
            raster,
            assign: assign_b,
            keys,
            _scratch: scratch,
        },
    })
}

/// DivPrune on the projector output `proj` [N, d]: the kept rows go to `out` [B, d].
pub fn projector_stage(
    gpu: &Gpu,
    plan: &Plan,
    proj: &Tensor,
) -> Result<(Vec<Kernel>, Tensor, StageBuffers)> {
    let n = plan.encoded;
    let b = plan.encoder_keep;
    let unit = Tensor::new(gpu, "prune.unit", n, proj.cols)?;
    let gram = Tensor::new(gpu, "prune.gram", n, n)?;
    let keep = u32_buffer(gpu, "prune.keep_projector", b)?;
    let work = Tensor::new(gpu, "prune.work", n, 1)?;
    let flags = u32_buffer(gpu, "prune.flags", 2 * n)?;
    let out = Tensor::new(gpu, "projector.kept", b, proj.cols)?;
    let row_min = Tensor::new(gpu, "prune.row_min", n, 1)?;
    let mut ks = op::cosine_gram(gpu, proj, 0..n, &unit, &gram)?;
    ks.push(op::row_min_distance(gpu, &gram, n, &row_min)?);
    ks.push(op::max_min(
        gpu,
        SelectParams::new(n, b),
        &[
            (1, &row_min.buf),
            (2, &gram.buf),
            (3, &keep),
            (4, &work.buf),
            (5, &flags),
        ],
    )?);
    ks.push(op::gather_rows(gpu, &keep, proj, 0, &out)?);
    let raster = keep.clone();
    Ok((
        ks,
        out,
        StageBuffers {
            stage: "projector",
            n,
            kept: b,
            scores: work,
            reweighted: None,
            gram: Some(gram),
            keep,
            raster,
            assign: None,
            keys: None,
            _scratch: vec![flags, unit.buf, row_min.buf],
        },
    ))
}

/// Where the visual tokens sit in the decoder's prefill sequence.
pub struct DecoderInput<'a> {
    pub h: Heads,
    /// Layer K−1's queries (after RoPE) over all `rows` prompt rows.
    pub q: &'a Tensor,
    /// Layer K−1's key cache (rows 0..rows valid).
    pub k_cache: &'a Tensor,
    /// Hidden states entering layer K, [rows, d].
    pub x: &'a Tensor,
    pub rows: usize,
    /// First visual row and visual rows.
    pub slot: usize,
    pub n_vis: usize,
    /// u32 `[n_vis]`: the raster position of each visual row.
    pub raster: &'a wgpu::Buffer,
}

/// What the decoder stage produces: the compacted sequence for layers K and later.
pub struct DecoderStage {
    pub kernels: Vec<Kernel>,
    /// [rows', d] hidden states of the kept sequence.
    pub x: Tensor,
    /// u32 [rows']: their original position ids.
    pub positions: wgpu::Buffer,
    pub buffers: StageBuffers,
}

/// FastV, PoRe or PBC+MMR at decoder layer K. `profile`: the calibration of layer K, if any.
/// `pad_mask`: PoRe's padding mask over the N raster positions.
pub fn decoder_stage(
    gpu: &Gpu,
    plan: &Plan,
    opts: &PruneOptions,
    profile: Option<&LayerProfile>,
    pad_mask: &[f32],
    inp: &DecoderInput,
) -> Result<DecoderStage> {
    let (n_vis, kept) = (inp.n_vis, plan.decoder_keep);
    let text_after = inp.slot + n_vis..inp.rows;
    let use_text = plan.method != Method::FastV
        && plan.method != Method::PoRe
        && opts.pbc_query == PbcQuery::Text
        && !text_after.is_empty();
    let queries = Queries {
        rows: if use_text {
            text_after
        } else {
            inp.rows - 1..inp.rows
        },
        causal: true,
        kv_len: inp.rows,
    };
    let stats = gpu.storage_buffer("prune.stats", 8 * (inp.h.heads * queries.rows.len()) as u64)?;
    let rel = Tensor::new(gpu, "prune.relevance", n_vis, 1)?;
    let keys = inp.slot..inp.slot + n_vis;
    let mut ks =
        op::attention_relevance(gpu, inp.h, inp.q, inp.k_cache, &queries, keys, &stats, &rel)?;
    let keep = u32_buffer(gpu, "prune.keep_decoder", kept)?;
    let flags = u32_buffer(gpu, "prune.flags", 2 * n_vis)?;
    let work = Tensor::new(gpu, "prune.reweighted", n_vis, 1)?;
    let n_raster = plan.encoded;
    let mut scratch = vec![stats];
    let mut reweighted = None;
    let mut gram_t = None;
    match plan.method {
        Method::FastV => {
            ks.push(op::select(
                gpu,
                "top_k",
                None,
                SelectParams::new(n_vis, kept),
                &[(1, &rel.buf), (3, &keep), (5, &flags)],
            )?);
        }
        Method::PoRe => {
            if pad_mask.len() != n_raster {
                bail!(
                    "PoRe: padding mask of {} for {n_raster} patches",
                    pad_mask.len()
                );
            }
            let mask = gpu.storage_init("prune.pad_mask", bytemuck::cast_slice(pad_mask))?;
            let rho = opts.pore_rho.or(profile.map(|p| p.rho)).unwrap_or(0.0);
            let p = SelectParams {
                rho,
                ..SelectParams::new(n_vis, kept)
            };
            ks.push(op::select(
                gpu,
                "reweight",
                Some("PORE"),
                p,
                &[(1, &rel.buf), (4, &work.buf), (7, inp.raster), (8, &mask)],
            )?);
            ks.push(op::select(
                gpu,
                "top_k",
                None,
                p,
                &[(1, &work.buf), (3, &keep), (5, &flags)],
            )?);
            scratch.push(mask);
            reweighted = Some(work);
        }
        Method::PbcMmr | Method::PosPrune => {
            let beta: Option<&Vec<f32>> = profile.map(|p| match opts.pbc_query {
                PbcQuery::Text => &p.text_profile,
                PbcQuery::Last => &p.last_profile,
            });
            let aux = match beta {
                Some(b) if b.len() == n_raster => {
                    gpu.storage_init("prune.profile", bytemuck::cast_slice(b))?
                }
                Some(b) => bail!(
                    "calibration profile of {} positions for {n_raster} patches",
                    b.len()
                ),
                None => gpu.storage_buffer("prune.no_profile", 4)?,
            };
            let d = inp.x.cols;
            let unit = Tensor::new(gpu, "prune.unit", n_vis, d)?;
            let gram = Tensor::new(gpu, "prune.gram", n_vis, n_vis)?;
            let maxsim = gpu.storage_buffer("prune.maxsim", 4 * n_vis as u64)?;
            let p = SelectParams {
                has_profile: beta.is_some() as u32,
                lambda: opts.mmr_lambda,
                ..SelectParams::new(n_vis, kept)
            };
            ks.push(op::select(
                gpu,
                "reweight",
                None,
                p,
                &[(1, &rel.buf), (4, &work.buf), (7, inp.raster), (8, &aux)],
            )?);
            ks.extend(op::cosine_gram(
                gpu,
                inp.x,
                inp.slot..inp.slot + n_vis,
                &unit,
                &gram,
            )?);
            ks.push(op::select(
                gpu,
                "mmr",
                None,
                p,
                &[
                    (1, &work.buf),
                    (2, &gram.buf),
                    (3, &keep),
                    (4, &maxsim),
                    (5, &flags),
                ],
            )?);
            scratch.extend([aux, maxsim, unit.buf]);
            reweighted = Some(work);
            gram_t = Some(gram);
        }
        m => bail!("{m} does not prune in the decoder"),
    }
    let rows2 = inp.rows - n_vis + kept;
    let x2 = Tensor::activation(gpu, "llm.x_pruned", rows2, inp.x.cols)?;
    let positions = u32_buffer(gpu, "positions.pruned", rows2)?;
    ks.push(op::splice_rows(
        gpu, &keep, inp.x, inp.slot, n_vis, kept, &x2, &positions,
    )?);
    let raster = u32_buffer(gpu, "prune.raster_decoder", kept)?;
    ks.push(op::compose(gpu, &keep, inp.raster, kept, &raster)?);
    scratch.push(flags);
    Ok(DecoderStage {
        kernels: ks,
        x: x2,
        positions,
        buffers: StageBuffers {
            stage: "decoder",
            n: n_vis,
            kept,
            scores: rel,
            reweighted,
            gram: gram_t,
            keep,
            raster,
            assign: None,
            keys: None,
            _scratch: scratch,
        },
    })
}
