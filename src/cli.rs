//! Command-line arguments of `vlm-run`.

use clap::Parser;
use std::path::PathBuf;

/// The model used when --model is not given: the tiny LLaVA trained on synthetic scenes of
/// coloured shapes by scripts/vqa/train_tiny_llava.py (weights/tiny-llava-vqa, 5.1 MB).
pub const DEFAULT_MODEL: &str = "weights/tiny-llava-vqa";

#[derive(Parser, Debug)]
#[command(
    name = "vlm-run",
    allow_negative_numbers = true,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    version,
    about = "Answer questions about images with LLaVA-style vision-language models, on any \
             Vulkan, Metal or DX12 GPU.",
    after_help = "EXAMPLES:\n  vlm-run --image photo.jpg --prompt \"What is in the image?\"\n  \
                  vlm-run --model ~/models/llava-1.5-7b-hf --image photo.jpg --prompt \"Describe it.\" --max-tokens 128\n  \
                  vlm-run --image photo.jpg --prompt \"How many cats?\" --json\n  \
                  vlm-run --image photo.jpg --prompt \"Describe it.\" --prune posprune --keep 64 --save-keep-map keep.png\n  \
                  vlm-run --model weights/SmolLM2-135M-Instruct.Q4_1.gguf --prompt \"What is the capital of France?\"\n  \
                  vlm-run --model llava-v1.5-7b-Q4_K_M.gguf --mmproj mmproj-model-f16.gguf --image photo.jpg --prompt \"Describe it.\"\n  \
                  vlm-run calibrate --model ~/models/llava-1.5-7b-hf\n  \
                  vlm-run bench --image photo.jpg\n  \
                  vlm-run bench --model weights/SmolLM2-135M-Instruct.Q4_1.gguf\n  \
                  vlm-run bench --synthetic llava-1.5-7b --dtype q4_0 --prune-sweep\n\n\
                  ENVIRONMENT:\n  VLM_RUN_F16=0|1         use shader-f16 (default: when the adapter has it)\n  \
                  VLM_RUN_SUBGROUPS=0|1   use subgroup reductions (default: when the adapter has them)\n  \
                  VLM_RUN_MAX_BINDING=N   split weights into chunks of at most N bytes\n  \
                  VLM_RUN_WEIGHT_TEXTURES=0|1  keep weights (and the prefill attention's K/V) in textures\n                          \
                  (default: on CPU devices, where texel fetches beat storage-buffer loads)\n  \
                  VLM_RUN_UNIFORM_X=0|1   give the decode GEMV its input vector in uniform buffers\n                          \
                  (default: on CPU devices, which load storage buffers lane by lane)\n  \
                  VLM_RUN_X_TEXTURES=0|1  keep the decode step's residual stream in a texture too, read by the\n                          \
                  norm GEMVs (default: on CPU devices, which fetch texels faster than they gather)\n  \
                  VLM_RUN_DECODE_AHEAD=0|1  submit each decode step before the previous token is read back\n                          \
                  (default: on GPUs; off on CPU devices, whose cores the host would share)\n  \
                  VLM_RUN_GEMM_TILE=K     prefill GEMM kernel: 64 or 32 (workgroup tiles), lanes (lane groups),\n                          \
                  tune (time each on the model at load; cached in VLM_RUN_CACHE_DIR,\n                          \
                  else ~/.cache/vlm-run), auto (default: the device class's table)"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Model: a directory in the llava-hf layout (config.json, *.safetensors,
    /// tokenizer.json, preprocessor_config.json), e.g. a download of
    /// llava-hf/llava-1.5-7b-hf; or a Llama-family GGUF file (F32, F16, BF16, Q8_0, Q4_0,
    /// Q4_1, Q5_0, Q5_1, IQ4_NL, Q3_K, Q4_K, Q5_K, Q6_K), e.g. weights/SmolLM2-135M-Instruct.Q4_1.gguf.
    /// Default: the trained tiny LLaVA in weights/tiny-llava-vqa (it knows scenes of
    /// coloured shapes: try tests/fixtures/vqa-sample/images).
    #[arg(long, short = 'm', value_name = "DIR|FILE.gguf")]
    pub model: Option<PathBuf>,

    /// llama.cpp's LLaVA vision file (CLIP and projector, `mmproj-*.gguf`) for a GGUF
    /// --model. Without it a GGUF model answers text-only prompts.
    #[arg(long, value_name = "FILE.gguf")]
    pub mmproj: Option<PathBuf>,

    /// Image to ask about (PNG, JPEG, BMP, GIF, WebP). Without it the prompt is text-only.
    #[arg(long, short = 'i', value_name = "PATH")]
    pub image: Option<PathBuf>,

    /// The question or instruction; `-` reads it from standard input.
    #[arg(long, short = 'p', value_name = "TEXT", required = true)]
    pub prompt: Option<String>,

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

    /// Chat template: llava ("USER: <image>\n{prompt} ASSISTANT:"), chatml, or a template
    /// text in which {prompt} is replaced by --prompt and <image> marks the visual tokens.
    /// Default: the model's own (a GGUF's tokenizer.chat_template; LLaVA's otherwise).
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,

    /// Start a LLaVA-template prompt with original LLaVA's (conv_llava_v1) system sentence.
    /// (ChatML models use the system sentence of their own template.)
    #[arg(long)]
    pub system: bool,

    /// Print one JSON object at the end instead of streaming text: text, tokens,
    /// prompt_tokens, visual_tokens, kv_cache_bytes and timings_ms.
    #[arg(long)]
    pub json: bool,

    /// Print timings and sizes to stderr after the answer.
    #[arg(long)]
    pub stats: bool,

    #[command(flatten)]
    pub prune: PruneArgs,

    /// Draw the image with the pruned patches dimmed and the kept ones outlined (green: kept;
    /// orange: kept by ARP, dropped at layer K; blue: VisionZip merge target) into this PNG.
    #[arg(long, value_name = "PNG")]
    pub save_keep_map: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Measure the decoder's positional attention bias on content-free inputs (a mean-colour
    /// image, neutral prompts) and write it, with PoRe's rho, for PBC and PoRe to use.
    Calibrate(CalibrateArgs),
    /// Measure one request: image preprocessing and vision-encoder ms, prefill ms and tokens/s, time to first token,
    /// decode tokens/s and its effective bandwidth against the device's copy bandwidth (on
    /// CPU devices also against the host's memory read bandwidth), and peak GPU memory
    /// (medians after a warm-up, with the runs' lowest and highest). --prune-sweep adds time
    /// to first token for every pruning method at several budgets, next to the speed-up its
    /// FLOPs predict.
    Bench(BenchArgs),
    /// Accuracy on a visual-QA file (this repo's synthetic JSONL, or POPE's format), overall
    /// and per category; with --sweep, every pruning method at four budgets, written as a
    /// markdown table, a CSV and a PNG plot.
    Eval(EvalArgs),
}

