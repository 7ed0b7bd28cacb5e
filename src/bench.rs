//! `vlm-run bench`: one request measured end to end (vision encoder, prefill, time to first
//! token, decode tokens/s and its effective bandwidth, peak GPU memory), as medians over
//! runs after a warm-up; with `--prune-sweep`, time to first token for every pruning method
//! at every budget, next to the speed-up its FLOPs predict.

use crate::cli::BenchArgs;
use anyhow::{bail, Result};
use image::RgbImage as Image;
use std::io::IsTerminal;
use vlm_run::gguf::quant::GgmlType;
use vlm_run::prune::Method;
use vlm_run::{Engine, GenerateOptions, Output, PruneOptions, WarmUp};

/// What the benchmark is doing now, as one line on stderr rewritten in place: a run of a
/// large shape on a slow device takes minutes. Only on a terminal and without `--json`
/// (quiet, as the loader's progress bar is), so that logs and pipes get the tables alone.
/// Cleared when dropped, so that an error leaving early starts its own line.
struct Status(bool);

impl Drop for Status {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Status {
    fn new(args: &BenchArgs) -> Self {
        Self(!args.json && std::io::stderr().is_terminal())
    }
    fn show(&self, msg: &str) {
        if self.0 {
            eprint!("\r{msg}\x1b[K");
        }
    }
    fn clear(&self) {
        if self.0 {
            eprint!("\r\x1b[K");
        }
    }
}

/// About 100 tokens of plain prose, so that prefill is measured over a realistic prompt.
const TEXT_PROMPT: &str = "The history of the printing press begins in the fifteenth century, \
when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press \
into a system that could produce books far faster than scribes. Within fifty years printing \
shops had spread to more than two hundred cities across Europe, and the price of books fell \
sharply. Summarise the consequences of this invention for science and education.";

/// The prompt of an image request when none is given.
const IMAGE_PROMPT: &str = "Describe the image.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lowest and highest of `v` (timings of at least one run: `--repeat` is at least 1).
fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// A rate's lowest and highest over the runs, from each run's `amount` and milliseconds.
fn rate_range(amount: f64, ms: &[f64]) -> (f64, f64) {
    let (fast, slow) = range(ms);
    (amount / (slow / 1e3), amount / (fast / 1e3))
}

/// What `bench` reports for one request, medians over the measured runs, and the spread of
/// the runs: a machine's speed moves between runs (on a shared CPU device by up to a quarter),
/// so one figure alone overstates its precision.
struct Measurement {
    prompt_tokens: usize,
    visual_tokens: usize,
    decoded: usize,
    /// The CPU's image preprocessing (not in time to first token, which pruning cannot
    /// shorten).
    preprocess_ms: f64,
    encode_ms: f64,
    prefill_ms: f64,
    ttft_ms: f64,
    decode_ms: f64,
    peak: Option<u64>,
    kv: u64,
    /// Bytes one decode step reads: every decoder weight and the valid KV-cache rows.
    step_bytes: f64,
    /// Each measured run's prefill, time to first token and decode, ms.
    prefill_runs: Vec<f64>,
    ttft_runs: Vec<f64>,
    decode_runs: Vec<f64>,
}

impl Measurement {
    fn prefill_tps(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prefill_ms / 1e3)
    }
    /// Decode tokens/s: None where no decode step ran (`-n 1` times the first token only).
    fn decode_tps(&self) -> Option<f64> {
        (self.decoded > 0).then(|| self.decoded as f64 / (self.decode_ms / 1e3))
    }
    fn decode_bandwidth(&self) -> Option<f64> {
        self.decode_tps().map(|t| self.step_bytes * t)
    }
    fn prefill_tps_range(&self) -> (f64, f64) {
        rate_range(self.prompt_tokens as f64, &self.prefill_runs)
    }
    fn decode_tps_range(&self) -> Option<(f64, f64)> {
        (self.decoded > 0).then(|| rate_range(self.decoded as f64, &self.decode_runs))
    }
}

