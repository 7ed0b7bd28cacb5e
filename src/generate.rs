//! The engine: load a model once, then answer prompts about images. One request runs the
//! vision encoder and projector (one submit), the decoder prefill (one submit), and one
//! submit per generated token; the only readback per token is its 4-byte id.

use crate::gpu::{Gpu, GpuOptions, Kernel, Step, TokenQueue};
use crate::image as img;
use crate::model::clip::VisionPass;
use crate::model::llama::{KvCache, Mode, PassIo};
use crate::model::llava::Llava;
use crate::ops::sample::Sampling;
use crate::prompt::{self, Chat, TextStream, IMAGE_TAG};
use crate::prune::budget::{self, DecoderShape};
use crate::prune::calibrate::Calibration;
use crate::prune::stages::{self, DecoderInput, StageTrace};
use crate::prune::{Method, PruneOptions};
use anyhow::{anyhow, bail, Result};
use image::RgbImage;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::Tokenizer;

/// Per-request choices.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Pad the image to a square with the mean colour before resizing (original LLaVA).
    pub pad_square: bool,
    /// The prompt template: `llava`, `chatml`, or text where `{prompt}` is replaced and
    /// `<image>` marks the visual tokens. None: the model's own.
    pub template: Option<String>,
    /// Put conv_llava_v1's system sentence first (LLaVA template).
    pub system: bool,
    /// Keep the last-position logits after prefill in the output (tests, debugging).
    pub keep_prefill_logits: bool,
    /// Visual-token pruning.
    pub prune: PruneOptions,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Read the pruning stages' scores and similarity matrices back into
    /// [`Output::stages`] (tests, debugging; the kept indices are always read).
    pub trace_pruning: bool,
    /// Reuse the vision tower's output when the previous request that set this had the same
    /// preprocessed image (evaluation sweeps). Its encode time is then not spent, nor
    /// reported.
    pub reuse_vision: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: Sampling::greedy(),
            seed: 0,
            pad_square: false,
            template: None,
            system: false,
            keep_prefill_logits: false,
            prune: PruneOptions::default(),
            trace_pruning: false,
            ignore_eos: false,
            reuse_vision: false,
        }
    }
}

/// Milliseconds per stage. Stages are submitted separately and waited for, so that each
/// figure is that stage's own time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub load: f64,
    /// The image resized, cropped and normalised on the CPU, and its pixels uploaded.
    pub preprocess: f64,
    /// Vision tower and projector.
    pub encode: f64,
    /// Pruning passes: encoder side, and decoder side at layer K.
    pub prune: f64,
    /// Decoder prefill (all layers, before and after pruning).
    pub prefill: f64,
    pub decode: f64,
}

/// Prefill FLOPs (2 per multiply-add) at the real shapes; the `_fastv` figures follow the
/// literature's convention (4nd² + 2n²d + 2ndm per layer).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flops {
    pub decoder: u64,
    pub decoder_unpruned: u64,
    pub decoder_fastv: u64,
    pub decoder_fastv_unpruned: u64,
    /// Vision tower up to the feature layer.
    pub encoder: u64,
    /// Projector over the tokens it ran on.
    pub projector: u64,
}

/// What pruning did in one request.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub method: Method,
    /// The average-tokens-per-layer budget B.
    pub budget: usize,
    /// Mean visual tokens per decoder layer actually achieved.
    pub achieved_budget: f64,
    pub prune_layer: Option<usize>,
    /// Visual tokens entering the decoder, and kept from layer K on.
    pub kept_encoder: usize,
    pub kept_decoder: usize,
}

/// What one request produced, and what it cost.
#[derive(Clone, Debug, Serialize)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<u32>,
    /// Prompt rows as the unpruned decoder sees them (text plus all visual tokens).
    pub prompt_tokens: usize,
    /// Visual tokens the encoder produced (N).
    pub visual_tokens: usize,
    /// Visual tokens that entered the decoder (after encoder-side pruning).
    pub visual_tokens_kept: usize,
    /// Tokens each decoder layer's KV cache holds after prefill.
    pub tokens_per_layer: Vec<usize>,
    /// Exactly what the KV cache allocates: Σ_layers 2·(tokens_per_layer + max new
    /// tokens)·d_kv·4.
    pub kv_cache_bytes: u64,
    /// The same without pruning.
    pub kv_cache_bytes_unpruned: u64,
    pub flops: Flops,
    pub pruning: Option<PruneReport>,
    pub timings_ms: Timings,
    /// Peak device memory during the request, as the backend's allocator reports it
    /// (weights, KV cache and every buffer; null where the backend gives no report).
    pub peak_gpu_bytes: Option<u64>,
    #[serde(skip)]
    pub prefill_logits: Option<Vec<f32>>,
    /// Per pruning stage: the kept indices among its candidates and their raster positions
    /// (0..N); scores and matrices too with `trace_pruning` (not serialised).
    pub stages: Vec<StageTrace>,
}

