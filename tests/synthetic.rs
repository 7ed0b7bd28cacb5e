//! Synthetic models (`vlm-run bench --synthetic`): random weights made on the GPU keep the
//! upload layout and stay finite and in range, and a synthetic shape costs what the real
//! model of that shape costs.

use half::f16;
use std::path::Path;
use std::process::{Command, Output};
use vlm_run::gguf::quant::GgmlType;
use vlm_run::gpu::{Gpu, GpuOptions, Weight, MIN_TEXTURE_BYTES};

fn halves(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|h| f16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32())
        .collect()
}

/// Every value finite and within ±amp as f16 holds it (its nearest f16 may lie past amp).
fn all_within(what: &str, v: &[f32], amp: f32) {
    assert!(!v.is_empty(), "{what}: no values");
    let limit = f16::from_f32(amp).to_f32().max(amp);
    for x in v {
        assert!(
            x.is_finite() && x.abs() <= limit,
            "{what}: {x} outside ±{amp}"
        );
    }
    let (lo, hi) = v
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    assert!(
        hi - lo > amp / 2.0,
        "{what}: values barely vary ({lo}..{hi})"
    );
}

/// A weight's bytes, chunk by chunk, each cut to its rows (the fill pads to whole words).
fn chunk_bytes(gpu: &Gpu, w: &Weight) -> Vec<Vec<u8>> {
    w.chunks
        .iter()
        .map(|c| {
            let n = (c.rows * w.row_bytes) as u64;
            c.store.read(gpu, n.next_multiple_of(4)).unwrap()[..n as usize].to_vec()
        })
        .collect()
}

#[test]
fn random_weights_keep_the_layout_and_stay_in_range() {
    // A 16 KiB chunk limit splits every weight into several chunks; weights in textures must
    // hold the same bytes as in buffers.
    let [gpu, tex_gpu] = [false, true].map(|textures| {
        Gpu::new(&GpuOptions {
            max_binding: Some(16384),
            weight_textures: Some(textures),
            ..Default::default()
        })
        .unwrap()
    });
    let rows = 200;
    for ty in [
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4NL,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ] {
        let cols = 256;
        let w = Weight::random(&gpu, "w", ty, rows, cols, 7).unwrap();
        assert_eq!((w.rows, w.cols, w.ty), (rows, cols, ty));
        assert!(w.chunks.len() > 1, "{ty:?}: one chunk");
        assert_eq!(w.chunks.iter().map(|c| c.rows).sum::<usize>(), rows);
        let chunks = chunk_bytes(&gpu, &w);
        let what = format!("{ty:?}");
        match ty {
            GgmlType::F16 => all_within(&what, &halves(&chunks.concat()), 0.05),
            _ => {
                // repacked: every group's quant bytes, then the scales (Q4_K: a 16-byte
                // header per super-block, d and dmin then 12 bytes of packed 6-bit scales)
                // (the Q5 formats, Q3_K, Q6_K: their nibbles or lows and highs (Q3_K's packed
                // and Q6_K's int8 scales too), then their scales, as the Q4 formats', or d's)
                let scale_bytes = match ty {
                    GgmlType::Q4_1 | GgmlType::Q5_1 => 4,
                    GgmlType::Q4K | GgmlType::Q5K => 16,
                    _ => 2,
                };
                // the header bytes after d and dmin, over all chunks (the last may be short)
                let mut packed = std::collections::BTreeSet::new();
                for (i, b) in chunks.iter().enumerate() {
                    let groups = b.len() / ty.block_bytes();
                    let split = groups * (ty.block_bytes() - scale_bytes);
                    let scales = &b[split..];
                    let f16s: Vec<u8> = if matches!(ty, GgmlType::Q4K | GgmlType::Q5K) {
                        packed.extend(scales.chunks_exact(16).flat_map(|h| h[4..].to_vec()));
                        (scales.chunks_exact(16))
                            .flat_map(|h| h[..4].to_vec())
                            .collect()
                    } else {
                        scales.to_vec()
                    };
                    all_within(&format!("{what} chunk {i}"), &halves(&f16s), 0.003);
                    let distinct: std::collections::BTreeSet<u8> =
                        b[..split].iter().copied().collect();
                    assert!(
                        distinct.len() > 200,
                        "{what} chunk {i}: quant bytes not random"
                    );
                }
                if matches!(ty, GgmlType::Q4K | GgmlType::Q5K) {
                    assert!(packed.len() > 200, "{what}: packed scales not random");
                }
            }
        }
        let in_texture = Weight::random(&tex_gpu, "w", ty, rows, cols, 7).unwrap();
        for c in &in_texture.chunks {
            // chunks of less than a texture row stay in buffers
            let big = c.rows * w.row_bytes >= MIN_TEXTURE_BYTES;
            assert_eq!(c.store.is_texture(), big, "{ty:?}: {} rows", c.rows);
        }
        assert!(in_texture.chunks[0].store.is_texture(), "{ty:?}");
        assert_eq!(
            chunk_bytes(&tex_gpu, &in_texture),
            chunks,
            "{what}: in textures"
        );
        let again = chunk_bytes(&gpu, &Weight::random(&gpu, "w", ty, rows, cols, 7).unwrap());
        assert_eq!(
            again, chunks,
            "{what}: the same seed must give the same weight"
        );
        let other = chunk_bytes(&gpu, &Weight::random(&gpu, "w", ty, rows, cols, 8).unwrap());
        assert_ne!(
            other, chunks,
            "{what}: another seed must give another weight"
        );
    }
    let Err(e) = Weight::random(&gpu, "w", GgmlType::BF16, 2, 256, 1) else {
        panic!("BF16 random weights must be refused");
    };
    assert!(e.to_string().contains("not supported"), "{e}");
}

