//! Peak f32 multiply-add rate of this device through WGSL: each invocation runs 8 independent
//! vec4 accumulators for 4096 rounds. `cargo run --release --example peak_probe`.
use std::time::Instant;
const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
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
fn main() -> anyhow::Result<()> {
    let gpu = vlm_run::gpu::Gpu::new(&vlm_run::gpu::GpuOptions::from_env()?)?;
    let dev = &gpu.device;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("peak"),
        compilation_options: Default::default(),
        cache: None,
    });
    let groups = 256u32;
    let buf = gpu.storage_buffer("probe", groups as u64 * 64 * 16)?;
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: buf.as_entire_binding(),
        }],
    });
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        gpu.queue.submit([enc.finish()]);
        dev.poll(wgpu::PollType::wait_indefinitely())?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let flop = groups as f64 * 64.0 * 4096.0 * 8.0 * 4.0 * 2.0;
    println!("{:.1} ms, {:.1} GFLOP/s", best * 1e3, flop / best / 1e9);
    Ok(())
}
