//! A kernel is one compute dispatch: a cached pipeline, a bind group made once, and a grid.

use super::shader::Defines;
use super::{Gpu, WeightChunk};
use anyhow::Result;
use std::sync::Arc;

/// One dispatch, ready to encode many times (bind group and parameters are made once).
pub struct Kernel {
    pub label: &'static str,
    pipeline: Arc<super::Pipeline>,
    bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

impl Kernel {
    /// Build a dispatch of `entry` in `family`. Binding 0 is `params` (a uniform buffer, or
    /// read-only storage where the shader says so: [`Gpu::params_init`]); bindings
    /// `buffers` gives (binding, buffer) pairs; a uniform such as [`Step`] may be among them.
    pub fn new(
        gpu: &Gpu,
        family: &'static str,
        entry: &'static str,
        defines: &Defines,
        params: &[u8],
        buffers: &[(u32, &wgpu::Buffer)],
        workgroups: [u32; 3],
    ) -> Result<Self> {
        Self::with_resources(
            gpu,
            family,
            entry,
            defines,
            params,
            buffers,
            Vec::new(),
            workgroups,
        )
    }

    /// [`Kernel::new`] for a kernel that reads a weight chunk at binding 2: its WTEX variant
    /// (weight_texture.wgsl) when the chunk is a texture. `resources`: more bindings that are
    /// not whole buffers (ranges), usually none.
    #[allow(clippy::too_many_arguments)]
    pub fn with_weight<'a>(
        gpu: &Gpu,
        family: &'static str,
        entry: &'static str,
        defines: &Defines,
        params: &[u8],
        buffers: &[(u32, &wgpu::Buffer)],
        weight: &'a WeightChunk,
        mut resources: Vec<(u32, wgpu::BindingResource<'a>)>,
        workgroups: [u32; 3],
    ) -> Result<Self> {
        let defines = if weight.store.is_texture() {
            defines.clone().with_flag("WTEX")
        } else {
            defines.clone()
        };
        resources.push((2, weight.store.binding()));
        Self::with_resources(
            gpu, family, entry, &defines, params, buffers, resources, workgroups,
        )
    }

    /// [`Kernel::new`] with more bindings that are not whole buffers (textures, ranges).
    #[allow(clippy::too_many_arguments)]
    pub fn with_resources(
        gpu: &Gpu,
        family: &'static str,
        entry: &'static str,
        defines: &Defines,
        params: &[u8],
        buffers: &[(u32, &wgpu::Buffer)],
        resources: Vec<(u32, wgpu::BindingResource<'_>)>,
        workgroups: [u32; 3],
    ) -> Result<Self> {
        let pipeline = gpu.pipeline(family, entry, defines)?;
        let params = gpu.params_init(entry, params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        }];
        for (binding, b) in buffers {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: b.as_entire_binding(),
            });
        }
        for (binding, resource) in resources {
            entries.push(wgpu::BindGroupEntry { binding, resource });
        }
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.layout,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            anyhow::bail!("binding {family}.wgsl::{entry}: {e}");
        }
        Ok(Self {
            label: entry,
            pipeline,
            bind_group,
            workgroups,
        })
    }

    /// The kernel and its grid, as the profiles name a row: `gemv [4, 1, 1]`.
    pub fn name(&self) -> String {
        format!("{} {:?}", self.label, self.workgroups)
    }

    /// Record this dispatch into `pass`; `empty`: over a grid of no workgroups (the
    /// pipeline and bind group are still set; see [`Gpu::with_empty_grids`]).
    /// Waits for the pipeline if a worker is still compiling it, and fails with its error.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, empty: bool) -> anyhow::Result<()> {
        pass.set_pipeline(self.pipeline.get()?);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = if empty { [0; 3] } else { self.workgroups };
        pass.dispatch_workgroups(x, y, z);
        Ok(())
    }
}

/// Values that change from one forward pass to the next, in one small uniform buffer that
/// the kernels which need them bind: where in the KV cache this pass writes, how many cache
/// rows are valid, and the random number for sampling.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    /// First KV-cache row written by this pass.
    pub kv_offset: u32,
    /// Valid KV-cache rows after this pass.
    pub kv_len: u32,
    /// Uniform random number in [0, 1) for sampling.
    pub rand: f32,
    pub _pad: u32,
}
