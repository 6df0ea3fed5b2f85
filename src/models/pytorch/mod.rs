//! PyTorch checkpoints (`.pth`, `.pt`, `.th`) as models: a state dict saved by `torch.save`,
//! read without Python, mapped onto the network of a spec.
//!
//! - Both `torch.save` formats: the zip archive (PyTorch 1.6 and later) and the legacy pickle
//!   stream, through burn's `pytorch-reader`, which interprets the pickle without running it.
//!   Before that, every pickle in the file passes a whitelist of globals ([`globals`]): tensor
//!   rebuild functions, storage types and `OrderedDict`. Anything else (a pickled model class,
//!   `os.system`) is refused by name.
//! - A bare state dict, or one under `state_dict`, `model` or `net`; `module.` prefixes
//!   (`DataParallel`) are dropped, and so are batch norm's `num_batches_tracked` counters.
//! - Names: the CIFAR-ResNet and torchvision conventions, or ours ([`names`]).
//! - The number of classes comes from the checkpoint's last layer.
//! - A mismatch lists missing and unexpected keys with their shapes, and size mismatches, the
//!   way PyTorch's strict `load_state_dict` does.

pub mod globals;
pub mod names;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use sha2::Digest;

use super::spec::LayerSpec;
use super::{ModelSpec, Network};
use crate::models::network::{batch_norm, Layer};
use crate::onnx::Normalization;

/// Whether `path` names a PyTorch checkpoint (by its extension: `.pth`, `.pt` or `.th`).
pub fn is_pytorch(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        ["pth", "pt", "th"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

/// One tensor of a checkpoint, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// The state dict of a checkpoint, with wrapper keys and `module.` prefixes removed.
#[derive(Debug, Clone)]
pub struct StateDict {
    /// Tensors by name (batch norm's step counters left out).
    pub tensors: BTreeMap<String, TorchTensor>,
    /// The key the state dict was found under (`state_dict`, `model`, `net`), if any.
    pub wrapper: Option<String>,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// The keys a state dict may be wrapped in, in order of preference.
const WRAPPERS: [&str; 3] = ["state_dict", "model", "net"];

/// Reads the state dict of the checkpoint at `path`.
pub fn read_state_dict(path: &Path) -> anyhow::Result<StateDict> {
    let context = || format!("PyTorch checkpoint {}", path.display());
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read PyTorch checkpoint {}: expected a file written by torch.save",
            path.display()
        )
    })?;
    globals::check(&bytes).with_context(context)?;
    let reader = pytorch_reader::PytorchReader::new(path)
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; expected a state dict written by torch.save (zip or legacy format), complete"
            )
        })
        .with_context(context)?;
    let all = reader.into_tensors();
    let wrapper = WRAPPERS
        .iter()
        .find(|w| all.keys().any(|k| k.starts_with(&format!("{w}."))))
        .map(|w| w.to_string());
    let mut tensors = BTreeMap::new();
    for (key, tensor) in all {
        let key = match &wrapper {
            Some(w) => match key.strip_prefix(&format!("{w}.")) {
                Some(rest) => rest.to_string(),
                None => continue,
            },
            None => key,
        };
        let key = key.strip_prefix("module.").unwrap_or(&key).to_string();
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        let values = to_f32(&tensor)
            .with_context(|| format!("tensor `{key}`"))
            .with_context(context)?;
        tensors.insert(
            key,
            TorchTensor {
                shape: tensor.shape().to_vec(),
                values,
            },
        );
    }
    if tensors.is_empty() {
        bail!(
            "{} holds no tensors: expected a state dict (bare, or under `state_dict`, `model` or `net`)",
            context()
        );
    }
    Ok(StateDict {
        tensors,
        wrapper,
        sha256: format!("{:x}", sha2::Sha256::digest(&bytes)),
    })
}

fn to_f32(tensor: &pytorch_reader::Tensor) -> anyhow::Result<Vec<f32>> {
    use pytorch_reader::DType;
    let bytes = tensor
        .read()
        .map_err(|e| anyhow::anyhow!("{e}: the file is incomplete or corrupt"))?;
    Ok(match tensor.dtype() {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!("is {other:?}; expected floating-point weights"),
    })
}

