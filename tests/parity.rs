//! Numeric parity with HF transformers on the tiny LLaVA fixture (tests/fixtures/tiny-llava,
//! made by make_tiny_llava.py): preprocessing, projector output, prefill logits, and greedy
//! tokens, in the f16+subgroup path and the unpacked-f32 + workgroup-memory path.

mod common;
use common::max_abs_diff;
use std::path::{Path, PathBuf};
use vlm_run::gpu::{GemmTile, TileChoice};
use vlm_run::{Engine, GenerateOptions, GpuOptions};

/// Tolerances. Weights are bf16 in the file and exactly representable in f16, so the engine
/// and the reference differ only in f32 summation order and erf/exp approximations.
const PROJECTOR_TOL: f32 = 5e-5;
const LOGITS_TOL: f32 = 2e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

fn engines() -> Vec<(&'static str, Engine)> {
    let paths = [
        (
            "f16 + subgroups, the device's GEMM table, weight store and GEMV input",
            GpuOptions {
                f16: None,
                subgroups: None,
                max_binding: None,
                gemm_tile: TileChoice::Table,
                attention_tiles: None,
                flash_attention: None,
                decode_attention: None,
                decode_one: None,
                decode_ahead: None,
                weight_textures: None,
                uniform_x: None,
                x_textures: None,
                gemv_word_lanes: None,
            },
        ),
        (
            "f32 unpack + workgroup memory, 32 tile GEMM, the tiled GPU prefill and split decode \
             attention, weights and x in storage buffers (no texture copies), the GPUs' decode GEMV (32 word lanes)",
            GpuOptions {
                f16: Some(false),
                subgroups: Some(false),
                max_binding: None,
                gemm_tile: TileChoice::Fixed(GemmTile::T32),
                attention_tiles: Some(true),
                flash_attention: None,
                decode_attention: None,
                decode_one: None,
                decode_ahead: Some(true),
                weight_textures: Some(false),
                uniform_x: Some(false),
                x_textures: Some(false),
                gemv_word_lanes: Some(32),
            },
        ),
    ];
    paths
        .into_iter()
        .map(|(name, o)| (name, Engine::load(&fixture(), &o, &|_| {}).unwrap()))
        .collect()
}