/// The request that loading runs last, over empty grids, so that its kind's pipelines are
/// made and compiled before the first real one ([`Engine::warm_up`]).
#[derive(Clone, Debug, Default)]
pub enum WarmUp {
    /// None: each kind of request makes its pipelines the first time it runs.
    Off,
    /// A question about a blank image on image models, a text question on text models.
    #[default]
    ModelKind,
    /// A request like this one: with an image or without, this prompt and these options
    /// (pruning included).
    Like {
        image: bool,
        prompt: String,
        opts: Box<GenerateOptions>,
    },
}

pub struct Engine {
    pub gpu: Arc<Gpu>,
    pub model: Llava,
    pub tokenizer: Tokenizer,
    pub eos: Vec<u32>,
    pub load_ms: f64,
    /// The llava-hf directory, or the GGUF file's directory.
    pub model_dir: std::path::PathBuf,
    /// The model's own chat format (used when the request names no template).
    pub chat: Chat,
    /// Identifies the model to calibration files.
    pub fingerprint: String,
    /// The last tower pass run with `reuse_vision`, keyed by its preprocessed pixels.
    vision_cache: std::sync::Mutex<Option<(Vec<f32>, Arc<VisionPass>)>>,
    /// What the GEMM autotuner chose at load (`VLM_RUN_GEMM_TILE=tune`), else None.
    pub gemm_tuning: Option<crate::ops::autotune::Tuning>,
}

