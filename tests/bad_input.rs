//! Bad input through the `vlm-run` binary: each case exits non-zero with one line on stderr
//! that names the file or limit, and never panics.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava")
}

/// A writable copy of the fixture model.
fn copy_fixture() -> tempfile::TempDir {
    common::copy_dir(&fixture())
}

/// Run the CLI; assert failure with a one-line error containing every `needles`.
#[track_caller]
fn fails_with(args: &[&str], needles: &[&str]) {
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vlm-run"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} succeeded; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
    }
}

fn img_a() -> String {
    fixture().join("a.png").display().to_string()
}

#[test]
fn missing_model_directory() {
    fails_with(
        &[
            "--model",
            "/no/such/model",
            "--image",
            &img_a(),
            "--prompt",
            "hi",
        ],
        &["/no/such/model", "does not exist"],
    );
}

#[test]
fn truncated_safetensors_shard() {
    let dir = copy_fixture();
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let m = dir.path().display().to_string();
    fails_with(
        &["--model", &m, "--image", &img_a(), "--prompt", "hi"],
        &["model-00002-of-00002.safetensors", "invalid safetensors"],
    );
}

#[test]
fn safetensors_header_with_bad_length_or_offsets() {
    let dir = copy_fixture();
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&shard, &bytes).unwrap();
    let m = dir.path().display().to_string();
    fails_with(
        &["--model", &m, "--image", &img_a(), "--prompt", "hi"],
        &["model-00001-of-00002.safetensors"],
    );

    // Offsets that point past the data.
    let dir = copy_fixture();
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let bad = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[9,", 1);
    assert_ne!(bad, header);
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(bad.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&shard, &out).unwrap();
    let m = dir.path().display().to_string();
    fails_with(
        &["--model", &m, "--image", &img_a(), "--prompt", "hi"],
        &["model-00001-of-00002.safetensors", "invalid safetensors"],
    );
}

#[test]
fn tensor_missing_from_the_index() {
    let dir = copy_fixture();
    let index = dir.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let name = "language_model.model.layers.1.mlp.up_proj.weight";
    assert!(v["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove(name)
        .is_some());
    std::fs::write(&index, v.to_string()).unwrap();
    let m = dir.path().display().to_string();
    fails_with(
        &["--model", &m, "--image", &img_a(), "--prompt", "hi"],
        &["layers.1.mlp.up_proj.weight", "not found"],
    );
}

#[test]
fn shape_that_disagrees_with_config() {
    let dir = copy_fixture();
    let cfg = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["text_config"]["intermediate_size"] = serde_json::json!(200);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let m = dir.path().display().to_string();
    fails_with(
        &["--model", &m, "--image", &img_a(), "--prompt", "hi"],
        &["gate_proj.weight", "[160, 96]", "[200, 96]"],
    );
}

#[test]
fn preprocessor_config_out_of_range() {
    // a shortest edge of 10^11 pixels once asked for a 39 GB resize and aborted; a zero std
    // would divide every pixel by zero
    for (key, value, needle) in [
        (
            "size",
            serde_json::json!({ "shortest_edge": 99999999999u64 }),
            "shortest_edge",
        ),
        (
            "size",
            serde_json::json!({ "shortest_edge": -1 }),
            "shortest_edge",
        ),
        (
            "image_std",
            serde_json::json!([0.27, 0.0, 0.28]),
            "image_std",
        ),
        (
            "crop_size",
            serde_json::json!({ "height": 336, "width": 300 }),
            "crop size",
        ),
    ] {
        let dir = copy_fixture();
        let cfg = dir.path().join("preprocessor_config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(&cfg, v.to_string()).unwrap();
        let m = dir.path().display().to_string();
        fails_with(
            &["--model", &m, "--image", &img_a(), "--prompt", "hi"],
            &["preprocessor_config.json", needle],
        );
    }
}

/// Pictures of extreme aspect ratio resize to millions of pixels along their long side
/// (1 x 200000 to 336 x 67 200 000: 68 GB as HF materialises it, and as this engine did
/// until it aborted on the allocation); only the centre crop is computed, so they answer
/// like any other picture, padded to a square (row by row) or not.
#[test]
fn image_of_extreme_aspect_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("thin.png");
    image::RgbImage::from_pixel(1, 200_000, image::Rgb([200, 40, 90]))
        .save(&p)
        .unwrap();
    let ps = p.display().to_string();
    let model = fixture().display().to_string();
    for pad in [None, Some("--pad-square")] {
        let runtime = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--model", &model, "--image", &ps, "--prompt", "hi", "-n", "2",
        ];
        args.extend(pad);
        let out = Command::new(env!("CARGO_BIN_EXE_vlm-run"))
            .args(&args)
            .env("XDG_RUNTIME_DIR", runtime.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(!out.stdout.is_empty(), "{args:?}: no answer");
    }
}

#[test]
fn image_that_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.png");
    std::fs::write(&p, "this is text, not pixels").unwrap();
    let ps = p.display().to_string();
    fails_with(
        &["--image", &ps, "--prompt", "hi"],
        &["notes.png", "not a readable image"],
    );
    let missing = dir.path().join("missing.jpg").display().to_string();
    fails_with(
        &["--image", &missing, "--prompt", "hi"],
        &["missing.jpg", "cannot read image"],
    );
}

