//! The tiny LLaVA fixture as a llama.cpp-style GGUF pair (made by
//! tests/fixtures/convert_llava_to_gguf.py): the F16 decoder with the mmproj file must
//! reproduce transformers' prompt ids, logits and greedy tokens exactly as the safetensors
//! checkpoint does; the Q8_0 decoder must stay close. Also text-only GGUF prompts and the
//! errors around --mmproj.

use std::path::{Path, PathBuf};
use vlm_run::{Engine, GenerateOptions, GpuOptions};

const LOGITS_TOL: f32 = 2e-4;
/// Q8_0 rounds each weight to 1/254 of its block's range: measured 0.16 on logits up to 14.
const Q8_LOGITS_TOL: f32 = 0.3;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn open(llm: &str, mmproj: Option<&str>) -> Engine {
    let g = dir("tiny-llava-gguf");
    let mm = mmproj.map(|m| g.join(m));
    Engine::open(&g.join(llm), mm.as_deref(), &GpuOptions::default(), &|_| {}).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn gguf_pair_matches_transformers_and_the_safetensors_checkpoint() {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir("tiny-llava").join("reference.json")).unwrap(),
    )
    .unwrap();
    let st = Engine::load(&dir("tiny-llava"), &GpuOptions::default(), &|_| {}).unwrap();
    let f16 = open("tiny-llava-f16.gguf", Some("mmproj-tiny-llava-f16.gguf"));
    let q8 = open("tiny-llava-q8_0.gguf", Some("mmproj-tiny-llava-f16.gguf"));
    assert_eq!(f16.model.vision.as_ref().unwrap().layers(), 2);
    assert_eq!(f16.model.visual_tokens(), 576);
    assert!(!f16.chat.is_chatml());
    // Decoder alone: Q8_0 matrices take 34/64 of F16's bytes on the GPU.
    let (b8, b16) = (
        open("tiny-llava-q8_0.gguf", None).model.weight_bytes,
        open("tiny-llava-f16.gguf", None).model.weight_bytes,
    );
    assert!(b8 * 64 < b16 * 36, "Q8_0 decoder {b8} bytes, F16 {b16}");
    for case in r["cases"].as_array().unwrap() {
        let img =
            vlm_run::image::load(&dir("tiny-llava").join(case["image"].as_str().unwrap())).unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let want_logits: Vec<f32> = serde_json::from_value(case["last_logits"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let opts = GenerateOptions {
            max_tokens: want.len(),
            keep_prefill_logits: true,
            ..Default::default()
        };
        let base = st.generate(Some(&img), prompt, &opts, &mut |_| {}).unwrap();
        for (name, e, tol) in [("F16", &f16, LOGITS_TOL), ("Q8_0", &q8, Q8_LOGITS_TOL)] {
            assert_eq!(
                e.prompt_ids(prompt, &opts, true).unwrap(),
                want_ids,
                "{name} tokenizer"
            );
            let out = e.generate(Some(&img), prompt, &opts, &mut |_| {}).unwrap();
            let logits = out.prefill_logits.as_ref().unwrap();
            let d = max_abs_diff(logits, &want_logits);
            eprintln!("{name} {prompt:?}: logits max abs diff vs transformers {d:.2e}");
            assert!(d <= tol, "{name} {prompt:?}: logits differ by {d}");
            assert_eq!(out.tokens, want, "{name} {prompt:?}");
            assert_eq!(out.kv_cache_bytes, base.kv_cache_bytes);
            if name == "F16" {
                // The same f16 weights and kernels: the same numbers as the checkpoint.
                assert_eq!(logits, base.prefill_logits.as_ref().unwrap(), "{prompt:?}");
            }
        }
    }
}

#[test]
fn gguf_decoder_without_mmproj_answers_text_prompts() {
    let e = open("tiny-llava-q8_0.gguf", None);
    assert!(e.model.vision.is_none());
    let opts = GenerateOptions {
        max_tokens: 4,
        ..Default::default()
    };
    // LLaVA's template without the image tag: "USER: Hello ASSISTANT:" with BOS.
    let ids = e.prompt_ids("Hello", &opts, false).unwrap();
    assert_eq!(ids[0], 1);
    assert!(!ids.contains(&300));
    let out = e.generate(None, "Hello", &opts, &mut |_| {}).unwrap();
    assert_eq!(out.visual_tokens, 0);
    assert_eq!(out.tokens.len(), 4);
    let img = image::RgbImage::new(4, 4);
    let err = e
        .generate(Some(&img), "Hi", &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("--mmproj"), "{err}");
}

#[test]
fn mmproj_mistakes_are_clear_errors() {
    let g = dir("tiny-llava-gguf");
    let gpu = GpuOptions::default();
    let err = |r: anyhow::Result<Engine>| format!("{:#}", r.err().expect("accepted"));
    // The decoder file given as the mmproj.
    let e = err(Engine::open(
        &g.join("tiny-llava-f16.gguf"),
        Some(&g.join("tiny-llava-q8_0.gguf")),
        &gpu,
        &|_| {},
    ));
    assert!(e.contains("not a LLaVA mmproj file"), "{e}");
    // The mmproj given as the model.
    let e = err(Engine::open(
        &g.join("mmproj-tiny-llava-f16.gguf"),
        None,
        &gpu,
        &|_| {},
    ));
    assert!(e.contains("architecture \"clip\" is not supported"), "{e}");
    // --mmproj with a llava-hf directory, and a missing mmproj file.
    let e = err(Engine::open(
        &dir("tiny-llava"),
        Some(&g.join("mmproj-tiny-llava-f16.gguf")),
        &gpu,
        &|_| {},
    ));
    assert!(e.contains("--mmproj goes with a GGUF"), "{e}");
    let e = err(Engine::open(
        &g.join("tiny-llava-f16.gguf"),
        Some(&g.join("missing.gguf")),
        &gpu,
        &|_| {},
    ));
    assert!(
        e.contains("missing.gguf") && e.contains("does not exist"),
        "{e}"
    );
}

/// A llama.cpp-style K-quant mix of the tiny decoder (tests/fixtures/make_kquant_mix_gguf.py):
/// q|k|v in parts of different types (q|k and v, q and k|v), gate and up apart, every
/// 32-value block type. Its greedy tokens (prefill, then decode steps whose q|k|v GEMVs run
/// a part each with RoPE and the cache write) must be those of an f64 numpy forward over
/// gguf's own dequantisation of the same file, its prefill logits close to numpy's.
#[test]
fn kquant_mix_decodes_as_numpy_does_over_the_dequantised_weights() {
    let path = dir("tiny-llava-gguf").join("tiny-llava-mix.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let e = open("tiny-llava-mix.gguf", None);
    let opts = GenerateOptions {
        max_tokens: 8,
        keep_prefill_logits: true,
        ignore_eos: true,
        ..Default::default()
    };
    let prompt = "What is in the picture today";
    let ids = e.prompt_ids(prompt, &opts, false).unwrap();
    eprintln!("prompt ids {ids:?}");
    let want_ids: Vec<u32> = serde_json::from_value(r["prompt_ids"].clone()).unwrap();
    assert_eq!(ids, want_ids, "the fixture's prompt ids");
    let out = e.generate(None, prompt, &opts, &mut |_| {}).unwrap();
    let want_logits: Vec<f32> = serde_json::from_value(r["last_logits"].clone()).unwrap();
    let d = max_abs_diff(out.prefill_logits.as_ref().unwrap(), &want_logits);
    eprintln!("K-quant mix: logits max abs diff vs numpy {d:.2e}");
    assert!(d <= LOGITS_TOL, "logits differ by {d}");
    let want: Vec<u32> = serde_json::from_value(r["tokens"].clone()).unwrap();
    assert_eq!(out.tokens, want);
}
