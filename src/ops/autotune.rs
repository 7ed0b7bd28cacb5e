//! The GEMM autotuner (`VLM_RUN_GEMM_TILE=tune`): at load, time every GEMM kernel
//! ([`GemmTile`]) on the model's own first-layer matrices at a prefill-sized row count, keep
//! the fastest, and cache the choice per device, driver and shapes, so later loads skip the
//! measurement.

use super::matmul::{linear, Act};
use crate::gpu::tile::TileCache;
use crate::gpu::{GemmTile, Gpu, Tensor, Weight};
use anyhow::Result;
use std::time::Instant;

/// One set of matrices that see `rows` input rows in a prefill.
pub struct Shapes<'a> {
    pub weights: Vec<&'a Weight>,
    pub rows: usize,
}

/// What the autotuner decided.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub choice: GemmTile,
    /// Milliseconds per pass over every shape, per kernel; empty when the cache answered.
    pub timings_ms: Vec<(GemmTile, f64)>,
    /// Where the choice is cached (None: no cache directory could be found).
    pub cache: Option<std::path::PathBuf>,
}

/// The cache key: the device, its driver and every shape timed.
fn key(gpu: &Gpu, sets: &[Shapes]) -> String {
    let mut k = format!(
        "{} / {:?} / {} {}",
        gpu.info.name, gpu.info.backend, gpu.info.driver, gpu.info.driver_info
    );
    for s in sets {
        k += &format!(" | m={}", s.rows);
        for w in &s.weights {
            k += &format!(" {}x{}:{}", w.rows, w.cols, w.ty.name());
        }
    }
    k
}

/// Choose the GEMM kernel for `sets` (from the cache, else by timing each kernel `reps`
/// times after a warm-up run) and set it on `gpu`.
pub fn tune(gpu: &Gpu, sets: &[Shapes], reps: usize) -> Result<Tuning> {
    let cache = TileCache::locate();
    let key = key(gpu, sets);
    if let Some(c) = &cache {
        if let Some(t) = c.get(&key)? {
            gpu.set_gemm_tile(t);
            return Ok(Tuning {
                choice: t,
                timings_ms: Vec::new(),
                cache: Some(c.path.clone()),
            });
        }
    }
    let mut timings = Vec::new();
    for tile in GemmTile::ALL {
        gpu.set_gemm_tile(tile);
        let mut kernels = Vec::new();
        let mut buffers = Vec::new();
        for s in sets {
            let cols = s.weights.iter().map(|w| w.cols).max().unwrap_or(0);
            let outs = s.weights.iter().map(|w| w.rows).max().unwrap_or(0);
            if s.rows < 2 || cols == 0 {
                continue;
            }
            let x = Tensor::new(gpu, "tune.x", s.rows, cols.next_multiple_of(4))?;
            let y = Tensor::new(gpu, "tune.y", s.rows, outs)?;
            for w in &s.weights {
                kernels.extend(linear(gpu, &x, w, None, &y, Act::None, false)?);
            }
            buffers.push((x, y));
        }
        let refs: Vec<_> = kernels.iter().collect();
        gpu.run(&refs)?; // pipelines compiled, caches warm
        let mut times = Vec::new();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            gpu.run(&refs)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        timings.push((tile, times[times.len() / 2]));
    }
    let choice = timings
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(GemmTile::T64, |t| t.0);
    gpu.set_gemm_tile(choice);
    if let Some(c) = &cache {
        c.put(&key, choice)?;
    }
    Ok(Tuning {
        choice,
        timings_ms: timings,
        cache: cache.map(|c| c.path),
    })
}