#[test]
fn preprocessing_matches_hf_pixels_exactly() {
    let cfg = vlm_run::model::config::PreprocessorConfig::load_or_default(&fixture(), 336).unwrap();
    let img = vlm_run::image::load(&fixture().join("a.png")).unwrap();
    let ours = vlm_run::image::resize_and_crop(&img, cfg.shortest_edge(336), cfg.crop(336));
    let theirs = image::open(fixture().join("reference_pixels_a.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(ours.dimensions(), theirs.dimensions());
    let diff = ours
        .as_raw()
        .iter()
        .zip(theirs.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        diff,
        0,
        "{diff} of {} uint8 values differ from HF",
        ours.as_raw().len()
    );
}

#[test]
fn projector_logits_and_greedy_tokens_match_transformers() {
    let r = reference();
    let shape = &r["projector_a"]["shape"];
    let n = shape[0].as_u64().unwrap() as usize * shape[1].as_u64().unwrap() as usize;
    let bytes = std::fs::read(fixture().join(r["projector_a"]["file"].as_str().unwrap())).unwrap();
    let want_proj: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
    assert_eq!(want_proj.len(), n);
    for (name, engine) in engines() {
        let img_a = vlm_run::image::load(&fixture().join("a.png")).unwrap();
        let proj = engine.encode_image(&img_a, false).unwrap();
        let d = max_abs_diff(&proj, &want_proj);
        eprintln!("{name}: projector max abs diff {d:.2e}");
        assert!(d <= PROJECTOR_TOL, "{name}: projector differs by {d}");

        for case in r["cases"].as_array().unwrap() {
            let img =
                vlm_run::image::load(&fixture().join(case["image"].as_str().unwrap())).unwrap();
            let prompt = case["prompt"].as_str().unwrap();
            let want_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
            let opts = GenerateOptions {
                max_tokens: 16,
                keep_prefill_logits: true,
                ..Default::default()
            };
            assert_eq!(
                engine.prompt_ids(prompt, &opts, true).unwrap(),
                want_ids,
                "tokenizer"
            );
            let out = engine
                .generate(Some(&img), prompt, &opts, &mut |_| {})
                .unwrap();
            let want_logits: Vec<f32> =
                serde_json::from_value(case["last_logits"].clone()).unwrap();
            let d = max_abs_diff(out.prefill_logits.as_ref().unwrap(), &want_logits);
            eprintln!(
                "{name}: {} {prompt:?}: logits max abs diff {d:.2e}",
                case["image"]
            );
            assert!(d <= LOGITS_TOL, "{name}: logits differ by {d}");
            let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
            assert_eq!(
                out.tokens, want,
                "{name}: greedy tokens for {} {prompt:?}",
                case["image"]
            );
            assert_eq!(out.visual_tokens, 576);
            assert_eq!(out.prompt_tokens, want_ids.len() - 1 + 576);
            // f32 KV cache: 2 layers x (K, V) x (prompt + 16) rows x (2 KV heads x 16) x 4 bytes.
            assert_eq!(
                out.kv_cache_bytes,
                (2 * 2 * (out.prompt_tokens + 16) * 32 * 4) as u64
            );
        }
    }
}

/// Greedy tokens of reference case `i` on `engine`, and the reference's.
fn run_case(engine: &Engine, i: usize) -> (Vec<u32>, Vec<u32>) {
    let r = reference();
    let case = &r["cases"][i];
    let img = vlm_run::image::load(&fixture().join(case["image"].as_str().unwrap())).unwrap();
    let gen = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    let out = engine
        .generate(
            Some(&img),
            case["prompt"].as_str().unwrap(),
            &gen,
            &mut |_| {},
        )
        .unwrap();
    (
        out.tokens,
        serde_json::from_value(case["tokens"].clone()).unwrap(),
    )
}

#[test]
fn weights_split_by_rows_give_the_same_tokens() {
    // 4 KiB chunks split the 96-wide embed_tokens and lm_head (and every other matrix).
    let opts = GpuOptions {
        max_binding: Some(4096),
        ..Default::default()
    };
    let engine = Engine::load(&fixture(), &opts, &|_| {}).unwrap();
    let (got, want) = run_case(&engine, 1);
    assert_eq!(got, want);
}

#[test]
fn newer_transformers_tensor_names_load_too() {
    // Rewrite the fixture with transformers 5's names (model.vision_tower.*, lm_head.weight, …)
    // into one unsharded model.safetensors.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(fixture().join(f), dir.path().join(f)).unwrap();
    }
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let bytes = std::fs::read(fixture().join(shard)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, v) in st.tensors() {
            let new = name
                .replacen("vision_tower.vision_model.", "model.vision_tower.", 1)
                .replacen("multi_modal_projector.", "model.multi_modal_projector.", 1)
                .replacen("language_model.model.", "model.language_model.", 1)
                .replacen("language_model.lm_head.", "lm_head.", 1);
            tensors.push((new, v.dtype(), v.shape().to_vec(), v.data().to_vec()));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let engine = Engine::load(dir.path(), &GpuOptions::default(), &|_| {}).unwrap();
    let (got, want) = run_case(&engine, 0);
    assert_eq!(got, want);
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let engine = Engine::load(&fixture(), &GpuOptions::default(), &|_| {}).unwrap();
    let img = vlm_run::image::load(&fixture().join("b.png")).unwrap();
    let run = |seed| {
        let opts = GenerateOptions {
            max_tokens: 12,
            seed,
            sampling: vlm_run::Sampling {
                temperature: 1.0,
                top_p: 0.9,
            },
            ..Default::default()
        };
        engine
            .generate(Some(&img), "Describe it.", &opts, &mut |_| {})
            .unwrap()
            .tokens
    };
    let (a, b) = (run(7), run(7));
    assert_eq!(a, b);
    assert!(a
        .iter()
        .all(|&t| (t as usize) < engine.model.llm.cfg.vocab_size));
}

/// `decode_one` (`VLM_RUN_DECODE_ONE=1`, one workgroup per head walking the cache) on the
/// GPU row, over a cache short enough for it (FasterVLM keeping 64 of 576 tokens: 77 to 101
/// rows, two chunks): the split kernels' tokens, greedy and sampled, and its pipeline made.
#[test]
fn decode_one_gives_the_split_kernels_tokens_on_a_pruned_cache() {
    let opts = GpuOptions {
        attention_tiles: Some(true),
        ..Default::default()
    };
    let engine = Engine::load(&fixture(), &opts, &|_| {}).unwrap();
    let img = vlm_run::image::load(&fixture().join("a.png")).unwrap();
    let run = |temperature| {
        let opts = GenerateOptions {
            max_tokens: 24,
            ignore_eos: true,
            seed: 3,
            sampling: vlm_run::Sampling {
                temperature,
                top_p: 1.0,
            },
            prune: vlm_run::prune::PruneOptions {
                method: vlm_run::prune::Method::FasterVlm,
                keep: Some(64),
                ..Default::default()
            },
            ..Default::default()
        };
        let out = engine
            .generate(Some(&img), "What is in the image?", &opts, &mut |_| {})
            .unwrap();
        assert!(out.tokens_per_layer.iter().all(|&t| t + 24 <= 256));
        out.tokens
    };
    let one = |on| {
        engine.gpu.set_decode_one(on);
        [run(0.0), run(1.0)]
    };
    let split = one(false);
    assert!(!engine.gpu.has_pipeline("decode_attention", "decode_one"));
    assert!(engine.gpu.has_pipeline("decode_attention", "decode_merge"));
    let walked = one(true);
    assert!(engine.gpu.has_pipeline("decode_attention", "decode_one"));
    assert_eq!(walked, split);
    assert_eq!(split[1].len(), 24);
}

/// Loading warms up (`Engine::warm_up`): a question about an image then makes no pipeline
/// of its own, and its tokens are the reference's, so the empty-grid run left nothing
/// behind. Without the warm-up the first request made every pipeline.
#[test]
fn the_first_request_after_load_makes_no_pipeline() {
    let engine = Engine::load(&fixture(), &GpuOptions::default(), &|_| {}).unwrap();
    let made = engine.gpu.pipeline_count();
    assert!(made > 10, "{made} pipelines after load");
    let (got, want) = run_case(&engine, 0);
    assert_eq!(engine.gpu.pipeline_count(), made);
    assert_eq!(got, want);
}

/// RoPE's table covers the positions requests need, not the config's whole context (which
/// a config may put at millions): 2048 positions at first, doubled as a request needs more,
/// never shrunk, with the values `ops::rope::rope_table` computes.
#[test]
fn rope_table_grows_with_the_positions_requests_need() {
    let dir = common::copy_dir(&fixture());
    let cfg = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["text_config"]["max_position_embeddings"] = serde_json::json!(100_000);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let engine = Engine::load(dir.path(), &GpuOptions::default(), &|_| {}).unwrap();
    let (llm, gpu) = (&engine.model.llm, &engine.gpu);
    let hd = llm.cfg.head_dim();
    let bytes = |rows: usize| (4 * rows * hd) as u64;
    // the first table (made by the load's warm-up, or here): 2048 positions
    assert_eq!(llm.rope_table(gpu, 10).unwrap().size(), bytes(2048));
    let grown = llm.rope_table(gpu, 3000).unwrap();
    assert_eq!(grown.size(), bytes(4096));
    assert_eq!(llm.rope_table(gpu, 100).unwrap().size(), bytes(4096));
    let want = vlm_run::ops::rope::rope_table(llm.cfg.theta(), hd, 4096);
    assert_eq!(gpu.read_f32(&grown, 4096 * hd).unwrap(), want);
    // past the context: exactly what is asked
    assert_eq!(llm.rope_table(gpu, 100_003).unwrap().size(), bytes(100_003));
}
