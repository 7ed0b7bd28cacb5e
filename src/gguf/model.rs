//! A model from GGUF files: a Llama decoder (`general.architecture` llama), and optionally
//! llama.cpp's mmproj file with the CLIP encoder and projector. The metadata becomes the
//! same configs a llava-hf checkpoint gives, and [`GgufSource`] hands the loaders their
//! tensors under HF names: quantized matrices stay in their blocks, q/k projections are
//! un-permuted from llama.cpp's interleaved rotary layout.

use super::names::{gguf_names, rotary_permuted, unpermuted_source_row};
use super::quant::GgmlType;
use super::{GgufFile, TensorInfo, Value};
use crate::model::config::{LlavaConfig, PreprocessorConfig};
use crate::prompt::{Chat, CHATML_TEMPLATE};
use crate::weights::{f32_to_f16_checked, Component, TensorSource};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::path::Path;
use tokenizers::Tokenizer;

/// The tensors of a GGUF decoder and, optionally, its mmproj file.
pub struct GgufSource {
    pub llm: GgufFile,
    pub mmproj: Option<GgufFile>,
    heads: usize,
    kv_heads: usize,
}

impl GgufSource {
    fn file(&self, c: Component) -> Option<&GgufFile> {
        match c {
            Component::Language | Component::LmHead => Some(&self.llm),
            Component::Vision | Component::Projector => self.mmproj.as_ref(),
        }
    }

    /// The tensor for an HF name: the first candidate name present whose shape fits.
    fn find(&self, c: Component, name: &str, shape: &[usize]) -> Result<(&GgufFile, &TensorInfo)> {
        let f = self
            .file(c)
            .ok_or_else(|| anyhow!("tensor {name}: the vision part needs an --mmproj file"))?;
        let candidates = gguf_names(c, name);
        let present: Vec<&TensorInfo> = candidates.iter().filter_map(|n| f.tensor(n)).collect();
        if let Some(t) = present.iter().find(|t| t.shape() == shape) {
            return Ok((f, t));
        }
        match present.first() {
            Some(t) => bail!(
                "{}: tensor {} has shape {:?}, but the metadata implies {:?}",
                f.path.display(),
                t.name,
                t.shape(),
                shape
            ),
            None => bail!(
                "{}: tensor {} not found (for {name})",
                f.path.display(),
                candidates.first().map_or(name, |s| s.as_str())
            ),
        }
    }

    /// Rows of HF order from llama.cpp's, for q/k projections; None for other tensors.
    fn row_order(&self, c: Component, name: &str, rows: usize) -> Option<Vec<usize>> {
        if c != Component::Language {
            return None;
        }
        let heads = if rotary_permuted(name)? {
            self.heads
        } else {
            self.kv_heads
        };
        let hd = rows / heads.max(1);
        Some((0..rows).map(|r| unpermuted_source_row(r, hd)).collect())
    }
}

fn reorder<T: Copy>(data: &[T], row_len: usize, order: &[usize]) -> Vec<T> {
    order
        .iter()
        .flat_map(|&r| data[r * row_len..(r + 1) * row_len].iter().copied())
        .collect()
}

impl TensorSource for GgufSource {
    fn has(&self, c: Component, name: &str) -> bool {
        self.file(c)
            .is_some_and(|f| gguf_names(c, name).iter().any(|n| f.tensor(n).is_some()))
    }

    fn f32(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (f, t) = self.find(c, name, shape)?;
        let v = f.f32(t)?;
        Ok(match (shape, self.row_order(c, name, shape[0])) {
            ([rows, cols], Some(order)) => {
                debug_assert_eq!(order.len(), *rows);
                reorder(&v, *cols, &order)
            }
            _ => v,
        })
    }

