//! Synthetic models: the shapes of known models with seeded random weights made on the GPU,
//! so that `vlm-run bench --synthetic NAME` measures a 7B decoder without downloading one.
//! The weights mean nothing and the answers are noise; the work per token is the real
//! model's.

use crate::gguf::quant::GgmlType;
use crate::gpu::{Gpu, Weight};
use crate::model::config::LlavaConfig;
use crate::weights::{Component, TensorSource};
use anyhow::Result;
use std::collections::HashMap;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

/// The shapes `--synthetic` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The parity fixture's LLaVA shape (tests/fixtures/tiny-llava): 2 decoder layers.
    Tiny,
    /// SmolLM2-135M: a 30-layer, 576-wide Llama, text only.
    Smollm2_135m,
    /// LLaVA-1.5-7B: CLIP ViT-L/14 at 336 px, 2-layer projector, Llama-2-7B (Vicuna).
    Llava15_7b,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Tiny, Preset::Smollm2_135m, Preset::Llava15_7b];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Smollm2_135m => "smollm2-135m",
            Preset::Llava15_7b => "llava-1.5-7b",
        }
    }

    /// The model's config.json (llava-hf's fields) and whether it has a vision part.
    fn config(self) -> (&'static str, bool) {
        match self {
            Preset::Tiny => (
                r#"{"model_type": "llava", "image_token_index": 300,
                "vision_config": {"hidden_size": 64, "intermediate_size": 128,
                  "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 336,
                  "patch_size": 14},
                "text_config": {"vocab_size": 302, "hidden_size": 96, "intermediate_size": 160,
                  "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
                  "head_dim": 16, "max_position_embeddings": 1024}}"#,
                true,
            ),
            Preset::Smollm2_135m => (
                r#"{"model_type": "llava", "image_token_index": 49151,
                "vision_config": {},
                "text_config": {"vocab_size": 49152, "hidden_size": 576,
                  "intermediate_size": 1536, "num_hidden_layers": 30,
                  "num_attention_heads": 9, "num_key_value_heads": 3,
                  "max_position_embeddings": 8192, "rope_theta": 100000.0,
                  "tie_word_embeddings": true}}"#,
                false,
            ),
            Preset::Llava15_7b => (
                r#"{"model_type": "llava", "image_token_index": 32000,
                "vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
                  "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336,
                  "patch_size": 14},
                "text_config": {"vocab_size": 32064, "max_position_embeddings": 4096}}"#,
                true,
            ),
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Preset::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown synthetic model {s:?} (known: {})",
                    names.join(", ")
                )
            })
    }
}

/// Storage types a synthetic decoder can be made in.
pub fn parse_dtype(s: &str) -> std::result::Result<GgmlType, String> {
    match s {
        "f16" => Ok(GgmlType::F16),
        "q8_0" => Ok(GgmlType::Q8_0),
        "q4_0" => Ok(GgmlType::Q4_0),
        "q4_1" => Ok(GgmlType::Q4_1),
        "q5_0" => Ok(GgmlType::Q5_0),
        "q5_1" => Ok(GgmlType::Q5_1),
        "iq4_nl" => Ok(GgmlType::IQ4NL),
        "q3_k" => Ok(GgmlType::Q3K),
        "q4_k" => Ok(GgmlType::Q4K),
        "q5_k" => Ok(GgmlType::Q5K),
        "q6_k" => Ok(GgmlType::Q6K),
        _ => Err(format!(
            "unknown --dtype {s:?} (known: f16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q3_k, q4_k, \
             q5_k, q6_k)"
        )),
    }
}

/// A synthetic model's parts, ready for `Llava::from_source`.
pub struct Synthetic {
    pub cfg: LlavaConfig,
    pub has_vision: bool,
    pub source: SyntheticSource,
    pub tokenizer: Tokenizer,
}

