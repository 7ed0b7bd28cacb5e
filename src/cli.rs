//! Command-line arguments of `vlm-run`.

use clap::Parser;
use std::path::PathBuf;

/// The model used when --model is not given: the tiny LLaVA fixture in this repository
/// (random weights: it shows the pipeline working, its answers are noise).
pub const DEFAULT_MODEL: &str = "tests/fixtures/tiny-llava";

#[derive(Parser, Debug)]
#[command(
    name = "vlm-run",
    allow_negative_numbers = true,
    version,
    about = "Answer questions about images with LLaVA-style vision-language models, on any \
             Vulkan, Metal or DX12 GPU.",
    after_help = "EXAMPLES:\n  vlm-run --image photo.jpg --prompt \"What is in the image?\"\n  \
                  vlm-run --model ~/models/llava-1.5-7b-hf --image photo.jpg --prompt \"Describe it.\" --max-tokens 128\n  \
                  vlm-run --image photo.jpg --prompt \"How many cats?\" --json\n\n\
                  ENVIRONMENT:\n  VLM_RUN_F16=0|1         use shader-f16 (default: when the adapter has it)\n  \
                  VLM_RUN_SUBGROUPS=0|1   use subgroup reductions (default: when the adapter has them)\n  \
                  VLM_RUN_MAX_BINDING=N   split weights into chunks of at most N bytes"
)]
pub struct Args {
    /// Model directory in the llava-hf layout (config.json, *.safetensors, tokenizer.json,
    /// preprocessor_config.json), e.g. a download of llava-hf/llava-1.5-7b-hf.
    /// Default: the tiny random fixture in tests/fixtures/tiny-llava.
    #[arg(long, short = 'm', value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// Image to ask about (PNG, JPEG, BMP, GIF, WebP). Without it the prompt is text-only.
    #[arg(long, short = 'i', value_name = "PATH")]
    pub image: Option<PathBuf>,

    /// The question or instruction.
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: String,

    /// Most tokens to generate; generation also stops at the end-of-sequence token.
    #[arg(long, short = 'n', default_value_t = 256, value_name = "N")]
    pub max_tokens: usize,

    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, short = 't', default_value_t = 0.0, value_name = "T")]
    pub temperature: f32,

    /// Nucleus sampling: sample only among the most likely tokens whose probabilities add
    /// up to P. 1 keeps all. Used when --temperature > 0.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub top_p: f32,

    /// Seed for sampling, so runs with --temperature > 0 are reproducible.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,

    /// Pad the image to a square with the mean colour before resizing, as original LLaVA
    /// does, instead of llava-hf's centre crop (which cuts the sides of non-square images).
    #[arg(long)]
    pub pad_square: bool,

    /// Prompt template: {prompt} is replaced by --prompt and <image> marks where the visual
    /// tokens go.
    #[arg(long, default_value = vlm_run::prompt::LLAVA_TEMPLATE, value_name = "TEMPLATE")]
    pub template: String,

    /// Start the prompt with original LLaVA's (conv_llava_v1) system sentence.
    #[arg(long)]
    pub system: bool,

    /// Print one JSON object at the end instead of streaming text: text, tokens,
    /// prompt_tokens, visual_tokens, kv_cache_bytes and timings_ms.
    #[arg(long)]
    pub json: bool,

    /// Print timings and sizes to stderr after the answer.
    #[arg(long)]
    pub stats: bool,
}
