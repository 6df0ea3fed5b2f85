//! Models: a Keras-like layer spec with residual stages ([`spec`]), the zoo of named models
//! ([`zoo`]), the burn network built from a spec ([`network`], [`residual`]), per-layer
//! summaries and checkpoints ([`checkpoint`]), weights from safetensors files ([`safetensors`])
//! and PyTorch checkpoints ([`pytorch`]); for text, a BERT-family encoder loadable from Hugging
//! Face files ([`bert`]).

pub mod bert;
pub mod bilstm;
pub mod checkpoint;
mod direct;
pub mod network;
pub mod pretrained;
pub mod pytorch;
pub mod residual;
pub mod safetensors;
pub mod spec;
pub mod summary;
pub mod taps;
pub mod text;
pub mod zoo;

pub use network::{Feature, Network};
pub use spec::{LayerSpec, ModelSpec, ModelStats, Padding};

use std::path::Path;

/// `spec`, resolved from `name_or_path`, for data with `classes` classes: a zoo model's classifier
/// is sized to them (the zoo's models predict 10); a spec file or a checkpoint stays as written,
/// and a mismatch there is the caller's error to report.
pub fn sized_for(spec: ModelSpec, name_or_path: &str, classes: usize) -> ModelSpec {
    if zoo::get(name_or_path).is_none() {
        return spec;
    }
    spec.with_outputs(classes).unwrap_or(spec)
}

/// [`resolve_spec`], then [`sized_for`] data with `classes` classes.
pub fn resolve_spec_for(name_or_path: &str, classes: usize) -> anyhow::Result<ModelSpec> {
    Ok(sized_for(
        resolve_spec(name_or_path)?,
        name_or_path,
        classes,
    ))
}

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
