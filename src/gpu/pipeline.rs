//! Compute pipelines compiled on worker threads.
//!
//! Making a pipeline is the slow part of loading: on lavapipe ~10-35 ms each, most of it in
//! the driver (the default model's warm-up makes 25, ~340 ms of its ~420 ms load). A
//! [`Pipeline`] therefore has its bind group layout at once, read from the shader by naga,
//! so that kernels can bind their buffers straight away, while the pipeline itself is
//! compiled by one of a few worker threads. The first dispatch that needs it waits for it.

use anyhow::{anyhow, bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// A compute pipeline on its way: its layout now, the compiled pipeline when a worker is done.
pub struct Pipeline {
    /// Bind group 0's layout, as wgpu would derive it from the entry point.
    pub layout: wgpu::BindGroupLayout,
    compiled: OnceLock<std::result::Result<wgpu::ComputePipeline, String>>,
}

impl Pipeline {
    /// The compiled pipeline, waiting for its worker if it is still compiling.
    pub fn get(&self) -> Result<&wgpu::ComputePipeline> {
        self.compiled.wait().as_ref().map_err(|e| anyhow!("{e}"))
    }

    /// The compiled pipeline or its error if a worker is done with it, `None` while it is
    /// still queued or compiling.
    pub fn poll(&self) -> Option<Result<&wgpu::ComputePipeline>> {
        let done = self.compiled.get()?;
        Some(done.as_ref().map_err(|e| anyhow!("{e}")))
    }
}

/// One pipeline for a worker to compile.
struct Job {
    source: String,
    entry: String,
    what: String,
    layout: wgpu::PipelineLayout,
    out: Arc<Pipeline>,
}

/// The worker threads that compile pipelines, as many as the host has cores (at most 8).
///
/// Dropping it waits for the compiles in flight and skips those still queued: a worker left
/// inside the driver when the process exits would crash it (the driver's globals are torn
/// down under it), as a failed load that returns straight away would otherwise do.
pub struct Compiler {
    device: wgpu::Device,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    closing: Arc<AtomicBool>,
}

impl Compiler {
    pub fn new(device: &wgpu::Device) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let closing = Arc::new(AtomicBool::new(false));
        let count = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
        let mut workers = Vec::new();
        for i in 0..count {
            let (rx, device, closing) = (rx.clone(), device.clone(), closing.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vlm-run pipelines {i}"))
                .spawn(move || loop {
                    // the channel closes when the Compiler is dropped
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    if closing.load(Ordering::Acquire) {
                        let skipped = Err(format!("{}: the GPU context was dropped", job.what));
                        let _ = job.out.compiled.set(skipped);
                    } else {
                        compile(&device, job);
                    }
                });
            // without workers, `make` compiles on the calling thread
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(_) => break,
            }
        }
        Self {
            device: device.clone(),
            jobs: Mutex::new(Some(tx)),
            workers,
            closing,
        }
    }

    /// Start compiling `entry` of the preprocessed WGSL `source`; `what` names it in errors.
    /// Errors in the WGSL itself come back here; those of the driver from [`Pipeline::get`].
    pub fn make(&self, source: String, entry: &str, what: String) -> Result<Arc<Pipeline>> {
        let entries = bind_group_entries(&source, entry).map_err(|e| anyhow!("{what}: {e}"))?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("{what}: its bind group layout: {e}");
        }
        let out = Arc::new(Pipeline {
            layout,
            compiled: OnceLock::new(),
        });
        let job = Job {
            source,
            entry: entry.to_string(),
            what,
            layout: pipeline_layout,
            out: out.clone(),
        };
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let unsent = match jobs.as_ref().filter(|_| !self.workers.is_empty()) {
            Some(tx) => tx.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        drop(jobs);
        if let Some(job) = unsent {
            compile(&self.device, job);
        }
        Ok(out)
    }
}

impl Drop for Compiler {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        // closing the channel ends each worker once the queue is empty
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Compile `job` on this thread and hand over the pipeline or its error. A panic in the
/// driver becomes an error too, so that no dispatch waits forever.
fn compile(device: &wgpu::Device, job: Job) {
    let run = || {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&job.entry),
            source: wgpu::ShaderSource::Wgsl(job.source.as_str().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&job.entry),
            layout: Some(&job.layout),
            module: &module,
            entry_point: Some(&job.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(format!("{} failed: {e}", job.what)),
            None => Ok(pipeline),
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err(format!("{} failed: the driver panicked", job.what)));
    let _ = job.out.compiled.set(result);
}

/// Bind group 0's entries for `entry` of `source`: the resources the entry point uses, with
/// the types the shader declares them with (what wgpu's automatic layout would hold).
fn bind_group_entries(source: &str, entry: &str) -> Result<Vec<wgpu::BindGroupLayoutEntry>> {
    use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags};
    let module = naga::front::wgsl::parse_str(source).map_err(|e| anyhow!("{}", e.message()))?;
    let info = naga::valid::Validator::new(ValidationFlags::all(), Capabilities::all())
        .subgroup_stages(ShaderStages::COMPUTE)
        .subgroup_operations(SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| {
            // the error and its causes on one line
            let mut msg = e.as_inner().to_string();
            let mut cause = std::error::Error::source(e.as_inner());
            while let Some(c) = cause {
                msg = format!("{msg}: {c}");
                cause = c.source();
            }
            anyhow!("{msg}")
        })?;
    let index = module
        .entry_points
        .iter()
        .position(|ep| ep.name == entry)
        .ok_or_else(|| anyhow!("no entry point {entry}"))?;
    let uses = info.get_entry_point(index);
    let mut entries = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        if binding.group != 0 || uses[handle].is_empty() {
            continue;
        }
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: binding.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: binding_type(&module, var)?,
            count: None,
        });
    }
    entries.sort_by_key(|e| e.binding);
    Ok(entries)
}

