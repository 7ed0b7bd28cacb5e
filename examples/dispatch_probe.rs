//! What does one dispatch cost on this device, apart from its work? Encodes 100 dispatches of a
//! kernel that does almost nothing, with 1 to 64 workgroups each, in one pass and one submit,
//! and prints the time per dispatch (best of 20). Run:
//! `cargo run --release --example dispatch_probe`.
use std::time::Instant;

const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(32)
fn touch(@builtin(global_invocation_id) g: vec3<u32>) { out[g.x] = out[g.x] + 1u; }
"#;

fn main() -> anyhow::Result<()> {
    let gpu = vlm_run::gpu::Gpu::new(&vlm_run::gpu::GpuOptions::from_env()?)?;
    println!("{}", gpu.describe());
    let dev = &gpu.device;
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    let pipe = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("touch"),
        compilation_options: Default::default(),
        cache: None,
    });
    let buf = gpu.storage_buffer("probe", 64 * 32 * 4)?;
    let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipe.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: buf.as_entire_binding(),
        }],
    });
    for groups in [1u32, 2, 4, 8, 24, 64] {
        for n in [1usize, 100] {
            let mut best = f64::MAX;
            for _ in 0..20 {
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
            println!(
                "{groups:>3} workgroups x {n:>3} dispatches: {:8.1} us per dispatch",
                best * 1e6 / n as f64
            );
        }
    }
    Ok(())
}