#[test]
fn image_of_zero_by_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.gif");
    // A GIF whose logical screen is 0x0 and that holds no frame.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x3B]);
    std::fs::write(&p, &gif).unwrap();
    let ps = p.display().to_string();
    fails_with(&["--image", &ps, "--prompt", "hi"], &["empty.gif"]);
}

#[test]
fn prompt_longer_than_the_context() {
    let long = "red circle ".repeat(400);
    fails_with(
        &["--image", &img_a(), "--prompt", &long],
        &["exceeds the model's context of 1024 tokens"],
    );
}

#[test]
fn max_tokens_past_the_context_or_the_device() {
    let fixture = fixture().display().to_string();
    let args = |model: &str, n: &'static str| {
        let v = [
            "--model",
            model,
            "--image",
            &img_a(),
            "--prompt",
            "hi",
            "-n",
            n,
        ];
        v.map(String::from)
    };
    // usize::MAX once wrapped around the context check (into a KV-cache error)
    let a = args(&fixture, "18446744073709551615");
    fails_with(
        &a.each_ref().map(String::as_str),
        &[
            "--max-tokens 18446744073709551615",
            "exceeds the model's context",
        ],
    );
    // a config that claims 2 * 10^9 positions: RoPE's table was built for all of them at
    // load (a 128 GB allocation, an abort); now a request for 10^8 tokens is refused by
    // the device's limit
    let dir = copy_fixture();
    let cfg = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["text_config"]["max_position_embeddings"] = serde_json::json!(2_000_000_000u64);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let a = args(&dir.path().display().to_string(), "100000000");
    fails_with(
        &a.each_ref().map(String::as_str),
        &["kv.k0", "storage-binding limit"],
    );
}

#[test]
fn pruning_options_out_of_range() {
    let (m, a) = (fixture().display().to_string(), img_a());
    let dir = tempfile::tempdir().unwrap();
    let map = dir
        .path()
        .join("no/such/dir/keep.png")
        .display()
        .to_string();
    for (flags, needles) in [
        (
            &["--prune", "fastervlm", "--keep", "0"][..],
            &["--keep", "at least 1"][..],
        ),
        (
            &["--prune", "fastervlm", "--keep", "100000"],
            &["--keep 100000", "576"],
        ),
        (
            &["--prune", "posprune", "--keep", "64", "--arp-regions", "0"],
            &["--arp-regions"],
        ),
        (
            &["--prune", "posprune", "--keep", "64", "--mmr-lambda", "NaN"],
            &["--mmr-lambda"],
        ),
        (
            &["--prune", "pore", "--keep", "300", "--pore-rho", "-1"],
            &["--pore-rho"],
        ),
        (
            &[
                "--prune",
                "visionzip",
                "--keep",
                "64",
                "--visionzip-contextual",
                "65",
            ],
            &["--visionzip-contextual 65", "--keep 64"],
        ),
        (
            &[
                "--prune",
                "fastervlm",
                "--keep",
                "64",
                "--save-keep-map",
                &map,
            ],
            &["keep.png", "directory does not exist"],
        ),
    ] {
        let mut args = vec!["--model", &m, "--image", &a, "--prompt", "hi"];
        args.extend(flags);
        fails_with(&args, needles);
    }
}

