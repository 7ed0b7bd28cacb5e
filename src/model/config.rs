//! config.json and preprocessor_config.json of a llava-hf checkpoint. Fields that the hub's
//! files leave out take transformers' own defaults (llava-1.5-7b-hf's text_config, for one,
//! names only a few fields).

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

fn default_eps_ln() -> f64 {
    1e-5
}

#[derive(Clone, Debug, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d768")]
    pub hidden_size: usize,
    #[serde(default = "d3072")]
    pub intermediate_size: usize,
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d12")]
    pub num_attention_heads: usize,
    #[serde(default = "d224")]
    pub image_size: usize,
    #[serde(default = "d32")]
    pub patch_size: usize,
    #[serde(default = "default_eps_ln")]
    pub layer_norm_eps: f64,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: Option<f64>,
    pub rope_type: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "d32000")]
    pub vocab_size: usize,
    #[serde(default = "d4096")]
    pub hidden_size: usize,
    #[serde(default = "d11008")]
    pub intermediate_size: usize,
    #[serde(default = "d32")]
    pub num_hidden_layers: usize,
    #[serde(default = "d32")]
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "d2048")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<RopeParameters>,
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }
}

/// config.json of a LLaVA checkpoint (model_type "llava").
#[derive(Clone, Debug, Deserialize)]
pub struct LlavaConfig {
    #[serde(default)]
    pub model_type: String,
    pub vision_config: ClipVisionConfig,
    pub text_config: LlamaConfig,
    pub image_token_index: Option<u32>,
    pub image_token_id: Option<u32>,
    #[serde(default = "gelu")]
    pub projector_hidden_act: String,
    #[serde(default = "minus2")]
    pub vision_feature_layer: serde_json::Value,
    #[serde(default = "default_strategy")]
    pub vision_feature_select_strategy: String,
    #[serde(default = "yes")]
    pub multimodal_projector_bias: bool,
    pub tie_word_embeddings: Option<bool>,
}

impl LlavaConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a LLaVA config", path.display()))?;
        cfg.validate().with_context(|| path.display().to_string())?;
        Ok(cfg)
    }

    pub fn image_token(&self) -> u32 {
        self.image_token_index
            .or(self.image_token_id)
            .unwrap_or(32000)
    }

    /// How many vision encoder layers run: `hidden_states[feature_layer]` is the output of
    /// that many layers (index 0 is the embeddings after pre_layrnorm).
    pub fn vision_layers_to_run(&self) -> Result<usize> {
        let n = self.vision_config.num_hidden_layers as i64;
        let f = self.vision_feature_layer.as_i64().context(
            "vision_feature_layer must be one integer (lists of layers are not supported)",
        )?;
        let run = if f < 0 { n + 1 + f } else { f };
        if run < 0 || run > n {
            bail!("vision_feature_layer {f} is outside the {n}-layer vision tower");
        }
        Ok(run as usize)
    }

    /// Whether the CLS token is kept ("full") or dropped ("default").
    pub fn keep_cls(&self) -> bool {
        self.vision_feature_select_strategy == "full"
    }

    /// Check what the engine supports; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if !self.model_type.is_empty() && self.model_type != "llava" {
            bail!(
                "model_type {:?} is not supported (expected \"llava\")",
                self.model_type
            );
        }
        let v = &self.vision_config;
        let t = &self.text_config;
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            bail!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size,
                v.patch_size
            );
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            bail!(
                "vision hidden_size {} does not split into {} heads",
                v.hidden_size,
                v.num_attention_heads
            );
        }
        if t.num_attention_heads == 0
            || t.kv_heads() == 0
            || !t.num_attention_heads.is_multiple_of(t.kv_heads())
        {
            bail!(
                "{} attention heads cannot share {} KV heads",
                t.num_attention_heads,
                t.kv_heads()
            );
        }
        if !t.head_dim().is_multiple_of(2) || t.head_dim() == 0 {
            bail!("head_dim {} must be even", t.head_dim());
        }
        if v.hidden_act != "quick_gelu" {
            bail!(
                "vision hidden_act {:?} is not supported (quick_gelu)",
                v.hidden_act
            );
        }
        if t.hidden_act != "silu" {
            bail!("text hidden_act {:?} is not supported (silu)", t.hidden_act);
        }
        if self.projector_hidden_act != "gelu" {
            bail!(
                "projector_hidden_act {:?} is not supported (gelu)",
                self.projector_hidden_act
            );
        }
        if t.attention_bias || t.mlp_bias {
            bail!("Llama attention or MLP biases are not supported");
        }
        if let Some(s) = &t.rope_scaling {
            if !s.is_null() {
                bail!("rope_scaling is not supported");
            }
        }
        if let Some(r) = &t.rope_parameters {
            if r.rope_type.as_deref().is_some_and(|t| t != "default") {
                bail!("rope_type {:?} is not supported", r.rope_type);
            }
        }
        if !matches!(
            self.vision_feature_select_strategy.as_str(),
            "default" | "full"
        ) {
            bail!(
                "vision_feature_select_strategy {:?} is not supported",
                self.vision_feature_select_strategy
            );
        }
        if (self.image_token() as usize) >= t.vocab_size {
            bail!(
                "image token id {} is outside the vocabulary of {}",
                self.image_token(),
                t.vocab_size
            );
        }
        self.vision_layers_to_run()?;
        Ok(())
    }
}

