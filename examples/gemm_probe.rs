//! Time one prefill GEMM shape alone: `cargo run --release --example gemm_probe -- M K N [reps]`
//! runs reps (default 50) dispatches of y = x W^T (f16 W, random) in one pass and prints the
//! time per dispatch, best of 10.
use vlm_run::gpu::{Gpu, GpuOptions, Tensor, Weight};
use vlm_run::ops::matmul::{fused, linear, Act, Epilogue};

fn main() -> anyhow::Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("usage: gemm_probe M K N [reps]"))?;
    match a[..] {
        [m, k, n] => probe(m, k, n, 50),
        [m, k, n, reps] if reps > 0 => probe(m, k, n, reps),
        _ => anyhow::bail!("usage: gemm_probe M K N [reps]"),
    }
}

fn probe(m: usize, k: usize, n: usize, reps: usize) -> anyhow::Result<()> {
    let gpu = Gpu::new(&GpuOptions::from_env()?)?;
    let data: Vec<u16> = (0..n * k)
        .map(|i| half::f16::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_bits())
        .collect();
    let w = Weight::upload(&gpu, "w", n, k, &data)?;
    // STORAGE_X=1: x in a plain storage buffer (never a uniform one)
    let x = if std::env::var_os("STORAGE_X").is_some() {
        Tensor::new(&gpu, "x", m, k)?
    } else {
        Tensor::activation(&gpu, "x", m, k)?
    };
    // XTEX=1: x also as a texture copy, which the lane kernels read on CPU devices
    let x = match std::env::var_os("XTEX") {
        Some(_) => x.with_texels(&gpu, "x.texels"),
        None => x,
    };
    let y = Tensor::new(&gpu, "y", m, n)?;
    // NORM=1: RMSNorm on load, as a Llama decoder's prefill runs q|k|v and [gate; up];
    // GATE_UP=1: also w is [gate; up] (n rows) with SwiGLU (y then holds n / 2 columns)
    let g = gpu.storage_init("g", bytemuck::cast_slice(&vec![1.0f32; k]))?;
    let gate_up = std::env::var_os("GATE_UP").is_some();
    let ks = if gate_up || std::env::var_os("NORM").is_some() {
        let e = Epilogue {
            gate_up,
            norm: Some((&g, 1e-5)),
            ..Default::default()
        };
        fused(&gpu, &x, &w, &y, e)?.ok_or_else(|| anyhow::anyhow!("no fused kernel"))?
    } else {
        linear(&gpu, &x, &w, None, &y, Act::None, false)?
    };
    let one: Vec<_> = ks.iter().collect();
    let mut all = Vec::new();
    for _ in 0..reps {
        all.extend(one.iter().copied());
    }
    let best = gpu.best_run_secs(&all, 10)?;
    let per = best / reps as f64;
    let flop = 2.0 * (m * k * n) as f64;
    println!(
        "{} {:?}: {:.1} us per dispatch, {:.2} GFLOP/s",
        ks[0].label,
        ks[0].workgroups,
        per * 1e6,
        flop / per / 1e9
    );
    Ok(())
}