fn measure(
    engine: &Engine,
    image: Option<&Image>,
    prompt: &str,
    args: &BenchArgs,
) -> Result<Measurement> {
    let opts = GenerateOptions {
        max_tokens: args.max_tokens.unwrap_or(64),
        ignore_eos: true,
        ..Default::default()
    };
    let status = Status::new(args);
    status.show("bench: warm-up run");
    engine.generate(image, prompt, &opts, &mut |_| {})?;
    let mut runs: Vec<Output> = Vec::new();
    for i in 0..args.repeat {
        status.show(&format!("bench: run {}/{}", i + 1, args.repeat));
        runs.push(engine.generate(image, prompt, &opts, &mut |_| {})?);
    }
    let first = &runs[0];
    // The first token comes out of prefill; decode steps produce the rest.
    let decoded = first.tokens.len().saturating_sub(1);
    // Valid KV rows per layer, on average over the decode steps: the prompt rows that layer
    // kept, plus (decoded + 1) / 2 generated ones; K and V, f32.
    let llm = &engine.model.llm;
    let d_kv = (llm.cfg.kv_heads() * llm.cfg.head_dim()) as f64;
    let rows: f64 = first
        .tokens_per_layer
        .iter()
        .map(|&t| t as f64 + (decoded as f64 + 1.0) / 2.0)
        .sum();
    let prefill_runs: Vec<f64> = runs.iter().map(|o| o.timings_ms.prefill).collect();
    let ttft_runs: Vec<f64> = runs.iter().map(time_to_first_token).collect();
    let decode_runs: Vec<f64> = runs.iter().map(|o| o.timings_ms.decode).collect();
    Ok(Measurement {
        prompt_tokens: first.prompt_tokens,
        visual_tokens: first.visual_tokens,
        decoded,
        preprocess_ms: median(runs.iter().map(|o| o.timings_ms.preprocess).collect()),
        encode_ms: median(runs.iter().map(|o| o.timings_ms.encode).collect()),
        prefill_ms: median(prefill_runs.clone()),
        ttft_ms: median(ttft_runs.clone()),
        decode_ms: median(decode_runs.clone()),
        prefill_runs,
        ttft_runs,
        decode_runs,
        peak: runs.iter().filter_map(|o| o.peak_gpu_bytes).max(),
        kv: first.kv_cache_bytes,
        step_bytes: llm.decode_weight_bytes() as f64 + 2.0 * rows * d_kv * 4.0,
    })
}

/// Vision encoder and projector, pruning passes and decoder prefill: the device's stages.
/// The CPU's image preprocessing before them is reported on its own (`preprocess_ms`).
fn time_to_first_token(out: &Output) -> f64 {
    let t = &out.timings_ms;
    t.encode + t.prune + t.prefill
}

