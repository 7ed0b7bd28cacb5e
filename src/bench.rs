//! `vlm-run bench` on a text-only model: prefill and decode tokens per second, and peak GPU
//! memory, as medians over runs after a warm-up run.

use crate::cli::BenchArgs;
use anyhow::Result;
use vlm_run::{Engine, GenerateOptions, Output};

/// About 100 tokens of plain prose, so that prefill is measured over a realistic prompt.
const TEXT_PROMPT: &str = "The history of the printing press begins in the fifteenth century, \
when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press \
into a system that could produce books far faster than scribes. Within fifty years printing \
shops had spread to more than two hundred cities across Europe, and the price of books fell \
sharply. Summarise the consequences of this invention for science and education.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn text(engine: &Engine, args: &BenchArgs) -> Result<()> {
    let prompt = args.prompt.as_deref().unwrap_or(TEXT_PROMPT);
    let opts = GenerateOptions {
        max_tokens: args.max_tokens.unwrap_or(64),
        ignore_eos: true,
        ..Default::default()
    };
    engine.generate(None, prompt, &opts, &mut |_| {})?; // warm-up
    let mut runs: Vec<Output> = Vec::new();
    for _ in 0..args.repeat {
        runs.push(engine.generate(None, prompt, &opts, &mut |_| {})?);
    }
    let prompt_tokens = runs[0].prompt_tokens;
    let decoded = runs[0].tokens.len().saturating_sub(1);
    let prefill_ms = median(runs.iter().map(|o| o.timings_ms.prefill).collect());
    let decode_ms = median(runs.iter().map(|o| o.timings_ms.decode).collect());
    let prefill_tps = prompt_tokens as f64 / (prefill_ms / 1e3);
    let decode_tps = decoded as f64 / (decode_ms / 1e3);
    let peak = runs.iter().filter_map(|o| o.peak_gpu_bytes).max();
    let weights = engine.model.weight_bytes;
    let kv = runs[0].kv_cache_bytes;
    // Bytes one decode step reads: the decoder's weights, and the valid KV-cache rows (on
    // average over the run, prompt + (decoded + 1) / 2 rows of K and V in every layer).
    let llm = &engine.model.llm;
    let d_kv = (llm.cfg.kv_heads() * llm.cfg.head_dim()) as f64;
    let mean_rows = prompt_tokens as f64 + (decoded as f64 + 1.0) / 2.0;
    let kv_read = 2.0 * llm.cfg.num_hidden_layers as f64 * mean_rows * d_kv * 4.0;
    let step_bytes = llm.decode_weight_bytes() as f64 + kv_read;
    let decode_bw = step_bytes * decode_tps;
    let copy_bw = vlm_run::ops::bandwidth::copy_bandwidth(&engine.gpu, 5)?;
    let gb = |b: f64| b / 1e9;
    if args.json {
        let line = serde_json::json!({
            "device": engine.gpu.describe(),
            "model": engine.model_dir.display().to_string(),
            "prompt_tokens": prompt_tokens, "decoded_tokens": decoded,
            "prefill_ms": prefill_ms, "prefill_tokens_per_s": prefill_tps,
            "time_to_first_token_ms": prefill_ms,
            "decode_ms": decode_ms, "decode_tokens_per_s": decode_tps,
            "weight_bytes": weights, "kv_cache_bytes": kv, "peak_gpu_bytes": peak,
            "decode_bytes_per_token": step_bytes,
            "decode_bandwidth_gb_s": gb(decode_bw),
            "copy_bandwidth_gb_s": gb(copy_bw),
            "decode_bandwidth_pct_of_copy": 100.0 * decode_bw / copy_bw,
        });
        println!("{line}");
        return Ok(());
    }
    println!("device: {}", engine.gpu.describe());
    println!(
        "model: {} ({} layers, width {}), {} runs after a warm-up, medians",
        engine.model_dir.display(),
        llm.cfg.num_hidden_layers,
        llm.cfg.hidden_size,
        args.repeat
    );
    println!();
    println!("| prompt tokens | prefill ms (time to first token) | prefill tok/s | decoded tokens | decode tok/s | weights MiB | KV cache MiB | peak GPU MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "| {prompt_tokens} | {prefill_ms:.1} | {prefill_tps:.1} | {decoded} | {decode_tps:.2} | {:.1} | {:.2} | {} |",
        mib(weights),
        mib(kv),
        peak.map_or("n/a".into(), |p| format!("{:.1}", mib(p)))
    );
    println!();
    println!(
        "decode reads {:.1} MB per token (weights and KV cache): {:.2} GB/s effective, \
         {:.0}% of this device's copy bandwidth ({:.2} GB/s read + written, copy kernel)",
        step_bytes / 1e6,
        gb(decode_bw),
        100.0 * decode_bw / copy_bw,
        gb(copy_bw)
    );
    Ok(())
}