/// Run `cmd` with a fresh runtime directory (the Vulkan loader's window-system probing
/// wants one).
fn run(cmd: &mut Command) -> Output {
    let runtime = tempfile::tempdir().unwrap();
    cmd.env("XDG_RUNTIME_DIR", runtime.path()).output().unwrap()
}

/// [`run`], asserting success: (stdout, stderr).
#[track_caller]
fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?}: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn vlm_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vlm-run"))
}

/// The JSON lines of `vlm-run bench --json ARGS`, asserting success.
fn bench_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let (stdout, _) = run_ok(vlm_run().args(["bench", "--json"]).args(args));
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let sweep = [
        "--repeat",
        "1",
        "-n",
        "2",
        "--prune-sweep",
        "--methods",
        "none,fastv",
        "--budgets",
        "576,320",
    ];
    let lines = bench_lines(&[args, &sweep].concat());
    let stdout = serde_json::Value::Array(lines.clone()); // for the messages
                                                          // the single-request report, then one line per sweep cell: fastv at B=576 would keep
                                                          // every token, the none row again, so the sweep skips it
    assert_eq!(lines.len(), 3, "{stdout}");
    let cells: Vec<_> = lines[1..]
        .iter()
        .map(|l| (l["method"].as_str().unwrap(), l["budget"].as_u64().unwrap()))
        .collect();
    assert_eq!(cells, [("none", 576), ("fastv", 320)], "{stdout}");
    // one round: the median of one within-round ratio is the ratio of the only times
    assert_eq!(lines[1]["speedup"], 1.0, "{stdout}");
    let (t0, t1) = (
        lines[1]["time_to_first_token_ms"].as_f64().unwrap(),
        lines[2]["time_to_first_token_ms"].as_f64().unwrap(),
    );
    let s = lines[2]["speedup"].as_f64().unwrap();
    assert!((s - t0 / t1).abs() < 1e-9 * s, "{stdout}");
    assert_eq!(
        lines[2]["speedup"], lines[2]["speedup_of_best_times"],
        "{stdout}"
    );
    assert_eq!(lines[0]["decoded_tokens"], 1, "{stdout}");
    // on a CPU device (lavapipe, as in CI) decode is also set against the host's read
    // bandwidth, measured in the same run; elsewhere both fields are null
    let r = &lines[0];
    let (host, pct) = (
        &r["host_read_bandwidth_gb_s"],
        &r["decode_bandwidth_pct_of_host_read"],
    );
    if r["cpu_device"].as_bool().unwrap() {
        let (host, pct) = (host.as_f64().unwrap(), pct.as_f64().unwrap());
        let decode = r["decode_bandwidth_gb_s"].as_f64().unwrap();
        assert!(host > 0.1, "{stdout}");
        assert!((pct - 100.0 * decode / host).abs() < 1e-9 * pct, "{stdout}");
    } else {
        assert!(host.is_null() && pct.is_null(), "{stdout}");
    }
    // the CPU's preprocessing is timed apart from the device's stages
    for k in ["vision_encoder_ms", "preprocess_ms"] {
        assert!(lines[0][k].as_f64().unwrap() > 0.0, "{k}: {stdout}");
    }
    serde_json::Value::Array(lines[1..].to_vec())
}

