//! ONNX in and out: export a trained network for any runtime, and import an ONNX classifier
//! (from PyTorch, Keras/tf2onnx, JAX...) as a native network, so a teacher trained elsewhere
//! runs on our own kernels.

pub mod export;
pub mod import;
pub mod proto;
#[cfg(feature = "tract")]
pub mod tract;

use std::str::FromStr;

pub use export::to_onnx_bytes;
pub use import::{
    import_bytes, import_file, GraphHeader, ImportOptions, ImportedModel, OutputKind,
};

/// Metadata key under which an export stores its model spec (TOML).
pub const SPEC_KEY: &str = "distill.spec";
/// Metadata key under which an export stores its class names (a JSON array).
pub const CLASSES_KEY: &str = "distill.classes";

/// Which engine runs an ONNX classifier.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// Native import when every node maps onto our layers (our kernels, fastest), tract otherwise.
    #[default]
    Auto,
    /// Native import only: an unsupported graph is an error.
    Native,
    /// tract, even for a graph the native importer could map.
    Tract,
}

impl EngineChoice {
    /// `native`, `tract` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Native => "native",
            EngineChoice::Tract => "tract",
        }
    }
}

/// Memory layout of an image batch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[batch, channels, height, width]` (PyTorch, ONNX's own operators, `distill`).
    Nchw,
    /// `[batch, height, width, channels]` (TensorFlow/Keras exports).
    Nhwc,
}

impl Layout {
    /// `NCHW` or `NHWC`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

/// Per-channel input normalisation `(x - mean) / std`, applied to our `[0, 1]` pixels before a
/// model trained on normalised inputs (PyTorch's ImageNet-style mean/std).
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// One value, or one per channel.
    pub mean: Vec<f32>,
    /// One value, or one per channel; all positive.
    pub std: Vec<f32>,
}

impl Normalization {
    /// Mean and std for `channels` channels (a single value applies to all).
    pub fn per_channel(&self, channels: usize) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        let expand = |values: &[f32], what: &str| -> anyhow::Result<Vec<f32>> {
            match values.len() {
                1 => Ok(vec![values[0]; channels]),
                n if n == channels => Ok(values.to_vec()),
                n => anyhow::bail!(
                    "--teacher-normalize gives {n} {what} values for a {channels}-channel input (give 1 or {channels})"
                ),
            }
        };
        Ok((expand(&self.mean, "mean")?, expand(&self.std, "std")?))
    }
}

impl FromStr for Normalization {
    type Err = String;

    /// `mean=0.485,0.456,0.406;std=0.229,0.224,0.225` (or `mean=0.5,std=0.5`, where each key's
    /// values run until the next key).
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "expected `mean=M[,M,M],std=S[,S,S]`, e.g. mean=0.485,0.456,0.406,std=0.229,0.224,0.225";
        let mut mean = Vec::new();
        let mut std = Vec::new();
        let mut target: Option<&mut Vec<f32>> = None;
        for part in text
            .split([',', ';'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let value = match part.split_once('=') {
                Some(("mean", v)) => {
                    target = Some(&mut mean);
                    v
                }
                Some(("std", v)) => {
                    target = Some(&mut std);
                    v
                }
                Some((key, _)) => return Err(format!("unknown key `{key}`: {usage}")),
                None => part,
            };
            let Some(list) = target.as_mut() else {
                return Err(format!("`{part}` comes before any key: {usage}"));
            };
            let v: f32 = value
                .trim()
                .parse()
                .map_err(|_| format!("`{value}` is not a number: {usage}"))?;
            if !v.is_finite() {
                return Err(format!("`{value}` is not finite: {usage}"));
            }
            list.push(v);
        }
        if mean.is_empty() || std.is_empty() {
            return Err(format!("both mean and std are needed: {usage}"));
        }
        if let Some(s) = std.iter().find(|s| **s <= 0.0) {
            return Err(format!("std {s} must be positive: {usage}"));
        }
        Ok(Normalization { mean, std })
    }
}
