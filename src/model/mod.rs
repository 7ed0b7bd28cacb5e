//! The model: configs, the CLIP vision tower, the LLaVA projector and the Llama decoder.

pub mod clip;
pub mod config;
pub mod llama;
pub mod llava;
