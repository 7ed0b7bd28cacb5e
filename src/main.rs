//! `vlm-run`: the command-line front of the engine. Follow a request from here into
//! `Engine::load` and `Engine::generate` (src/generate.rs).

mod bench;
mod cli;
mod eval_cmd;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vlm_run::prune::{calibrate, keep_map, Method};
use vlm_run::{Engine, GenerateOptions, GpuOptions, Output, Sampling, WarmUp};

/// A path inside the repository: as given when it exists from the working directory, else
/// under the folder the binary was built from.
pub(crate) fn repo_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `bench`'s image when none is given.
const BENCH_IMAGE: &str = "tests/fixtures/tiny-llava/a.png";

fn default_model() -> PathBuf {
    repo_path(cli::DEFAULT_MODEL)
}

/// Load a model (a llava-hf directory, or GGUF files) with a progress bar on a terminal,
/// ending with the warm-up of the model's own kind of request.
pub(crate) fn load(model: Option<&Path>, mmproj: Option<&Path>, quiet: bool) -> Result<Engine> {
    load_warm(model, mmproj, quiet, &WarmUp::ModelKind)
}

/// [`load`], ending with the warm-up `warm_up`.
fn load_warm(
    model: Option<&Path>,
    mmproj: Option<&Path>,
    quiet: bool,
    warm_up: &WarmUp,
) -> Result<Engine> {
    let model_dir = model.map(Path::to_path_buf).unwrap_or_else(default_model);
    if !model_dir.exists() {
        bail!("model {} does not exist", model_dir.display());
    }
    let total = Engine::checkpoint_bytes(&model_dir, mmproj)?;
    let bar = load_bar(Some(total), quiet);
    let gpu_opts = GpuOptions::from_env()?;
    let engine = Engine::open_with(&model_dir, mmproj, &gpu_opts, warm_up, &|b| {
        bar.inc(b);
        if bar.position() >= total {
            // what loading does after the last byte: the warm-up (Engine::warm_up)
            bar.set_message("compiling kernels");
        }
    })?;
    bar.finish_and_clear();
    report_tuning(&engine, quiet);
    Ok(engine)
}