fn binding_type(module: &naga::Module, var: &naga::GlobalVariable) -> Result<wgpu::BindingType> {
    use naga::{AddressSpace, ImageClass, StorageAccess, TypeInner};
    // as wgpu derives it: the type's size, one element of a runtime-sized array
    let size = module.types[var.ty].inner.size(module.to_ctx());
    let buffer = |ty| wgpu::BindingType::Buffer {
        ty,
        has_dynamic_offset: false,
        min_binding_size: wgpu::BufferSize::new(size as u64),
    };
    Ok(match var.space {
        AddressSpace::Uniform => buffer(wgpu::BufferBindingType::Uniform),
        AddressSpace::Storage { access } => buffer(wgpu::BufferBindingType::Storage {
            read_only: !access.contains(StorageAccess::STORE),
        }),
        AddressSpace::Handle => match &module.types[var.ty].inner {
            TypeInner::Image {
                dim: naga::ImageDimension::D2,
                arrayed: false,
                class: ImageClass::Storage { format, access },
            } => wgpu::BindingType::StorageTexture {
                access: match (
                    access.contains(StorageAccess::LOAD),
                    access.contains(StorageAccess::STORE),
                ) {
                    (true, true) => wgpu::StorageTextureAccess::ReadWrite,
                    (true, false) => wgpu::StorageTextureAccess::ReadOnly,
                    _ => wgpu::StorageTextureAccess::WriteOnly,
                },
                format: match format {
                    naga::StorageFormat::Rgba32Float => wgpu::TextureFormat::Rgba32Float,
                    naga::StorageFormat::Rgba32Uint => wgpu::TextureFormat::Rgba32Uint,
                    naga::StorageFormat::R32Float => wgpu::TextureFormat::R32Float,
                    naga::StorageFormat::R32Uint => wgpu::TextureFormat::R32Uint,
                    f => bail!("storage texture format {f:?} is not one the engine binds"),
                },
                view_dimension: wgpu::TextureViewDimension::D2,
            },
            other => bail!("resource type {other:?} is not one the engine binds"),
        },
        other => bail!("a binding in address space {other:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::bind_group_entries;

    #[test]
    fn layouts_hold_the_resources_the_entry_point_uses_with_their_declared_types() {
        let src = "
            struct P { n: u32 }
            @group(0) @binding(0) var<uniform> p: P;
            @group(0) @binding(1) var<storage, read> a: array<f32>;
            @group(0) @binding(2) var<storage, read_write> b: array<f32>;
            @group(0) @binding(3) var t_in: texture_storage_2d<rgba32uint, read>;
            @group(0) @binding(4) var t_out: texture_storage_2d<rgba32float, write>;
            @group(0) @binding(5) var<storage, read_write> unused_here: array<f32>;
            @compute @workgroup_size(8)
            fn main(@builtin(global_invocation_id) g: vec3<u32>) {
                let v = textureLoad(t_in, vec2<u32>(g.x, 0u));
                b[g.x] = a[g.x] + f32(p.n) + f32(v.x);
                textureStore(t_out, vec2<u32>(g.x, 0u), vec4<f32>(1.0));
            }
            @compute @workgroup_size(8)
            fn other(@builtin(global_invocation_id) g: vec3<u32>) {
                unused_here[g.x] = 0.0;
            }";
        let e = bind_group_entries(src, "main").unwrap();
        let bindings: Vec<u32> = e.iter().map(|e| e.binding).collect();
        assert_eq!(bindings, [0, 1, 2, 3, 4]);
        // the struct's 4 bytes, one f32 of a runtime-sized array
        let buffer = |ty| wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(4),
        };
        let storage = |read_only| buffer(wgpu::BufferBindingType::Storage { read_only });
        let texture = |access, format| wgpu::BindingType::StorageTexture {
            access,
            format,
            view_dimension: wgpu::TextureViewDimension::D2,
        };
        let want = [
            buffer(wgpu::BufferBindingType::Uniform),
            storage(true),
            storage(false),
            texture(
                wgpu::StorageTextureAccess::ReadOnly,
                wgpu::TextureFormat::Rgba32Uint,
            ),
            texture(
                wgpu::StorageTextureAccess::WriteOnly,
                wgpu::TextureFormat::Rgba32Float,
            ),
        ];
        for (got, want) in e.iter().zip(want) {
            assert_eq!(got.ty, want, "binding {}", got.binding);
            assert_eq!(got.visibility, wgpu::ShaderStages::COMPUTE);
        }
        let other = bind_group_entries(src, "other").unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].binding, 5);
        let missing = bind_group_entries(src, "nope").unwrap_err();
        assert!(
            missing.to_string().contains("no entry point nope"),
            "{missing}"
        );
        let bad = bind_group_entries("fn main( {", "main").unwrap_err();
        assert!(!bad.to_string().is_empty());
    }
}
