//! The engine: load a model once, then answer prompts about images. One request runs the
//! vision encoder and projector (one submit), the decoder prefill (one submit), and one
//! submit per generated token; the only readback per token is its 4-byte id.

use crate::gpu::{Gpu, GpuOptions, Kernel, Step};
use crate::image as img;
use crate::model::llama::{KvCache, Mode, PassIo};
use crate::model::llava::Llava;
use crate::ops::{self, elementwise::RowDest, sample::Sampling};
use crate::prompt::{self, TextStream, IMAGE_TAG, LLAVA_TEMPLATE};
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
    /// The prompt template; `{prompt}` is replaced, `<image>` marks the visual tokens.
    pub template: String,
    /// Put conv_llava_v1's system sentence first.
    pub system: bool,
    /// Keep the last-position logits after prefill in the output (tests, debugging).
    pub keep_prefill_logits: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: Sampling::greedy(),
            seed: 0,
            pad_square: false,
            template: LLAVA_TEMPLATE.to_string(),
            system: false,
            keep_prefill_logits: false,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub load: f64,
    pub encode: f64,
    pub prefill: f64,
    pub decode: f64,
}

/// What one request produced, and what it cost.
#[derive(Clone, Debug, Serialize)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub visual_tokens: usize,
    pub kv_cache_bytes: u64,
    pub timings_ms: Timings,
    #[serde(skip)]
    pub prefill_logits: Option<Vec<f32>>,
}

