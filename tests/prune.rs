//! Visual-token pruning: GPU selections against the CPU references (synthetic scores and real
//! runs), end-to-end parity with the PyTorch reference of FastV and PosPrune, the identity
//! cases, KV-cache sizes, calibration, keep maps and bad options.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use vlm_run::prune::{arp, divprune, fastv, pbc_mmr, pore, select, visionzip, Method};
use vlm_run::{Engine, GenerateOptions, GpuOptions, Output, PruneOptions, WarmUp};

fn deep() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava-32l")
}

fn shallow() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava")
}

/// One engine on the 32-layer fixture for the whole file.
fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(&deep(), &GpuOptions::default(), &|_| {}).unwrap())
}

fn image(dir: &Path, name: &str) -> image::RgbImage {
    vlm_run::image::load(&dir.join(name)).unwrap()
}

fn run(e: &Engine, img: &str, prune: PruneOptions, trace: bool) -> Output {
    let opts = GenerateOptions {
        max_tokens: 8,
        prune,
        trace_pruning: trace,
        ..Default::default()
    };
    let im = image(&e.model_dir, img);
    e.generate(Some(&im), "What is in the image?", &opts, &mut |_| {})
        .unwrap()
}

fn method(m: Method, keep: usize) -> PruneOptions {
    PruneOptions {
        method: m,
        keep: Some(keep),
        ..Default::default()
    }
}

#[test]
fn end_to_end_parity_with_the_pytorch_reference_of_fastv_and_posprune() {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(deep().join("prune_reference.json")).unwrap(),
    )
    .unwrap();
    let e = engine();
    let u32s = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let m: Method = c["method"].as_str().unwrap().parse().unwrap();
        let b = c["budget"].as_u64().unwrap() as usize;
        let img = c["image"].as_str().unwrap();
        let mut opts = method(m, b);
        opts.layer = Some(r["prune_layer"].as_u64().unwrap() as usize);
        // the reference's constants, not the engine's current defaults
        opts.mmr_lambda = r["mmr_lambda"].as_f64().unwrap() as f32;
        opts.arp_regions = r["arp_regions"].as_u64().unwrap() as usize;
        opts.arp_floor = r["arp_floor"].as_f64().unwrap() as f32;
        let out = run(e, img, opts, false);
        let what = format!("{m} B={b} {img}");
        let p = out.pruning.as_ref().unwrap();
        assert_eq!(
            p.kept_encoder,
            c["encoder_keep"].as_u64().unwrap() as usize,
            "{what}"
        );
        assert_eq!(
            p.kept_decoder,
            c["decoder_keep"].as_u64().unwrap() as usize,
            "{what}"
        );
        let stages = &out.stages;
        if m == Method::PosPrune {
            assert_eq!(stages[0].raster, u32s(&c["encoder_raster"]), "{what}: ARP");
        }
        let last = stages.last().unwrap();
        assert_eq!(
            last.keep,
            u32s(&c["decoder_keep_indices"]),
            "{what}: decoder selection"
        );
        assert_eq!(last.raster, u32s(&c["decoder_raster"]), "{what}");
        assert_eq!(out.tokens, u32s(&c["tokens"]), "{what}: greedy tokens");
    }
}

