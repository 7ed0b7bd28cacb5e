//! GGUF (v2 and v3) files, memory-mapped: typed metadata, tensor infos and aligned data.
//!
//! Files are untrusted. Every count, string length, dimension, offset and type is checked
//! with overflow-safe arithmetic before it is used, and every error names the file and what
//! is wrong with it.

pub mod model;
pub mod names;
pub mod quant;
pub mod tokenizer;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use quant::GgmlType;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"GGUF";
/// Limits that no real file comes near; they stop a corrupt count from asking for
/// terabytes before the end of the file is reached.
const MAX_DIMS: usize = 4;
const MAX_ARRAY: u64 = 1 << 28;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor's data lies. `dims` are in GGUF order: `dims[0]` is the row length.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// The shape in PyTorch order (outermost first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// Version, metadata and tensor infos of a parsed header.
type Parsed = (u32, HashMap<String, Value>, HashMap<String, TensorInfo>);

pub struct GgufFile {
    pub path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| anyhow!("{what}: length {n} is too large"))?;
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                anyhow!(
                    "{what} of {n} bytes at offset {} runs past the end of the file ({} bytes)",
                    self.at,
                    self.b.len()
                )
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| anyhow!("{what} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value> {
        let mut fixed = |n: u64| -> Result<[u8; 8]> {
            let mut a = [0u8; 8];
            a[..n as usize].copy_from_slice(self.take(n, what)?);
            Ok(a)
        };
        Ok(match ty {
            0 => Value::U64(fixed(1)?[0] as u64),
            1 => Value::I64(fixed(1)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(fixed(2)?[..2].try_into().unwrap()) as u64),
            3 => Value::I64(i16::from_le_bytes(fixed(2)?[..2].try_into().unwrap()) as i64),
            4 => Value::U64(u32::from_le_bytes(fixed(4)?[..4].try_into().unwrap()) as u64),
            5 => Value::I64(i32::from_le_bytes(fixed(4)?[..4].try_into().unwrap()) as i64),
            6 => Value::F64(f32::from_le_bytes(fixed(4)?[..4].try_into().unwrap()) as f64),
            7 => Value::Bool(fixed(1)?[0] != 0),
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth > 0 {
                    bail!("{what}: nested arrays are not supported");
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                if n > MAX_ARRAY {
                    bail!("{what}: array count {n} is implausibly large");
                }
                // Each element takes at least one byte: a count beyond the bytes left is corrupt.
                if n > (self.b.len() - self.at) as u64 {
                    bail!("{what}: array of {n} elements runs past the end of the file");
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(u64::from_le_bytes(fixed(8)?)),
            11 => Value::I64(i64::from_le_bytes(fixed(8)?)),
            12 => Value::F64(f64::from_le_bytes(fixed(8)?)),
            t => bail!("{what}: unknown metadata value type {t}"),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // Safety: the map is read-only; the file is not modified while we run.
        let map =
            unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
        let (version, metadata, tensors) =
            Self::parse(&map).with_context(|| format!("{}: invalid GGUF file", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
        })
    }

    fn parse(b: &[u8]) -> Result<Parsed> {
        let mut c = Cursor { b, at: 0 };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            bail!("bad magic {magic:02x?} (expected \"GGUF\")");
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (2 or 3)");
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // A tensor info or key-value pair takes at least 8 bytes.
        for (n, what) in [(n_tensors, "tensor count"), (n_kv, "metadata count")] {
            if n > (b.len() / 8) as u64 {
                bail!("{what} {n} is larger than the file could hold");
            }
        }
        let mut metadata = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &format!("metadata {key}"), 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|&a| a > 0 && a.is_power_of_two() && a <= 1 << 16)
                .ok_or_else(|| anyhow!("general.alignment {v:?} is not a power of two"))?,
            None => 32,
        } as usize;
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name {i}"))?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                bail!("tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} supported)");
            }
            let mut dims = Vec::new();
            for _ in 0..n_dims {
                let d = c.u64(&name)?;
                if d == 0 || d > 1 << 40 {
                    bail!("tensor {name}: dimension {d} is out of range");
                }
                dims.push(d as usize);
            }
            let ty = GgmlType::from_id(c.u32(&name)?).with_context(|| format!("tensor {name}"))?;
            let offset = c.u64(&name)?;
            infos.push((name, dims, ty, offset));
        }
        let data_start = c.at.next_multiple_of(alignment);
        let mut tensors = HashMap::new();
        for (name, dims, ty, offset) in infos {
            let elems = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| anyhow!("tensor {name}: element count overflows"))?;
            if !dims[0].is_multiple_of(ty.block_values()) {
                bail!(
                    "tensor {name}: row of {} values is not whole {} blocks of {}",
                    dims[0],
                    ty.name(),
                    ty.block_values()
                );
            }
            let size = (elems / ty.block_values())
                .checked_mul(ty.block_bytes())
                .ok_or_else(|| anyhow!("tensor {name}: byte size overflows"))?;
            if !(offset as usize).is_multiple_of(alignment) {
                bail!("tensor {name}: data offset {offset} is not aligned to {alignment}");
            }
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start));
            let end = start.and_then(|s| s.checked_add(size));
            let (start, end) = match (start, end) {
                (Some(s), Some(e)) if e <= b.len() => (s, e),
                _ => bail!(
                    "tensor {name}: data ({size} bytes at offset {offset}) lies past the end of \
                     the file ({} bytes)",
                    b.len()
                ),
            };
            if tensors.contains_key(&name) {
                bail!("tensor {name} appears twice");
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    dims,
                    ty,
                    start,
                    end,
                },
            );
        }
        Ok((version, metadata, tensors))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| {
            anyhow!(
                "{}: metadata {key} is missing or not an integer",
                self.path.display()
            )
        })
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.u64(key)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v < 1 << 32)
            .ok_or_else(|| {
                anyhow!(
                    "{}: metadata {key} = {v} is out of range",
                    self.path.display()
                )
            })
    }

    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.get(key).and_then(Value::as_f64).unwrap_or(default)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The raw bytes of a tensor.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.start..t.end]
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| (t.end - t.start) as u64)
            .sum()
    }

    /// A tensor dequantised to f32.
    pub fn f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        quant::dequantize(t.ty, self.data(t))
            .with_context(|| format!("{}: tensor {}", self.path.display(), t.name))
    }
}