/// The longest shortest edge preprocessor_config.json may resize images to, in pixels.
pub const MAX_IMAGE_EDGE: usize = 16384;

/// preprocessor_config.json (CLIPImageProcessor).
#[derive(Clone, Debug, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default)]
    pub size: Option<serde_json::Value>,
    #[serde(default)]
    pub crop_size: Option<serde_json::Value>,
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    #[serde(default = "clip_mean")]
    pub image_mean: [f32; 3],
    #[serde(default = "clip_std")]
    pub image_std: [f32; 3],
    #[serde(default = "rescale")]
    pub rescale_factor: f64,
}

impl PreprocessorConfig {
    /// LLaVA-1.5's preprocessing (CLIP's mean and std, resize and centre crop) at
    /// `image_size`.
    pub fn for_size(image_size: usize) -> Self {
        Self {
            size: Some(serde_json::json!({ "shortest_edge": image_size })),
            crop_size: Some(serde_json::json!({ "height": image_size, "width": image_size })),
            do_center_crop: true,
            image_mean: clip_mean(),
            image_std: clip_std(),
            rescale_factor: rescale(),
        }
    }

    /// Read preprocessor_config.json; without one, LLaVA-1.5's values for `image_size`.
    pub fn load_or_default(dir: &Path, image_size: usize) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if !path.exists() {
            return Ok(Self::for_size(image_size));
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: Self =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
        cfg.validate(image_size)
            .with_context(|| path.display().to_string())?;
        Ok(cfg)
    }

    /// Check the values against a vision tower of `image_size` pixels: a shortest edge of
    /// 1 ..= [`MAX_IMAGE_EDGE`] pixels, a crop of the tower's size, and finite mean, std and
    /// rescale factor with std and rescale above zero.
    pub fn validate(&self, image_size: usize) -> Result<()> {
        let edge = match &self.size {
            None => None,
            Some(serde_json::Value::Number(n)) => Some(n.as_u64()),
            Some(v) => v.get("shortest_edge").map(|x| x.as_u64()),
        };
        match edge {
            Some(Some(e)) if (1..=MAX_IMAGE_EDGE as u64).contains(&e) => {}
            Some(_) => bail!(
                "size.shortest_edge {} is not a whole number of pixels in 1..={MAX_IMAGE_EDGE}",
                self.size.as_ref().map_or(String::new(), |v| v.to_string())
            ),
            None => {}
        }
        let crop = self.crop(image_size);
        if crop != (image_size, image_size) {
            bail!("crop size {crop:?} differs from the vision tower's image size {image_size}");
        }
        let finite = self
            .image_mean
            .iter()
            .chain(&self.image_std)
            .all(|v| v.is_finite());
        if !finite || self.image_std.iter().any(|&v| v <= 0.0) {
            bail!(
                "image_mean {:?} and image_std {:?} must be finite, with std above zero",
                self.image_mean,
                self.image_std
            );
        }
        if !(self.rescale_factor.is_finite() && self.rescale_factor > 0.0) {
            bail!("rescale_factor {} must be above zero", self.rescale_factor);
        }
        Ok(())
    }

    /// The shortest edge images are resized to ([`Self::validate`] bounds it).
    pub fn shortest_edge(&self, fallback: usize) -> usize {
        match &self.size {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as usize),
            Some(v) => v
                .get("shortest_edge")
                .and_then(|x| x.as_u64())
                .map(|v| v as usize),
            None => None,
        }
        .unwrap_or(fallback)
    }

    /// The centre crop (height, width).
    pub fn crop(&self, fallback: usize) -> (usize, usize) {
        match &self.crop_size {
            Some(serde_json::Value::Number(n)) => {
                let v = n.as_u64().unwrap_or(fallback as u64) as usize;
                (v, v)
            }
            Some(v) => (
                v.get("height")
                    .and_then(|x| x.as_u64())
                    .map_or(fallback, |x| x as usize),
                v.get("width")
                    .and_then(|x| x.as_u64())
                    .map_or(fallback, |x| x as usize),
            ),
            None => (fallback, fallback),
        }
    }
}

fn d12() -> usize {
    12
}
fn d32() -> usize {
    32
}
fn d224() -> usize {
    224
}
fn d768() -> usize {
    768
}
fn d2048() -> usize {
    2048
}
fn d3072() -> usize {
    3072
}
fn d4096() -> usize {
    4096
}
fn d11008() -> usize {
    11008
}
fn d32000() -> usize {
    32000
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn silu() -> String {
    "silu".into()
}
fn gelu() -> String {
    "gelu".into()
}
fn minus2() -> serde_json::Value {
    serde_json::json!(-2)
}
fn default_strategy() -> String {
    "default".into()
}
fn yes() -> bool {
    true
}
fn clip_mean() -> [f32; 3] {
    [0.481_454_66, 0.457_827_5, 0.408_210_73]
}
fn clip_std() -> [f32; 3] {
    [0.268_629_54, 0.261_302_6, 0.275_777_1]
}
fn rescale() -> f64 {
    1.0 / 255.0
}