#[test]
fn synthetic_tiny_costs_what_the_fixture_of_its_shape_costs() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava");
    let real = bench_json(&["--model", fixture.to_str().unwrap()]);
    for dtype in ["f16", "q8_0", "q4_0"] {
        let syn = bench_json(&["--synthetic", "tiny", "--dtype", dtype]);
        for (s, r) in syn.as_array().unwrap().iter().zip(real.as_array().unwrap()) {
            assert_eq!(s["method"], r["method"]);
            assert!(s.get("error").is_none(), "{s}");
            assert_eq!(s["visual_tokens_kept"], r["visual_tokens_kept"], "{dtype}");
            // the vision tower and projector are the fixture's shapes exactly
            for k in ["encoder", "projector"] {
                assert_eq!(s["flops"][k], r["flops"][k], "{dtype} {k}");
            }
            assert!(s["timings_ms"]["prefill"].as_f64().unwrap() > 0.0);
        }
    }
}

#[test]
fn sweep_only_prints_the_sweep_without_the_report() {
    let lines = bench_lines(&[
        "--synthetic",
        "tiny",
        "--repeat",
        "1",
        "--prune-sweep",
        "--sweep-only",
        "--methods",
        "none",
        "--budgets",
        "576",
    ]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["method"], "none", "{lines:?}");
    assert!(lines[0].get("decoded_tokens").is_none(), "{lines:?}");
}

/// Progress goes to a terminal only: piped into a log, stderr stays empty and stdout holds
/// the tables alone (the sweep's round counter once ran into the log's lines).
#[test]
fn bench_into_a_pipe_prints_the_tables_and_no_progress() {
    let (stdout, stderr) = run_ok(
        vlm_run()
            .args(["bench", "--synthetic", "tiny", "--repeat", "1", "-n", "1"])
            .args(["--prune-sweep", "--methods", "none", "--budgets", "576"]),
    );
    assert_eq!(stderr, "", "stderr of a piped bench");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    // the report's header and row, the sweep's header and its one row
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(rows[3].starts_with("| none | 576 |"), "{stdout}");
    // -n 1: no decode step ran, so decode has no rate (not 0 tok/s) and no bandwidth
    let split =
        |row: &str| -> Vec<String> { row.split('|').map(|c| c.trim().to_string()).collect() };
    let (head, cells) = (split(rows[0]), split(rows[1]));
    let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
    let decode = (
        cells[col("decoded tokens")].as_str(),
        cells[col("decode tok/s")].as_str(),
    );
    assert_eq!(decode, ("0", "-"), "{stdout}");
    assert!(stdout.contains("\nno decode step ran (-n 1"), "{stdout}");
    assert!(!stdout.contains("decode reads"), "{stdout}");
    let r = &bench_lines(&["--synthetic", "tiny", "--repeat", "1", "-n", "1"])[0];
    assert_eq!(r["decoded_tokens"], 0, "{r}");
    for k in [
        "decode_tokens_per_s",
        "decode_tokens_per_s_range",
        "decode_bandwidth_gb_s",
        "decode_bandwidth_pct_of_copy",
    ] {
        assert!(r[k].is_null(), "{k}: {r}");
    }
}

