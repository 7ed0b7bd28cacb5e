//! Time one prefill attention shape alone:
//! `cargo run --release --example attn_probe -- M KV HEADS KV_HEADS HD CAUSAL [reps]` runs reps
//! (default 20) dispatches of attention for M query rows over KV keys (CAUSAL 1: the rows are
//! the last M of the KV positions) in one pass and prints the time per dispatch, best of 5.
//! The environment picks the kernel as for `vlm-run`: `VLM_RUN_ATTN_TILES=0|1`,
//! `VLM_RUN_FLASH_ATTN=0|1`; `TEX=1` copies K and V into textures where the kernel reads
//! them there.
//!
//! `DECODE=1` times a decode step's attention instead (M = 1: the query of the newest of KV
//! cached rows, causal or not alike): its kernels (`decode_split` and `decode_merge` on GPUs,
//! `decode_one` with `VLM_RUN_DECODE_ONE=1` where KV is at most 256, `attn_split` and
//! `attn_merge` with `VLM_RUN_DECODE_ATTN=0`) per step, and the K and V
//! bytes they read per second. With `TEX=1` on CPU devices, from a cache kept in textures,
//! as the engine keeps it there.
use vlm_run::gpu::{Gpu, GpuOptions, Step, Tensor};
use vlm_run::ops::attention::{self, prefill, DecodeKv, Heads, KvTextures, PrefillKv};

const USAGE: &str = "usage: attn_probe M KV HEADS KV_HEADS HD CAUSAL(0|1) [reps]";

fn main() -> anyhow::Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!(USAGE))?;
    let (shape, reps) = match a[..] {
        [m, kv, heads, kv_heads, hd, causal] => ([m, kv, heads, kv_heads, hd, causal], 20),
        [m, kv, heads, kv_heads, hd, causal, reps] if reps > 0 => {
            ([m, kv, heads, kv_heads, hd, causal], reps)
        }
        _ => anyhow::bail!(USAGE),
    };
    let [m, kv, heads, kv_heads, hd, causal] = shape;
    if m == 0 || m > kv || hd == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        anyhow::bail!("{USAGE}: 0 < M <= KV, HD > 0, HEADS a multiple of KV_HEADS");
    }
    let gpu = Gpu::new(&GpuOptions::from_env()?)?;
    let h = Heads {
        heads,
        kv_heads,
        hd,
    };
    let fill = |rows: usize, cols: usize, seed: usize| -> Vec<f32> {
        (0..rows * cols)
            .map(|i| (((i * 7919 + seed) % 1000) as f32 / 1000.0 - 0.5) * 2.0)
            .collect()
    };
    let q = Tensor::from_f32(&gpu, "q", m, heads * hd, &fill(m, heads * hd, 1))?;
    let k = Tensor::from_f32(&gpu, "k", kv, kv_heads * hd, &fill(kv, kv_heads * hd, 2))?;
    let v = Tensor::from_f32(&gpu, "v", kv, kv_heads * hd, &fill(kv, kv_heads * hd, 3))?;
    let out = Tensor::new(&gpu, "o", m, heads * hd)?;
    if std::env::var_os("DECODE").is_some() {
        if m != 1 {
            anyhow::bail!("{USAGE}: DECODE=1 takes M = 1");
        }
        let step = Step {
            kv_offset: kv as u32 - 1,
            kv_len: kv as u32,
            ..Default::default()
        };
        let step = gpu.uniform_init("step", bytemuck::bytes_of(&step));
        let partials = attention::decode_partials(&gpu, h, kv)?;
        // TEX=1: the cache in textures where the kernel reads it there (CPU devices' lane
        // kernels, as the engine keeps a decoder's cache), copied in before the timing
        let tex = match std::env::var_os("TEX") {
            Some(_) => KvTextures::new(&gpu, h, kv).filter(|_| h.decode_textures(&gpu)),
            None => None,
        };
        let cache = match &tex {
            Some(t) => {
                gpu.run(&[&t.copy(&gpu, &k, &v, kv, None)?])?;
                DecodeKv::Textures {
                    tex: t,
                    new_row: None,
                }
            }
            None => DecodeKv::Buffers { k: &k, v: &v },
        };
        let ks = attention::decode(&gpu, h, &q, cache, &partials, &step, &out)?;
        return time(&gpu, &ks, reps, 0.0, (2 * kv * kv_heads * hd * 4) as f64);
    }
    // TEX=1: K and V copied into textures first where the kernel reads them there (the
    // direct kernel on CPU devices, as the engine runs it)
    let tex = match std::env::var_os("TEX") {
        Some(_) => KvTextures::new(&gpu, h, kv),
        None => None,
    };
    let ks = prefill(
        &gpu,
        h,
        &q,
        &k,
        &v,
        kv,
        causal != 0,
        kv - m,
        &out,
        PrefillKv::copy(tex.as_ref()),
    )?;
    // the score and output products over the keys each row sees
    let seen: usize = (0..m)
        .map(|i| if causal != 0 { kv - m + i + 1 } else { kv })
        .sum();
    // (with TEX=1 the time includes the copy into the textures)
    time(&gpu, &ks, reps, 4.0 * (seen * hd * heads) as f64, 0.0)
}

/// Run `ks` `reps` times in one pass, best of 5, and print the time per run of them with
/// its FLOP rate, or (where `flop` is 0) the rate of `bytes` read per run; then, where
/// there are several, each one's time alone.
fn time(
    gpu: &Gpu,
    ks: &[vlm_run::gpu::Kernel],
    reps: usize,
    flop: f64,
    bytes: f64,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for _ in 0..reps {
        all.extend(ks.iter());
    }
    let per = gpu.best_run_secs(&all, 5)? / reps as f64;
    let names: Vec<String> = ks
        .iter()
        .map(|k| format!("{} {:?}", k.label, k.workgroups))
        .collect();
    let rate = if flop > 0.0 {
        format!("{:.2} GFLOP/s", flop / per / 1e9)
    } else {
        format!("{:.1} GB/s of K and V", bytes / per / 1e9)
    };
    println!("{}: {:.1} us per run, {rate}", names.join(" + "), per * 1e6);
    if ks.len() > 1 {
        // each kernel alone, `reps` of it in one pass
        for (k, name) in ks.iter().zip(&names) {
            let alone = vec![k; reps];
            let per = gpu.best_run_secs(&alone, 5)? / reps as f64;
            println!("  {name}: {:.1} us", per * 1e6);
        }
    }
    Ok(())
}
