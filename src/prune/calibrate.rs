//! Positional-bias calibration (`vlm-run calibrate`). Shallow decoder layers attend to visual
//! tokens with a trend over raster position that does not depend on the content. The
//! calibration runs prefill on content-free inputs (a mean-colour image and a few neutral
//! prompts), averages the visual tokens' relevance at every layer, smooths it over one grid
//! row, and writes the profile (PBC's β) and PoRe's ρ to a small JSON file.
//!
//! File: `calibration.json` beside the model by default. It names the model it was made
//! for (a fingerprint of config.json and the final norm's weights); another model's file is
//! refused.

use super::select::log_linear_slope;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "vlm-run-calibration-1";
pub const FILE_NAME: &str = "calibration.json";

/// Content-free prompts: neutral requests that name nothing in particular.
pub const NEUTRAL_PROMPTS: &[&str] =
    &["Describe the image.", "What do you see?", "Answer briefly."];

/// The calibration of one prune layer K (measured in layer K−1's attention).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerProfile {
    /// The prune layer K this profile serves.
    pub layer: usize,
    /// β(p): mean attention of the text tokens after the image over raster position p,
    /// smoothed (PBC's default query set).
    pub text_profile: Vec<f32>,
    /// The same for the last prompt token only (FastV's query; PBC with --pbc-query last).
    pub last_profile: Vec<f32>,
    /// PoRe's ρ = e^(−slope) from a log-linear fit of `last_profile`.
    pub rho: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Calibration {
    pub format: String,
    /// Fingerprint of the model this was made for.
    pub model: String,
    pub visual_tokens: usize,
    pub grid: usize,
    pub prompts: Vec<String>,
    pub layers: Vec<LayerProfile>,
}

/// FNV-1a, 64 bit: a stable fingerprint (not a security hash).
pub fn fnv1a(parts: &[&[u8]]) -> String {
    format!("{:016x}", fnv1a_u64(parts))
}

/// [`fnv1a`] as a number (seeds of synthetic weights).
pub fn fnv1a_u64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Moving average with a centred window of `window` values, truncated at the ends.
pub fn smooth(v: &[f32], window: usize) -> Vec<f32> {
    let half = window / 2;
    (0..v.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(v.len());
            v[lo..hi].iter().sum::<f32>() / (hi - lo) as f32
        })
        .collect()
}

impl LayerProfile {
    /// Build from the raw per-position means (already averaged over prompts).
    pub fn from_means(layer: usize, text: &[f32], last: &[f32], grid: usize) -> Self {
        let pos: Vec<u32> = (0..last.len() as u32).collect();
        let rho = (-log_linear_slope(&pos, last, |_| true)).exp();
        Self {
            layer,
            text_profile: smooth(text, grid),
            last_profile: smooth(last, grid),
            rho,
        }
    }
}