/// A fingerprint of a model's config and its decoder's final norm weights.
fn fingerprint(config: &[u8], norm: &[f32]) -> String {
    crate::prune::calibrate::fnv1a(&[config, bytemuck::cast_slice(norm)])
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A small seeded generator (SplitMix64): the sampling kernel's uniform numbers, and the
/// small tensors of synthetic models.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    /// Uniform in [0, 1).
    pub(crate) fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

impl Engine {
    /// Open a device and load the llava-hf checkpoint in `dir`.
    pub fn load(dir: &Path, gpu_opts: &GpuOptions, on_bytes: &dyn Fn(u64)) -> Result<Self> {
        Self::open(dir, None, gpu_opts, on_bytes)
    }

    /// Whether `model` names GGUF files rather than a llava-hf directory.
    pub fn is_gguf(model: &Path) -> bool {
        model.is_file()
    }

    /// Open a device and load `model`: a llava-hf directory, or a GGUF decoder file with
    /// llama.cpp's `mmproj` file for the vision part (without it, text only). Loading ends
    /// with the warm-up of the model's own kind of request ([`WarmUp::ModelKind`]).
    pub fn open(
        model: &Path,
        mmproj: Option<&Path>,
        gpu_opts: &GpuOptions,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Self> {
        Self::open_with(model, mmproj, gpu_opts, &WarmUp::ModelKind, on_bytes)
    }

    /// [`Engine::open`], ending with the warm-up `warm_up` instead: the request the caller
    /// is about to make ([`WarmUp::Like`]), as the CLI does, or none.
    pub fn open_with(
        model: &Path,
        mmproj: Option<&Path>,
        gpu_opts: &GpuOptions,
        warm_up: &WarmUp,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Self> {
        let t = Instant::now();
        if !model.exists() {
            bail!("model {} does not exist", model.display());
        }
        if let Some(m) = mmproj {
            if !m.is_file() {
                bail!("mmproj file {} does not exist", m.display());
            }
        }
        if !Self::is_gguf(model) {
            if mmproj.is_some() {
                bail!("--mmproj goes with a GGUF --model file, not a model directory");
            }
            let dir = model;
            let gpu = Gpu::new(gpu_opts)?;
            let model = Llava::load(&gpu, dir, on_bytes)?;
            let tokenizer = prompt::load_tokenizer(dir)?;
            let eos =
                prompt::eos_ids(dir, model.cfg.text_config.eos_token_id.as_ref(), &tokenizer)?;
            let config = std::fs::read(dir.join("config.json"))?;
            let ckpt = crate::weights::Checkpoint::open(dir)?;
            let norm = crate::weights::TensorSource::f32(
                &ckpt,
                crate::weights::Component::Language,
                "norm.weight",
                &[model.cfg.text_config.hidden_size],
            )?;
            return Self {
                gpu,
                model,
                tokenizer,
                eos,
                chat: Chat::llava(),
                load_ms: ms(t),
                model_dir: dir.to_path_buf(),
                fingerprint: fingerprint(&config, &norm),
                vision_cache: Default::default(),
                gemm_tuning: None,
            }
            .ready(gpu_opts, warm_up, t);
        }
        let g = crate::gguf::model::open(model, mmproj)?;
        let gpu = Gpu::new(gpu_opts)?;
        let llava = Llava::from_source(
            &gpu,
            g.cfg,
            g.preprocessor,
            &g.source,
            g.has_vision,
            on_bytes,
        )?;
        let norm = crate::weights::TensorSource::f32(
            &g.source,
            crate::weights::Component::Language,
            "norm.weight",
            &[llava.cfg.text_config.hidden_size],
        )?;
        Self {
            gpu,
            model: llava,
            tokenizer: g.tokenizer,
            eos: g.eos,
            chat: g.chat,
            load_ms: ms(t),
            model_dir: model.parent().map(Path::to_path_buf).unwrap_or_default(),
            fingerprint: fingerprint(g.config_text.as_bytes(), &norm),
            vision_cache: Default::default(),
            gemm_tuning: None,
        }
        .ready(gpu_opts, warm_up, t)
    }

    /// A synthetic model: `preset`'s shapes with random weights made on the GPU, the decoder
    /// in `dtype` (see [`crate::synthetic`]). For benchmarks; its answers are noise.
    pub fn synthetic(
        preset: crate::synthetic::Preset,
        dtype: crate::gguf::quant::GgmlType,
        gpu_opts: &GpuOptions,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Self> {
        let t = Instant::now();
        let s = crate::synthetic::build(preset, dtype)?;
        let gpu = Gpu::new(gpu_opts)?;
        let preprocessor =
            crate::model::config::PreprocessorConfig::for_size(s.cfg.vision_config.image_size);
        let model =
            Llava::from_source(&gpu, s.cfg, preprocessor, &s.source, s.has_vision, on_bytes)?;
        Self {
            gpu,
            model,
            tokenizer: s.tokenizer,
            eos: vec![2],
            chat: Chat::llava(),
            load_ms: ms(t),
            model_dir: format!("synthetic:{}:{}", preset.name(), dtype.name()).into(),
            fingerprint: format!("synthetic-{}", preset.name()),
            vision_cache: Default::default(),
            gemm_tuning: None,
        }
        .ready(gpu_opts, &WarmUp::ModelKind, t)
    }

    /// The last steps of loading: the GEMM autotuner where asked for, then the warm-up;
    /// the load time counts both.
    fn ready(self, gpu_opts: &GpuOptions, warm_up: &WarmUp, t: Instant) -> Result<Self> {
        let mut engine = self.tuned(gpu_opts)?;
        // best effort: a request that cannot run fails on its own, with its own error
        let _ = engine.warm_up(warm_up);
        engine.load_ms = ms(t);
        Ok(engine)
    }

    /// Run the kernels of a request of the kind `kind` over empty grids
    /// ([`Gpu::with_empty_grids`]), with two decode steps. The pipelines such a request
    /// needs are then made, and any compiling the driver defers to a pipeline's first
    /// dispatch is done: the first real request of that kind pays none of it (lavapipe, the
    /// default model: 92-102 ms against 475-492; the ones after ~90). A kind not warmed up
    /// (text on an image model, another prompt length, a pruning method) may still make a
    /// few pipelines of its own the first time; call this again for each kind an
    /// application will ask. Nothing is computed; the vision cache is not touched.
    pub fn warm_up(&self, kind: &WarmUp) -> Result<()> {
        let (image, prompt, opts) = match kind {
            WarmUp::Off => return Ok(()),
            WarmUp::ModelKind => (
                self.model.vision.is_some(),
                "Describe the image.",
                GenerateOptions::default(),
            ),
            WarmUp::Like {
                image,
                prompt,
                opts,
            } => (*image, prompt.as_str(), GenerateOptions::clone(opts)),
        };
        // the tower sees only the preprocessed pixels, so a blank picture of the model's
        // size runs the same kernels as any image, without resizing a large one twice
        let image = (image && self.model.vision.is_some()).then(|| {
            let size = self.model.cfg.vision_config.image_size as u32;
            RgbImage::new(size, size)
        });
        let opts = GenerateOptions {
            max_tokens: 2,
            ignore_eos: true,
            reuse_vision: false,
            trace_pruning: false,
            keep_prefill_logits: false,
            ..opts
        };
        let r = self
            .gpu
            .with_empty_grids(|| self.generate(image.as_ref(), prompt, &opts, &mut |_| {}));
        // an error this run left behind is its own, not the next request's
        let pending = self.gpu.check();
        r.and(pending).map(|_| ())
    }

    /// With `VLM_RUN_GEMM_TILE=tune`: pick the GEMM kernel for this model on this device
    /// (cached after the first time), timed on the first layer's matrices at prefill sizes:
    /// the prompt rows of a request with an image (visual tokens + 32) or of 128 text
    /// tokens, and the encoder's patches.
    fn tuned(mut self, gpu_opts: &GpuOptions) -> Result<Self> {
        if gpu_opts.gemm_tile != crate::gpu::TileChoice::Tune {
            return Ok(self);
        }
        use crate::ops::autotune::{tune, Shapes};
        let m = &self.model;
        let mut sets = vec![Shapes {
            weights: m.llm.layer_weights(),
            rows: if m.vision.is_some() {
                m.visual_tokens() + 32
            } else {
                128
            },
        }];
        if let Some(v) = &m.vision {
            sets.push(Shapes {
                weights: v.layer_weights(),
                rows: v.patches() + 1,
            });
        }
        self.gemm_tuning = Some(tune(&self.gpu, &sets, 3)?);
        Ok(self)
    }

    /// The calibration file for a request: the one given, else `calibration.json` beside the
    /// model if present.
    pub fn calibration(&self, opts: &PruneOptions) -> Result<Option<Calibration>> {
        let path = match &opts.calibration {
            Some(p) => p.clone(),
            None => {
                let p = Calibration::default_path(&self.model_dir);
                if !p.is_file() {
                    return Ok(None);
                }
                p
            }
        };
        Calibration::load(&path, &self.fingerprint, self.model.visual_tokens()).map(Some)
    }

    /// Total bytes of the model's tensors, for progress bars (without loading it).
    pub fn checkpoint_bytes(model: &Path, mmproj: Option<&Path>) -> Result<u64> {
        if !Self::is_gguf(model) {
            return Ok(crate::weights::Checkpoint::open(model)?.data_bytes());
        }
        let mut total = crate::gguf::GgufFile::open(model)?.data_bytes();
        if let Some(m) = mmproj {
            total += crate::gguf::GgufFile::open(m)?.data_bytes();
        }
        Ok(total)
    }

    /// The vision tower, pruning and projector passes for `image`, with the tower's output
    /// reused from the cache when `opts.reuse_vision` and the pixels match. The CPU's
    /// preprocessing time (and the pixels' upload) is added to `preprocess_ms`.
    fn encode_pass(
        &self,
        image: &RgbImage,
        opts: &GenerateOptions,
        plan: &crate::prune::Plan,
        preprocess_ms: &mut f64,
    ) -> Result<crate::model::llava::EncodePass> {
        let prune = Some((plan, &opts.prune));
        let Some(vision) = &self.model.vision else {
            bail!("this model has no vision encoder: give its --mmproj file to use --image");
        };
        let size = self.model.cfg.vision_config.image_size;
        let t = Instant::now();
        let px = img::preprocess(image, &self.model.preprocessor, size, opts.pad_square)?;
        *preprocess_ms += ms(t);
        let mut cache = self.vision_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, vp)) = cache.as_ref().filter(|_| opts.reuse_vision) {
            if *key == px {
                return self
                    .model
                    .encode_pass_from(&self.gpu, vp.clone(), false, prune);
            }
        }
        let t = Instant::now();
        let pixels = self.gpu.storage_init("pixels", bytemuck::cast_slice(&px))?;
        *preprocess_ms += ms(t);
        let vp = Arc::new(vision.pass(&self.gpu, &pixels)?);
        if opts.reuse_vision {
            *cache = Some((px, vp.clone()));
        }
        self.model.encode_pass_from(&self.gpu, vp, true, prune)
    }

    fn pixels(&self, image: &RgbImage, pad: bool) -> Result<wgpu::Buffer> {
        let size = self.model.cfg.vision_config.image_size;
        let px = img::preprocess(image, &self.model.preprocessor, size, pad)?;
        self.gpu.storage_init("pixels", bytemuck::cast_slice(&px))
    }

    /// The projector's output for an image: [visual_tokens × text hidden], row-major.
    pub fn encode_image(&self, image: &RgbImage, pad_square: bool) -> Result<Vec<f32>> {
        let pixels = self.pixels(image, pad_square)?;
        let ep = self.model.encode_pass(&self.gpu, &pixels, None)?;
        self.gpu.run(&ep.kernels())?;
        ep.out.read(&self.gpu)
    }

    /// The template and system sentence a request uses: `--template` if given, else the
    /// model's own; LLaVA's system sentence with `--system`.
    pub fn chat_for(&self, opts: &GenerateOptions) -> Result<Chat> {
        let mut chat = match &opts.template {
            Some(t) => Chat {
                template: prompt::named_template(t)?,
                system: None,
            },
            None => self.chat.clone(),
        };
        if chat.is_chatml() && chat.system.is_none() {
            chat.system = self.chat.system.clone();
        }
        if opts.system && !chat.is_chatml() {
            chat.system = Some(prompt::LLAVA_SYSTEM.to_string());
        }
        Ok(chat)
    }

    /// Prompt token ids (BOS included) with a single image token where `<image>` was. A
    /// vocabulary without an `<image>` token (llama.cpp's LLaVA decoders) gets the text
    /// either side tokenised separately and the model's image token id between.
    pub fn prompt_ids(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        with_image: bool,
    ) -> Result<Vec<u32>> {
        let chat = self.chat_for(opts)?;
        let text = prompt::render(&chat.template, prompt, chat.system.as_deref(), with_image);
        let image_token = self.model.cfg.image_token();
        if !with_image || self.tokenizer.token_to_id(IMAGE_TAG) == Some(image_token) {
            return prompt::encode(&self.tokenizer, &text);
        }
        let (before, after) = text
            .split_once(IMAGE_TAG)
            .ok_or_else(|| anyhow!("the prompt template has no {IMAGE_TAG} tag for the image"))?;
        let mut ids = prompt::encode(&self.tokenizer, before)?;
        ids.push(image_token);
        ids.extend(prompt::encode_continuation(&self.tokenizer, after)?);
        Ok(ids)
    }

    /// The prompt's token ids, after the checks a request must pass before any GPU work, and
    /// the place of its one image token (0 without an image).
    fn checked_prompt(
        &self,
        with_image: bool,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<(Vec<u32>, usize)> {
        let vocab_size = self.model.llm.cfg.vocab_size;
        if opts.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        if with_image && self.model.vision.is_none() {
            bail!("this model has no vision encoder: give its --mmproj file to use --image");
        }
        if with_image && !self.chat_for(opts)?.template.contains(IMAGE_TAG) {
            bail!("the prompt template has no {IMAGE_TAG} tag for the image");
        }
        if !with_image && opts.prune.method != Method::None {
            bail!(
                "--prune {} needs an --image: pruning removes visual tokens",
                opts.prune.method
            );
        }
        let ids = self.prompt_ids(prompt, opts, with_image)?;
        let image_token = self.model.cfg.image_token();
        let slots: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == image_token)
            .map(|(i, _)| i)
            .collect();
        match (with_image, slots.len()) {
            (true, 1) | (false, 0) => {}
            (true, n) => bail!(
                "the prompt must hold exactly one {IMAGE_TAG} token, found {n} (the chat \
                 template places the image's; leave {IMAGE_TAG} out of --prompt)"
            ),
            (false, _) => bail!("the prompt holds {IMAGE_TAG} but no image was given"),
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab_size) {
            bail!(
                "token id {bad} is outside the model's vocabulary of {}",
                vocab_size
            );
        }
        Ok((ids, slots.first().copied().unwrap_or(0)))
    }

    /// Answer `prompt` about `image`, calling `on_text` with each new piece of text.
    pub fn generate(
        &self,
        image: Option<&RgbImage>,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Output> {
        let gpu = &*self.gpu;
        gpu.reset_peak_memory();
        let llm = &self.model.llm;
        let cfg = &llm.cfg;
        let layers = cfg.num_hidden_layers;
        let (ids, slot) = self.checked_prompt(image.is_some(), prompt, opts)?;
        let n_full = if image.is_some() {
            self.model.visual_tokens()
        } else {
            0
        };
        let plan = opts.prune.plan(n_full, layers)?;
        let pruning = !plan.is_identity();
        let split = plan.layer.filter(|_| pruning);
        // The prompt as the decoder sees it: the <image> token becomes n_vis rows.
        let image_token = self.model.cfg.image_token();
        let n_vis = plan.encoder_keep;
        let mut full: Vec<u32> = Vec::with_capacity(ids.len() + n_vis);
        for &t in &ids {
            if t == image_token && image.is_some() {
                full.extend(std::iter::repeat_n(t, n_vis));
            } else {
                full.push(t);
            }
        }
        let prompt_len = full.len();
        let text_len = prompt_len - n_vis;
        let unpruned_len = text_len + n_full;
        let late_rows = text_len + plan.decoder_keep;
        if prompt_len.saturating_add(opts.max_tokens) > cfg.max_position_embeddings {
            bail!(
                "prompt of {prompt_len} tokens ({n_vis} visual) plus --max-tokens {} exceeds the \
                 model's context of {} tokens",
                opts.max_tokens,
                cfg.max_position_embeddings
            );
        }
        let tokens_per_layer = plan.tokens_per_layer(text_len);
        let ctx: Vec<usize> = tokens_per_layer
            .iter()
            .map(|t| t + opts.max_tokens)
            .collect();
        let needs_calibration = matches!(
            plan.method,
            Method::PoRe | Method::PbcMmr | Method::PosPrune
        );
        let calibration = if pruning && needs_calibration {
            self.calibration(&opts.prune)?
        } else {
            None
        };
        let profile = match (&calibration, split) {
            (Some(c), Some(k)) => Some(c.layer(k).ok_or_else(|| {
                anyhow!("the calibration file has no profile for --prune-layer {k}")
            })?),
            _ => None,
        };

        // Buffers for the whole request, allocated once.
        let cache = KvCache::new(
            gpu,
            cfg,
            &ctx,
            tokens_per_layer.iter().copied().max().unwrap_or(1),
        )?;
        let ids_buf = gpu.storage_init("prompt_ids", bytemuck::cast_slice(&full))?;
        let positions: Vec<u32> = (0..prompt_len as u32).collect();
        let pos_prefill = gpu.storage_init("positions", bytemuck::cast_slice(&positions))?;
        let pos_decode = gpu.storage_buffer("position", 4)?;
        let step = gpu.uniform_init("step", bytemuck::bytes_of(&Step::default()));
        let step_late = gpu.uniform_init("step.late", bytemuck::bytes_of(&Step::default()));
        let token = gpu.storage_buffer("token", 4)?;
        let mut readback = TokenQueue::new(gpu, &token);
        // rows keep their prompt positions through pruning; decode adds max_tokens - 1
        let rope_table = llm.rope_table(gpu, prompt_len + opts.max_tokens)?;
        let io = PassIo {
            cache: &cache,
            positions: &pos_prefill,
            step: &step,
            late_step: split.map(|k| (k, &step_late)),
            token: &token,
            sampling: opts.sampling,
            rope_table: &rope_table,
        };
        let mut rng = Rng(opts.seed);
        let mut timings = Timings {
            load: self.load_ms,
            ..Default::default()
        };
        let timed = |kernels: &[&Kernel], acc: &mut f64| -> Result<()> {
            let t = Instant::now();
            gpu.run(kernels)?;
            *acc += ms(t);
            Ok(())
        };

        // 1. Vision tower, encoder-side pruning, projector.
        let s_full = llm.scratch(gpu, prompt_len)?;
        let mut prefill_in = llm.embed(gpu, &ids_buf, &s_full.x)?;
        let mut stage_buffers = Vec::new();
        let mut vis_raster = None;
        let mut _encode_pass = None; // keeps the visual tokens alive until prefill has run
        if let Some(image) = image {
            let ep = self.encode_pass(image, opts, &plan, &mut timings.preprocess)?;
            timed(&ep.tower(), &mut timings.encode)?;
            timed(&ep.prune.iter().collect::<Vec<_>>(), &mut timings.prune)?;
            timed(
                &ep.projector.iter().collect::<Vec<_>>(),
                &mut timings.encode,
            )?;
            timed(
                &ep.prune_after.iter().collect::<Vec<_>>(),
                &mut timings.prune,
            )?;
            prefill_in.push(llm.place_rows(gpu, &ep.out, &s_full.x, slot)?);
            vis_raster = ep.stage.as_ref().map(|s| s.raster.clone());
            _encode_pass = Some(ep);
            if let Some(s) = _encode_pass.as_ref().and_then(|ep| ep.stage.as_ref()) {
                stage_buffers.push(s);
            }
        }

        // 2. Prefill: the whole prompt (pruned at layer K if asked), then the first token.
        let s = Step {
            kv_offset: 0,
            kv_len: prompt_len as u32,
            rand: rng.next_f32(),
            _pad: 0,
        };
        gpu.queue.write_buffer(&step, 0, bytemuck::bytes_of(&s));
        gpu.queue
            .write_buffer(&step_late, 0, bytemuck::bytes_of(&s));
        let logits = crate::gpu::Tensor::new(gpu, "llm.logits", 1, cfg.vocab_size)?;
        let decoder_stage;
        let mut decoder_prune = Vec::new();
        let late_scratch;
        let head = match split {
            Some(k) => {
                let early = llm.layer_ops(gpu, 0..k, &s_full, &pos_prefill, &io, None)?;
                let ks: Vec<&Kernel> = prefill_in.iter().chain(&early).collect();
                timed(&ks, &mut timings.prefill)?;
                let raster = match vis_raster {
                    Some(r) => r,
                    None => stages::identity(gpu, n_vis)?,
                };
                let mask = match image {
                    Some(im) if opts.pad_square => {
                        crate::prune::pore::padding_mask(im.width(), im.height(), self.model.grid())
                    }
                    _ => vec![1.0; n_full],
                };
                let ds = stages::decoder_stage(
                    gpu,
                    &plan,
                    &opts.prune,
                    profile,
                    &mask,
                    &DecoderInput {
                        h: llm.heads(),
                        q: &s_full.q,
                        k_cache: &cache.k[k - 1],
                        x: &s_full.x,
                        rows: prompt_len,
                        slot,
                        n_vis,
                        raster: &raster,
                    },
                )?;
                timed(&ds.kernels.iter().collect::<Vec<_>>(), &mut timings.prune)?;
                let (x, positions) = (ds.x, ds.positions);
                decoder_stage = ds.buffers;
                decoder_prune = ds.kernels;
                stage_buffers.push(&decoder_stage);
                late_scratch = llm.scratch_over(gpu, x)?;
                let mut ks = llm.layer_ops(gpu, k..layers, &late_scratch, &positions, &io, None)?;
                ks.extend(llm.head_ops(gpu, &late_scratch.x, late_rows - 1, &logits, &io)?);
                ks
            }
            None => {
                let mut ks = prefill_in;
                ks.extend(llm.layer_ops(gpu, 0..layers, &s_full, &pos_prefill, &io, None)?);
                ks.extend(llm.head_ops(gpu, &s_full.x, prompt_len - 1, &logits, &io)?);
                ks
            }
        };
        let t_last = Instant::now();
        readback.submit(&head.iter().collect::<Vec<_>>(), 0)?;
        gpu.sample_memory(); // every buffer of the request is alive here
        let mut next = readback.read(0)?;
        timings.prefill += ms(t_last);
        let prefill_logits = if opts.keep_prefill_logits {
            Some(logits.read(gpu)?)
        } else {
            None
        };

        // 3. Decode, one submit per token. Step j samples token j + 1 on the device, where
        // step j + 1 reads it, so with `decode_ahead` step j + 1 is submitted before token
        // j + 1 is read back: the device runs a step while the host reads the previous
        // token and encodes the next step. A step submitted past an end-of-sequence token
        // is wasted work, nothing more; none is submitted past max_tokens.
        let t = Instant::now();
        let decode = llm.pass(
            gpu,
            1,
            Mode::Decode,
            &PassIo {
                positions: &pos_decode,
                ..io
            },
        )?;
        let decode_in = llm.embed(gpu, &token, &decode.x)?;
        let kernels: Vec<&Kernel> = decode_in.iter().chain(&decode.kernels).collect();
        let mut stream = TextStream::new(&self.tokenizer);
        let mut tokens = Vec::new();
        let ahead = usize::from(gpu.decode_ahead());
        let mut queued = 0; // decode steps submitted
        loop {
            if next as usize >= cfg.vocab_size {
                bail!("the GPU chose token {next}, outside the vocabulary (device fault?)");
            }
            tokens.push(next);
            if self.eos.contains(&next) && !opts.ignore_eos {
                break;
            }
            on_text(&stream.push(next)?);
            if tokens.len() >= opts.max_tokens {
                break;
            }
            // the next token comes from step k - 1; queue up to step k - 1 + ahead
            let k = tokens.len();
            while queued < k + ahead && queued + 1 < opts.max_tokens {
                let t_new = queued as u32;
                let pos = prompt_len as u32 + t_new;
                let rand = rng.next_f32();
                let s = Step {
                    kv_offset: pos,
                    kv_len: pos + 1,
                    rand,
                    _pad: 0,
                };
                gpu.queue.write_buffer(&step, 0, bytemuck::bytes_of(&s));
                if split.is_some() {
                    let late = late_rows as u32 + t_new;
                    let s = Step {
                        kv_offset: late,
                        kv_len: late + 1,
                        rand,
                        _pad: 0,
                    };
                    gpu.queue
                        .write_buffer(&step_late, 0, bytemuck::bytes_of(&s));
                }
                gpu.queue
                    .write_buffer(&pos_decode, 0, bytemuck::bytes_of(&pos));
                readback.submit(&kernels, queued + 1)?;
                queued += 1;
            }
            next = readback.read(k)?;
        }
        timings.decode = ms(t);
        // Developer switch (VLM_RUN_PROFILE): each pass's kernels timed, to stderr
        // (src/profile.rs; not for a warm-up, whose kernels run over empty grids).
        let profiled = std::env::var_os("VLM_RUN_PROFILE").filter(|_| !gpu.in_empty_grids());
        if let Some(p) = profiled {
            let passes = crate::profile::ProfiledPasses {
                encode: _encode_pass.as_ref(),
                decoder_prune: &decoder_prune,
                prefill: &head,
                decode: &kernels,
            };
            passes.print(gpu, &p)?;
        }

        // Accounting.
        let stages = stage_buffers
            .iter()
            .map(|b| b.trace(gpu, opts.trace_pruning))
            .collect::<Result<Vec<_>>>()?;
        let flops = self.flops(&plan, &tokens_per_layer, unpruned_len, n_full);
        let ctx_unpruned = vec![unpruned_len + opts.max_tokens; layers];
        let pruning_report = pruning.then(|| PruneReport {
            method: plan.method,
            budget: plan.budget,
            achieved_budget: plan.achieved_budget(),
            prune_layer: split,
            kept_encoder: plan.encoder_keep,
            kept_decoder: plan.decoder_keep,
        });
        Ok(Output {
            text: stream.text()?,
            tokens,
            prompt_tokens: unpruned_len,
            visual_tokens: n_full,
            visual_tokens_kept: n_vis,
            tokens_per_layer,
            kv_cache_bytes: cache.bytes(),
            kv_cache_bytes_unpruned: budget::kv_bytes(&ctx_unpruned, self.decoder_shape().d_kv, 4),
            flops,
            pruning: pruning_report,
            timings_ms: timings,
            peak_gpu_bytes: gpu.peak_memory(),
            prefill_logits,
            stages,
        })
    }

    fn decoder_shape(&self) -> DecoderShape {
        let cfg = &self.model.llm.cfg;
        DecoderShape {
            d: cfg.hidden_size,
            d_kv: cfg.kv_heads() * cfg.head_dim(),
            m: cfg.intermediate_size,
        }
    }

    /// The request's FLOPs (PRUNING.md's exact shapes, and FastV's convention) with `plan`'s
    /// tokens per layer, and unpruned: every layer sees the `unpruned_len`-token prompt.
    /// `n_full`: the image's visual tokens (0 without one).
    fn flops(
        &self,
        plan: &crate::prune::Plan,
        tokens_per_layer: &[usize],
        unpruned_len: usize,
        n_full: usize,
    ) -> Flops {
        let shape = self.decoder_shape();
        let unpruned = vec![unpruned_len; tokens_per_layer.len()];
        // the rows the projector runs on: all of them, unless an encoder-side method pruned
        // before it (DivPrune selects after it)
        let encoder_pruned =
            !plan.is_identity() && plan.method.encoder_side() && plan.method != Method::DivPrune;
        let projected = if encoder_pruned {
            plan.encoder_keep
        } else {
            n_full
        };
        Flops {
            decoder: budget::decoder_flops(shape, tokens_per_layer),
            decoder_unpruned: budget::decoder_flops(shape, &unpruned),
            decoder_fastv: budget::decoder_flops_fastv(shape, tokens_per_layer),
            decoder_fastv_unpruned: budget::decoder_flops_fastv(shape, &unpruned),
            encoder: if n_full > 0 {
                self.model.encoder_flops()
            } else {
                0
            },
            projector: self.model.projector_flops(projected),
        }
    }
}