/// The single-request report: a table, or one JSON line.
pub fn run(engine: &Engine, args: &BenchArgs, image: Option<(&Image, &str)>) -> Result<()> {
    let default_prompt = if image.is_some() {
        IMAGE_PROMPT
    } else {
        TEXT_PROMPT
    };
    let prompt = args.prompt.as_deref().unwrap_or(default_prompt);
    let m = measure(engine, image.map(|i| i.0), prompt, args)?;
    let status = Status::new(args);
    status.show("bench: copy bandwidth");
    let copy_bw = vlm_run::ops::bandwidth::copy_bandwidth(&engine.gpu, 5)?;
    // on a CPU device the host's cores are the device: their read bandwidth is its roofline
    let host_bw = if engine.gpu.caps.cpu && m.decoded > 0 {
        status.show("bench: host read bandwidth");
        Some(vlm_run::ops::bandwidth::host_read_bandwidth(512, 5)?)
    } else {
        None
    };
    drop(status);
    let weights = engine.model.weight_bytes;
    let gb = |b: f64| b / 1e9;
    if args.json {
        let by_type: serde_json::Map<String, serde_json::Value> =
            (engine.model.llm.matrix_bytes_by_type().into_iter())
                .map(|(ty, b)| (ty.name().to_string(), b.into()))
                .collect();
        let line = serde_json::json!({
            "device": engine.gpu.describe(),
            "model": engine.model_dir.display().to_string(),
            "image": image.map(|i| i.1),
            "prompt_tokens": m.prompt_tokens, "visual_tokens": m.visual_tokens,
            "decoded_tokens": m.decoded,
            "preprocess_ms": m.preprocess_ms,
            "vision_encoder_ms": m.encode_ms,
            "prefill_ms": m.prefill_ms, "prefill_tokens_per_s": m.prefill_tps(),
            "time_to_first_token_ms": m.ttft_ms,
            "decode_ms": m.decode_ms, "decode_tokens_per_s": m.decode_tps(),
            "runs": m.decode_runs.len(),
            "prefill_tokens_per_s_range": m.prefill_tps_range(),
            "time_to_first_token_ms_range": range(&m.ttft_runs),
            "decode_tokens_per_s_range": m.decode_tps_range(),
            "weight_bytes": weights, "kv_cache_bytes": m.kv, "peak_gpu_bytes": m.peak,
            "decoder_matrix_bytes_by_type": by_type,
            "decode_bytes_per_token": m.step_bytes,
            "decode_bandwidth_gb_s": m.decode_bandwidth().map(gb),
            "copy_bandwidth_gb_s": gb(copy_bw),
            "decode_bandwidth_pct_of_copy": m.decode_bandwidth().map(|d| 100.0 * d / copy_bw),
            "cpu_device": engine.gpu.caps.cpu,
            "host_read_bandwidth_gb_s": host_bw.map(gb),
            "decode_bandwidth_pct_of_host_read": host_bw
                .zip(m.decode_bandwidth())
                .map(|(h, d)| 100.0 * d / h),
        });
        println!("{line}");
        return Ok(());
    }
    let llm = &engine.model.llm;
    println!("device: {}", engine.gpu.describe());
    println!(
        "model: {} ({} layers, width {}, decoder matrices {}{}), {} after a warm-up, medians",
        engine.model_dir.display(),
        llm.cfg.num_hidden_layers,
        llm.cfg.hidden_size,
        type_mix(&llm.matrix_bytes_by_type()),
        image.map_or(String::new(), |i| format!(
            "; image {}, {} visual tokens",
            i.1, m.visual_tokens
        )),
        if args.repeat == 1 {
            "1 run".to_string()
        } else {
            format!("{} runs", args.repeat)
        }
    );
    println!();
    println!("| prompt tokens | preprocess ms | vision encoder ms | prefill ms | prefill tok/s | time to first token ms | decoded tokens | decode tok/s | weights MiB | KV cache MiB | peak GPU MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let (preprocess, encoder) = if image.is_some() {
        (
            format!("{:.1}", m.preprocess_ms),
            format!("{:.1}", m.encode_ms),
        )
    } else {
        ("-".into(), "-".into())
    };
    let decode = m.decode_tps().map_or("-".into(), |t| format!("{t:.2}"));
    println!(
        "| {} | {preprocess} | {encoder} | {:.1} | {:.1} | {:.1} | {} | {decode} | {:.1} | {:.2} | {} |",
        m.prompt_tokens,
        m.prefill_ms,
        m.prefill_tps(),
        m.ttft_ms,
        m.decoded,
        mib(weights),
        mib(m.kv),
        m.peak.map_or("n/a".into(), |p| format!("{:.1}", mib(p)))
    );
    if m.decode_runs.len() > 1 {
        let (p0, p1) = m.prefill_tps_range();
        let (t0, t1) = range(&m.ttft_runs);
        let decode = m.decode_tps_range().map_or(String::new(), |(d0, d1)| {
            format!(", decode {d0:.2}-{d1:.2} tok/s")
        });
        println!();
        println!(
            "spread over the {} runs (lowest-highest): prefill {p0:.1}-{p1:.1} tok/s, time to \
             first token {t0:.1}-{t1:.1} ms{decode}",
            m.decode_runs.len()
        );
    }
    println!();
    let Some(bw) = m.decode_bandwidth() else {
        println!(
            "no decode step ran (-n 1 generates only the first token); this device's copy \
             bandwidth: {:.2} GB/s read + written (copy kernel)",
            gb(copy_bw)
        );
        return Ok(());
    };
    println!(
        "decode reads {:.1} MB per token (weights and KV cache): {:.2} GB/s effective, \
         {:.0}% of this device's copy bandwidth ({:.2} GB/s read + written, copy kernel)",
        m.step_bytes / 1e6,
        gb(bw),
        100.0 * bw / copy_bw,
        gb(copy_bw)
    );
    if let Some(h) = host_bw {
        println!(
            "this device is the host's CPU cores, which read memory at {:.1} GB/s: decode reads \
             {:.0}% of that",
            gb(h),
            100.0 * bw / h
        );
    }
    Ok(())
}

