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
use burn::store::{
    ApplyError, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
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

/// Whether `path` names a safetensors file (by its extension) rather than a checkpoint directory.
pub fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// A model read back from a safetensors file.
#[derive(Debug)]
pub struct SafetensorsModel {
    /// Its architecture.
    pub spec: ModelSpec,
    /// Input C×H×W.
    pub input: [usize; 3],
    /// Class names (from the metadata of a file `distill export` wrote).
    pub classes: Option<Vec<String>>,
    /// The network with the file's weights.
    pub network: Network,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// Reads a safetensors file onto `device`: one written by [`save`], whose metadata holds the spec,
/// input shape and classes; or weights saved elsewhere (PyTorch's
/// `safetensors.torch.save_file(model.state_dict(), …)`) under the names above, given the `spec`
/// they follow and the `input` shape of the data. A given `spec` wins over the metadata's.
pub fn load(
    path: &Path,
    spec: Option<&ModelSpec>,
    input: Option<[usize; 3]>,
    device: &Device,
) -> anyhow::Result<SafetensorsModel> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a safetensors file ({e}); is it truncated?",
            path.display()
        )
    })?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let spec = match (spec, metadata.get(SPEC_KEY)) {
        (Some(spec), _) => spec.clone(),
        (None, Some(text)) => ModelSpec::from_toml_str(text)
            .with_context(|| format!("model spec in {}", path.display()))?,
        (None, None) => bail!(
            "{} has no `{SPEC_KEY}` metadata (it was not written by `distill export`): give the model spec its tensor names follow with --spec (a zoo name or a spec .toml; names: layers.<i>.weight and .bias for a convolution, layers.<i>.linear.weight [out, in] and .bias for a dense layer, layers.<i>.weight, .bias, .running_mean, .running_var for a batch norm, <i> the layer's index in the spec)",
            path.display()
        ),
    };
    let input: [usize; 3] = match (metadata.get(INPUT_KEY), input) {
        (Some(text), _) => serde_json::from_str(text)
            .with_context(|| format!("`{INPUT_KEY}` in {}", path.display()))?,
        (None, Some(input)) => input,
        (None, None) => bail!(
            "{} has no `{INPUT_KEY}` metadata: its input shape comes from the data (--data)",
            path.display()
        ),
    };
    let classes: Option<Vec<String>> = metadata
        .get(CLASSES_KEY)
        .map(|text| serde_json::from_str(text))
        .transpose()
        .with_context(|| format!("`{CLASSES_KEY}` in {}", path.display()))?;
    let network = Network::init(&spec, input, 0, device)
        .with_context(|| format!("model spec in {}", path.display()))?;
    let network = load_weights_into(path, &spec, network)?;
    Ok(SafetensorsModel {
        spec,
        input,
        classes,
        network,
        sha256: format!("{:x}", sha2::Sha256::digest(&bytes)),
    })
}

/// Loads the tensors of the safetensors file at `path` into `network` (built from `spec`): every
/// parameter must be found under its PyTorch-style name, and every tensor of the file used (bar
/// PyTorch's batch-norm step counters). For warm starts from weights trained elsewhere.
pub fn load_weights_into(
    path: &Path,
    spec: &ModelSpec,
    network: Network,
) -> anyhow::Result<Network> {
    load_store_into(
        SafetensorsStore::from_file(path),
        &path.display().to_string(),
        spec,
        network,
    )
}

/// The names and (PyTorch-layout) shapes of `network`'s tensors as [`save`] writes them.
pub fn tensor_shapes(network: &Network) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true);
    network
        .save_into(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot list the model's tensors: {e}"))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| anyhow::anyhow!("cannot list the model's tensors: {e}"))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut shapes: Vec<(String, Vec<usize>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    shapes.sort();
    Ok(shapes)
}

/// Loads `tensors` (f32, under the names and PyTorch-layout shapes of [`tensor_shapes`]) into
/// `network`, built from `spec`.
pub fn load_named_tensors(
    tensors: &[(String, super::pytorch::TorchTensor)],
    spec: &ModelSpec,
    network: Network,
) -> anyhow::Result<Network> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), bytes, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.as_str(), view))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let serialized = safetensors::serialize(views, None)?;
    load_store_into(
        SafetensorsStore::from_bytes(Some(serialized)),
        "the renamed state dict",
        spec,
        network,
    )
}

/// Loads what `store` holds into `network` (see [`load_weights_into`]); `what` names the source
/// in errors.
fn load_store_into(
    store: SafetensorsStore,
    what: &str,
    spec: &ModelSpec,
    mut network: Network,
) -> anyhow::Result<Network> {
    // burn-store's own validation reports in Debug form: collect everything and say it here
    let mut store = store
        .with_from_adapter(PyTorchToBurnAdapter)
        .skip_enum_variants(true)
        .validate(false)
        .allow_partial(true);
    let result = network
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot load the weights of {what}: {e}"))?;
    if let Some(error) = result.errors.first() {
        bail!(
            "the weights in {what} do not fit the model spec `{}`: {}",
            spec.name,
            describe(error)
        );
    }
    // PyTorch's batch norm keeps a step counter that has no counterpart here
    let unused: Vec<&str> = result
        .unused
        .iter()
        .map(String::as_str)
        .filter(|name| !name.ends_with("num_batches_tracked"))
        .collect();
    if !unused.is_empty() {
        bail!(
            "{what} holds tensors the model spec `{}` has no place for: {} (names follow the layer indices of the spec)",
            spec.name,
            unused.join(", ")
        );
    }
    if !result.missing.is_empty() {
        let missing: Vec<&str> = result
            .missing
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        bail!(
            "the weights in {what} do not fit the model spec `{}`: it has no tensor {} (names follow the layer indices of the spec)",
            spec.name,
            missing.join(", ")
        );
    }
    Ok(network)
}

/// One tensor that could not be loaded, in the file's (PyTorch's) terms: a dense layer's weight is
/// `[out, in]` there, `[in, out]` in our networks.
fn describe(error: &ApplyError) -> String {
    match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => {
            let pytorch = |dims: &[usize]| {
                let mut dims = dims.to_vec();
                if path.ends_with("linear.weight") {
                    dims.reverse();
                }
                dims
            };
            format!(
                "tensor `{path}` is {:?} in the file where the spec needs {:?}",
                pytorch(found.as_slice()),
                pytorch(expected.as_slice())
            )
        }
        other => other.to_string(),
    }
}