#[test]
fn zero_max_tokens_and_bad_sampling_options() {
    fails_with(
        &["--image", &img_a(), "--prompt", "hi", "--max-tokens", "0"],
        &["--max-tokens"],
    );
    fails_with(
        &["--image", &img_a(), "--prompt", "hi", "--top-p", "0"],
        &["--top-p"],
    );
    fails_with(
        &["--image", &img_a(), "--prompt", "hi", "--temperature", "-1"],
        &["--temperature"],
    );
}

#[test]
fn closed_stdout_ends_the_run_without_a_panic() {
    // `vlm-run eval ... | head -1`: the reader goes away before the report is written.
    let runtime = tempfile::tempdir().unwrap();
    let m = fixture().display().to_string();
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqa-sample/questions.jsonl");
    let data = data.display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vlm-run"))
        .args([
            "eval", "--model", &m, "--data", &data, "--limit", "1", "--json",
        ])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn cli_json_gives_the_reference_tokens_and_nothing_else_on_stdout() {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let case = &r["cases"][2];
    let image = fixture()
        .join(case["image"].as_str().unwrap())
        .display()
        .to_string();
    let m = fixture().display().to_string();
    let prompt = case["prompt"].as_str().unwrap();
    // the prompt as an argument, and from standard input with `--prompt -` (its final
    // line breaks dropped: the same prompt tokens)
    let mut prompt_tokens = None;
    for from_stdin in [false, true] {
        use std::io::Write;
        let runtime = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vlm-run"))
            .args([
                "--model",
                &m,
                "--image",
                &image,
                "--max-tokens",
                "16",
                "--json",
            ])
            .args(["--prompt", if from_stdin { "-" } else { prompt }])
            .env("XDG_RUNTIME_DIR", runtime.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if from_stdin {
            write!(stdin, "{prompt}\r\n\n").unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            stdout.lines().count(),
            1,
            "stdout must be one JSON line: {stdout}"
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(
            v["tokens"], case["tokens"],
            "prompt from stdin: {from_stdin}"
        );
        assert_eq!(v["visual_tokens"], 576);
        let n = prompt_tokens.get_or_insert(v["prompt_tokens"].clone());
        assert_eq!(&v["prompt_tokens"], n, "prompt from stdin: {from_stdin}");
        for k in ["text", "prompt_tokens", "kv_cache_bytes"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in ["load", "encode", "prefill", "decode"] {
            assert!(
                v["timings_ms"][k].as_f64().unwrap() >= 0.0,
                "timings_ms.{k}"
            );
        }
    }
}

#[test]
fn gguf_files_that_are_truncated_or_mismatched() {
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava-gguf");
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(g.join("tiny-llava-q8_0.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let cut = cut.display().to_string();
    fails_with(
        &["--model", &cut, "--prompt", "hi"],
        &["cut.gguf", "past the end"],
    );
    let mmproj = g.join("mmproj-tiny-llava-f16.gguf").display().to_string();
    fails_with(
        &["--model", &mmproj, "--prompt", "hi"],
        &["mmproj-tiny-llava-f16.gguf", "architecture \"clip\""],
    );
    let llm = g.join("tiny-llava-q8_0.gguf").display().to_string();
    fails_with(
        &["--model", &llm, "--image", &img_a(), "--prompt", "hi"],
        &["no vision encoder", "--mmproj"],
    );
    fails_with(
        &["--model", &llm, "--prompt", "hi", "--template", "nonsense"],
        &["--template", "{prompt}"],
    );
    fails_with(
        &["bench", "--model", &llm, "--prune-sweep"],
        &["--prune-sweep", "no vision encoder"],
    );
    // (once a crop-size error about a vision tower the file does not have)
    fails_with(
        &["calibrate", "--model", &llm],
        &["calibration", "no vision encoder", "--mmproj"],
    );
}
