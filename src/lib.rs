//! vlm-run: a vision-language-model inference engine on wgpu.
//!
//! Read it in this order: [`image`] (preprocessing) → [`model::clip`] (vision tower) →
//! [`model::llava`] (projector and prompt assembly) → [`model::llama`] (decoder) →
//! [`generate`] (the token loop). [`gpu`] is the runtime, [`ops`] the kernels' Rust side,
//! `shaders/` the kernels.

pub mod gpu;
pub mod ops;
