//! Adapter and device selection, capability detection and the pipeline cache.

use super::shader::{self, Defines};
use super::tile::{GemmTile, TileChoice};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the engine may use on this device. Everything optional has a fallback path.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Native `f16` arithmetic in shaders (`enable f16;`). Fallback: f16 weights packed in u32,
    /// unpacked with `unpack2x16float`.
    pub f16: bool,
    /// Subgroup reductions. Fallback: workgroup-memory trees.
    pub subgroups: bool,
    /// Largest storage-buffer binding.
    pub max_binding: u64,
    /// Largest weight chunk: weights larger than this are split by rows. The binding limit,
    /// or less when `VLM_RUN_MAX_BINDING` asks for it (to exercise the split path).
    pub weight_chunk: u64,
    /// Largest buffer.
    pub max_buffer: u64,
    /// Largest workgroup count per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Workgroup memory in bytes.
    pub workgroup_memory: u32,
    /// Most invocations in one workgroup laid out along x (the smaller of the invocation
    /// and the x-size limits).
    pub max_invocations: u32,
    /// The smallest subgroup size the adapter may use (0 when unknown).
    pub subgroup_min: u32,
    /// A CPU device (lavapipe, llvmpipe, WARP): few, wide workgroups pay off there.
    pub cpu: bool,
    /// Weights live in rgba32uint textures instead of storage buffers (the kernels' WTEX
    /// variant, read-only storage textures), and the direct prefill attention reads K/V from
    /// textures too (`ops::attention::KvTextures`). On by default on CPU devices, whose
    /// drivers load texels for a SIMD row at once but storage buffers lane by lane; off
    /// elsewhere.
    /// Env `VLM_RUN_WEIGHT_TEXTURES=0|1`.
    pub weight_textures: bool,
    /// The decode GEMV reads its input vector (and RMSNorm weight) from uniform buffers
    /// instead of storage buffers (gemv.wgsl's XUBO), up to `max_uniform_binding` bytes. On by
    /// default on CPU devices: lavapipe loads a storage buffer at per-lane addresses in a loop
    /// with a branch per lane, a uniform buffer with one straight-line gather. Off elsewhere,
    /// where lanes that read different uniform addresses serialise. Every storage buffer then
    /// also carries UNIFORM usage. Env `VLM_RUN_UNIFORM_X=0|1`.
    pub uniform_x: bool,
    /// The decode step keeps its residual stream in an rgba32float texture as well as its
    /// buffer ([`super::Tensor::with_texels`]), and the decode GEMVs that read it (the
    /// fused RMSNorm products and the LM head) take x and the norm's weight from textures
    /// (gemv.wgsl's XTEX; the residual adds write it with YTEX). On by default on CPU
    /// devices, where lavapipe loads a texel for 8 lanes in fewer instructions than it
    /// gathers a vec4 from a uniform buffer; off elsewhere. Env `VLM_RUN_X_TEXTURES=0|1`.
    pub x_textures: bool,
    /// Largest uniform-buffer binding in bytes.
    pub max_uniform_binding: u64,
}

