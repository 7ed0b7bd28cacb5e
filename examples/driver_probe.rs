//! Two figures of this device that bound small kernels: what one dispatch costs apart from its
//! work, and the peak rate of f32 multiply-adds through WGSL. Run:
//! `cargo run --release --example driver_probe`.
//!
//! - Dispatch cost: 1 or 100 dispatches of a kernel that does almost nothing, with 1 to 64
//!   workgroups each, in one pass and one submit; time per dispatch, best of 20.
//! - Peak rate: every invocation runs 8 independent vec4 accumulators for 4096 rounds of
//!   `fma`; 256 workgroups of 64, best of 5.
use std::time::Instant;
use vlm_run::gpu::Gpu;

const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(32)
fn touch(@builtin(global_invocation_id) g: vec3<u32>) { out[g.x] = out[g.x] + 1.0; }

@compute @workgroup_size(64)
fn peak(@builtin(global_invocation_id) g: vec3<u32>) {
    let s = f32(g.x) * 1e-6;
    var a0 = vec4<f32>(s); var a1 = a0 + 1.0; var a2 = a0 + 2.0; var a3 = a0 + 3.0;
    var a4 = a0 + 4.0; var a5 = a0 + 5.0; var a6 = a0 + 6.0; var a7 = a0 + 7.0;
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(0.001);
    for (var i = 0u; i < 4096u; i++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
    }
    out[g.x] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}
"#;

const PEAK_GROUPS: u32 = 256;

/// Best wall time, in seconds, of `reps` runs of `n` dispatches of `entry` over `groups`
/// workgroups in one pass and one submit.
fn best_time(gpu: &Gpu, entry: &str, groups: u32, n: usize, reps: usize) -> anyhow::Result<f64> {
    let dev = &gpu.device;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let buf = gpu.storage_buffer("probe", PEAK_GROUPS as u64 * 64 * 16)?;
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: buf.as_entire_binding(),
        }],
    });
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bg, &[]);
            for _ in 0..n {
                pass.dispatch_workgroups(groups, 1, 1);
            }
        }
        gpu.queue.submit([enc.finish()]);
        dev.poll(wgpu::PollType::wait_indefinitely())?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let gpu = Gpu::new(&vlm_run::gpu::GpuOptions::from_env()?)?;
    println!("{}", gpu.describe());
    for groups in [1u32, 2, 4, 8, 24, 64] {
        for n in [1usize, 100] {
            let t = best_time(&gpu, "touch", groups, n, 20)?;
            println!(
                "{groups:>3} workgroups x {n:>3} dispatches: {:8.1} us per dispatch",
                t * 1e6 / n as f64
            );
        }
    }
    let t = best_time(&gpu, "peak", PEAK_GROUPS, 1, 5)?;
    let flop = PEAK_GROUPS as f64 * 64.0 * 4096.0 * 8.0 * 4.0 * 2.0;
    println!("peak fma: {:.1} ms, {:.1} GFLOP/s", t * 1e3, flop / t / 1e9);
    Ok(())
}
