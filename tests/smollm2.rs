//! SmolLM2-135M-Instruct (Q4_1 GGUF), the one trained model on these machines: prompt ids
//! through the file's own ChatML template and exact greedy tokens against transformers'
//! float32 run on the `gguf` package's dequantised weights
//! (tests/fixtures/make_smollm2_reference.py). The file comes from `bash
//! weights/fetch-smollm2.sh`; without it these tests say so and pass vacuously, and CI
//! fetches it first.

use std::path::{Path, PathBuf};
use vlm_run::{Engine, GenerateOptions, GpuOptions};

fn weights() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (run weights/fetch-smollm2.sh)",
            p.display()
        );
        None
    }
}

#[test]
fn smollm2_q4_1_greedy_tokens_match_transformers() {
    let Some(path) = weights() else { return };
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let engine = Engine::open(&path, None, &GpuOptions::default(), &|_| {}).unwrap();
    assert!(engine.chat.is_chatml());
    assert!(engine.model.vision.is_none());
    // Q4_1 blocks stay Q4_1 on the GPU: weights cost about the file's size, not 4x.
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(
        engine.model.weight_bytes < file + file / 10,
        "{} bytes of weights on the GPU for a {file}-byte file",
        engine.model.weight_bytes
    );
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["greedy_ids"].clone()).unwrap();
        let opts = GenerateOptions {
            max_tokens: want.len(),
            ..Default::default()
        };
        assert_eq!(
            engine.prompt_ids(prompt, &opts, false).unwrap(),
            want_prompt,
            "{prompt}"
        );
        let mut streamed = String::new();
        let out = engine
            .generate(None, prompt, &opts, &mut |t| streamed.push_str(t))
            .unwrap();
        assert_eq!(out.tokens, want, "{prompt}: {:?}", out.text);
        assert_eq!(out.text, case["answer"].as_str().unwrap());
        assert_eq!(streamed, out.text);
    }
}

#[test]
fn smollm2_answers_paris() {
    let Some(path) = weights() else { return };
    let engine = Engine::open(&path, None, &GpuOptions::default(), &|_| {}).unwrap();
    let opts = GenerateOptions {
        max_tokens: 16,
        ..Default::default()
    };
    let out = engine
        .generate(None, "What is the capital of France?", &opts, &mut |_| {})
        .unwrap();
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    // --image without an mmproj file is refused with a clear message.
    let img = image::RgbImage::new(8, 8);
    let e = engine
        .generate(Some(&img), "What is this?", &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("mmproj"), "{e}");
}

/// A long greedy answer is the same token for token whether weights, the KV cache, the
/// residual stream's copy and the decode GEMV's x are in textures and uniform buffers (the
/// CPU-device layout) or all in storage buffers: the kernels do the same arithmetic either way. The reference cases above
/// stop after 16 tokens; this one decodes 48 past the prompt, far enough into the cache that
/// a decode row lost on its way into the KV textures changes the answer.
#[test]
fn smollm2_layouts_decode_the_same_long_answer() {
    let Some(path) = weights() else { return };
    let opts = GenerateOptions {
        max_tokens: 48,
        ignore_eos: true,
        ..Default::default()
    };
    let answer = |gpu: &GpuOptions| {
        let engine = Engine::open(&path, None, gpu, &|_| {}).unwrap();
        let out = engine
            .generate(None, "Tell me a story.", &opts, &mut |_| {})
            .unwrap();
        (out.tokens, out.text)
    };
    let default = answer(&GpuOptions::default());
    let buffers = answer(&GpuOptions {
        weight_textures: Some(false),
        uniform_x: Some(false),
        x_textures: Some(false),
        ..Default::default()
    });
    assert_eq!(default.0.len(), 48);
    assert_eq!(default, buffers);
}