impl Calibration {
    pub fn default_path(model_dir: &Path) -> PathBuf {
        model_dir.join(FILE_NAME)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Load and check that the file fits this model (fingerprint, visual tokens).
    pub fn load(path: &Path, fingerprint: &str, visual_tokens: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read calibration file {}", path.display()))?;
        let c: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a vlm-run calibration file", path.display()))?;
        if c.format != FORMAT {
            bail!(
                "{}: format {:?}, expected {FORMAT:?}",
                path.display(),
                c.format
            );
        }
        if c.model != fingerprint {
            bail!(
                "{}: calibration file was made for another model (fingerprint {}, this model is \
                 {fingerprint}); run `vlm-run calibrate` for this model",
                path.display(),
                c.model
            );
        }
        if c.visual_tokens != visual_tokens
            || c.layers.iter().any(|l| {
                l.text_profile.len() != visual_tokens || l.last_profile.len() != visual_tokens
            })
        {
            bail!(
                "{}: profiles do not have {visual_tokens} positions",
                path.display()
            );
        }
        Ok(c)
    }

    /// The profile for prune layer `k`.
    pub fn layer(&self, k: usize) -> Option<&LayerProfile> {
        self.layers.iter().find(|l| l.layer == k)
    }
}

/// Run the calibration: prefill on a mean-colour image with each neutral prompt, and at every
/// layer l < L−1 read the visual tokens' relevance (text queries after the image, and the
/// last token), which prune layer l + 1 would use. Only this offline pass reads attention
/// back to the CPU.
pub fn run(engine: &crate::Engine, template: Option<&str>) -> Result<Calibration> {
    use crate::gpu::{Step, Tensor};
    use crate::model::llama::{KvCache, PassIo};
    use crate::ops::{self, prune::Queries};
    let gpu = &*engine.gpu;
    let model = &engine.model;
    let llm = &model.llm;
    let cfg = &llm.cfg;
    let layers = cfg.num_hidden_layers;
    if model.vision.is_none() {
        bail!("calibration needs an image model: this model has no vision encoder (give its --mmproj file)");
    }
    if layers < 2 {
        bail!("calibration needs a decoder of at least 2 layers (pruning happens at layer K ≥ 1)");
    }
    let (n, grid) = (model.visual_tokens(), model.grid());
    let size = model.cfg.vision_config.image_size as u32;
    let mean = crate::image::pad_colour(&model.preprocessor);
    let blank = image::RgbImage::from_pixel(size, size, image::Rgb(mean));
    let px = crate::image::preprocess(&blank, &model.preprocessor, size as usize, false)?;
    let pixels = gpu.storage_init("pixels", bytemuck::cast_slice(&px))?;
    let ep = model.encode_pass(gpu, &pixels, None)?;
    gpu.run(&ep.kernels())?;

    let image_token = model.cfg.image_token();
    let mut text_sum = vec![vec![0f32; n]; layers - 1];
    let mut last_sum = vec![vec![0f32; n]; layers - 1];
    let opts = crate::GenerateOptions {
        template: template.map(str::to_string),
        ..Default::default()
    };
    for prompt in NEUTRAL_PROMPTS {
        let ids = engine.prompt_ids(prompt, &opts, true)?;
        let slot = ids
            .iter()
            .position(|&t| t == image_token)
            .context("the template has no <image> tag")?;
        let mut full = ids[..slot].to_vec();
        full.extend(std::iter::repeat_n(image_token, n));
        full.extend(&ids[slot + 1..]);
        let rows = full.len();
        let cache = KvCache::new(gpu, cfg, &vec![rows; layers], rows)?;
        let s = llm.scratch(gpu, rows)?;
        let ids_buf = gpu.storage_init("prompt_ids", bytemuck::cast_slice(&full))?;
        let pos: Vec<u32> = (0..rows as u32).collect();
        let pos = gpu.storage_init("positions", bytemuck::cast_slice(&pos))?;
        let step = Step {
            kv_len: rows as u32,
            ..Default::default()
        };
        let step = gpu.uniform_init("step", bytemuck::bytes_of(&step));
        let token = gpu.storage_buffer("token", 4)?;
        let io = PassIo {
            cache: &cache,
            positions: &pos,
            step: &step,
            late_step: None,
            token: &token,
            sampling: crate::Sampling::greedy(),
            rope_table: &llm.rope_table(gpu, rows)?,
        };
        let mut ks = llm.embed(gpu, &ids_buf, &s.x)?;
        ks.push(llm.place_rows(gpu, &ep.out, &s.x, slot)?);
        let after = slot + n..rows;
        let text_q = if after.is_empty() {
            rows - 1..rows
        } else {
            after
        };
        let mut outs = Vec::new();
        let mut keep_alive = Vec::new();
        for l in 0..layers - 1 {
            ks.extend(llm.layer_ops(gpu, l..l + 1, &s, &pos, &io, None)?);
            for q_rows in [text_q.clone(), rows - 1..rows] {
                let stats = gpu
                    .storage_buffer("prune.stats", 8 * (llm.heads().heads * q_rows.len()) as u64)?;
                let out = Tensor::new(gpu, "calibration.relevance", n, 1)?;
                let queries = Queries {
                    rows: q_rows,
                    causal: true,
                    kv_len: rows,
                };
                ks.extend(ops::prune::attention_relevance(
                    gpu,
                    llm.heads(),
                    &s.q,
                    &cache.k[l],
                    &queries,
                    slot..slot + n,
                    &stats,
                    &out,
                )?);
                keep_alive.push(stats);
                outs.push(out);
            }
        }
        gpu.run(&ks.iter().collect::<Vec<_>>())?;
        for l in 0..layers - 1 {
            let text = outs[2 * l].read(gpu)?;
            let last = outs[2 * l + 1].read(gpu)?;
            for p in 0..n {
                text_sum[l][p] += text[p] / NEUTRAL_PROMPTS.len() as f32;
                last_sum[l][p] += last[p] / NEUTRAL_PROMPTS.len() as f32;
            }
        }
    }
    Ok(Calibration {
        format: FORMAT.to_string(),
        model: engine.fingerprint.clone(),
        visual_tokens: n,
        grid,
        prompts: NEUTRAL_PROMPTS.iter().map(|s| s.to_string()).collect(),
        layers: (1..layers)
            .map(|k| LayerProfile::from_means(k, &text_sum[k - 1], &last_sum[k - 1], grid))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_and_fingerprints() {
        assert_eq!(smooth(&[0.0, 3.0, 0.0, 3.0], 3), vec![1.5, 1.0, 2.0, 1.5]);
        assert_ne!(fnv1a(&[b"a", b"b"]), fnv1a(&[b"ab"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }
}
