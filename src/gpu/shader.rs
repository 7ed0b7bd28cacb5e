//! WGSL sources and a tiny preprocessor for kernel variants.
//!
//! Directives, each on its own line: `#include "name"`, `#ifdef NAME`, `#ifndef NAME`,
//! `#else`, `#endif`. Defines with a value (`WG_SIZE=64`) are substituted as whole words
//! in the code; flags (`F16`) only steer the conditionals.

use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// Every shader file, embedded at build time: (family name, source).
pub const SOURCES: &[(&str, &str)] = &[
    ("common", include_str!("../../shaders/common.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("lanes", include_str!("../../shaders/lanes.wgsl")),
    (
        "activations",
        include_str!("../../shaders/activations.wgsl"),
    ),
    (
        "linear_store",
        include_str!("../../shaders/linear_store.wgsl"),
    ),
    ("q3_k", include_str!("../../shaders/q3_k.wgsl")),
    ("iq4_nl", include_str!("../../shaders/iq4_nl.wgsl")),
    ("q4_k", include_str!("../../shaders/q4_k.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    (
        "matmul_quant",
        include_str!("../../shaders/matmul_quant.wgsl"),
    ),
    ("gemv", include_str!("../../shaders/gemv.wgsl")),
    ("layer_tail", include_str!("../../shaders/layer_tail.wgsl")),
    (
        "rope_kv_store",
        include_str!("../../shaders/rope_kv_store.wgsl"),
    ),
    ("kv_texels", include_str!("../../shaders/kv_texels.wgsl")),
    (
        "weight_texture",
        include_str!("../../shaders/weight_texture.wgsl"),
    ),
    ("bandwidth", include_str!("../../shaders/bandwidth.wgsl")),
    (
        "random_fill",
        include_str!("../../shaders/random_fill.wgsl"),
    ),
    ("norm", include_str!("../../shaders/norm.wgsl")),
    (
        "elementwise",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    (
        "attention_params",
        include_str!("../../shaders/attention_params.wgsl"),
    ),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    (
        "flash_attention",
        include_str!("../../shaders/flash_attention.wgsl"),
    ),
    (
        "decode_attention",
        include_str!("../../shaders/decode_attention.wgsl"),
    ),
    ("kv_texture", include_str!("../../shaders/kv_texture.wgsl")),
    ("embed", include_str!("../../shaders/embed.wgsl")),
    ("sample", include_str!("../../shaders/sample.wgsl")),
    (
        "prune_score",
        include_str!("../../shaders/prune_score.wgsl"),
    ),
    (
        "prune_select",
        include_str!("../../shaders/prune_select.wgsl"),
    ),
    (
        "prune_gather",
        include_str!("../../shaders/prune_gather.wgsl"),
    ),
];

/// Files that hold kernels (the rest are included by them).
pub const KERNEL_FAMILIES: &[&str] = &[
    "matmul",
    "matmul_quant",
    "gemv",
    "layer_tail",
    "bandwidth",
    "random_fill",
    "norm",
    "elementwise",
    "rope",
    "attention",
    "flash_attention",
    "decode_attention",
    "kv_texture",
    "embed",
    "sample",
    "prune_score",
    "prune_select",
    "prune_gather",
];

/// A set of preprocessor defines. Ordered, so that it gives a stable cache key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Defines(BTreeMap<String, Option<String>>);

impl Defines {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn flag(&mut self, name: &str) -> &mut Self {
        self.0.insert(name.to_string(), None);
        self
    }
    pub fn set(&mut self, name: &str, value: impl ToString) -> &mut Self {
        self.0.insert(name.to_string(), Some(value.to_string()));
        self
    }
    pub fn with_flag(mut self, name: &str) -> Self {
        self.flag(name);
        self
    }
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.set(name, value);
        self
    }
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.0.remove(name);
        self
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    pub fn key(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect();
        parts.join(",")
    }
}

fn source(name: &str) -> Result<&'static str> {
    match SOURCES.iter().find(|(n, _)| *n == name) {
        Some((_, s)) => Ok(s),
        None => bail!("unknown shader file {name:?}"),
    }
}

/// The WGSL text of `family` with `defines` applied.
pub fn preprocess(family: &str, defines: &Defines) -> Result<String> {
    let mut out = String::new();
    let mut included = Vec::new();
    expand(family, defines, &mut out, &mut included)?;
    Ok(substitute(&out, defines))
}

fn expand(
    name: &str,
    defines: &Defines,
    out: &mut String,
    included: &mut Vec<String>,
) -> Result<()> {
    if included.iter().any(|n| n == name) {
        return Ok(()); // each file at most once
    }
    included.push(name.to_string());
    // Stack of (this branch active, some branch of this #if already taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
    for (lineno, line) in source(name)?.lines().enumerate() {
        let t = line.trim();
        let word = |prefix: &str| t[prefix.len()..].trim().to_string();
        if t.starts_with("#ifdef ") {
            let on = defines.has(&word("#ifdef "));
            stack.push((on, on));
        } else if t.starts_with("#ifndef ") {
            let on = !defines.has(&word("#ifndef "));
            stack.push((on, on));
        } else if t == "#else" {
            match stack.last_mut() {
                Some(top) => *top = (!top.1, true),
                None => bail!("{name}.wgsl:{}: #else without #ifdef", lineno + 1),
            }
        } else if t == "#endif" {
            if stack.pop().is_none() {
                bail!("{name}.wgsl:{}: #endif without #ifdef", lineno + 1);
            }
        } else if t.starts_with("#include ") {
            if active(&stack) {
                let inc = word("#include ").trim_matches('"').to_string();
                expand(&inc, defines, out, included)?;
            }
        } else if t.starts_with('#') {
            bail!("{name}.wgsl:{}: unknown directive {t:?}", lineno + 1);
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        bail!("{name}.wgsl: unterminated #ifdef");
    }
    Ok(())
}

fn substitute(text: &str, defines: &Defines) -> String {
    let values: Vec<(&String, &String)> = defines
        .0
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
        .collect();
    if values.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match values.iter().find(|(k, _)| *k == word) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditionals_and_substitution() {
        let d = Defines::new().with_flag("A").with("N", 8);
        assert_eq!(d.key(), "A,N=8");
        let out = substitute("let x = N + NN + N;", &d);
        assert_eq!(out, "let x = 8 + NN + 8;");
    }

    #[test]
    fn every_family_preprocesses_in_every_variant() {
        for fam in KERNEL_FAMILIES {
            for f16 in [false, true] {
                for sg in [false, true] {
                    let mut d = Defines::new();
                    if f16 {
                        d.flag("F16");
                    }
                    if sg {
                        d.flag("SUBGROUPS");
                    }
                    let s = preprocess(fam, &d).unwrap();
                    assert!(!s.contains("#ifdef") && !s.contains("#include"), "{fam}");
                }
            }
        }
    }
}
