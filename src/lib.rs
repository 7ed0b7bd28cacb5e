//! vlm-run: a vision-language-model inference engine on wgpu.
//!
//! Read it in this order: [`image`] (preprocessing) → [`model::clip`] (vision tower) →
//! [`model::llava`] (projector and prompt assembly) → [`model::llama`] (decoder) →
//! [`generate`] (the token loop). [`gpu`] is the runtime, [`ops`] the kernels' Rust side,
//! `shaders/` the kernels.

pub mod eval;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod image;
pub mod model;
pub mod ops;
pub mod plot;
pub mod profile;
pub mod prompt;
pub mod prune;
pub mod synthetic;
pub mod weights;

pub use generate::{Engine, GenerateOptions, Output, WarmUp};
pub use gpu::GpuOptions;
pub use ops::sample::Sampling;
pub use prune::{Method, PruneOptions};

/// README.md's Rust examples, compiled as doctests (`no_run`: they name models and images
/// that a test machine does not have) so that the library API they show stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
