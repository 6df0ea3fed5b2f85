//! A trained network as a safetensors file with PyTorch-style tensor names, for PyTorch users
//! and for `distill eval/predict --model FILE.safetensors`.
//!
//! Names: `layers.{i}.weight` and `layers.{i}.bias` for a convolution (`[out, in, kH, kW]`),
//! `layers.{i}.linear.weight` (`[out, in]`, as `torch.nn.Linear`) and `layers.{i}.linear.bias` for
//! a dense layer, `layers.{i}.weight`, `.bias`, `.running_mean`, `.running_var` for a batch norm,
//! where `i` is the layer's index in the spec. The metadata holds the spec (`distill.spec`, TOML),
//! the class names (`distill.classes`, JSON) and the input shape (`distill.input`, JSON C×H×W), so
//! the file alone rebuilds the model.

use std::path::Path;

use anyhow::{bail, Context};
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::Device;
use sha2::Digest;

use super::{ModelSpec, Network};

const SPEC_KEY: &str = "distill.spec";
const CLASSES_KEY: &str = "distill.classes";
const INPUT_KEY: &str = "distill.input";

/// Writes `network` (built from `spec` for `input` images, predicting `classes`) to `path`.
pub fn save(
    path: &Path,
    spec: &ModelSpec,
    network: &Network,
    input: [usize; 3],
    classes: &[String],
) -> anyhow::Result<()> {
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .overwrite(true)
        .metadata(SPEC_KEY, spec.to_toml_string())
        .metadata(CLASSES_KEY, serde_json::to_string(classes)?)
        .metadata(INPUT_KEY, serde_json::to_string(&input)?);
    network
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// A model read back from a safetensors file written by [`save`].
#[derive(Debug)]
pub struct SafetensorsModel {
    /// Its architecture.
    pub spec: ModelSpec,
    /// Input C×H×W.
    pub input: [usize; 3],
    /// Class names.
    pub classes: Vec<String>,
    /// The network with the file's weights.
    pub network: Network,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// Reads a safetensors file written by [`save`] onto `device`.
pub fn load(path: &Path, device: &Device) -> anyhow::Result<SafetensorsModel> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a safetensors file ({e}); is it truncated?",
            path.display()
        )
    })?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let field = |key: &str| -> anyhow::Result<&String> {
        metadata.get(key).ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no `{key}` metadata: only files written by `distill export --format safetensors` carry the model spec",
                path.display()
            )
        })
    };
    let spec = ModelSpec::from_toml_str(field(SPEC_KEY)?)
        .with_context(|| format!("model spec in {}", path.display()))?;
    let input: [usize; 3] = serde_json::from_str(field(INPUT_KEY)?)
        .with_context(|| format!("`{INPUT_KEY}` in {}", path.display()))?;
    let classes: Vec<String> = serde_json::from_str(field(CLASSES_KEY)?)
        .with_context(|| format!("`{CLASSES_KEY}` in {}", path.display()))?;
    let mut network = Network::init(&spec, input, 0, device)
        .with_context(|| format!("model spec in {}", path.display()))?;
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true);
    let result = network
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot load the weights of {}: {e}", path.display()))?;
    if !result.is_success() || !result.missing.is_empty() {
        bail!(
            "the weights in {} do not fit its spec: {result}",
            path.display()
        );
    }
    Ok(SafetensorsModel {
        spec,
        input,
        classes,
        network,
        sha256: format!("{:x}", sha2::Sha256::digest(&bytes)),
    })
}