/// The decoder's storage types: "Q4_1" alone, or "Q4_1 84%, Q4_K 16%" by bytes.
fn type_mix(by_type: &[(GgmlType, u64)]) -> String {
    let total: u64 = by_type.iter().map(|t| t.1).sum();
    match by_type {
        [(ty, _)] => ty.name().to_string(),
        _ => (by_type.iter())
            .map(|(ty, b)| format!("{} {:.0}%", ty.name(), 100.0 * *b as f64 / total as f64))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// `--prune-sweep`: time to first token for each method at each budget (best of `--repeat`,
/// one generated token), its speed-up over the first row, and the speed-up that the prefill
/// FLOPs (encoder, projector and decoder) predict.
pub fn prune_sweep(engine: &Engine, args: &BenchArgs, image: &Image) -> Result<()> {
    let prompt = args.prompt.as_deref().unwrap_or(IMAGE_PROMPT);
    let n = engine.model.visual_tokens();
    if !args.json {
        if args.sweep_only {
            println!("device: {}", engine.gpu.describe());
            println!("model: {}", engine.model_dir.display());
        }
        println!();
        println!(
            "pruning sweep: time to first token, best of {} rounds (speed-up: the median over \
             rounds of the first row's time ÷ this row's in the same round; ideal: the FLOPs \
             ratio; share: speed-up ÷ ideal)",
            args.repeat
        );
        println!();
        println!("| method | B | kept (encoder / from K) | prune ms | prefill ms | time to first token ms | speed-up | ideal | share | KV-cache bytes | decoder prefill GFLOP |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let budgets = if args.budgets.is_empty() {
        vlm_run::eval::sweep_budgets(n)
    } else {
        args.budgets.clone()
    };
    // The cells, in table order: none runs only at N; a method at B = N keeps every token,
    // which is the unpruned row again when that row is in the sweep.
    let mut cells: Vec<SweepCell> = Vec::new();
    for &method in &args.methods {
        for &b in &budgets {
            if (method == Method::None && b != n)
                || (method != Method::None && b == n && args.methods.contains(&Method::None))
            {
                continue;
            }
            let opts = GenerateOptions {
                max_tokens: 1,
                prune: PruneOptions {
                    method,
                    keep: (method != Method::None).then_some(b),
                    layer: args.prune_layer,
                    ..Default::default()
                },
                ..Default::default()
            };
            cells.push(SweepCell {
                method,
                b,
                opts,
                best: None,
                times: Vec::new(),
                failed: None,
            });
        }
    }
    // First every cell's pipelines, over empty grids (cheap), so that no cell compiles
    // inside a timed round. Then one untimed run of the first cell (its own buffer sizes
    // and first touches), as the single-request report has its warm-up. Then `repeat`
    // rounds, each running every cell once: a slow spell of the machine then costs one
    // sample of several cells, not every sample of one, and the best of each cell's
    // samples is kept. The speed-up is taken
    // within each round (against the first row's time in that round), whose cells run
    // seconds apart, and its median over the rounds is reported: on a machine whose speed
    // drifts it is steadier than the ratio of the best times.
    let status = Status::new(args);
    status.show("sweep: compiling kernels");
    for cell in &cells {
        let like = WarmUp::Like {
            image: true,
            prompt: prompt.to_string(),
            opts: Box::new(cell.opts.clone()),
        };
        let _ = engine.warm_up(&like);
    }
    if let Some(first) = cells.first() {
        status.show("sweep: warm-up run");
        let _ = engine.generate(Some(image), prompt, &first.opts, &mut |_| {});
    }
    for round in 0..args.repeat {
        for cell in cells.iter_mut().filter(|c| c.failed.is_none()) {
            status.show(&format!(
                "sweep round {}/{}: {} at B={}",
                round + 1,
                args.repeat,
                cell.method.name(),
                cell.b
            ));
            match engine.generate(Some(image), prompt, &cell.opts, &mut |_| {}) {
                Ok(out) => {
                    cell.times.push((round, time_to_first_token(&out)));
                    if cell
                        .best
                        .as_ref()
                        .is_none_or(|b| time_to_first_token(&out) < time_to_first_token(b))
                    {
                        cell.best = Some(out);
                    }
                }
                Err(e) => cell.failed = Some(format!("{e:#}")),
            }
        }
    }
    drop(status);
    // the first row that ran: its best time, its FLOPs and its times per round
    let base = cells.iter().find_map(|c| match (&c.best, &c.failed) {
        (Some(out), None) => Some((
            time_to_first_token(out),
            prefill_flops(out),
            c.times.clone(),
        )),
        _ => None,
    });
    for cell in cells {
        let (method, b) = (cell.method, cell.b);
        let out = match (cell.best, cell.failed) {
            (Some(out), None) => out,
            (_, e) => {
                let e = e.unwrap_or_default();
                if args.json {
                    let line = serde_json::json!({"method": method, "budget": b, "error": e});
                    println!("{line}");
                } else {
                    println!("| {method} | {b} | not reachable: {e} | | | | | | | | |");
                }
                continue;
            }
        };
        let ttft = time_to_first_token(&out);
        let f = &out.flops;
        let flops = prefill_flops(&out);
        // a row that ran means `base` found one
        let Some((t0, f0, base_times)) = &base else {
            continue;
        };
        let (t0, f0) = (*t0, *f0);
        let speedup = median_round_ratio(base_times, &cell.times).unwrap_or(t0 / ttft);
        let ideal = f0 as f64 / flops.max(1) as f64;
        if args.json {
            let line = serde_json::json!({
                "method": method, "budget": b,
                "visual_tokens_kept": out.visual_tokens_kept,
                "tokens_per_layer": out.tokens_per_layer,
                "kv_cache_bytes": out.kv_cache_bytes,
                "flops": out.flops, "timings_ms": out.timings_ms,
                "time_to_first_token_ms": ttft,
                "speedup": speedup, "speedup_of_best_times": t0 / ttft,
                "ideal_speedup": ideal,
            });
            println!("{line}");
            continue;
        }
        let (enc, dec) = out
            .pruning
            .as_ref()
            .map_or((n, n), |p| (p.kept_encoder, p.kept_decoder));
        let share = if ideal > 1.0 + 1e-9 {
            format!("{:.0}%", 100.0 * speedup / ideal)
        } else {
            String::new()
        };
        println!(
            "| {method} | {b} | {enc} / {dec} | {:.1} | {:.1} | {ttft:.1} | {speedup:.2}× | {ideal:.2}× | {share} | {} | {:.4} |",
            out.timings_ms.prune,
            out.timings_ms.prefill,
            out.kv_cache_bytes,
            f.decoder as f64 / 1e9
        );
    }
    Ok(())
}

/// One method at one budget of `--prune-sweep`: its fastest run so far, and its time to first
/// token in each round that it ran.
struct SweepCell {
    method: Method,
    b: usize,
    opts: GenerateOptions,
    best: Option<Output>,
    times: Vec<(usize, f64)>,
    failed: Option<String>,
}

/// FLOPs up to the first token: vision tower, projector and decoder prefill.
fn prefill_flops(out: &Output) -> u64 {
    out.flops.encoder + out.flops.projector + out.flops.decoder
}

/// The median over the rounds that both ran of `base`'s time ÷ `cell`'s (None if none did).
fn median_round_ratio(base: &[(usize, f64)], cell: &[(usize, f64)]) -> Option<f64> {
    let mut ratios: Vec<f64> = cell
        .iter()
        .filter_map(|&(r, t)| base.iter().find(|&&(rb, _)| rb == r).map(|&(_, tb)| tb / t))
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let k = ratios.len();
    Some(if k % 2 == 1 {
        ratios[k / 2]
    } else {
        0.5 * (ratios[k / 2 - 1] + ratios[k / 2])
    })
}

/// Arguments that cannot be measured, refused before the model loads.
pub fn check_args(args: &BenchArgs) -> Result<()> {
    if args.repeat == 0 || args.max_tokens == Some(0) {
        bail!("--repeat and --max-tokens must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{median_round_ratio, range, rate_range};

    #[test]
    fn spread_is_the_lowest_and_highest_of_the_runs() {
        assert_eq!(range(&[3.0, 1.0, 2.0]), (1.0, 3.0));
        assert_eq!(range(&[5.0]), (5.0, 5.0));
        // 64 tokens in 2 s and in 1 s: 32 to 64 tok/s
        assert_eq!(rate_range(64.0, &[1000.0, 2000.0, 1500.0]), (32.0, 64.0));
    }

    #[test]
    fn speed_up_is_the_median_of_the_ratios_within_rounds() {
        // the machine halves its speed in round 1: within-round ratios stay 2, 2, 4
        let base = [(0, 100.0), (1, 200.0), (2, 100.0), (3, 90.0)];
        let cell = [(0, 50.0), (1, 100.0), (2, 25.0)];
        assert_eq!(median_round_ratio(&base, &cell), Some(2.0));
        // an even count takes the mean of the middle two; rounds the base missed are left out
        let cell = [(0, 50.0), (2, 25.0), (5, 1.0)];
        assert_eq!(median_round_ratio(&base, &cell), Some(3.0));
        assert_eq!(median_round_ratio(&base, &[(7, 1.0)]), None);
    }
}
