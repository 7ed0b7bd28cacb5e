//! `vlm-run`: the command-line front of the engine. Follow a request from here into
//! `Engine::load` and `Engine::generate` (src/generate.rs).

mod cli;

use anyhow::{bail, Result};
use clap::Parser;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use vlm_run::{Engine, GenerateOptions, GpuOptions, Sampling};

fn default_model() -> PathBuf {
    let here = PathBuf::from(cli::DEFAULT_MODEL);
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(cli::DEFAULT_MODEL)
}

fn run(args: cli::Args) -> Result<()> {
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
    };
    sampling.validate()?;
    let model_dir = args.model.clone().unwrap_or_else(default_model);
    if !model_dir.is_dir() {
        bail!("model directory {} does not exist", model_dir.display());
    }
    // Read the image first: a bad image should not cost a model load.
    let image = match &args.image {
        Some(p) => Some(vlm_run::image::load(p)?),
        None => None,
    };

    let total = Engine::checkpoint_bytes(&model_dir)?;
    let bar = if std::io::stderr().is_terminal() && !args.json {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let engine = Engine::load(&model_dir, &GpuOptions::from_env()?, &|b| bar.inc(b))?;
    bar.finish_and_clear();
    if args.stats {
        eprintln!("device: {}", engine.gpu.describe());
    }

    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        seed: args.seed,
        pad_square: args.pad_square,
        template: args.template.clone(),
        system: args.system,
        keep_prefill_logits: false,
    };
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let out = engine.generate(image.as_ref(), &args.prompt, &opts, &mut |piece| {
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
    if args.stats {
        let t = &out.timings_ms;
        let decode_tps = if t.decode > 0.0 {
            (out.tokens.len().saturating_sub(1)) as f64 / (t.decode / 1e3)
        } else {
            0.0
        };
        eprintln!(
            "prompt {} tokens ({} visual), generated {}; KV cache {} bytes\n\
             load {:.0} ms, encode {:.0} ms, prefill {:.0} ms ({:.1} tok/s), decode {:.0} ms ({:.1} tok/s)",
            out.prompt_tokens,
            out.visual_tokens,
            out.tokens.len(),
            out.kv_cache_bytes,
            t.load,
            t.encode,
            t.prefill,
            out.prompt_tokens as f64 / (t.prefill / 1e3),
            t.decode,
            decode_tps
        );
    }
    Ok(())
}

fn main() -> ExitCode {
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
