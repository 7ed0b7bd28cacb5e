//! How fast does this device read the same 32 MiB as storage-buffer loads, as sampled
//! texel fetches and as read-only storage-texture loads? The measurement behind
//! `Caps::weight_textures` (weights in storage textures on CPU devices). Run:
//! `cargo run --release --example load_probe`.
//!
//! Each kernel XORs every 16-byte word once, 16384 invocations in all, in two orders:
//! interleaved (invocation i reads words i, i + 16384, ...) and in runs (invocation i reads
//! its own contiguous 128 words, as a lane walks a weight row). Best of 6 runs.
//! More read 32 MiB out of the first 64 KiB (a GEMM's input rows, an attention's K/V): as a
//! storage buffer, a uniform buffer and a storage texture, interleaved (the decode GEMV's
//! input vector, `Caps::uniform_x`), and as a uniform buffer and a storage texture with every
//! invocation of a workgroup at the same address (a weight or K/V row that all lanes share).
use std::time::Instant;

const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var t: texture_2d<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var st: texture_storage_2d<rgba32uint, read>;
@group(0) @binding(4) var<uniform> u: array<vec4<u32>, 4096>;
const W: u32 = 8192u;        // texels per texture row
const TOTAL: u32 = 2097152u; // 16-byte words
const INV: u32 = 16384u;     // invocations (256 workgroups of 64)
const RUN: u32 = TOTAL / INV;

fn fold(v: vec4<u32>) -> u32 { return v.x ^ v.y ^ v.z ^ v.w; }
fn texel(i: u32) -> vec4<u32> { return textureLoad(t, vec2<u32>(i % W, i / W), 0); }
fn stexel(i: u32) -> vec4<u32> { return textureLoad(st, vec2<u32>(i % W, i / W)); }

@compute @workgroup_size(64)
fn storage_texture_interleaved(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= stexel(g.x + j * INV); }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn storage_texture_64k_interleaved(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= stexel((g.x + j * INV) % 4096u); }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn storage_texture_64k_uniform_address(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= stexel((g.x / 64u + j * 7u) % 4096u); }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn uniform_64k_uniform_address(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= u[(g.x / 64u + j * 7u) % 4096u]; }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn buffer_64k_interleaved(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= w[(g.x + j * INV) % 4096u]; }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn uniform_64k_interleaved(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= u[(g.x + j * INV) % 4096u]; }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn storage_texture_runs(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= stexel(g.x * RUN + j); }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn buffer_interleaved(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= w[g.x + j * INV]; }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn buffer_runs(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= w[g.x * RUN + j]; }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn texture_interleaved(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= texel(g.x + j * INV); }
    out[g.x] = fold(acc);
}

@compute @workgroup_size(64)
fn texture_runs(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < RUN; j++) { acc ^= texel(g.x * RUN + j); }
    out[g.x] = fold(acc);
}
"#;

const WORDS: u32 = 2_097_152;
const WIDTH: u32 = 8192;

fn main() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
        flags: wgpu::InstanceFlags::empty(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("no GPU adapter (on Linux: apt-get install mesa-vulkan-drivers libvulkan1)");
    let info = adapter.get_info();
    println!("{} ({:?})", info.name, info.backend);
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))
        .expect("could not open the device");

    let data: Vec<u32> = (0..4 * WORDS)
        .map(|i| i.wrapping_mul(2_654_435_761))
        .collect();
    let bytes: &[u8] = bytemuck::cast_slice(&data);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes.len() as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::UNIFORM
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buffer, 0, bytes);
    let first_64k = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer: &buffer,
        offset: 0,
        size: std::num::NonZeroU64::new(65536),
    });
    let size = wgpu::Extent3d {
        width: WIDTH,
        height: WORDS / WIDTH,
        depth_or_array_layers: 1,
    };
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: None,
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Uint,
        usage: wgpu::TextureUsages::TEXTURE_BINDING
            | wgpu::TextureUsages::STORAGE_BINDING
            | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    queue.write_texture(
        texture.as_image_copy(),
        bytes,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(16 * WIDTH),
            rows_per_image: None,
        },
        size,
    );
    let view = texture.create_view(&Default::default());
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4 * 16384,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });

    for entry in [
        "buffer_interleaved",
        "buffer_runs",
        "texture_interleaved",
        "texture_runs",
        "storage_texture_interleaved",
        "storage_texture_64k_interleaved",
        "storage_texture_64k_uniform_address",
        "uniform_64k_uniform_address",
        "storage_texture_runs",
        "buffer_64k_interleaved",
        "uniform_64k_interleaved",
    ] {
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let source = if entry.starts_with("uniform") {
            wgpu::BindGroupEntry {
                binding: 4,
                resource: first_64k.clone(),
            }
        } else if entry.starts_with("storage_texture") {
            wgpu::BindGroupEntry {
                binding: 3,
                resource: wgpu::BindingResource::TextureView(&view),
            }
        } else if entry.starts_with("texture") {
            wgpu::BindGroupEntry {
                binding: 1,
                resource: wgpu::BindingResource::TextureView(&view),
            }
        } else {
            wgpu::BindGroupEntry {
                binding: 0,
                resource: buffer.as_entire_binding(),
            }
        };
        let sink = wgpu::BindGroupEntry {
            binding: 2,
            resource: out.as_entire_binding(),
        };
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[source, sink],
        });
        let mut best = f64::MAX;
        for _ in 0..6 {
            let mut enc = device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(256, 1, 1);
            }
            let t = Instant::now();
            queue.submit([enc.finish()]);
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .expect("GPU wait failed");
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{entry:28} {:7.2} ms  {:6.2} GB/s",
            best * 1e3,
            bytes.len() as f64 / best / 1e9
        );
    }
}