/// The type a decoder matrix of `cols` columns is made in when `dtype` is asked for:
/// `dtype` where each row is whole blocks of it. Otherwise, as llama.cpp's quantizer does for
/// rows that are not whole 256-value k-quant blocks, a 32-value type: Q5_0 for Q4_K, Q5_1
/// for Q5_K, IQ4_NL for Q3_K and Q8_0 for Q6_K; F16 for rows that are not whole 32-value
/// blocks either.
/// SmolLM2-135M's 576-wide rows thus become Q5_0 under `--dtype q4_k`, its 1536-wide down
/// projection Q4_K, as in llama.cpp's Q4_K_M files of it.
pub fn storage_type(dtype: GgmlType, cols: usize) -> GgmlType {
    let fallback = match dtype {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q3K => GgmlType::IQ4NL,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if cols.is_multiple_of(dtype.block_values()) {
        dtype
    } else if cols.is_multiple_of(fallback.block_values()) {
        fallback
    } else {
        GgmlType::F16
    }
}

/// Build the preset's config, a weight source that makes the decoder's matrices in `dtype`
/// (or [`storage_type`]'s fallback where their rows cannot be whole blocks of it; the vision
/// tower and projector in f16, as llama.cpp's mmproj files keep them), and a word-level
/// tokenizer whose every word is `<unk>`: prompts keep their length in tokens.
pub fn build(preset: Preset, dtype: GgmlType) -> Result<Synthetic> {
    let (text, has_vision) = preset.config();
    let cfg: LlavaConfig = serde_json::from_str(text)?;
    cfg.validate()?;
    let vocab = cfg.text_config.vocab_size;
    let image = cfg.image_token() as usize;
    let mut words: HashMap<String, u32> = (0..vocab as u32).map(|i| (format!("t{i}"), i)).collect();
    for (id, w) in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (image, "<image>")] {
        words.remove(&format!("t{id}"));
        words.insert(w.to_string(), id as u32);
    }
    let model = WordLevel::builder()
        .vocab(words.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| anyhow::anyhow!("synthetic tokenizer: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.add_special_tokens(&[tokenizers::AddedToken::from("<image>", true)]);
    Ok(Synthetic {
        source: SyntheticSource {
            dtype,
            tied: cfg.text_config.tie_word_embeddings,
        },
        cfg,
        has_vision,
        tokenizer,
    })
}

/// Weights made on the GPU: matrices by [`Weight::random`], norm weights 1, biases 0, and
/// the vision tower's embeddings small random values.
pub struct SyntheticSource {
    dtype: GgmlType,
    tied: bool,
}

/// A per-tensor seed: FNV-1a of the component and name.
fn seed_of(c: Component, name: &str) -> u64 {
    crate::prune::calibrate::fnv1a_u64(&[format!("{c:?}").as_bytes(), name.as_bytes()])
}

/// `n` values uniform in ±amp.
fn small_values(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut rng = crate::generate::Rng(seed);
    (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * amp).collect()
}

impl SyntheticSource {
    /// The type a matrix of `c` with `cols` columns is made in.
    fn ty(&self, c: Component, cols: usize) -> GgmlType {
        match c {
            Component::Language | Component::LmHead => storage_type(self.dtype, cols),
            Component::Vision | Component::Projector => GgmlType::F16,
        }
    }
}

impl TensorSource for SyntheticSource {
    fn has(&self, c: Component, _name: &str) -> bool {
        c != Component::LmHead || !self.tied
    }
    fn f32(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n = shape.iter().product();
        Ok(if name.ends_with(".bias") {
            vec![0.0; n]
        } else if name.contains("norm") || name.contains("layrnorm") {
            vec![1.0; n]
        } else {
            small_values(seed_of(c, name), n, 0.05)
        })
    }
    fn f16(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<u16>> {
        let v = self.f32(c, name, shape)?;
        Ok(v.iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect())
    }
    fn generates(&self) -> bool {
        true
    }
    fn weight(
        &self,
        gpu: &Gpu,
        c: Component,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Weight> {
        Weight::random(
            gpu,
            name,
            self.ty(c, cols),
            rows,
            cols,
            seed_of(c, name) as u32,
        )
    }
}