#[derive(clap::Args, Debug)]
#[command(after_help = "EXAMPLES:\n  \
    python3 scripts/vqa/make_dataset.py --out data/vqa --train 0\n  \
    vlm-run eval --data data/vqa/test.jsonl\n  \
    vlm-run eval --data data/vqa/test.jsonl --prune posprune --keep 64\n  \
    vlm-run eval --data data/vqa/test.jsonl --sweep --out eval-results\n  \
    vlm-run eval --model ~/models/llava-1.5-7b-hf --data coco_pope_adversarial.json --images val2014/")]
pub struct EvalArgs {
    /// Model directory or GGUF file (default: the trained tiny LLaVA in weights/).
    #[arg(long, short = 'm', value_name = "DIR|FILE.gguf")]
    pub model: Option<PathBuf>,
    /// llama.cpp's LLaVA vision file for a GGUF --model.
    #[arg(long, value_name = "FILE.gguf")]
    pub mmproj: Option<PathBuf>,
    /// Questions, one JSON object per line: {"image","question","answer","category"} (this
    /// repo's generator) or POPE's {"question_id","image","text","label"}.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,
    /// Folder the image names are relative to (default: the question file's folder).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Evaluate only the first N questions.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Tokens to generate per answer.
    #[arg(long, short = 'n', default_value_t = 8)]
    pub max_tokens: usize,
    /// Chat template, as for a normal run.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Run none, then every method at B = 576/192/128/64 (scaled to the model's visual token
    /// count), and write sweep.md, sweep.csv and sweep.png into --out.
    #[arg(long)]
    pub sweep: bool,
    /// Methods for --sweep, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fastv,fastervlm,visionzip,divprune,pore,posprune"
    )]
    pub methods: Vec<vlm_run::Method>,
    /// Budgets for --sweep, comma-separated (default: 576/192/128/64 scaled to N).
    #[arg(long, value_delimiter = ',')]
    pub budgets: Vec<usize>,
    /// Folder for the --sweep outputs.
    #[arg(long, short = 'o', value_name = "DIR", default_value = "eval-results")]
    pub out: PathBuf,
    /// Print each result as a JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print every question with the reply and whether it was right.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub prune: PruneArgs,
}

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// Model directory or GGUF file (default: the trained tiny LLaVA in weights/).
    #[arg(long, short = 'm', value_name = "DIR|FILE.gguf")]
    pub model: Option<PathBuf>,
    /// llama.cpp's LLaVA vision file for a GGUF --model.
    #[arg(long, value_name = "FILE.gguf")]
    pub mmproj: Option<PathBuf>,
    /// Where to write the calibration (default: calibration.json in the model directory).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Chat template, as for a normal run.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Model directory or GGUF file (default: the trained tiny LLaVA in weights/).
    #[arg(
        long,
        short = 'm',
        value_name = "DIR|FILE.gguf",
        conflicts_with = "synthetic"
    )]
    pub model: Option<PathBuf>,
    /// Measure a known shape with random weights made on the GPU, no file needed: tiny (the
    /// parity fixture's LLaVA), smollm2-135m (text only) or llava-1.5-7b.
    #[arg(long, value_name = "NAME")]
    pub synthetic: Option<vlm_run::synthetic::Preset>,
    /// Storage type of a synthetic decoder's matrices: f16, q8_0, q4_0, q4_1, q5_0, q5_1,
    /// iq4_nl, q3_k, q4_k, q5_k or q6_k (the vision tower and projector stay f16; rows that
    /// are not whole blocks of a k-quant take llama.cpp's fallback: iq4_nl for q3_k, q5_0 for
    /// q4_k, q5_1 for q5_k, q8_0 for q6_k).
    #[arg(long, default_value = "f16", value_parser = vlm_run::synthetic::parse_dtype,
          requires = "synthetic")]
    pub dtype: vlm_run::gguf::quant::GgmlType,
    /// llama.cpp's LLaVA vision file for a GGUF --model.
    #[arg(long, value_name = "FILE.gguf", conflicts_with = "synthetic")]
    pub mmproj: Option<PathBuf>,
    /// Image (default: the fixture's a.png). A model without a vision part is measured on
    /// text: prefill and decode tokens/s and peak GPU memory.
    #[arg(long, short = 'i', value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Prompt (default: "Describe the image.", or a ~100-token text for text-only models).
    #[arg(long, short = 'p', value_name = "TEXT")]
    pub prompt: Option<String>,
    /// After the single-request report, measure time to first token for every method at
    /// every budget, next to the speed-up that the prefill FLOPs predict (image models).
    #[arg(long)]
    pub prune_sweep: bool,
    /// Skip the single-request report (its warm-up and runs) and measure only the pruning
    /// sweep: for shapes whose unpruned prefill takes minutes on this device.
    #[arg(long, requires = "prune_sweep")]
    pub sweep_only: bool,
    /// Methods the pruning sweep compares, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,fastv,fastervlm,visionzip,divprune,pore,posprune",
        requires = "prune_sweep"
    )]
    pub methods: Vec<vlm_run::Method>,
    /// Budgets B of the pruning sweep (average visual tokens per decoder layer),
    /// comma-separated. Default: 576,192,128,64 scaled by N/576 for a model of N visual
    /// tokens, as `eval --sweep` does.
    #[arg(long, value_delimiter = ',', requires = "prune_sweep")]
    pub budgets: Vec<usize>,
    /// Tokens to generate per measured run, past EOS (default 64; the sweep generates one:
    /// it times the first token).
    #[arg(long, short = 'n')]
    pub max_tokens: Option<usize>,
    /// Measured runs after the warm-up: the report gives their medians, the sweep the
    /// fastest of them per cell.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Decoder layer K for decoder-side methods.
    #[arg(long, value_name = "K")]
    pub prune_layer: Option<usize>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Visual-token pruning options (see PRUNING.md and README).