/// The bytes uploaded so far, on stderr on a terminal: a bar against `total`, or a count
/// (a synthetic model's weights, made on the GPU).
fn load_bar(total: Option<u64>, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(t) => (
            indicatif::ProgressBar::new(t),
            "loading {bar:30} {bytes}/{total_bytes} {msg}",
        ),
        None => (
            indicatif::ProgressBar::no_length(),
            "making synthetic weights {bytes} ({elapsed})",
        ),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// One stderr line on what the GEMM autotuner chose (`VLM_RUN_GEMM_TILE=tune`).
pub(crate) fn report_tuning(engine: &Engine, quiet: bool) {
    let Some(t) = engine.gemm_tuning.as_ref().filter(|_| !quiet) else {
        return;
    };
    let cache = t
        .cache
        .as_ref()
        .map_or("not cached".into(), |p| format!("cache {}", p.display()));
    if t.timings_ms.is_empty() {
        eprintln!("GEMM kernel {} (from the {cache})", t.choice.name());
    } else {
        let times: Vec<String> = t
            .timings_ms
            .iter()
            .map(|(k, ms)| format!("{} {ms:.1} ms", k.name()))
            .collect();
        eprintln!(
            "GEMM kernel {} (tuned: {}; {cache})",
            t.choice.name(),
            times.join(", ")
        );
    }
}

fn run(args: cli::Args) -> Result<()> {
    match args.command {
        Some(cli::Command::Calibrate(c)) => return run_calibrate(&c),
        Some(cli::Command::Bench(b)) => return run_bench(&b),
        Some(cli::Command::Eval(e)) => return eval_cmd::run(&e),
        None => {}
    }
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
    };
    sampling.validate()?;
    let prune = args.prune.options();
    prune.validate()?;
    if prune.method != Method::None && args.image.is_none() {
        bail!(
            "--prune {} needs an --image: pruning removes visual tokens",
            prune.method
        );
    }
    if args.prune.keep.is_some() && args.image.is_none() {
        bail!("--keep needs an --image (and a --prune method): pruning removes visual tokens");
    }
    if args.save_keep_map.is_some() && args.image.is_none() {
        bail!("--save-keep-map needs an --image");
    }
    // fail before the run, not after it, where the map cannot be written
    if let Some(p) = &args.save_keep_map {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            bail!(
                "cannot write keep map {}: its directory does not exist",
                p.display()
            );
        }
    }
    // Read the image first: a bad image should not cost a model load.
    let t_image = std::time::Instant::now();
    let image = match &args.image {
        Some(p) => Some(vlm_run::image::load(p)?),
        None => None,
    };
    let image_ms = t_image.elapsed().as_secs_f64() * 1e3;
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        seed: args.seed,
        pad_square: args.pad_square,
        template: args.template.clone(),
        system: args.system,
        keep_prefill_logits: false,
        prune,
        trace_pruning: false,
        ignore_eos: false,
        reuse_vision: false,
    };
    let prompt = match args.prompt.as_deref().unwrap_or_default() {
        "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("--prompt -: cannot read the prompt from standard input")?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        p => p.to_string(),
    };
    let prompt = prompt.as_str();
    // loading warms up this very request, so that its first token pays no compiling
    let warm_up = WarmUp::Like {
        image: image.is_some(),
        prompt: prompt.to_string(),
        opts: Box::new(opts.clone()),
    };
    let engine = load_warm(
        args.model.as_deref(),
        args.mmproj.as_deref(),
        args.json,
        &warm_up,
    )?;
    if image.is_some() && engine.model.vision.is_none() {
        bail!(
            "{} has no vision encoder: give llama.cpp's mmproj file with --mmproj to use --image",
            engine_name(&args)
        );
    }
    if args.stats {
        eprintln!("device: {}", engine.gpu.describe());
    }

    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let out = engine.generate(image.as_ref(), prompt, &opts, &mut |piece| {
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if json {
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    } else {
        writeln!(stdout)?;
    }
    if let (Some(path), Some(image)) = (&args.save_keep_map, &image) {
        save_keep_map(&engine, image, &opts, &out, path)?;
    }
    if args.stats {
        if let Some(im) = &image {
            eprintln!(
                "image {}x{} decoded in {image_ms:.1} ms",
                im.width(),
                im.height()
            );
        }
        print_stats(&out);
    }
    Ok(())
}

fn engine_name(args: &cli::Args) -> String {
    args.model
        .as_deref()
        .map_or_else(default_model, Path::to_path_buf)
        .display()
        .to_string()
}

fn save_keep_map(
    engine: &Engine,
    image: &image::RgbImage,
    opts: &GenerateOptions,
    out: &Output,
    path: &Path,
) -> Result<()> {
    let m = &engine.model;
    let view = vlm_run::image::model_view(
        image,
        &m.preprocessor,
        m.cfg.vision_config.image_size,
        opts.pad_square,
    )?;
    let n = out.visual_tokens;
    let all: Vec<u32> = (0..n as u32).collect();
    let stages = &out.stages;
    let (first, kept) = match stages.len() {
        0 => (None, all.clone()),
        1 => (None, stages[0].raster.clone()),
        _ => (Some(&stages[0].raster[..]), stages[1].raster.clone()),
    };
    // VisionZip: kept tokens that others were merged into.
    let mut merged = Vec::new();
    for s in stages {
        if let Some(assign) = &s.assign {
            for &slot in assign.iter().filter(|&&a| a != u32::MAX) {
                merged.push(s.raster[slot as usize]);
            }
        }
    }
    let fates = keep_map::fates(n, first, &kept, &merged);
    let picture = keep_map::draw(&view, m.grid(), &fates, 2);
    keep_map::save(&picture, path)
}

fn print_stats(out: &Output) {
    let t = &out.timings_ms;
    let decode_tps = if t.decode > 0.0 {
        (out.tokens.len().saturating_sub(1)) as f64 / (t.decode / 1e3)
    } else {
        0.0
    };
    eprintln!(
        "prompt {} tokens ({} visual encoded, {} entered the decoder), generated {}",
        out.prompt_tokens,
        out.visual_tokens,
        out.visual_tokens_kept,
        out.tokens.len()
    );
    if let Some(p) = &out.pruning {
        eprintln!(
            "pruning {}: budget {} (achieved {:.1} per layer), kept {} at the encoder, {} from \
             layer {}",
            p.method,
            p.budget,
            p.achieved_budget,
            p.kept_encoder,
            p.kept_decoder,
            p.prune_layer.map_or("-".to_string(), |k| k.to_string())
        );
    }
    let per_layer = &out.tokens_per_layer;
    eprintln!(
        "tokens per layer: {}",
        per_layer
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let f = &out.flops;
    eprintln!(
        "KV cache {} bytes (unpruned {}); decoder prefill {:.3} GFLOP (unpruned {:.3}; FastV \
         convention {:.3} / {:.3} GMAC); encoder {:.3} GFLOP, projector {:.3} GFLOP",
        out.kv_cache_bytes,
        out.kv_cache_bytes_unpruned,
        f.decoder as f64 / 1e9,
        f.decoder_unpruned as f64 / 1e9,
        f.decoder_fastv as f64 / 1e9,
        f.decoder_fastv_unpruned as f64 / 1e9,
        f.encoder as f64 / 1e9,
        f.projector as f64 / 1e9
    );
    eprintln!(
        "load {:.0} ms, preprocess {:.1} ms, encode {:.0} ms, prune {:.1} ms, prefill {:.0} ms \
         ({:.1} tok/s), decode {:.0} ms ({:.1} tok/s)",
        t.load,
        t.preprocess,
        t.encode,
        t.prune,
        t.prefill,
        out.tokens_per_layer.last().copied().unwrap_or(0) as f64 / (t.prefill / 1e3),
        t.decode,
        decode_tps
    );
}

fn run_calibrate(args: &cli::CalibrateArgs) -> Result<()> {
    let engine = load(args.model.as_deref(), args.mmproj.as_deref(), false)?;
    let cal = calibrate::run(&engine, args.template.as_deref())?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| calibrate::Calibration::default_path(&engine.model_dir));
    cal.save(&path)?;
    let k = vlm_run::PruneOptions::default().layer_for(engine.model.llm.cfg.num_hidden_layers);
    let plot_path = path.with_extension("png");
    if let Some(profile) = cal.layer(k) {
        positional_bias_plot(profile, engine.model.grid()).save(&plot_path)?;
        eprintln!(
            "wrote {}: mean text-to-visual attention by position, layer {}",
            plot_path.display(),
            k - 1
        );
    }
    let k = cal.layers.first().context("no layers calibrated")?;
    eprintln!(
        "wrote {}: {} layers, {} positions; layer {} rho {:.5}",
        path.display(),
        cal.layers.len(),
        cal.visual_tokens,
        k.layer,
        k.rho
    );
    Ok(())
}

/// The positional-bias picture: the visual tokens' mean attention from the text after the
/// image, and from the last token, by raster position (relative to their mean), as measured
/// for prune layer `profile.layer` (in the layer before it).
fn positional_bias_plot(profile: &calibrate::LayerProfile, grid: usize) -> vlm_run::plot::Plot {
    use vlm_run::plot::{Plot, Series, PALETTE};
    let relative = |v: &[f32]| -> Vec<(f64, f64)> {
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        v.iter()
            .enumerate()
            .map(|(p, &x)| (p as f64, x as f64 / mean.max(1e-30)))
            .collect()
    };
    Plot {
        title: format!(
            "text-to-visual attention by position, layer {} (grid {grid}x{grid})",
            profile.layer - 1
        ),
        x_label: "visual token (raster order: top-left first)".into(),
        y_label: "attention / mean".into(),
        y2_label: String::new(),
        x_log: false,
        y_range: None,
        series: vec![
            Series {
                name: "text after image".into(),
                color: PALETTE[2],
                points: relative(&profile.text_profile),
                right_axis: false,
                markers: false,
            },
            Series {
                name: "last token".into(),
                color: PALETTE[1],
                points: relative(&profile.last_profile),
                right_axis: false,
                markers: false,
            },
        ],
    }
}

fn run_bench(args: &cli::BenchArgs) -> Result<()> {
    bench::check_args(args)?;
    let engine = match args.synthetic {
        Some(preset) => {
            let bar = load_bar(None, args.json);
            let opts = GpuOptions::from_env()?;
            let e = Engine::synthetic(preset, args.dtype, &opts, &|b| bar.inc(b))?;
            bar.finish_and_clear();
            report_tuning(&e, args.json);
            e
        }
        None => load(args.model.as_deref(), args.mmproj.as_deref(), args.json)?,
    };
    if engine.model.vision.is_none() {
        if args.image.is_some() {
            bail!("this model has no vision encoder: give its --mmproj file to bench an image");
        }
        if args.prune_sweep {
            bail!("--prune-sweep needs an image model: this model has no vision encoder");
        }
        return bench::run(&engine, args, None);
    }
    let image_path = args.image.clone().unwrap_or_else(|| repo_path(BENCH_IMAGE));
    let image = vlm_run::image::load(&image_path)?;
    let shown = image_path.display().to_string();
    if !args.sweep_only {
        bench::run(&engine, args, Some((&image, &shown)))?;
    }
    if args.prune_sweep {
        bench::prune_sweep(&engine, args, &image)?;
    }
    Ok(())
}

/// Rust ignores SIGPIPE, so a closed stdout (`vlm-run ... | head -1`) would make `println!`
/// panic. Restore the default action: the process ends quietly, as other Unix tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    restore_sigpipe();
    let args = cli::Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