/// A network read from a PyTorch checkpoint.
#[derive(Debug)]
pub struct TorchModel {
    /// The spec, with the checkpoint's number of classes (and the normalisation in front, if
    /// one was asked for).
    pub spec: ModelSpec,
    /// The network with the checkpoint's weights.
    pub network: Network,
    /// Number of classes (the rows of the last layer's weight).
    pub classes: usize,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// Loads the checkpoint at `path` into the network of `spec` for `input` images; `normalize`
/// puts `(x - mean) / std` in front (the inputs the checkpoint was trained on).
pub fn load(
    path: &Path,
    spec: &ModelSpec,
    input: [usize; 3],
    normalize: Option<&Normalization>,
    device: &Device,
) -> anyhow::Result<TorchModel> {
    let state = read_state_dict(path)?;
    let aliases = names::module_aliases(spec);
    let classes = classifier_rows(spec, &state, &aliases);
    let spec = match classes {
        Some(classes) => spec.with_outputs(classes).expect("ends in a dense layer"),
        None => spec.clone(),
    };
    let network = Network::init(&spec, input, 0, device)
        .with_context(|| format!("model spec `{}`", spec.name))?;
    let expected = super::safetensors::tensor_shapes(&network)?;
    let mut used = std::collections::HashSet::new();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut renamed: Vec<(String, TorchTensor)> = Vec::new();
    for (key, shape) in &expected {
        let candidates = names::candidates(&aliases, key);
        match candidates.iter().find(|c| state.tensors.contains_key(*c)) {
            Some(name) => {
                used.insert(name.clone());
                let tensor = &state.tensors[name];
                if &tensor.shape == shape {
                    renamed.push((key.clone(), tensor.clone()));
                } else {
                    mismatched.push(format!(
                        "size mismatch for {name}: copying a param with shape {:?} from checkpoint, the shape in current model is {shape:?}",
                        tensor.shape
                    ));
                }
            }
            None => missing.push(format!("\"{}\" {shape:?}", candidates[0])),
        }
    }
    let unexpected: Vec<String> = state
        .tensors
        .iter()
        .filter(|(name, _)| !used.contains(*name))
        .map(|(name, t)| format!("\"{name}\" {:?}", t.shape))
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        let mut message = format!(
            "the state dict in {} does not fit the model spec `{}` (is --spec right?):",
            path.display(),
            spec.name
        );
        if !missing.is_empty() {
            message += &format!("\n    Missing key(s): {}", missing.join(", "));
        }
        if !unexpected.is_empty() {
            message += &format!("\n    Unexpected key(s): {}", unexpected.join(", "));
        }
        for line in &mismatched {
            message += &format!("\n    {line}");
        }
        bail!(message);
    }
    let network = super::safetensors::load_named_tensors(&renamed, &spec, network)
        .with_context(|| format!("PyTorch checkpoint {}", path.display()))?;
    let outputs = spec.num_outputs(input)?;
    let (spec, network) = match normalize {
        Some(norm) => prepend_normalization(spec, network, norm, input, device)?,
        None => (spec, network),
    };
    Ok(TorchModel {
        spec,
        network,
        classes: outputs,
        sha256: state.sha256,
    })
}

/// The rows of the checkpoint's weight for the spec's last (dense) layer: its classes.
fn classifier_rows(
    spec: &ModelSpec,
    state: &StateDict,
    aliases: &std::collections::HashMap<String, Vec<String>>,
) -> Option<usize> {
    let last = spec.layers.len().checked_sub(1)?;
    if !matches!(spec.layers[last], LayerSpec::Dense { .. }) {
        return None;
    }
    names::candidates(aliases, &format!("layers.{last}.linear.weight"))
        .iter()
        .find_map(|name| state.tensors.get(name))
        .filter(|t| t.shape.len() == 2 && t.shape[0] > 0)
        .map(|t| t.shape[0])
}

/// `spec` and `network` with `(x - mean) / std` in front, as an inference-mode batch norm.
fn prepend_normalization(
    mut spec: ModelSpec,
    mut network: Network,
    norm: &Normalization,
    [c, _, _]: [usize; 3],
    device: &Device,
) -> anyhow::Result<(ModelSpec, Network)> {
    let (mean, std) = norm.per_channel(c)?;
    let variance: Vec<f32> = std.iter().map(|s| s * s).collect();
    // burn refuses a zero epsilon at construction; the normalisation divides by std exactly
    let mut layer = batch_norm(c, 1e-5, 0.01, device);
    layer.epsilon = 0.0;
    let tensor = |values: Vec<f32>| Tensor::<1>::from_data(TensorData::new(values, [c]), device);
    layer.running_mean = RunningState::new(tensor(mean));
    layer.running_var = RunningState::new(tensor(variance));
    layer.gamma = Param::from_tensor(tensor(vec![1.0; c]));
    layer.beta = Param::from_tensor(tensor(vec![0.0; c]));
    spec.layers.insert(
        0,
        LayerSpec::BatchNorm {
            epsilon: Some(0.0),
            momentum: None,
        },
    );
    network.layers.insert(0, Layer::BatchNorm(layer));
    Ok((spec, network))
}
