//! Safetensors checkpoints, single-file or sharded, memory-mapped. Model files are untrusted:
//! every header, offset and size is validated before any tensor is read, and every error
//! names the file and tensor.

use crate::gguf::quant::GgmlType;
use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    map: Mmap,
}

#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint directory, by name.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: HashMap<String, Entry>,
    /// Where names were listed: the index file, or the single file.
    listing: String,
}

impl Checkpoint {
    /// Open `model.safetensors.index.json` and its shards, or `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let (files, listed, listing): (Vec<String>, Option<HashMap<String, String>>, String) =
            if index.exists() {
                let text = std::fs::read_to_string(&index)
                    .with_context(|| format!("cannot read {}", index.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: invalid JSON", index.display()))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| anyhow!("{}: no weight_map", index.display()))?;
                let mut names = HashMap::new();
                let mut files: Vec<String> = Vec::new();
                for (name, file) in map {
                    let file = file
                        .as_str()
                        .ok_or_else(|| anyhow!("{}: bad entry for {name}", index.display()))?;
                    if file.contains('/') || file.contains('\\') || file.contains("..") {
                        bail!(
                            "{}: shard name {file:?} leaves the model directory",
                            index.display()
                        );
                    }
                    if !files.iter().any(|f| f == file) {
                        files.push(file.to_string());
                    }
                    names.insert(name.clone(), file.to_string());
                }
                files.sort();
                (files, Some(names), "model.safetensors.index.json".into())
            } else {
                let single = dir.join("model.safetensors");
                if !single.exists() {
                    bail!(
                        "{}: no model.safetensors or model.safetensors.index.json",
                        dir.display()
                    );
                }
                (
                    vec!["model.safetensors".into()],
                    None,
                    "model.safetensors".into(),
                )
            };

        let mut shards = Vec::new();
        let mut tensors = HashMap::new();
        for (si, file) in files.iter().enumerate() {
            let path = dir.join(file);
            let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // Safety: the map is read-only; the file is not modified while we run.
            let map = unsafe { Mmap::map(&f) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| anyhow!("{}: invalid safetensors file: {e}", path.display()))?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                if let Some(listed) = &listed {
                    if listed.get(&name).map(|f| f != file).unwrap_or(true) {
                        continue; // the index names another shard (or none) for this tensor
                    }
                }
                let data = view.data();
                let start = data.as_ptr() as usize - base;
                let end = start + data.len();
                let elems = view
                    .shape()
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d));
                let want = elems.and_then(|n| n.checked_mul(view.dtype().bitsize() / 8));
                if want != Some(data.len()) || end > map.len() {
                    bail!("{}: tensor {name} has inconsistent size", path.display());
                }
                tensors.insert(
                    name,
                    Entry {
                        shard: si,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        start,
                        end,
                    },
                );
            }
            shards.push(Shard { path, map });
        }
        if let Some(listed) = &listed {
            for (name, file) in listed {
                if !tensors.contains_key(name) {
                    bail!(
                        "{}: tensor {name} listed in the index is missing",
                        dir.join(file).display()
                    );
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            tensors,
            listing,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first of `names` present.
    pub fn resolve<'a>(&self, names: &'a [String]) -> Option<&'a str> {
        names
            .iter()
            .find(|n| self.tensors.contains_key(n.as_str()))
            .map(|s| s.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    fn entry<'a>(&'a self, names: &'a [String], shape: &[usize]) -> Result<(&'a str, &'a Entry)> {
        let name = self.resolve(names).ok_or_else(|| {
            anyhow!(
                "{}: tensor {} not found in {}",
                self.dir.display(),
                names[0],
                self.listing
            )
        })?;
        let e = &self.tensors[name];
        if e.shape != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, but config.json implies {:?}",
                self.shards[e.shard].path.display(),
                e.shape,
                shape
            );
        }
        Ok((name, e))
    }

    /// A tensor converted to f16 bits (from f32, f16 or bf16), checked against `shape`.
    /// Values beyond f16's range are an error rather than a silent infinity.
    pub fn f16(&self, names: &[String], shape: &[usize]) -> Result<Vec<u16>> {
        let (name, e) = self.entry(names, shape)?;
        if e.dtype == Dtype::F16 {
            let bytes = &self.shards[e.shard].map[e.start..e.end];
            return Ok(bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect());
        }
        f32_to_f16_checked(name, &self.f32(names, shape)?)
    }

    /// A tensor converted to f32, checked against `shape`.
    pub fn f32(&self, names: &[String], shape: &[usize]) -> Result<Vec<f32>> {
        let (name, e) = self.entry(names, shape)?;
        let bytes = &self.shards[e.shard].map[e.start..e.end];
        Ok(match e.dtype {
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            d => bail!("{name}: dtype {d:?} is not supported (f32, f16, bf16)"),
        })
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|e| (e.end - e.start) as u64)
            .sum()
    }
}