/// Choices a caller (or the environment) can make about the device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Use shader-f16 when present (`None`: auto; env `VLM_RUN_F16=0|1`).
    pub f16: Option<bool>,
    /// Use subgroups when present (`None`: auto; env `VLM_RUN_SUBGROUPS=0|1`).
    pub subgroups: Option<bool>,
    /// Split weights into chunks of at most this many bytes, below the adapter's binding
    /// limit (env `VLM_RUN_MAX_BINDING`). Used to exercise the row-splitting path.
    pub max_binding: Option<u64>,
    /// How the GEMM tile is chosen (env `VLM_RUN_GEMM_TILE=64|32|lanes|tune|auto`).
    pub gemm_tile: TileChoice,
    /// Prefill attention stages K/V tiles through workgroup memory (`None`: the device
    /// class's table, see [`super::tile::attention_tiles_for`]; env `VLM_RUN_ATTN_TILES=0|1`).
    pub attention_tiles: Option<bool>,
    /// Where prefill attention stages K/V tiles, run the tiled kernel
    /// (`ops::flash_attention`) for the head dims it takes, or the one-row-per-invocation
    /// kernel (`None`: the tiled one; env `VLM_RUN_FLASH_ATTN=0|1`).
    pub flash_attention: Option<bool>,
    /// Decode attention on the same devices runs `ops::decode_attention`'s kernels (256
    /// invocations per split, vec4 loads) for head dims that are multiples of 16, or
    /// attention.wgsl's `attn_split` (an invocation per key) and `attn_merge` (`None`: the
    /// first; env `VLM_RUN_DECODE_ATTN=0|1`).
    pub decode_attention: Option<bool>,
    /// Where those kernels run, caches of up to `ops::decode_attention::ONE_KEYS` rows are
    /// walked by one workgroup per head (`decode_one`: one dispatch a layer) instead of
    /// splits and a merge (`None`: splits, until a GPU has timed both; env
    /// `VLM_RUN_DECODE_ONE=0|1`).
    pub decode_one: Option<bool>,
    /// Submit each decode step before the host reads the previous step's token, so that the
    /// device never waits for the host between steps (`None`: on GPUs; off on CPU devices,
    /// whose threads the host's encoding would compete with; env `VLM_RUN_DECODE_AHEAD=0|1`;
    /// see [`super::TokenQueue`]).
    pub decode_ahead: Option<bool>,
    /// The decode GEMV's layout: 0 for 32-value groups over lane groups of 8, or lane
    /// groups of 8, 16 or 32 lanes stepping over whole 16-byte f16 words or quant blocks
    /// (`None`: 0 on CPU devices, 32 on GPUs; env `VLM_RUN_GEMV_WORD_LANES=0|8|16|32`; see
    /// `ops::matmul::gemv_lanes`).
    pub gemv_word_lanes: Option<u32>,
    /// Keep weights in textures (`None`: on CPU devices; env `VLM_RUN_WEIGHT_TEXTURES=0|1`).
    pub weight_textures: Option<bool>,
    /// Give the decode GEMV its input through uniform buffers (`None`: on CPU devices; env
    /// `VLM_RUN_UNIFORM_X=0|1`; see [`Caps::uniform_x`]).
    pub uniform_x: Option<bool>,
    /// Keep the decode step's residual stream in a texture too (`None`: on CPU devices; env
    /// `VLM_RUN_X_TEXTURES=0|1`; see [`Caps::x_textures`]).
    pub x_textures: Option<bool>,
}

impl GpuOptions {
    /// Options read from `VLM_RUN_F16`, `VLM_RUN_SUBGROUPS` and `VLM_RUN_MAX_BINDING`.
    pub fn from_env() -> Result<Self> {
        fn flag(name: &str) -> Result<Option<bool>> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => match v.as_str() {
                    "1" | "on" | "true" => Ok(Some(true)),
                    "0" | "off" | "false" => Ok(Some(false)),
                    "" | "auto" => Ok(None),
                    _ => bail!("{name}={v:?}: expected 0, 1 or auto"),
                },
            }
        }
        let max_binding = match std::env::var("VLM_RUN_MAX_BINDING") {
            Err(_) => None,
            Ok(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| anyhow!("VLM_RUN_MAX_BINDING={v:?}: expected a byte count"))?,
            ),
        };
        Ok(Self {
            f16: flag("VLM_RUN_F16")?,
            subgroups: flag("VLM_RUN_SUBGROUPS")?,
            max_binding,
            gemm_tile: TileChoice::parse(&std::env::var("VLM_RUN_GEMM_TILE").unwrap_or_default())?,
            attention_tiles: flag("VLM_RUN_ATTN_TILES")?,
            flash_attention: flag("VLM_RUN_FLASH_ATTN")?,
            decode_attention: flag("VLM_RUN_DECODE_ATTN")?,
            decode_one: flag("VLM_RUN_DECODE_ONE")?,
            decode_ahead: flag("VLM_RUN_DECODE_AHEAD")?,
            gemv_word_lanes: match std::env::var("VLM_RUN_GEMV_WORD_LANES") {
                Err(_) => None,
                Ok(v) => match v.as_str() {
                    "" | "auto" => None,
                    "0" | "8" | "16" | "32" => v.parse().ok(),
                    _ => bail!("VLM_RUN_GEMV_WORD_LANES={v:?}: expected 0, 8, 16, 32 or auto"),
                },
            },
            weight_textures: flag("VLM_RUN_WEIGHT_TEXTURES")?,
            uniform_x: flag("VLM_RUN_UNIFORM_X")?,
            x_textures: flag("VLM_RUN_X_TEXTURES")?,
        })
    }
}