pub struct Engine {
    pub gpu: Arc<Gpu>,
    pub model: Llava,
    pub tokenizer: Tokenizer,
    pub eos: Vec<u32>,
    pub load_ms: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A small seeded generator (SplitMix64) for the sampling kernel's uniform numbers.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
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
        let t = Instant::now();
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        let gpu = Gpu::new(gpu_opts)?;
        let model = Llava::load(&gpu, dir, on_bytes)?;
        let tokenizer = prompt::load_tokenizer(dir)?;
        let eos = prompt::eos_ids(dir, model.cfg.text_config.eos_token_id.as_ref(), &tokenizer)?;
        Ok(Self {
            gpu,
            model,
            tokenizer,
            eos,
            load_ms: ms(t),
        })
    }

    /// Total bytes of the checkpoint's tensors, for progress bars (without loading it).
    pub fn checkpoint_bytes(dir: &Path) -> Result<u64> {
        Ok(crate::weights::Checkpoint::open(dir)?.data_bytes())
    }

    fn pixels(&self, image: &RgbImage, pad: bool) -> Result<wgpu::Buffer> {
        let size = self.model.cfg.vision_config.image_size;
        let px = img::preprocess(image, &self.model.preprocessor, size, pad)?;
        self.gpu.storage_init("pixels", bytemuck::cast_slice(&px))
    }

    fn submit(
        &self,
        kernels: &[&Kernel],
        readback: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    ) -> Result<()> {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for k in kernels {
                k.encode(&mut pass);
            }
        }
        if let Some((src, dst)) = readback {
            enc.copy_buffer_to_buffer(src, 0, dst, 0, 4);
        }
        self.gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// The projector's output for an image: [visual_tokens × text hidden], row-major.
    pub fn encode_image(&self, image: &RgbImage, pad_square: bool) -> Result<Vec<f32>> {
        let pixels = self.pixels(image, pad_square)?;
        let ep = self.model.encode_pass(&self.gpu, &pixels)?;
        self.gpu.run(&ep.kernels.iter().collect::<Vec<_>>())?;
        ep.out.read(&self.gpu)
    }

    /// Prompt token ids (BOS included) with the single `<image>` token still in place.
    pub fn prompt_ids(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        with_image: bool,
    ) -> Result<Vec<u32>> {
        let text = prompt::render(&opts.template, prompt, opts.system, with_image);
        prompt::encode(&self.tokenizer, &text)
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
        let llm = &self.model.llm;
        let cfg = &llm.cfg;
        if opts.max_tokens == 0 {
            bail!("--max-tokens must be at least 1");
        }
        if image.is_some() && !opts.template.contains(IMAGE_TAG) {
            bail!("the prompt template has no {IMAGE_TAG} tag for the image");
        }
        let ids = self.prompt_ids(prompt, opts, image.is_some())?;
        let image_token = self.model.cfg.image_token();
        let slots: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == image_token)
            .map(|(i, _)| i)
            .collect();
        let n_vis = if image.is_some() {
            self.model.visual_tokens()
        } else {
            0
        };
        match (image.is_some(), slots.len()) {
            (true, 1) | (false, 0) => {}
            (true, n) => bail!("the prompt must hold exactly one {IMAGE_TAG} token, found {n}"),
            (false, _) => bail!("the prompt holds {IMAGE_TAG} but no image was given"),
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!(
                "token id {bad} is outside the model's vocabulary of {}",
                cfg.vocab_size
            );
        }
        // The prompt as the decoder sees it: the <image> token becomes n_vis rows.
        let mut full: Vec<u32> = Vec::with_capacity(ids.len() + n_vis);
        for &t in &ids {
            if t == image_token && image.is_some() {
                full.extend(std::iter::repeat_n(t, n_vis));
            } else {
                full.push(t);
            }
        }
        let prompt_len = full.len();
        let ctx = prompt_len + opts.max_tokens;
        if ctx > cfg.max_position_embeddings {
            bail!(
                "prompt of {prompt_len} tokens ({n_vis} visual) plus --max-tokens {} exceeds the \
                 model's context of {} tokens",
                opts.max_tokens,
                cfg.max_position_embeddings
            );
        }

        // Buffers for the whole request, allocated once.
        let cache = KvCache::new(gpu, cfg, ctx)?;
        let ids_buf = gpu.storage_init("prompt_ids", bytemuck::cast_slice(&full))?;
        let positions: Vec<u32> = (0..prompt_len as u32).collect();
        let pos_prefill = gpu.storage_init("positions", bytemuck::cast_slice(&positions))?;
        let pos_decode = gpu.storage_buffer("position", 4)?;
        let step = gpu.uniform_init("step", bytemuck::bytes_of(&Step::default()));
        let token = gpu.storage_buffer("token", 4)?;
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token readback"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let io = |positions| PassIo {
            cache: &cache,
            positions,
            step: &step,
            token: &token,
            sampling: opts.sampling,
        };
        let prefill = llm.pass(gpu, prompt_len, Mode::Prefill, &io(&pos_prefill))?;
        let decode = llm.pass(gpu, 1, Mode::Decode, &io(&pos_decode))?;
        let mut rng = Rng(opts.seed);
        let mut timings = Timings {
            load: self.load_ms,
            ..Default::default()
        };

        // 1. Vision tower and projector.
        let mut prefill_in = llm.embed(gpu, &ids_buf, &prefill.x)?;
        let _encode_pass; // keeps the visual tokens alive until prefill has run
        if let Some(image) = image {
            let t = Instant::now();
            let pixels = self.pixels(image, opts.pad_square)?;
            let ep = self.model.encode_pass(gpu, &pixels)?;
            gpu.run(&ep.kernels.iter().collect::<Vec<_>>())?;
            timings.encode = ms(t);
            let dst = RowDest {
                buf: &prefill.x.buf,
                stride: cfg.hidden_size,
                row0: slots[0],
                col: 0,
                step: None,
            };
            prefill_in.push(ops::elementwise::copy_rows(gpu, &ep.out, 0, n_vis, dst)?);
            _encode_pass = ep;
        }

        // 2. Prefill: the whole prompt, then the first token.
        let t = Instant::now();
        let s = Step {
            kv_offset: 0,
            kv_len: prompt_len as u32,
            rand: rng.next_f32(),
            _pad: 0,
        };
        gpu.queue.write_buffer(&step, 0, bytemuck::bytes_of(&s));
        let kernels: Vec<&Kernel> = prefill_in.iter().chain(&prefill.kernels).collect();
        self.submit(&kernels, Some((&token, &staging)))?;
        let mut next = self.read_token(&staging)?;
        timings.prefill = ms(t);
        let prefill_logits = if opts.keep_prefill_logits {
            Some(prefill.logits.read(gpu)?)
        } else {
            None
        };

        // 3. Decode, one submit per token.
        let t = Instant::now();
        let decode_in = llm.embed(gpu, &token, &decode.x)?;
        let kernels: Vec<&Kernel> = decode_in.iter().chain(&decode.kernels).collect();
        let mut stream = TextStream::new(&self.tokenizer);
        let mut tokens = Vec::new();
        loop {
            if next as usize >= cfg.vocab_size {
                bail!("the GPU chose token {next}, outside the vocabulary (device fault?)");
            }
            tokens.push(next);
            if self.eos.contains(&next) {
                break;
            }
            on_text(&stream.push(next)?);
            if tokens.len() >= opts.max_tokens {
                break;
            }
            let pos = (prompt_len + tokens.len() - 1) as u32;
            let s = Step {
                kv_offset: pos,
                kv_len: pos + 1,
                rand: rng.next_f32(),
                _pad: 0,
            };
            gpu.queue.write_buffer(&step, 0, bytemuck::bytes_of(&s));
            gpu.queue
                .write_buffer(&pos_decode, 0, bytemuck::bytes_of(&pos));
            self.submit(&kernels, Some((&token, &staging)))?;
            next = self.read_token(&staging)?;
        }
        timings.decode = ms(t);
        Ok(Output {
            text: stream.text()?,
            tokens,
            prompt_tokens: prompt_len,
            visual_tokens: n_vis,
            kv_cache_bytes: cache.bytes(),
            timings_ms: timings,
            prefill_logits,
        })
    }

    fn read_token(&self, staging: &wgpu::Buffer) -> Result<u32> {
        let b = self.gpu.map_and_read(staging, 4)?;
        b.try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| anyhow!("short token readback"))
    }
}
