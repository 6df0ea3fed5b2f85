//! Models: a Keras-like layer spec with residual stages ([`spec`]), the zoo of named models
//! ([`zoo`]), the burn network built from a spec ([`network`], [`residual`]), per-layer
//! summaries and checkpoints ([`checkpoint`]), weights from safetensors files ([`safetensors`])
//! and PyTorch checkpoints ([`pytorch`]); for text, a BERT-family encoder loadable from Hugging
//! Face files ([`bert`]).

pub mod bert;
pub mod bilstm;
pub mod checkpoint;
pub mod network;
pub mod pretrained;
pub mod pytorch;
pub mod residual;
pub mod safetensors;
pub mod spec;
pub mod summary;
pub mod text;
pub mod zoo;

pub use network::Network;
pub use spec::{LayerSpec, ModelSpec, ModelStats, Padding};

use std::path::Path;

/// Resolves a model argument: a zoo name, a spec TOML file, or a checkpoint directory (its spec).
pub fn resolve_spec(name_or_path: &str) -> anyhow::Result<ModelSpec> {
    if let Some(spec) = zoo::get(name_or_path) {
        return Ok(spec);
    }
    let path = Path::new(name_or_path);
    if path.is_dir() {
        return checkpoint::read_spec(path);
    }
    if path.is_file() {
        return ModelSpec::from_file(path);
    }
    anyhow::bail!(
        "unknown model `{name_or_path}`: expected a zoo name ({}), a spec .toml file or a checkpoint directory",
        zoo::NAMES.join(", ")
    )
}