#[test]
fn gpu_selections_equal_the_cpu_references_on_real_runs() {
    let e = engine();
    let (n, grid, layers) = (576, 24, 32);
    for img in ["a.png", "b.png"] {
        for m in [
            Method::FasterVlm,
            Method::Arp,
            Method::VisionZip,
            Method::DivPrune,
            Method::FastV,
            Method::PoRe,
            Method::PbcMmr,
            Method::PosPrune,
        ] {
            let mut opts = method(m, 64);
            if m == Method::Arp {
                // At the default α=1 every region's floor is ⌊B1/16⌋, so ARP's 64 (and
                // PosPrune's 128) are all floors; at α=0.3 the floors take 16 and the
                // saliency allocation places 48, so that path meets real CLS attention
                // too. PosPrune runs the default.
                opts.arp_floor = 0.3;
            }
            let plan = opts.plan(n, layers).unwrap();
            let out = run(e, img, opts.clone(), true);
            let what = format!("{m} {img}");
            let t = &out.stages;
            assert_eq!(t.len(), 1 + (m == Method::PosPrune) as usize, "{what}");
            let s = &t[0];
            let expect_first = match m {
                Method::FasterVlm => Some(select::top_k(&s.scores, 64)),
                Method::Arp | Method::PosPrune => {
                    let b1 = plan.encoder_keep;
                    let floor = arp::floor_count(opts.arp_floor, b1, 16);
                    Some(arp::select(&s.scores, grid, 4, floor, b1))
                }
                Method::VisionZip => {
                    let (d, c) = visionzip::split(64, None);
                    let sel = visionzip::select(&s.scores, s.gram.as_ref().unwrap(), d, c);
                    let assign: Vec<u32> = sel
                        .merged_into
                        .iter()
                        .map(|a| a.unwrap_or(u32::MAX))
                        .collect();
                    assert_eq!(s.assign.as_ref().unwrap(), &assign, "{what}: merge");
                    Some(sel.kept)
                }
                Method::DivPrune => Some(divprune::select(s.gram.as_ref().unwrap(), n, 64)),
                _ => None,
            };
            if let Some(k) = expect_first {
                assert_eq!(s.keep, k, "{what}: encoder selection");
                assert_eq!(s.keep.len(), plan.encoder_keep, "{what}");
            }
            if !m.decoder_side() {
                continue;
            }
            let d = t.last().unwrap();
            let k2 = plan.decoder_keep;
            let identity: Vec<u32> = (0..n as u32).collect();
            let raster = if m == Method::PosPrune {
                &t[0].raster
            } else {
                &identity
            };
            let expect = match m {
                Method::FastV => fastv::select(&d.scores, k2),
                Method::PoRe => {
                    let mask = vec![1.0; n];
                    let rho = pore::fit_rho(&d.scores, raster, &mask);
                    let cpu = pore::scores(&d.scores, raster, &mask, rho);
                    // ρ^p over 576 positions amplifies the fit's last-ulp differences
                    // (GPU log/exp/pow): compare relative to the largest score.
                    let top = cpu.iter().copied().fold(0.0f32, f32::max);
                    common::assert_close(&what, d.reweighted.as_ref().unwrap(), &cpu, 2e-3 * top);
                    select::top_k(d.reweighted.as_ref().unwrap(), k2)
                }
                _ => {
                    let cpu = pbc_mmr::corrected(&d.scores, raster, None);
                    let gpu = d.reweighted.as_ref().unwrap();
                    common::assert_close(&what, gpu, &cpu, 1e-4);
                    pbc_mmr::mmr(gpu, d.gram.as_ref().unwrap(), k2, opts.mmr_lambda)
                }
            };
            assert_eq!(d.keep, expect, "{what}: decoder selection");
            let composed: Vec<u32> = d.keep.iter().map(|&i| raster[i as usize]).collect();
            assert_eq!(d.raster, composed, "{what}");
        }
    }
}

/// A warm-up like the request (`WarmUp::Like`, what the CLI asks for) makes every pipeline
/// a pruned request needs at load, and leaves no trace in its answer. The model-kind
/// warm-up (an unpruned question) does not cover it: the same request then makes some.
#[test]
fn a_warm_up_like_the_request_makes_its_pipelines_at_load() {
    let opts = GenerateOptions {
        max_tokens: 8,
        prune: method(Method::PosPrune, 32),
        ..Default::default()
    };
    let prompt = "What is in the image?";
    let im = image(&deep(), "a.png");
    let want = engine()
        .generate(Some(&im), prompt, &opts, &mut |_| {})
        .unwrap()
        .tokens;
    let like = WarmUp::Like {
        image: true,
        prompt: prompt.into(),
        opts: Box::new(opts.clone()),
    };
    for (kind, new_pipelines) in [(like, false), (WarmUp::ModelKind, true)] {
        let e = Engine::open_with(&deep(), None, &GpuOptions::default(), &kind, &|_| {}).unwrap();
        let made = e.gpu.pipeline_count();
        let out = e.generate(Some(&im), prompt, &opts, &mut |_| {}).unwrap();
        let added = e.gpu.pipeline_count() - made;
        assert_eq!(
            added > 0,
            new_pipelines,
            "{kind:?}: {added} pipelines added"
        );
        assert_eq!(out.tokens, want, "{kind:?}");
    }
}

