//! The GEMM kernel of prefill and the encoder (m > 1 rows): a workgroup-memory tile of
//! `matmul.wgsl` / `matmul_quant.wgsl` in one of two sizes (value define `TN`), or
//! `gemv.wgsl`'s lane groups over blocks of rows (`gemm_lanes`), which suits CPU devices.
//! It comes from a small table per device class, from `VLM_RUN_GEMM_TILE`, or from the
//! autotuner (`ops::autotune`), whose choice is cached on disk per device and model shape.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The GEMM kernel. In the tiles every invocation computes 4×4 outputs, so a workgroup
/// has (side/4)² invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmTile {
    /// 64×64 outputs, 16×16 invocations: the most reuse per load.
    T64,
    /// 32×32 outputs, 8×8 invocations: four times the workgroups, less padding waste on
    /// short prompts and narrow matrices.
    T32,
    /// No workgroup-memory tile: lane groups of 8 stride over K with vec4 loads, each
    /// computing 4 weight rows for 8 input rows (`gemv.wgsl`'s `gemm_lanes`; f16 rows of
    /// k <= 64 take `gemm_tokens`, an invocation per input row). For the formats the GEMV
    /// reads; other weights use the 64 tile.
    Lanes,
}

impl GemmTile {
    pub const ALL: [GemmTile; 3] = [GemmTile::T64, GemmTile::T32, GemmTile::Lanes];

    /// Output tile side of the workgroup-memory GEMM (the 64 tile for `Lanes`' fallback).
    pub fn side(self) -> u32 {
        match self {
            GemmTile::T64 | GemmTile::Lanes => 64,
            GemmTile::T32 => 32,
        }
    }

    /// Invocations per workgroup side: the shaders' `TN`.
    pub fn threads(self) -> u32 {
        self.side() / 4
    }

    pub fn name(self) -> &'static str {
        match self {
            GemmTile::T64 => "64",
            GemmTile::T32 => "32",
            GemmTile::Lanes => "lanes",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        GemmTile::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table: the kernel each device class starts with. CPU drivers (lavapipe) run
    /// workgroup memory and barriers slowly, and the lane kernel measured fastest there;
    /// GPUs take the 64×64 tile (`VLM_RUN_GEMM_TILE=tune` measures instead).
    pub fn for_device(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => GemmTile::Lanes,
            _ => GemmTile::T64,
        }
    }
}

/// The table's attention row: whether prefill attention stages K/V tiles through workgroup
/// memory. GPUs share them across the workgroup's query rows; on CPU drivers the barriers
/// cost more than they save, and reading K/V rows straight from the buffer (every lane reads
/// the same row) measured 1.7× faster on lavapipe.
pub fn attention_tiles_for(device_type: wgpu::DeviceType) -> bool {
    device_type != wgpu::DeviceType::Cpu
}

/// How the tile is chosen when the device opens (env `VLM_RUN_GEMM_TILE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TileChoice {
    /// The device class's row of the table.
    #[default]
    Table,
    /// This kernel (`64`, `32` or `lanes`).
    Fixed(GemmTile),
    /// Time every tile on the model's own matrices at load, keep the fastest, and cache the
    /// choice (`tune`).
    Tune,
}

impl TileChoice {
    pub fn parse(v: &str) -> Result<Self> {
        match v {
            "" | "auto" | "table" => Ok(TileChoice::Table),
            "tune" => Ok(TileChoice::Tune),
            _ => GemmTile::from_name(v)
                .map(TileChoice::Fixed)
                .ok_or_else(|| {
                    anyhow!("VLM_RUN_GEMM_TILE={v:?}: expected 64, 32, lanes, tune or auto")
                }),
        }
    }
}

/// The autotuner's choices on disk: `gemm-tiles.json` in `VLM_RUN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vlm-run`, else `~/.cache/vlm-run`. A JSON object from a key (device,
/// driver and shapes) to the kernel's name.
pub struct TileCache {
    pub path: PathBuf,
}

impl TileCache {
    pub fn locate() -> Option<Self> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = env("VLM_RUN_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("vlm-run")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("vlm-run")))?;
        Some(Self {
            path: dir.join("gemm-tiles.json"),
        })
    }

    fn read(&self) -> Result<BTreeMap<String, String>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "tile cache {} is not valid (delete it to retune)",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path.display())),
        }
    }

    /// The cached tile for `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<GemmTile>> {
        match self.read()?.get(key) {
            None => Ok(None),
            Some(name) => match GemmTile::from_name(name) {
                Some(t) => Ok(Some(t)),
                None => bail!(
                    "tile cache {}: {name:?} is not a GEMM kernel (delete the file to retune)",
                    self.path.display()
                ),
            },
        }
    }

    /// Record `tile` for `key`, keeping the other entries (written whole, then renamed).
    pub fn put(&self, key: &str, tile: GemmTile) -> Result<()> {
        let mut all = self.read()?;
        all.insert(key.to_string(), tile.name().to_string());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&all)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_bad_ones_name_the_variable() {
        assert_eq!(TileChoice::parse("").unwrap(), TileChoice::Table);
        assert_eq!(TileChoice::parse("tune").unwrap(), TileChoice::Tune);
        assert_eq!(
            TileChoice::parse("32").unwrap(),
            TileChoice::Fixed(GemmTile::T32)
        );
        let e = TileChoice::parse("48").unwrap_err().to_string();
        assert!(e.contains("VLM_RUN_GEMM_TILE") && e.contains("48"), "{e}");
        assert_eq!(
            TileChoice::parse("lanes").unwrap(),
            TileChoice::Fixed(GemmTile::Lanes)
        );
        assert_eq!(GemmTile::T64.threads(), 16);
        assert_eq!(GemmTile::T32.threads(), 8);
    }

    #[test]
    fn the_cache_keeps_entries_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TileCache {
            path: dir.path().join("sub/gemm-tiles.json"),
        };
        assert_eq!(cache.get("a").unwrap(), None);
        cache.put("a", GemmTile::T32).unwrap();
        cache.put("b", GemmTile::T64).unwrap();
        assert_eq!(cache.get("a").unwrap(), Some(GemmTile::T32));
        assert_eq!(cache.get("b").unwrap(), Some(GemmTile::T64));
        std::fs::write(&cache.path, "{\"a\": \"48\"}").unwrap();
        assert!(cache.get("a").unwrap_err().to_string().contains("48"));
        std::fs::write(&cache.path, "not json").unwrap();
        let e = format!("{:#}", cache.get("a").unwrap_err());
        assert!(e.contains("gemm-tiles.json"), "{e}");
    }
}