    fn f16(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<u16>> {
        let (f, t) = self.find(c, name, shape)?;
        if t.ty == super::quant::GgmlType::F16 && self.row_order(c, name, shape[0]).is_none() {
            return Ok(f
                .data(t)
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect());
        }
        f32_to_f16_checked(&t.name, &self.f32(c, name, shape)?)
    }

    fn weight_data(
        &self,
        c: Component,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(GgmlType, Vec<u8>)> {
        let (f, t) = self.find(c, name, &[rows, cols])?;
        if !t.ty.is_quantized() {
            let data = self.f16(c, name, &[rows, cols])?;
            return Ok((GgmlType::F16, bytemuck::cast_slice(&data).to_vec()));
        }
        let row_bytes = t.ty.row_bytes(cols).context("row size")?;
        let raw = f.data(t);
        Ok(match self.row_order(c, name, rows) {
            Some(order) => (t.ty, reorder(raw, row_bytes, &order)),
            None => (t.ty, raw.to_vec()),
        })
    }
}

/// Everything a GGUF model brings besides its weights.
pub struct GgufModel {
    pub cfg: LlavaConfig,
    pub preprocessor: PreprocessorConfig,
    pub source: GgufSource,
    pub tokenizer: Tokenizer,
    pub eos: Vec<u32>,
    pub chat: Chat,
    /// The configs as JSON text (for the calibration fingerprint).
    pub config_text: String,
    /// Whether an mmproj file gave a vision encoder.
    pub has_vision: bool,
}

fn float_array(f: &GgufFile, key: &str) -> Result<Option<[f32; 3]>> {
    let Some(v) = f.get(key) else { return Ok(None) };
    let a: Vec<f32> = v
        .as_array()
        .unwrap_or(&[])
        .iter()
        .filter_map(Value::as_f64)
        .map(|x| x as f32)
        .collect();
    if a.len() != 3 {
        bail!("{}: {key} must hold 3 numbers", f.path.display());
    }
    Ok(Some([a[0], a[1], a[2]]))
}

/// The chat format a GGUF names in `tokenizer.chat_template`: ChatML (with the template's
/// built-in system sentence, if it has one), else LLaVA/Vicuna's.
pub fn chat_from_template(template: Option<&str>) -> Chat {
    let Some(t) = template else {
        return Chat::llava();
    };
    if !t.contains("<|im_start|>") {
        return Chat::llava();
    }
    let system = t.split_once("<|im_start|>system\n").and_then(|(_, rest)| {
        let (s, _) = rest.split_once("<|im_end|>")?;
        (!s.contains("{{") && !s.contains("{%") && !s.is_empty()).then(|| s.to_string())
    });
    Chat {
        template: CHATML_TEMPLATE.to_string(),
        system,
    }
}

/// Open `llm` (and `mmproj`), read their metadata into configs, and build the tokenizer.
pub fn open(llm_path: &Path, mmproj_path: Option<&Path>) -> Result<GgufModel> {
    let llm = GgufFile::open(llm_path)?;
    let p = llm_path.display();
    let arch = llm.str("general.architecture").unwrap_or("");
    if arch != "llama" {
        bail!("{p}: architecture {arch:?} is not supported (llama)");
    }
    if let Some(s) = llm.str("llama.rope.scaling.type") {
        if s != "none" {
            bail!("{p}: rope scaling {s:?} is not supported");
        }
    }
    let key = |k: &str| format!("llama.{k}");
    let heads = llm.usize(&key("attention.head_count"))?;
    let kv_heads = match llm.get(&key("attention.head_count_kv")) {
        Some(_) => llm.usize(&key("attention.head_count_kv"))?,
        None => heads,
    };
    let d = llm.usize(&key("embedding_length"))?;
    let embd = llm
        .tensor("token_embd.weight")
        .ok_or_else(|| anyhow!("{p}: tensor token_embd.weight not found"))?;
    if embd.dims.len() != 2 || embd.dims[0] != d {
        bail!(
            "{p}: token_embd.weight {:?} does not match embedding_length {d}",
            embd.dims
        );
    }
    let vocab = embd.dims[1];
    let head_dim = match llm.get(&key("attention.key_length")) {
        Some(_) => llm.usize(&key("attention.key_length"))?,
        None => d / heads.max(1),
    };
    let tokenizer = super::tokenizer::build(&llm)?;
    let token_id = |k: &str| llm.get(k).and_then(Value::as_u64).map(|v| v as u32);
    let mut eos: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| token_id(k))
        .collect();
    let chat = chat_from_template(llm.str("tokenizer.chat_template"));
    if chat.is_chatml() {
        eos.extend(tokenizer.token_to_id("<|im_end|>"));
    }
    eos.dedup();
    let text_config = json!({
        "vocab_size": vocab,
        "hidden_size": d,
        "intermediate_size": llm.usize(&key("feed_forward_length"))?,
        "num_hidden_layers": llm.usize(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": llm.usize(&key("context_length")).unwrap_or(2048),
        "rms_norm_eps": llm.f64_or(&key("attention.layer_norm_rms_epsilon"), 1e-6),
        "rope_theta": llm.f64_or(&key("rope.freq_base"), 10000.0),
        "tie_word_embeddings": llm.tensor("output.weight").is_none(),
    });

    let (vision_config, preprocessor, mmproj) = match mmproj_path {
        None => (json!({}), None, None),
        Some(path) => {
            let m = GgufFile::open(path)?;
            let mp = path.display();
            if m.get("clip.has_llava_projector").and_then(Value::as_bool) != Some(true) {
                bail!("{mp}: not a LLaVA mmproj file (clip.has_llava_projector is not true)");
            }
            if let Some(t) = m.str("clip.projector_type") {
                if t != "mlp" {
                    bail!("{mp}: projector type {t:?} is not supported (mlp)");
                }
            }
            if m.get("clip.use_gelu").and_then(Value::as_bool) == Some(true) {
                bail!("{mp}: a GELU vision encoder is not supported (CLIP's quick_gelu)");
            }
            let v = |k: &str| m.usize(&format!("clip.vision.{k}"));
            let image_size = v("image_size")?;
            let vc = json!({
                "hidden_size": v("embedding_length")?,
                "intermediate_size": v("feed_forward_length")?,
                "num_hidden_layers": v("block_count")?,
                "num_attention_heads": v("attention.head_count")?,
                "image_size": image_size,
                "patch_size": v("patch_size")?,
                "layer_norm_eps": m.f64_or("clip.vision.attention.layer_norm_epsilon", 1e-5),
            });
            let mut pre = PreprocessorConfig::for_size(image_size);
            if let Some(mean) = float_array(&m, "clip.vision.image_mean")? {
                pre.image_mean = mean;
            }
            if let Some(std) = float_array(&m, "clip.vision.image_std")? {
                pre.image_std = std;
            }
            pre.validate(image_size).with_context(|| mp.to_string())?;
            (vc, Some(pre), Some(m))
        }
    };
    let has_vision = mmproj.is_some();
    // llama.cpp's mmproj holds the encoder up to LLaVA's feature layer: run all its blocks.
    // Without an <image> token in the vocabulary, the prompt is split around the tag.
    let image_token = tokenizer.token_to_id(crate::prompt::IMAGE_TAG).unwrap_or(0);
    let config = json!({
        "model_type": "llava",
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_index": image_token,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
    });
    let config_text = config.to_string();
    let cfg: LlavaConfig = serde_json::from_value(config).context("GGUF metadata")?;
    cfg.validate().with_context(|| p.to_string())?;
    let preprocessor = preprocessor.unwrap_or_else(|| PreprocessorConfig::for_size(336));
    Ok(GgufModel {
        cfg,
        preprocessor,
        source: GgufSource {
            llm,
            mmproj,
            heads,
            kv_heads,
        },
        tokenizer,
        eos,
        chat,
        config_text,
        has_vision,
    })
}
