//! A `tokenizers` Tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata:
//! byte-level BPE ("gpt2": tokens and merges) or SentencePiece BPE ("llama": tokens and
//! scores, merges derived from the scores as transformers' converter does). Control and
//! user-defined tokens become special added tokens; BOS is prepended when the file asks.
//! The tokenizer is assembled as tokenizer.json text, the format the crate reads.

use super::{GgufFile, Value};
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map};
use std::collections::HashMap;
use tokenizers::Tokenizer;

/// GGUF token types.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// The byte-level pre-tokenisation rule llama.cpp uses for `tokenizer.ggml.pre`.
fn gpt2_pre_tokenizer(pre: &str) -> serde_json::Value {
    let byte_level = |regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": regex})
    };
    match pre {
        // Digits one by one, then GPT-2's rule.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]
        }),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex":
                    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                 "behavior": "Isolated", "invert": false},
                byte_level(false)
            ]
        }),
        "gpt2" | "default" | "" => byte_level(true),
        other => {
            eprintln!(
                "warning: tokenizer.ggml.pre {other:?} is not known; using GPT-2's pre-tokenizer"
            );
            byte_level(true)
        }
    }
}

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    let a = f
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{}: metadata {key} is missing", f.path.display()))?;
    a.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}: {key} holds a non-string", f.path.display()))
        })
        .collect()
}

fn numbers(f: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<f64>>> {
    let Some(v) = f.get(key) else { return Ok(None) };
    let a = v
        .as_array()
        .ok_or_else(|| anyhow!("{}: {key} is not an array", f.path.display()))?;
    if a.len() != n {
        bail!(
            "{}: {key} has {} entries for {n} tokens",
            f.path.display(),
            a.len()
        );
    }
    a.iter()
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| anyhow!("{}: {key} holds a non-number", f.path.display()))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// SentencePiece-BPE merges: every split of a token into two tokens, ranked by the merged
/// token's score (higher first), then by its id.
fn merges_from_scores(
    tokens: &[String],
    scores: &[f64],
    ids: &HashMap<&str, u32>,
) -> Vec<[String; 2]> {
    let mut merges: Vec<(f64, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (cut, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(cut);
            if ids.contains_key(a) && ids.contains_key(b) {
                merges.push((scores[id], id as u32, a.to_string(), b.to_string()));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    merges.into_iter().map(|(_, _, a, b)| [a, b]).collect()
}

/// The tokenizer described by `f`'s metadata.
pub fn build(f: &GgufFile) -> Result<Tokenizer> {
    let path = f.path.display();
    let model = f
        .str("tokenizer.ggml.model")
        .ok_or_else(|| anyhow!("{path}: no tokenizer (tokenizer.ggml.model is missing)"))?;
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types = numbers(f, "tokenizer.ggml.token_type", n)?;
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        if !ids.contains_key(t.as_str()) {
            ids.insert(t, i as u32);
            vocab.insert(t.clone(), json!(i));
        }
    }
    let token_id = |key: &str| -> Result<Option<u32>> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                _ => bail!("{path}: {key} {v:?} is not a token id below {n}"),
            },
        }
    };
    let bos = token_id("tokenizer.ggml.bos_token_id")?;
    let unk = token_id("tokenizer.ggml.unknown_token_id")?;
    let (bpe, normalizer, pre_tokenizer, decoder, add_bos_default) = match model {
        "gpt2" => {
            let merges = strings(f, "tokenizer.ggml.merges")?;
            let merges: Vec<[String; 2]> = merges
                .iter()
                .map(|m| {
                    m.split_once(' ')
                        .map(|(a, b)| [a.to_string(), b.to_string()])
                        .ok_or_else(|| anyhow!("{path}: merge {m:?} is not two tokens"))
                })
                .collect::<Result<_>>()?;
            let pre = f.str("tokenizer.ggml.pre").unwrap_or("default");
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": pre == "llama-bpe", "vocab": vocab,
                "merges": merges});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true,
                "trim_offsets": true, "use_regex": true});
            (bpe, json!(null), gpt2_pre_tokenizer(pre), decoder, false)
        }
        "llama" => {
            let scores = numbers(f, "tokenizer.ggml.scores", n)?
                .ok_or_else(|| anyhow!("{path}: tokenizer.ggml.scores is missing"))?;
            let merges = merges_from_scores(&tokens, &scores, &ids);
            let unk_token = unk.map(|u| tokens[u as usize].clone());
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": unk_token,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
            let prefix = f
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let pre = json!({"type": "Metaspace", "replacement": "▁",
                "prepend_scheme": if prefix { "first" } else { "never" }, "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": usize::from(prefix), "stop": 0}]});
            (bpe, json!(null), pre, decoder, true)
        }
        other => bail!("{path}: tokenizer model {other:?} is not supported (gpt2, llama)"),
    };
    let mut added = Vec::new();
    if let Some(types) = &types {
        for (i, &t) in types.iter().enumerate() {
            let t = t as u64;
            if t == CONTROL || t == USER_DEFINED {
                added.push(json!({"id": i, "content": tokens[i], "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false,
                    "special": t == CONTROL || tokens[i].starts_with('<')}));
            }
        }
    }
    let add_bos = f
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(add_bos_default);
    let post = match (add_bos, bos) {
        (true, Some(b)) => {
            let bt = &tokens[b as usize];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bt, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bt, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bt.as_str(): {"id": bt, "ids": [b], "tokens": [bt]}}})
        }
        _ => json!(null),
    };
    let doc = json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": post, "decoder": decoder, "model": bpe});
    let text = serde_json::to_string(&doc)?;
    text.parse::<Tokenizer>()
        .map_err(|e| anyhow!("{path}: cannot build the tokenizer from its metadata: {e}"))
}