#[derive(clap::Args, Debug, Clone)]
pub struct PruneArgs {
    /// Pruning method: none, fastv, fastervlm (CLS attention), visionzip, divprune, pore,
    /// posprune (ARP → PBC → MMR), or one PosPrune stage alone: arp, pbc+mmr.
    #[arg(long, default_value = "none", value_name = "METHOD")]
    pub prune: vlm_run::Method,
    /// Budget B: the average number of visual tokens per decoder layer (equal decoder FLOPs
    /// across methods). Default: all tokens (no pruning).
    #[arg(long, value_name = "B")]
    pub keep: Option<usize>,
    /// Decoder layer K where decoder-side methods prune (default 2; 1 on decoders of fewer
    /// than 24 layers, the same depth fraction as 2 of LLaVA-7B's 32).
    #[arg(long, value_name = "K")]
    pub prune_layer: Option<usize>,
    /// MMR: weight of relevance against diversity (tuned on the benchmark's val split).
    #[arg(long, default_value_t = vlm_run::prune::DEFAULT_MMR_LAMBDA, value_name = "LAMBDA")]
    pub mmr_lambda: f32,
    /// ARP: the patch grid is split into R×R regions.
    #[arg(long, default_value_t = 4, value_name = "R")]
    pub arp_regions: usize,
    /// ARP: every region first gets max(1, floor(ALPHA·B1/R²)) tokens (tuned on the
    /// benchmark's val split; PRUNING.md starts from 0.3).
    #[arg(long, default_value_t = vlm_run::prune::DEFAULT_ARP_FLOOR, value_name = "ALPHA")]
    pub arp_floor: f32,
    /// PosPrune: tokens ARP keeps (B1). Default: 2B, or on decoders under 16 layers the B1 that leaves the layers after K 14/15 of B, as 2B does on LLaVA-1.5-7B (41 at B=28 on the 8-layer default model); at most N.
    #[arg(long, value_name = "B1")]
    pub arp_keep: Option<usize>,
    /// PoRe: position weight base rho (w(p) = rho^p). Default: from the calibration file,
    /// else fitted on the image.
    #[arg(long, value_name = "RHO")]
    pub pore_rho: Option<f32>,
    /// VisionZip: contextual (merged) tokens. Default round(10·B/64).
    #[arg(long, value_name = "C")]
    pub visionzip_contextual: Option<usize>,
    /// PBC: relevance from the text tokens after the image (text) or the last token (last).
    #[arg(long, default_value = "text", value_parser = ["text", "last"])]
    pub pbc_query: String,
    /// Calibration file for PBC and PoRe (default: calibration.json beside the model, if
    /// present; without one the bias trend is fitted on the image).
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
}

impl PruneArgs {
    pub fn options(&self) -> vlm_run::PruneOptions {
        vlm_run::PruneOptions {
            method: self.prune,
            keep: self.keep,
            layer: self.prune_layer,
            mmr_lambda: self.mmr_lambda,
            arp_regions: self.arp_regions,
            arp_floor: self.arp_floor,
            arp_keep: self.arp_keep,
            pore_rho: self.pore_rho,
            visionzip_contextual: self.visionzip_contextual,
            pbc_query: if self.pbc_query == "last" {
                vlm_run::prune::PbcQuery::Last
            } else {
                vlm_run::prune::PbcQuery::Text
            },
            calibration: self.calibration.clone(),
        }
    }
}