/// Next to each median, bench gives the lowest and highest over its runs: in JSON as
/// `*_range` [low, high] pairs that hold the median, and under the table as one line.
#[test]
fn bench_reports_the_spread_of_its_runs() {
    let args = ["--synthetic", "tiny", "--repeat", "3", "-n", "4"];
    let lines = bench_lines(&args);
    let r = &lines[0];
    assert_eq!(r["runs"], 3, "{r}");
    for (range, median) in [
        ("prefill_tokens_per_s_range", "prefill_tokens_per_s"),
        ("time_to_first_token_ms_range", "time_to_first_token_ms"),
        ("decode_tokens_per_s_range", "decode_tokens_per_s"),
    ] {
        let lh: Vec<f64> = r[range]
            .as_array()
            .unwrap_or_else(|| panic!("{range}: {r}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let m = r[median].as_f64().unwrap();
        assert_eq!(lh.len(), 2, "{range}: {r}");
        // (the median rate comes from the median time: equal to a bound within rounding)
        let eps = 1e-9 * m;
        assert!(
            lh[0] > 0.0 && lh[0] <= m + eps && m <= lh[1] + eps,
            "{range}: {r}"
        );
    }
    let (stdout, _) = run_ok(vlm_run().arg("bench").args(args));
    let spread: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("spread over the 3 runs (lowest-highest): prefill "))
        .collect();
    assert_eq!(spread.len(), 1, "{stdout}");
    assert!(spread[0].ends_with(" tok/s"), "{stdout}");
}

/// `scripts/gpu-goals.sh` (the GPU goals in one command) reads bench's JSON into its two
/// tables: run here on the tiny shape, every row is there with the shape's real sizes.
#[test]
fn gpu_goals_script_prints_its_tables() {
    let (stdout, _) = run_ok(
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-goals.sh"))
            .args([env!("CARGO_BIN_EXE_vlm-run"), "tiny", "f16", "1"]),
    );
    assert!(stdout.starts_with("### On "), "{stdout}");
    let row = |start: &str| {
        let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with(start)).collect();
        assert_eq!(rows.len(), 1, "one row starting {start:?} in\n{stdout}");
        rows[0].to_string()
    };
    // the fixture's shape: 576 visual tokens and 8 text tokens; 792448 bytes of weights
    assert!(row("| prefill, 584 tokens (576 visual) |").contains(" ms, "));
    assert!(row("| peak GPU memory |").contains("(weights 0.8 + KV "));
    for start in [
        "| decode |",
        "| copy kernel",
        "| decode as % of",
        "| vision tower |",
    ] {
        row(start);
    }
    assert!(row("| time to first token |").contains(" ms |"));
    assert!(row("| none | 576 | 576 |").ends_with("| 1.00x | 1.00x |  |"));
    assert!(row("| fastervlm | 64 | 64 |").ends_with("% |"));
    // PosPrune on 2 layers with K=1: ARP keeps B1 = 64·16/15 → 68 (budget::default_arp_keep)
    assert!(row("| posprune | 64 | 68 |").ends_with("% |"));
}