/// Where a model's tensors come from: a llava-hf checkpoint, or GGUF files. Loaders ask
/// for tensors by their HF name inside a component and the shape the config implies.
pub trait TensorSource {
    /// Whether the tensor exists.
    fn has(&self, c: Component, name: &str) -> bool;
    /// A tensor converted to f32.
    fn f32(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// A tensor converted to f16 bits; values beyond f16's range are an error.
    fn f16(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<u16>>;
    /// A weight matrix [rows, cols] as the bytes it is uploaded from: f16 values, or a
    /// ggml block type's rows as the file holds them.
    fn weight_data(
        &self,
        c: Component,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(GgmlType, Vec<u8>)> {
        let data = self.f16(c, name, &[rows, cols])?;
        Ok((GgmlType::F16, bytemuck::cast_slice(&data).to_vec()))
    }
    /// Whether the source makes its weights on the GPU instead of reading them (a synthetic
    /// model). Stacked weights then come from [`TensorSource::weight`] at their full size.
    fn generates(&self) -> bool {
        false
    }
    /// A weight matrix [rows, cols] on the GPU: f16, or quantized blocks.
    fn weight(
        &self,
        gpu: &crate::gpu::Gpu,
        c: Component,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<crate::gpu::Weight> {
        let (ty, data) = self.weight_data(c, name, rows, cols)?;
        crate::gpu::Weight::upload_data(gpu, name, ty, rows, cols, &data)
    }
}

/// f32 values to f16 bits, refusing values beyond f16's range.
pub fn f32_to_f16_checked(name: &str, values: &[f32]) -> Result<Vec<u16>> {
    if let Some(v) = values
        .iter()
        .find(|v| v.is_finite() && v.abs() > f16::MAX.to_f32())
    {
        bail!("tensor {name} holds {v}, beyond the f16 range the engine stores weights in");
    }
    Ok(values.iter().map(|&v| f16::from_f32(v).to_bits()).collect())
}

impl TensorSource for Checkpoint {
    fn has(&self, c: Component, name: &str) -> bool {
        self.resolve(&names(c, name)).is_some()
    }
    fn f32(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Checkpoint::f32(self, &names(c, name), shape)
    }
    fn f16(&self, c: Component, name: &str, shape: &[usize]) -> Result<Vec<u16>> {
        Checkpoint::f16(self, &names(c, name), shape)
    }
}

/// Candidate names of a tensor under the two hub layouts (legacy llava-hf and newer
/// transformers), for a name inside a component.
pub fn names(component: Component, suffix: &str) -> Vec<String> {
    let prefixes: &[&str] = match component {
        Component::Vision => &[
            "vision_tower.vision_model.",
            "model.vision_tower.vision_model.",
            "model.vision_tower.",
        ],
        Component::Projector => &["multi_modal_projector.", "model.multi_modal_projector."],
        Component::Language => &["language_model.model.", "model.language_model."],
        Component::LmHead => &["language_model.lm_head.", "lm_head."],
    };
    prefixes.iter().map(|p| format!("{p}{suffix}")).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Vision,
    Projector,
    Language,
    LmHead,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_beyond_f16_are_an_error_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let ok: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let big: Vec<u8> = [1.0f32, 1e6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            (
                "ok".to_string(),
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &ok).unwrap(),
            ),
            (
                "big".to_string(),
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &big).unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        let f = ck.f16(&["ok".to_string()], &[2]).unwrap();
        assert_eq!(
            f,
            vec![f16::from_f32(1.5).to_bits(), f16::from_f32(-2.0).to_bits()]
        );
        let e = ck.f16(&["big".to_string()], &[2]).unwrap_err().to_string();
        assert!(e.contains("big") && e.contains("f16 range"), "{e}");
        let e = ck.f16(&["ok".to_string()], &[3]).unwrap_err().to_string();
        assert!(e.contains("[2]") && e.contains("[3]"), "{e}");
    }
}
