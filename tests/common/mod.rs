//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use vlm_run::gpu::{Gpu, GpuOptions};

/// Every (f16, subgroups) combination the adapter supports, each on its own device with
/// the device class's weight store, and the last once more with the other class's layout
/// (on a CPU device, where textures and uniform inputs are the default: weights in buffers
/// and the decode GEMV's x in a storage buffer, with no texture copy of the residual
/// stream; elsewhere the other way round).
pub fn variants() -> Vec<(String, Arc<Gpu>)> {
    let mut out = Vec::new();
    for f16 in [false, true] {
        for sg in [false, true] {
            let opts = GpuOptions {
                f16: Some(f16),
                subgroups: Some(sg),
                ..Default::default()
            };
            match Gpu::new(&opts) {
                Ok(g) => out.push((format!("f16={f16} subgroups={sg}"), g)),
                Err(e) => eprintln!("skipping variant f16={f16} subgroups={sg}: {e}"),
            }
        }
    }
    if let Some((name, last)) = out.last() {
        let textures = !last.caps.weight_textures;
        let opts = GpuOptions {
            f16: Some(last.caps.f16),
            subgroups: Some(last.caps.subgroups),
            weight_textures: Some(textures),
            uniform_x: Some(!last.caps.uniform_x),
            x_textures: Some(!last.caps.x_textures),
            ..Default::default()
        };
        let store = if textures {
            "textures, x in a uniform buffer"
        } else {
            "buffers, x in a storage buffer"
        };
        match Gpu::new(&opts) {
            Ok(g) => out.push((format!("{name} weights in {store}"), g)),
            Err(e) => eprintln!("skipping variant {name} weights in {store}: {e}"),
        }
    }
    assert!(
        !out.is_empty(),
        "no GPU adapter for the tests (install mesa-vulkan-drivers)"
    );
    out
}

/// A small deterministic generator (xorshift) for test data.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.next_u32() as f32 / 2147483648.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

pub fn to_f16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect()
}

pub fn from_f16_bits(v: &[u16]) -> Vec<f32> {
    v.iter()
        .map(|&b| half::f16::from_bits(b).to_f32())
        .collect()
}

/// The largest |a - b|; infinite where either side is NaN (f32::max would skip a NaN, and a
/// NaN output would pass every tolerance).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .fold(0.0, f32::max)
}

#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

/// A writable copy of the files of a fixture directory (a model to edit).
pub fn copy_dir(src: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}