/// `vlm-run bench --synthetic tiny ARGS` with `env` must fail with one error line holding
/// `needle`.
#[track_caller]
fn bench_fails_in_one_line(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let out = run(vlm_run()
        .args(["bench", "--synthetic", "tiny"])
        .args(args)
        .envs(env.iter().copied()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

/// A matrix whose rows are not whole blocks of `--dtype` is made in a fallback type, as
/// llama.cpp's quantizer does (Q5_0 for Q4_K's 256-value blocks, Q5_1 for Q5_K's, Q8_0 for
/// Q6_K's, else F16), and bench names the mix: the tiny shape's 96- and 160-wide rows are all
/// Q5_0 under q4_k.
#[test]
fn synthetic_rows_that_a_type_cannot_hold_take_a_fallback_type() {
    use vlm_run::synthetic::storage_type;
    assert_eq!(storage_type(GgmlType::Q4K, 1536), GgmlType::Q4K);
    assert_eq!(storage_type(GgmlType::Q4K, 576), GgmlType::Q5_0);
    assert_eq!(storage_type(GgmlType::Q5K, 576), GgmlType::Q5_1);
    assert_eq!(storage_type(GgmlType::Q5K, 4096), GgmlType::Q5K);
    assert_eq!(storage_type(GgmlType::Q5_0, 100), GgmlType::F16);
    assert_eq!(storage_type(GgmlType::Q3K, 576), GgmlType::IQ4NL);
    assert_eq!(storage_type(GgmlType::Q3K, 4096), GgmlType::Q3K);
    assert_eq!(storage_type(GgmlType::Q4K, 100), GgmlType::F16);
    assert_eq!(storage_type(GgmlType::Q4_0, 96), GgmlType::Q4_0);
    assert_eq!(storage_type(GgmlType::Q8_0, 100), GgmlType::F16);
    assert_eq!(storage_type(GgmlType::Q6K, 576), GgmlType::Q8_0);
    assert_eq!(storage_type(GgmlType::Q6K, 11008), GgmlType::Q6K);
    let (stdout, _) = run_ok(vlm_run().args([
        "bench",
        "--synthetic",
        "tiny",
        "--dtype",
        "q4_k",
        "--repeat",
        "1",
        "-n",
        "2",
    ]));
    assert!(
        stdout.contains("(2 layers, width 96, decoder matrices Q5_0; image "),
        "{stdout}"
    );
    let r = &bench_lines(&["--synthetic", "tiny", "--dtype", "q4_k", "--repeat", "1"])[0];
    // the matrices' bytes: 2 layers of q|k|v (96 + 2·32 rows), o (96), [gate; up] (320) at
    // 96 columns, down (96 rows) at 160, and the 302-row embedding table and LM head; Q5_0
    // takes 22 bytes per 32 values
    let values = 2 * ((160 + 96 + 320) * 96 + 96 * 160) + 2 * 302 * 96;
    assert_eq!(
        r["decoder_matrix_bytes_by_type"],
        serde_json::json!({"Q5_0": values / 32 * 22}),
        "{r}"
    );
}

/// `vlm-run bench --synthetic tiny` with environment `env`: (stdout, stderr), asserting success.
fn bench_with_env(env: &[(&str, &str)]) -> (String, String) {
    run_ok(
        vlm_run()
            .args(["bench", "--synthetic", "tiny", "--repeat", "1", "-n", "1"])
            .envs(env.iter().copied()),
    )
}

#[test]
fn gemm_autotune_times_every_kernel_once_then_reads_its_cache() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let env = [("VLM_RUN_GEMM_TILE", "tune"), ("VLM_RUN_CACHE_DIR", dir)];
    let (stdout, stderr) = bench_with_env(&env);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("GEMM kernel"))
        .unwrap();
    for name in ["64 ", "32 ", "lanes "] {
        assert!(line.contains(name), "{line}");
    }
    assert!(line.contains("tuned:"), "{line}");
    // the cache holds one entry naming a kernel, and the run used that kernel
    let file = cache.path().join("gemm-tiles.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let entries = json.as_object().unwrap();
    assert_eq!(entries.len(), 1, "{json}");
    let (key, choice) = entries.iter().next().unwrap();
    let choice = choice.as_str().unwrap();
    assert!(["64", "32", "lanes"].contains(&choice), "{json}");
    assert!(key.contains("m=") && key.contains(":F16"), "{key}");
    assert!(stdout.contains(&format!("GEMM {choice}")), "{stdout}");
    // the second load reads the cache instead of timing
    let (stdout2, stderr2) = bench_with_env(&env);
    assert!(
        stderr2.contains(&format!("GEMM kernel {choice} (from the cache")),
        "{stderr2}"
    );
    assert!(stdout2.contains(&format!("GEMM {choice}")), "{stdout2}");
    // a fixed kernel is used as given
    let (stdout3, _) = bench_with_env(&[("VLM_RUN_GEMM_TILE", "32")]);
    assert!(stdout3.contains("GEMM 32"), "{stdout3}");
}

#[test]
fn a_bad_gemm_tile_setting_is_a_one_line_error() {
    bench_fails_in_one_line(
        &[],
        &[("VLM_RUN_GEMM_TILE", "48")],
        "VLM_RUN_GEMM_TILE=\"48\"",
    );
}

/// `VLM_RUN_PROFILE`: after the request (and not after the warm-up at load) one table per
/// pass, whose rows count every dispatch of the pass once, with device timestamps
/// (`gpu`) or each kernel alone (`1`).
#[test]
fn profile_tables_count_every_dispatch_of_each_pass_once() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-llava");
    let image = format!("{fixture}/a.png");
    for (setting, first) in [
        ("gpu", "device timestamps (timestamps inside one pass)"),
        ("1", "vision tower: "),
    ] {
        let (_, stderr) = run_ok(
            vlm_run()
                .env("VLM_RUN_PROFILE", setting)
                .args(["-m", fixture, "-i", &image, "-p", "Describe it.", "-n", "3"])
                .args(["--prune", "fastervlm", "--keep", "64"]),
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(lines[0].starts_with(first), "{setting}: {stderr}");
        let mut titles = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let Some((title, rest)) = l.split_once(": ").filter(|_| !l.starts_with(' ')) else {
                continue;
            };
            let Some(n) = rest
                .split(" dispatches")
                .next()
                .and_then(|s| s.rsplit(' ').next().and_then(|n| n.parse::<usize>().ok()))
            else {
                continue;
            };
            let rows: usize = lines[i + 1..]
                .iter()
                .take_while(|r| r.starts_with("  "))
                .map(|r| {
                    let x = r.split_whitespace().find(|w| w.starts_with('x')).unwrap();
                    x[1..].parse::<usize>().unwrap()
                })
                .sum();
            assert_eq!(rows, n, "{setting}: {title}: {stderr}");
            titles.push(title);
        }
        assert_eq!(
            titles,
            [
                "vision tower",
                "projector",
                "pruning passes",
                "prefill (after any prune layer)",
                "decode step"
            ],
            "{setting}: {stderr}"
        );
    }
}