#[test]
fn none_and_full_budgets_give_the_unpruned_tokens() {
    // The 2-layer parity fixture: compare with transformers' own greedy tokens.
    let e = Engine::load(&shallow(), &GpuOptions::default(), &|_| {}).unwrap();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(shallow().join("reference.json")).unwrap())
            .unwrap();
    let case = &r["cases"][0];
    let want: Vec<u32> = case["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let img = image(&shallow(), case["image"].as_str().unwrap());
    for (m, keep) in [
        (Method::None, None),
        (Method::FastV, Some(576)),
        (Method::PosPrune, Some(576)),
        (Method::VisionZip, Some(576)),
        (Method::DivPrune, Some(576)),
    ] {
        let opts = GenerateOptions {
            max_tokens: want.len(),
            prune: PruneOptions {
                method: m,
                keep,
                ..Default::default()
            },
            ..Default::default()
        };
        let out = e
            .generate(
                Some(&img),
                case["prompt"].as_str().unwrap(),
                &opts,
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(out.tokens, want, "{m} keep {keep:?}");
        assert!(out.pruning.is_none(), "{m}: nothing was pruned");
        assert_eq!(out.kv_cache_bytes, out.kv_cache_bytes_unpruned);
    }
}

#[test]
fn kv_cache_holds_exactly_the_surviving_tokens() {
    let e = engine();
    let d_kv = 2 * 8; // 2 KV heads of dim 8
    let max_new = 8;
    let base = run(e, "a.png", PruneOptions::default(), false);
    let text = base.prompt_tokens - 576;
    for (m, first, second) in [
        (Method::FastV, 576, 30),
        (Method::FasterVlm, 64, 64),
        (Method::PosPrune, 128, 60),
    ] {
        let out = run(e, "a.png", method(m, 64), false);
        let k = if m.decoder_side() { 2 } else { 0 };
        let want: Vec<usize> = (0..32)
            .map(|l| text + if l < k { first } else { second })
            .collect();
        assert_eq!(out.tokens_per_layer, want, "{m}");
        let bytes: u64 = want
            .iter()
            .map(|t| 2 * ((t + max_new) * d_kv * 4) as u64)
            .sum();
        assert_eq!(out.kv_cache_bytes, bytes, "{m}");
        assert_eq!(out.kv_cache_bytes_unpruned, base.kv_cache_bytes, "{m}");
        assert!(out.flops.decoder < out.flops.decoder_unpruned, "{m}");
        assert_eq!(out.flops.decoder_unpruned, base.flops.decoder, "{m}");
    }
}

#[test]
fn gpu_selection_kernels_equal_the_cpu_references_on_synthetic_scores() {
    use vlm_run::gpu::Tensor;
    use vlm_run::ops::prune::{self as op, SelectParams};
    // The CPU-device row of the table (one SIMD row per selection workgroup) and the GPU row
    // (256 invocations), on every variant.
    for ((name, gpu), tiles) in common::variants()
        .into_iter()
        .flat_map(|v| [false, true].map(|t| (v.clone(), t)))
    {
        gpu.set_attention_tiles(tiles);
        let name = format!(
            "{name} selection workgroup of {}",
            if tiles { 256 } else { 8 }
        );
        let g = &*gpu;
        let mut rng = common::Rng::new(7);
        let n = 300;
        // Scores with many exact ties (quantised), so tie-breaking is exercised.
        let scores: Vec<f32> = (0..n)
            .map(|_| (rng.uniform().abs() * 20.0).floor() / 1000.0)
            .collect();
        let sb = g.storage_init("s", bytemuck::cast_slice(&scores)).unwrap();
        let keep = g.storage_buffer("keep", 4 * n as u64).unwrap();
        let flags = g.storage_buffer("flags", 8 * n as u64).unwrap();
        let work = g.storage_buffer("work", 4 * n as u64).unwrap();
        let read = |b: &wgpu::Buffer, k: usize| -> Vec<u32> {
            bytemuck::pod_collect_to_vec(&g.read_bytes(b, 0, 4 * k as u64).unwrap())
        };
        // and distinct scores of both signs, which differ in every digit of their keys
        let spread: Vec<f32> = (0..n).map(|_| rng.uniform() * 3.0).collect();
        for (what, s) in [("tied", &scores), ("spread", &spread)] {
            let sb = g.storage_init("s", bytemuck::cast_slice(s)).unwrap();
            for k in [1, 17, 150, 299] {
                let kern = op::select(
                    g,
                    "top_k",
                    None,
                    SelectParams::new(n, k),
                    &[(1, &sb), (3, &keep), (5, &flags)],
                )
                .unwrap();
                g.run(&[&kern]).unwrap();
                assert_eq!(
                    read(&keep, k),
                    select::top_k(s, k),
                    "{name}: top_k {k} of {what} scores"
                );
            }
        }
        // ARP on a 16x16 grid split 3x3 (uneven regions).
        let a: Vec<f32> = (0..256).map(|i| scores[i] * 0.01).collect();
        let ab = g.storage_init("a", bytemuck::cast_slice(&a)).unwrap();
        let budget = g.storage_buffer("budget", 4 * 9).unwrap();
        for (b1, alpha) in [
            (5, 0.3),
            (40, 0.3),
            (128, 0.3),
            (255, 0.3),
            (40, 1.0),
            (128, 1.0),
        ] {
            let floor = arp::floor_count(alpha, b1, 9);
            let p = SelectParams {
                grid: 16,
                regions: 3,
                floor_count: floor as u32,
                ..SelectParams::new(256, b1)
            };
            let k1 = op::select(g, "arp_budget", None, p, &[(1, &ab), (6, &budget)]).unwrap();
            let k2 = op::select(
                g,
                "top_k",
                Some("REGIONS"),
                p,
                &[(1, &ab), (3, &keep), (5, &flags), (6, &budget)],
            )
            .unwrap();
            g.run(&[&k1, &k2]).unwrap();
            assert_eq!(
                read(&budget, 9),
                arp::budgets(&a, 16, 3, floor, b1),
                "{name}: ARP budgets {b1}, alpha {alpha}"
            );
            assert_eq!(
                read(&keep, b1),
                arp::select(&a, 16, 3, floor, b1),
                "{name}: ARP {b1}, alpha {alpha}"
            );
        }
        // MMR and max-min on a Gram matrix of random rows with duplicated rows (exact ties).
        let d = 12;
        let mut x = rng.vec(n * d, 1.0);
        for i in (0..n).step_by(7) {
            let (src, dst) = (i * d, ((i + 3) % n) * d);
            let row: Vec<f32> = x[src..src + d].to_vec();
            x[dst..dst + d].copy_from_slice(&row);
        }
        let xt = Tensor::from_f32(g, "x", n, d, &x).unwrap();
        let unit = Tensor::new(g, "unit", n, d).unwrap();
        let gram = Tensor::new(g, "gram", n, n).unwrap();
        let ks = op::cosine_gram(g, &xt, 0..n, &unit, &gram).unwrap();
        g.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        let gv = gram.read(g).unwrap();
        common::assert_close(&name, &gv, &select::cosine_gram(&x, d), 1e-5);
        // rows from an offset, and a count that leaves the kernel's 4x4 blocks partial
        let part = Tensor::new(g, "gram part", n - 1, n - 1).unwrap();
        let unit_part = Tensor::new(g, "unit part", n - 1, d).unwrap();
        let ks = op::cosine_gram(g, &xt, 1..n, &unit_part, &part).unwrap();
        g.run(&ks.iter().collect::<Vec<_>>()).unwrap();
        common::assert_close(
            &format!("{name} rows 1.."),
            &part.read(g).unwrap(),
            &select::cosine_gram(&x[d..], d),
            1e-5,
        );
        // each row's nearest distance, 4 values a load (300 rows) and one (299)
        for (t, rows) in [(&gram, n), (&part, n - 1)] {
            let gv = t.read(g).unwrap();
            let row_min = Tensor::new(g, "row_min", rows, 1).unwrap();
            g.run(&[&op::row_min_distance(g, t, rows, &row_min).unwrap()])
                .unwrap();
            let want: Vec<f32> = (0..rows)
                .map(|i| {
                    (0..rows)
                        .filter(|&j| j != i)
                        .map(|j| 1.0 - gv[i * rows + j])
                        .fold(f32::INFINITY, f32::min)
                })
                .collect();
            assert_eq!(
                row_min.read(g).unwrap(),
                want,
                "{name}: row minima of {rows}"
            );
        }
        // (299 of 300: the last picks meet the duplicates and the picks at distance 0)
        for k in [1, 10, 100, 299] {
            let p = SelectParams {
                lambda: 0.6,
                ..SelectParams::new(n, k)
            };
            let km = op::select(
                g,
                "mmr",
                None,
                p,
                &[
                    (1, &sb),
                    (2, &gram.buf),
                    (3, &keep),
                    (4, &work),
                    (5, &flags),
                ],
            )
            .unwrap();
            g.run(&[&km]).unwrap();
            assert_eq!(
                read(&keep, k),
                pbc_mmr::mmr(&scores, &gv, k, 0.6),
                "{name}: MMR {k}"
            );
            // DivPrune: each row's smallest distance first, then the greedy picks, with
            // the running distances in registers (op::max_min) and in storage
            let row_min = Tensor::new(g, "row_min", n, 1).unwrap();
            let kr = op::row_min_distance(g, &gram, n, &row_min).unwrap();
            let buffers = [
                (1, &row_min.buf),
                (2, &gram.buf),
                (3, &keep),
                (4, &work),
                (5, &flags),
            ];
            let in_registers = op::max_min(g, p, &buffers).unwrap();
            let in_storage = op::select(g, "max_min", None, p, &buffers).unwrap();
            for kd in [in_registers, in_storage] {
                g.queue.write_buffer(&keep, 0, &vec![0xff; 4 * k]);
                g.run(&[&kr, &kd]).unwrap();
                assert_eq!(
                    read(&keep, k),
                    divprune::select(&gv, n, k),
                    "{name}: max-min {k}"
                );
            }
        }
        // VisionZip selection and merge assignment.
        let assign = g.storage_buffer("assign", 4 * n as u64).unwrap();
        for (dom, ctx) in [(54, 10), (5, 40), (200, 99)] {
            let p = SelectParams {
                dominant: dom,
                contextual: ctx,
                ..SelectParams::new(n, (dom + ctx) as usize)
            };
            let sel = visionzip::select(&scores, &gv, dom as usize, ctx as usize);
            let want: Vec<u32> = sel
                .merged_into
                .iter()
                .map(|a| a.unwrap_or(u32::MAX))
                .collect();
            // from the Gram matrix, and from the unit rows (KEY_ROWS: the similarities to
            // the targets computed in the kernel, as the pipeline runs it)
            for (flag, rows) in [(None, &gram.buf), (Some("KEY_ROWS"), &unit.buf)] {
                let p = SelectParams {
                    cols: d as u32,
                    ..p
                };
                let kv = op::select(
                    g,
                    "visionzip",
                    flag,
                    p,
                    &[(1, &sb), (2, rows), (3, &keep), (5, &flags), (9, &assign)],
                )
                .unwrap();
                g.run(&[&kv]).unwrap();
                let what = format!("{name}: VisionZip {dom}+{ctx} {flag:?}");
                assert_eq!(read(&keep, sel.kept.len()), sel.kept, "{what}");
                assert_eq!(read(&assign, n), want, "{what}: merge");
            }
            // The merge itself: each kept row plus the mean of the rows assigned to it, from
            // the member counts that the selection leaves in flags.
            let kept = sel.kept.len();
            let out = Tensor::new(g, "merged", kept, d).unwrap();
            let km = op::merge_rows(g, &keep, &assign, &flags, n, &xt, 0, &out).unwrap();
            g.run(&[&km]).unwrap();
            common::assert_close(
                &format!("{name}: VisionZip merged rows {dom}+{ctx}"),
                &out.read(g).unwrap(),
                &visionzip::merge(&x, d, &sel),
                1e-5,
            );
        }
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vlm-run"))
        .args(args)
        .output()
        .unwrap()
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{args:?}: {err}");
    // Our own errors are one line with exit code 1; clap's parse errors add a usage hint.
    if out.status.code() == Some(1) {
        assert_eq!(
            err.lines().filter(|l| !l.trim().is_empty()).count(),
            1,
            "{err}"
        );
    }
    for n in needles {
        assert!(first.contains(n), "{args:?}: {n:?} not in {first}");
    }
}

#[test]
fn bad_pruning_options_get_clear_errors() {
    let m = deep();
    let m = m.to_str().unwrap();
    let img = deep().join("a.png");
    let img = img.to_str().unwrap();
    let base = ["-m", m, "-i", img, "-p", "hi", "-n", "2"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let check = |extra: &[&'static str], needles: &[&str]| {
        let a = with(extra);
        fails_with(&a.iter().map(String::as_str).collect::<Vec<_>>(), needles);
    };
    check(
        &["--prune", "fastv", "--keep", "0"],
        &["--keep must be at least 1"],
    );
    check(
        &["--prune", "fastervlm", "--keep", "600"],
        &["--keep 600 exceeds", "576"],
    );
    check(
        &["--prune", "fastv", "--keep", "20"],
        &["out of reach", "layer 2", "--keep 37"],
    );
    check(
        &["--prune", "fastv", "--keep", "64", "--prune-layer", "32"],
        &["--prune-layer 32", "32 decoder layers"],
    );
    check(
        &["--prune", "magic", "--keep", "64"],
        &["unknown pruning method", "posprune"],
    );
    check(
        &["--prune", "posprune", "--keep", "64", "--mmr-lambda", "2"],
        &["--mmr-lambda"],
    );
    check(&["--keep", "64"], &["--keep needs a pruning method"]);
    // without an image there is nothing to prune
    fails_with(
        &["-m", m, "-p", "hi", "--prune", "fastv", "--keep", "64"],
        &["--prune fastv needs an --image"],
    );
    fails_with(
        &["-m", m, "-p", "hi", "--keep", "64"],
        &["--keep needs an --image"],
    );
    // A calibration file made for the other fixture model.
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("cal.json");
    let cal_s = cal.to_str().unwrap().to_string();
    let out = cli(&["calibrate", "-m", shallow().to_str().unwrap(), "-o", &cal_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = with(&["--prune", "pore", "--keep", "64", "--calibration"]);
    a.push(cal_s);
    fails_with(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &["made for another model"],
    );
}

#[test]
fn calibration_feeds_pbc_and_pore() {
    let e = engine();
    let cal = vlm_run::prune::calibrate::run(e, None).unwrap();
    assert_eq!(cal.layers.len(), 31);
    assert_eq!(cal.model, e.fingerprint);
    let k2 = cal.layer(2).unwrap();
    assert_eq!(k2.text_profile.len(), 576);
    assert!(k2.rho.is_finite() && k2.rho > 0.0);
    // Relevance over visual tokens is a share of one softmax row: below 1, above 0.
    assert!(k2.text_profile.iter().all(|&v| v > 0.0 && v < 1.0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibration.json");
    cal.save(&path).unwrap();
    for m in [Method::PoRe, Method::PosPrune] {
        let mut opts = method(m, 64);
        opts.calibration = Some(path.clone());
        let out = run(e, "b.png", opts, true);
        let d = out.stages.last().unwrap();
        let raster: Vec<u32> = if m == Method::PosPrune {
            out.stages[0].raster.clone()
        } else {
            (0..576).collect()
        };
        let cpu = if m == Method::PoRe {
            pore::scores(&d.scores, &raster, &[1.0; 576], k2.rho)
        } else {
            pbc_mmr::corrected(&d.scores, &raster, Some(&k2.text_profile))
        };
        common::assert_close(&format!("{m}"), d.reweighted.as_ref().unwrap(), &cpu, 1e-4);
    }
}

#[test]
fn keep_map_png_shows_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("keep.png");
    let (m, img) = (deep(), deep().join("a.png"));
    let out = cli(&[
        "-m",
        m.to_str().unwrap(),
        "-i",
        img.to_str().unwrap(),
        "-p",
        "What is in the image?",
        "-n",
        "2",
        "--prune",
        "posprune",
        "--keep",
        "64",
        "--save-keep-map",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pic = image::open(&png).unwrap().to_rgb8();
    assert_eq!(pic.dimensions(), (672, 672));
    let count = |c: [u8; 3]| pic.pixels().filter(|p| p.0 == c).count();
    use vlm_run::prune::keep_map::{GREEN, ORANGE};
    // 60 green-outlined patches and 68 orange ones (128 ARP − 60 MMR).
    assert!(count(GREEN) > 60 * 4 * 20, "green pixels: {}", count(GREEN));
    assert!(
        count(ORANGE) > 68 * 4 * 20,
        "orange pixels: {}",
        count(ORANGE)
    );
}

/// The parity fixture's decoder read as 3 heads of 32 dims over one KV head (the same
/// weights), so that on CPU devices its KV cache lives in textures
/// (`ops::attention::Heads::decode_textures`): every method keeps the same tokens, scores
/// them the same and answers the same as with weights, KV cache and x all in storage
/// buffers. The decoder-side methods score layer 0's K, which then comes from the prefill
/// buffers that layers in textures share.
#[test]
fn a_kv_cache_in_textures_prunes_and_answers_as_buffers_do() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shallow()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let config = dir.path().join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let t = &mut c["text_config"];
    t["num_attention_heads"] = 3.into();
    t["num_key_value_heads"] = 1.into();
    t["head_dim"] = 32.into();
    std::fs::write(&config, c.to_string()).unwrap();
    let textures = Engine::load(dir.path(), &GpuOptions::default(), &|_| {}).unwrap();
    let buffers = GpuOptions {
        weight_textures: Some(false),
        uniform_x: Some(false),
        ..Default::default()
    };
    let buffers = Engine::load(dir.path(), &buffers, &|_| {}).unwrap();
    // 2 decoder layers: B = 320 keeps 64 tokens from layer 1 on for the decoder-side methods
    for m in [
        Method::None,
        Method::FasterVlm,
        Method::VisionZip,
        Method::DivPrune,
        Method::FastV,
        Method::PoRe,
        Method::PosPrune,
    ] {
        let opts = match m {
            Method::None => PruneOptions::default(),
            _ => method(m, 320),
        };
        let a = run(&textures, "a.png", opts.clone(), true);
        let b = run(&buffers, "a.png", opts, true);
        assert!(!a.tokens.is_empty(), "{m}");
        assert_eq!(a.tokens, b.tokens, "{m}: greedy tokens");
        assert_eq!(a.stages.len(), b.stages.len(), "{m}");
        for (x, y) in a.stages.iter().zip(&b.stages) {
            assert_eq!(x.keep, y.keep, "{m} {}: kept tokens", x.stage);
            assert_eq!(x.scores, y.scores, "{m} {}: scores", x.stage);
        }
    }
}

/// A warm-up on one thread leaves a request on another thread, on the same engine, computing:
/// the empty grids are the warm-up's own.
#[test]
fn a_warm_up_beside_a_request_leaves_it_computing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let e = Engine::load(&shallow(), &GpuOptions::default(), &|_| {}).unwrap();
    let im = image(&shallow(), "a.png");
    let opts = GenerateOptions {
        max_tokens: 4,
        ..Default::default()
    };
    let ask = || e.generate(Some(&im), "What is in the image?", &opts, &mut |_| {});
    let want = ask().unwrap().tokens;
    let done = AtomicBool::new(false);
    // the results are checked after the warm-up thread has ended, so that a failure cannot
    // leave it running
    let got: Vec<anyhow::Result<Output>> = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                e.warm_up(&WarmUp::ModelKind).unwrap();
            }
        });
        let got = (0..6).map(|_| ask()).collect();
        done.store(true, Ordering::Relaxed);
        got
    });
    for (i, out) in got.into_iter().enumerate() {
        assert_eq!(out.unwrap().tokens, want, "request {i} beside the warm-ups");
    }
}

#[test]
fn decoding_one_step_ahead_gives_the_same_tokens() {
    // Each decode step submitted before the previous token is read back (the GPUs' default)
    // against one at a time (the CPU devices'): the same tokens, greedy and sampled, with
    // and without a prune layer (whose later layers step with their own uniform), and on
    // the trained default model an answer ended by end-of-sequence. (tests/parity.rs runs
    // its second engine one step ahead, against transformers' greedy tokens.)
    let e = Engine::load(&deep(), &GpuOptions::default(), &|_| {}).unwrap();
    let sampled = vlm_run::Sampling {
        temperature: 1.5,
        top_p: 0.95,
    };
    for (prune, sampling) in [
        (PruneOptions::default(), vlm_run::Sampling::greedy()),
        (PruneOptions::default(), sampled),
        (method(Method::PosPrune, 64), sampled),
        (method(Method::FastV, 64), vlm_run::Sampling::greedy()),
    ] {
        let opts = GenerateOptions {
            max_tokens: 12,
            sampling,
            seed: 5,
            ignore_eos: true,
            prune,
            ..Default::default()
        };
        let im = image(&deep(), "a.png");
        let mut outs = [false, true].map(|ahead| {
            e.gpu.set_decode_ahead(ahead);
            e.generate(Some(&im), "What is in the image?", &opts, &mut |_| {})
                .unwrap()
                .tokens
        });
        assert_eq!(outs[0].len(), 12);
        assert_eq!(outs[1], outs[0], "{:?} {sampling:?}", opts.prune.method);
        // the sampled cases really sample: another seed, other tokens
        if sampling.temperature > 0.0 {
            let other = GenerateOptions { seed: 6, ..opts };
            outs[1] = e
                .generate(Some(&im), "What is in the image?", &other, &mut |_| {})
                .unwrap()
                .tokens;
            assert_ne!(outs[1], outs[0], "seed 6 sampled seed 5's tokens");
        }
    }
    // The trained default model answers in a few tokens and ends with end-of-sequence: one
    // step is then submitted past it, and its token never shows.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e = Engine::load(
        &dir.join("weights/tiny-llava-vqa"),
        &GpuOptions::default(),
        &|_| {},
    )
    .unwrap();
    let im = image(&dir.join("tests/fixtures/vqa-sample"), "images/00000.png");
    let opts = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    let [one, ahead] = [false, true].map(|ahead| {
        e.gpu.set_decode_ahead(ahead);
        e.generate(Some(&im), "Where is the triangle?", &opts, &mut |_| {})
            .unwrap()
    });
    assert_eq!(ahead.tokens, one.tokens);
    assert_eq!(ahead.text, "top right");
    assert!(
        e.eos.contains(ahead.tokens.last().unwrap()),
        "{:?}",
        ahead.tokens
    );
}
