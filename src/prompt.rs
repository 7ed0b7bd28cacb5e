//! The tokenizer (tokenizer.json through the `tokenizers` crate) and the LLaVA prompt
//! template, with streaming detokenisation.

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::Tokenizer;

/// llava-hf's documented prompt.
pub const LLAVA_TEMPLATE: &str = "USER: <image>\n{prompt} ASSISTANT:";
/// Original LLaVA's conv_llava_v1 system sentence (`--system`).
pub const LLAVA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence \
assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. ";
pub const IMAGE_TAG: &str = "<image>";
/// ChatML (SmolLM2, Qwen and others), one user turn; `--system` text goes in a system turn.
pub const CHATML_TEMPLATE: &str =
    "<|im_start|>user\n<image>\n{prompt}<|im_end|>\n<|im_start|>assistant\n";

/// A model's chat format: its template and the system sentence it starts with by default.
#[derive(Clone, Debug, PartialEq)]
pub struct Chat {
    pub template: String,
    pub system: Option<String>,
}

impl Chat {
    pub fn llava() -> Self {
        Self {
            template: LLAVA_TEMPLATE.to_string(),
            system: None,
        }
    }
    pub fn is_chatml(&self) -> bool {
        self.template.starts_with("<|im_start|>")
    }
}

/// A template named on the command line (`llava`, `chatml`) or given as text with
/// `{prompt}` in it.
pub fn named_template(name: &str) -> Result<String> {
    Ok(match name {
        "llava" | "vicuna" => LLAVA_TEMPLATE.to_string(),
        "chatml" => CHATML_TEMPLATE.to_string(),
        t if t.contains("{prompt}") => t.to_string(),
        t => anyhow::bail!(
            "--template {t:?}: expected llava, chatml, or a template text containing {{prompt}}"
        ),
    })
}

pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        anyhow::bail!("{}: missing", path.display());
    }
    Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}

/// The prompt text: the template with `{prompt}` filled in, the system sentence first if
/// there is one (as a system turn in ChatML), and without the image tag when there is no
/// image.
pub fn render(template: &str, prompt: &str, system: Option<&str>, with_image: bool) -> String {
    let mut t = template.replace("{prompt}", prompt);
    if !with_image {
        t = t.replace("<image>\n", "").replace(IMAGE_TAG, "");
    }
    match system {
        Some(s) if template.starts_with("<|im_start|>") => {
            format!("<|im_start|>system\n{s}<|im_end|>\n{t}")
        }
        Some(s) => format!("{s}{t}"),
        None => t,
    }
}

/// Token ids of `text`, with the tokenizer's special tokens (BOS) added.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, true)
        .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

/// Token ids of text that continues a prompt: no BOS, no leading-space marker.
pub fn encode_continuation(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, false)
        .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

/// Turns a growing list of token ids into text pieces, holding back incomplete UTF-8.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: String,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            emitted: String::new(),
        }
    }

    /// Add a token; return the new text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self
            .tok
            .decode(&self.ids, true)
            .map_err(|e| anyhow!("cannot decode: {e}"))?;
        if text.ends_with('\u{FFFD}') || !text.starts_with(&self.emitted) {
            return Ok(String::new());
        }
        let piece = text[self.emitted.len()..].to_string();
        self.emitted = text;
        Ok(piece)
    }

    /// The whole text of the tokens so far.
    pub fn text(&self) -> Result<String> {
        self.tok
            .decode(&self.ids, true)
            .map_err(|e| anyhow!("cannot decode: {e}"))
    }
}

/// End-of-sequence ids: generation_config.json, else config.json's text_config, else `</s>`.
pub fn eos_ids(
    dir: &Path,
    config_eos: Option<&serde_json::Value>,
    tok: &Tokenizer,
) -> Result<Vec<u32>> {
    fn ids(v: &serde_json::Value) -> Vec<u32> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            _ => vec![],
        }
    }
    let gen = dir.join("generation_config.json");
    if gen.exists() {
        let text = std::fs::read_to_string(&gen)
            .with_context(|| format!("cannot read {}", gen.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", gen.display()))?;
        if let Some(e) = v.get("eos_token_id") {
            let e = ids(e);
            if !e.is_empty() {
                return Ok(e);
            }
        }
    }
    if let Some(e) = config_eos {
        let e = ids(e);
        if !e.is_empty() {
            return Ok(e);
        }
    }
    Ok(tok.token_to_id("</s>").into_iter().collect())
}