type PipelineKey = (&'static str, String, String);

thread_local! {
    /// Whether this thread's encodes go over empty grids ([`Gpu::with_empty_grids`]). Per
    /// thread, so that a warm-up leaves another thread's request on the same device alone.
    static EMPTY_GRIDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The device, its queue and what it can do. Cheap to share behind an `Arc`.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Caps,
    pipelines: Mutex<HashMap<PipelineKey, Arc<super::Pipeline>>>,
    /// The threads that compile them.
    compiler: super::pipeline::Compiler,
    error: Arc<Mutex<Option<String>>>,
    /// Highest device memory seen by `sample_memory` (bytes; 0: never sampled).
    peak_memory: std::sync::atomic::AtomicU64,
    /// The GEMM kernel in use (see [`GemmTile`]; its index in `GemmTile::ALL`). The
    /// autotuner may change it at load.
    gemm_tile: std::sync::atomic::AtomicUsize,
    /// Whether prefill attention uses workgroup-memory K/V tiles.
    attention_tiles: std::sync::atomic::AtomicBool,
    /// Whether that staging runs the tiled kernel.
    flash_attention: std::sync::atomic::AtomicBool,
    /// Whether decode attention there runs `ops::decode_attention`.
    decode_attention: std::sync::atomic::AtomicBool,
    /// Whether it walks short caches in one dispatch (`decode_one`).
    decode_one: std::sync::atomic::AtomicBool,
    /// Whether the token loop submits one decode step ahead.
    decode_ahead: std::sync::atomic::AtomicBool,
    /// The decode GEMV's word lanes (0: the 8-lane 32-value groups).
    gemv_word_lanes: std::sync::atomic::AtomicU32,
}

fn tile_index(t: GemmTile) -> usize {
    GemmTile::ALL.iter().position(|&a| a == t).unwrap_or(0)
}

const NO_ADAPTER_HELP: &str = "no GPU adapter found (Vulkan, Metal or DX12). On headless Linux \
install the Mesa CPU driver: `apt-get install mesa-vulkan-drivers libvulkan1`; \
otherwise install your GPU's Vulkan driver";

impl Gpu {
    /// Open the best adapter with its own limits and optional features.
    pub fn new(opts: &GpuOptions) -> Result<Arc<Self>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            flags: wgpu::InstanceFlags::empty(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        }))
        .map_err(|_| anyhow!(NO_ADAPTER_HELP))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();

        let f16 = features.contains(wgpu::Features::SHADER_F16) && opts.f16.unwrap_or(true);
        let subgroups =
            features.contains(wgpu::Features::SUBGROUP) && opts.subgroups.unwrap_or(true);
        if opts.f16 == Some(true) && !f16 {
            bail!("VLM_RUN_F16=1 but adapter {:?} lacks shader-f16", info.name);
        }
        if opts.subgroups == Some(true) && !subgroups {
            bail!(
                "VLM_RUN_SUBGROUPS=1 but adapter {:?} lacks subgroups",
                info.name
            );
        }
        let mut required = wgpu::Features::empty();
        if f16 {
            required |= wgpu::Features::SHADER_F16;
        }
        if subgroups {
            required |= wgpu::Features::SUBGROUP;
        }
        // timestamps cost nothing until a profile writes them (VLM_RUN_PROFILE=gpu)
        required |= super::timestamps::features(features);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vlm-run"),
            required_features: required,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| anyhow!("could not open GPU device on {:?}: {e}", info.name))?;

        let error = Arc::new(Mutex::new(None));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(
                    e.to_string()
                        .lines()
                        .next()
                        .unwrap_or("GPU error")
                        .to_string(),
                );
            }
        }));

        let max_binding =
            (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size);
        let cpu = info.device_type == wgpu::DeviceType::Cpu;
        let weight_textures = opts.weight_textures.unwrap_or(cpu);
        // a texture chunk holds at most max_texture_dimension_2d rows of TEX_ROW_TEXELS words
        let texture_bytes = if weight_textures {
            16 * super::TEX_ROW_TEXELS as u64 * limits.max_texture_dimension_2d as u64
        } else {
            u64::MAX
        };
        let weight_chunk = max_binding
            .min(texture_bytes)
            .min(opts.max_binding.unwrap_or(u64::MAX));
        let caps = Caps {
            f16,
            subgroups,
            max_binding,
            weight_chunk,
            max_buffer: limits.max_buffer_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            workgroup_memory: limits.max_compute_workgroup_storage_size,
            max_invocations: limits
                .max_compute_invocations_per_workgroup
                .min(limits.max_compute_workgroup_size_x),
            subgroup_min: if subgroups { info.subgroup_min_size } else { 0 },
            cpu,
            weight_textures,
            uniform_x: opts.uniform_x.unwrap_or(cpu),
            x_textures: opts.x_textures.unwrap_or(cpu),
            max_uniform_binding: limits.max_uniform_buffer_binding_size as u64,
        };
        let info_type = info.device_type;
        let compiler = super::pipeline::Compiler::new(&device);
        Ok(Arc::new(Self {
            device,
            queue,
            info,
            caps,
            pipelines: Mutex::new(HashMap::new()),
            compiler,
            error,
            peak_memory: Default::default(),
            gemm_tile: tile_index(match opts.gemm_tile {
                TileChoice::Fixed(t) => t,
                _ => GemmTile::for_device(info_type),
            })
            .into(),
            attention_tiles: opts
                .attention_tiles
                .unwrap_or(super::tile::attention_tiles_for(info_type))
                .into(),
            flash_attention: opts.flash_attention.unwrap_or(true).into(),
            decode_attention: opts.decode_attention.unwrap_or(true).into(),
            decode_one: opts.decode_one.unwrap_or(false).into(),
            decode_ahead: opts.decode_ahead.unwrap_or(!cpu).into(),
            gemv_word_lanes: opts
                .gemv_word_lanes
                .unwrap_or(if info_type == wgpu::DeviceType::Cpu {
                    0
                } else {
                    32
                })
                .into(),
        }))
    }

    /// The GEMM tile kernels are built with now.
    pub fn gemm_tile(&self) -> GemmTile {
        GemmTile::ALL[self.gemm_tile.load(std::sync::atomic::Ordering::Relaxed)]
    }

    /// Use `tile` for GEMM kernels built from now on (kernels already built keep theirs).
    pub fn set_gemm_tile(&self, tile: GemmTile) {
        self.gemm_tile
            .store(tile_index(tile), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether subgroups hold a lane group (8 invocations): what the CPU-device kernels that
    /// reduce by subgroup shuffles need (lanes.wgsl).
    pub fn lane_groups(&self) -> bool {
        self.caps.subgroups && self.caps.subgroup_min >= 8
    }

    /// Whether prefill attention kernels built from now on stage K/V through workgroup memory.
    pub fn attention_tiles(&self) -> bool {
        self.attention_tiles
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Choose the prefill attention variant for kernels built from now on.
    pub fn set_attention_tiles(&self, on: bool) {
        self.attention_tiles
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether prefill attention kernels built from now on that stage K/V tiles are the
    /// tiled kernel (`ops::flash_attention`) where it takes the head dim.
    pub fn flash_attention(&self) -> bool {
        self.flash_attention
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Choose between the tiled and the one-row-per-invocation staging kernels.
    pub fn set_flash_attention(&self, on: bool) {
        self.flash_attention
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether decode attention kernels built from now on where prefill attention stages
    /// K/V tiles are `ops::decode_attention`'s (for the head dims it takes).
    pub fn decode_attention(&self) -> bool {
        self.decode_attention
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Choose between `ops::decode_attention` and attention.wgsl's `attn_split`.
    pub fn set_decode_attention(&self, on: bool) {
        self.decode_attention
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `ops::decode_attention` walks caches of up to its `ONE_KEYS` rows in one
    /// dispatch per layer (`decode_one`) rather than splits and a merge.
    pub fn decode_one(&self) -> bool {
        self.decode_one.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Choose between `decode_one` and `decode_split` with `decode_merge` for short caches.
    pub fn set_decode_one(&self, on: bool) {
        self.decode_one
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the token loop submits each decode step before the host has read the
    /// previous step's token ([`super::TokenQueue`]): the host's encoding, submission and
    /// readback then overlap the device's work instead of leaving it idle between steps.
    pub fn decode_ahead(&self) -> bool {
        self.decode_ahead.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Choose whether requests from now on submit decode steps one ahead.
    pub fn set_decode_ahead(&self, on: bool) {
        self.decode_ahead
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The word lanes of decode GEMVs built from now on (0: the 8-lane 32-value groups).
    pub fn gemv_word_lanes(&self) -> u32 {
        self.gemv_word_lanes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Choose the decode GEMV's layout for kernels built from now on: 0 for 32-value groups
    /// over lane groups of 8, else lane groups of `lanes` (8, 16 or 32) stepping over whole
    /// f16 words or quant blocks. Other values leave the setting as it is.
    pub fn set_gemv_word_lanes(&self, lanes: u32) {
        if matches!(lanes, 0 | 8 | 16 | 32) {
            self.gemv_word_lanes
                .store(lanes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A one-line description of the adapter and the paths in use.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}); f16 {}, subgroups {}, max binding {} MiB, weights in {}, GEMM {}, \
             attention K/V {}, decode steps {}",
            self.info.name,
            self.info.backend,
            if self.caps.f16 { "on" } else { "off" },
            if self.caps.subgroups { "on" } else { "off" },
            self.caps.max_binding >> 20,
            if self.caps.weight_textures {
                "textures"
            } else {
                "buffers"
            },
            self.gemm_tile().name(),
            if self.attention_tiles() {
                "tiles"
            } else {
                "direct"
            },
            if self.decode_ahead() {
                "one ahead"
            } else {
                "one at a time"
            }
        )
    }

    /// The defines every kernel gets from the device: the f16 and subgroup variants.
    pub fn base_defines(&self) -> Defines {
        let mut d = Defines::new();
        if self.caps.f16 {
            d.flag("F16");
        }
        if self.caps.subgroups {
            d.flag("SUBGROUPS");
        }
        d
    }

    /// A compute pipeline for `entry` in shader family `family` with `defines`, made once.
    /// Its bind group layout is there at once; a worker thread compiles the pipeline
    /// ([`super::Pipeline::get`] waits for it), so that a request's kernels compile side by
    /// side while it builds them.
    pub fn pipeline(
        &self,
        family: &'static str,
        entry: &str,
        defines: &Defines,
    ) -> Result<Arc<super::Pipeline>> {
        let key = (family, entry.to_string(), defines.key());
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let source = shader::preprocess(family, defines)?;
        let what = format!("shader {family}.wgsl entry {entry} ({})", defines.key());
        let pipeline = self.compiler.make(source, entry, what)?;
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Whether a pipeline of kernel family `family`'s entry point `entry` (any variant) has
    /// been made: which kernels a request ran, for tests.
    pub fn has_pipeline(&self, family: &str, entry: &str) -> bool {
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .any(|(f, e, _)| *f == family && e == entry)
    }

    /// How many pipelines have been made so far (each kernel variant once).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Device memory the backend's allocator holds for live buffers now (Vulkan and DX12
    /// report it; None elsewhere), and the running peak updated with it.
    pub fn sample_memory(&self) -> Option<u64> {
        let r = self.device.generate_allocator_report()?;
        self.peak_memory.fetch_max(
            r.total_allocated_bytes,
            std::sync::atomic::Ordering::Relaxed,
        );
        Some(r.total_allocated_bytes)
    }

    /// The peak of `sample_memory` since the last `reset_peak_memory` (None if unknown).
    pub fn peak_memory(&self) -> Option<u64> {
        match self.peak_memory.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }

    /// Start a new peak from the memory held now.
    pub fn reset_peak_memory(&self) {
        self.peak_memory
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.sample_memory();
    }

    /// A storage buffer of `bytes`, checked against the device limits first.
    pub fn storage_buffer(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let bytes = bytes.max(4).next_multiple_of(4);
        if bytes > self.caps.max_buffer {
            bail!(
                "{label}: {bytes} bytes exceeds the device's max buffer size of {} bytes",
                self.caps.max_buffer
            );
        }
        // with uniform_x any buffer may be the decode GEMV's uniform input
        let uniform = if self.caps.uniform_x {
            wgpu::BufferUsages::UNIFORM
        } else {
            wgpu::BufferUsages::empty()
        };
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | uniform
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `data`.
    pub fn storage_init(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        let buf = self.storage_buffer(label, data.len() as u64)?;
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(&buf, 0, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            self.queue.write_buffer(&buf, 0, &padded);
        }
        Ok(buf)
    }

    /// A small uniform buffer holding `data` (padded to 16 bytes).
    pub fn uniform_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        self.small_init(label, data, wgpu::BufferUsages::UNIFORM)
    }

    /// A kernel's parameters (binding 0): a uniform buffer that a shader may also bind as
    /// read-only storage, as prune_select.wgsl does (its header says why).
    pub fn params_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE;
        self.small_init(label, data, usage)
    }

    fn small_init(&self, label: &str, data: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = (data.len() as u64).max(16).next_multiple_of(16);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buf, 0, data);
        buf
    }

    /// Copy `bytes` from the start of `src` to the CPU. Waits for the GPU.
    pub fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, bytes.next_multiple_of(4));
        self.queue.submit([enc.finish()]);
        self.map_and_read(&staging, bytes)
    }

    /// An rgba32float texture of `width` texels by `rows`, that shaders write and read as a
    /// storage texture and tests read back ([`Self::read_texture_rows`]); None when either
    /// side is 0 or past the device's 2-D texture limit.
    pub fn rgba32float_texture(
        &self,
        label: &str,
        width: usize,
        rows: usize,
    ) -> Option<wgpu::TextureView> {
        let max = self.device.limits().max_texture_dimension_2d as usize;
        if !(1..=max).contains(&width) || !(1..=max).contains(&rows) {
            return None;
        }
        let view = self
            .device
            .create_texture(&wgpu::TextureDescriptor {
                label: Some(label),
                size: wgpu::Extent3d {
                    width: width as u32,
                    height: rows as u32,
                    depth_or_array_layers: 1,
                },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: wgpu::TextureFormat::Rgba32Float,
                usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_SRC,
                view_formats: &[],
            })
            .create_view(&Default::default());
        Some(view)
    }

    /// The first `rows` texel rows of a 2-D texture of 16-byte texels, `width` texels wide,
    /// copied to the CPU as packed rows of 16·width bytes (waits for the GPU). The texture
    /// needs COPY_SRC usage.
    pub fn read_texture_rows(&self, tex: &wgpu::Texture, width: u32, rows: u32) -> Result<Vec<u8>> {
        let row_bytes = 16 * width as u64;
        let stride = row_bytes.next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as u64);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("texture.readback"),
            size: stride * rows as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_texture_to_buffer(
            tex.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &staging,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(stride as u32),
                    rows_per_image: None,
                },
            },
            wgpu::Extent3d {
                width,
                height: rows,
                depth_or_array_layers: 1,
            },
        );
        self.queue.submit([enc.finish()]);
        let bytes = self.map_and_read(&staging, stride * rows as u64)?;
        Ok(bytes
            .chunks(stride as usize)
            .flat_map(|r| r[..row_bytes as usize].to_vec())
            .collect())
    }

    /// Map a MAP_READ buffer whose copy has been submitted, and return its first `bytes`.
    pub fn map_and_read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.map_and_read_after(staging, bytes, None)
    }

    /// [`Self::map_and_read`], waiting only for submission `after` (the one that fills
    /// `staging`; None: every submission so far), not for any submitted since.
    pub fn map_and_read_after(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
        after: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>> {
        let slice = staging.slice(..bytes.next_multiple_of(4));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: after,
                timeout: None,
            })
            .map_err(|e| anyhow!("GPU wait failed: {e}"))?;
        rx.recv()
            .map_err(|_| anyhow!("GPU readback was dropped"))?
            .map_err(|e| anyhow!("GPU readback failed: {e}"))?;
        self.check()?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| anyhow!("GPU readback failed: {e}"))?[..bytes as usize]
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    /// Read `n` f32 values from `src`.
    pub fn read_f32(&self, src: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(src, 0, 4 * n as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Run `f` with every kernel that this thread encodes dispatched over an empty grid: its
    /// pipeline and bind group are set and nothing runs. A request run so
    /// (`Engine::warm_up`) makes every pipeline it needs and has the driver do the compiling
    /// that it defers to a pipeline's first dispatch (lavapipe does), without computing
    /// anything. Requests on other threads, on the same device, compute as usual.
    pub fn with_empty_grids<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Turns the thread's setting back off, also when `f` panics.
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                EMPTY_GRIDS.set(false);
            }
        }
        EMPTY_GRIDS.set(true);
        let _restore = Restore;
        f()
    }

    /// Whether this thread is inside [`Gpu::with_empty_grids`] (its kernels compute nothing).
    pub fn in_empty_grids(&self) -> bool {
        EMPTY_GRIDS.get()
    }

    /// Encode `kernels` in order into `pass` (over empty grids inside
    /// [`Gpu::with_empty_grids`] on this thread).
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        kernels: &[&super::Kernel],
    ) -> Result<()> {
        let empty = EMPTY_GRIDS.get();
        for k in kernels {
            k.encode(pass, empty)?;
        }
        Ok(())
    }

    /// Encode `kernels` in order into one compute pass, submit, and wait.
    pub fn run(&self, kernels: &[&super::Kernel]) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.encode(&mut pass, kernels)?;
        }
        self.queue.submit([enc.finish()]);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("GPU wait failed: {e}"))?;
        self.check()
    }

    /// Seconds of the fastest of `tries` runs of `kernels` (one pass each, as [`Gpu::run`]),
    /// after one run that compiles and warms: what the probe examples time.
    pub fn best_run_secs(&self, kernels: &[&super::Kernel], tries: usize) -> Result<f64> {
        self.run(kernels)?;
        let mut best = f64::MAX;
        for _ in 0..tries.max(1) {
            let t = std::time::Instant::now();
            self.run(kernels)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    }

    /// Time each kernel label of `kernels`: all dispatches that share a label are run together
    /// `reps` times in one pass. Returns (label, dispatches, ms per run), slowest first.
    pub fn profile(
        &self,
        kernels: &[&super::Kernel],
        reps: usize,
    ) -> Result<Vec<(String, usize, f64)>> {
        let mut labels: Vec<(&str, [u32; 3])> =
            kernels.iter().map(|k| (k.label, k.workgroups)).collect();
        labels.sort();
        labels.dedup();
        let mut out = Vec::new();
        for l in labels {
            let group: Vec<&super::Kernel> = kernels
                .iter()
                .copied()
                .filter(|k| (k.label, k.workgroups) == l)
                .collect();
            self.run(&group)?;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                self.run(&group)?;
            }
            out.push((
                group[0].name(),
                group.len(),
                t.elapsed().as_secs_f64() * 1e3 / reps as f64,
            ));
        }
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(out)
    }

    /// Turn an error that the device reported asynchronously into a `Result`.
    pub fn check(&self) -> Result<()> {
        let slot = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match slot {
            Some(e) => Err(anyhow!("GPU error: {e}")),
            None => Ok(()),
        }
    }
}
