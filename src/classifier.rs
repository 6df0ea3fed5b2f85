//! A trained classifier from any of the files `distill` reads: a checkpoint directory, an ONNX
//! model (imported natively, or run by tract when its graph is outside our layers) or a
//! safetensors file. Teachers, `eval` and `predict` load through here and only ever ask for
//! logits, so they do not care which engine runs the model.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::models::{ModelSpec, ModelStats, Network};

/// Where a loaded classifier came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A `distill` checkpoint directory.
    Checkpoint,
    /// A safetensors file written by `distill export`.
    Safetensors,
    /// A PyTorch checkpoint (`torch.save` of a state dict).
    PyTorch,
    /// An ONNX file, imported natively or run by tract.
    Onnx {
        /// The engine that runs it.
        engine: crate::onnx::EngineChoice,
        /// The input layout found (or given).
        layout: crate::onnx::Layout,
        /// Whether a final softmax was dropped.
        output_kind: crate::onnx::OutputKind,
        /// Parameters: the sum of the file's initializers.
        params: usize,
        /// Why the native importer could not map the graph, when tract runs it instead.
        native_failure: Option<String>,
    },
}

/// What computes a classifier's logits.
#[derive(Debug, Clone)]
pub enum Engine {
    /// One of our networks (from a checkpoint, a safetensors file or a natively imported ONNX
    /// file).
    Native(Network),
    /// An ONNX graph outside our layer vocabulary, run by tract (inference only).
    #[cfg(feature = "tract")]
    Tract(std::sync::Arc<crate::onnx::tract::TractModel>),
}

impl Engine {
    /// The native network, if this is one.
    pub fn network(&self) -> Option<&Network> {
        match self {
            Engine::Native(network) => Some(network),
            #[cfg(feature = "tract")]
            Engine::Tract(_) => None,
        }
    }

    /// The same engine in inference mode (a native network without autodiff).
    pub fn valid(&self) -> Engine {
        match self {
            Engine::Native(network) => Engine::Native(network.valid()),
            #[cfg(feature = "tract")]
            Engine::Tract(model) => Engine::Tract(model.clone()),
        }
    }

    /// Logits for `[batch, C, H, W]` images in `[0, 1]`, in inference mode.
    pub fn forward(&self, images: Tensor<4>) -> anyhow::Result<Tensor<2>> {
        match self {
            Engine::Native(network) => Ok(network.forward(images)),
            #[cfg(feature = "tract")]
            Engine::Tract(model) => model.forward(images),
        }
    }
}

/// A trained classifier from a checkpoint directory or an `.onnx` file.
#[derive(Debug)]
pub struct Classifier {
    /// Its architecture (for an ONNX file imported natively: the equivalent spec); `None` for a
    /// graph run by tract.
    pub spec: Option<ModelSpec>,
    /// What computes its logits.
    pub engine: Engine,
    /// Input C×H×W.
    pub input: [usize; 3],
    /// Class names, when known (a checkpoint, or an ONNX file exported by `distill`).
    pub classes: Option<Vec<String>>,
    /// Number of outputs.
    pub outputs: usize,
    /// Identifies the weights (and, for ONNX, the import options): keys the teacher-logit caches.
    pub hash: String,
    /// Checkpoint or ONNX.
    pub origin: Origin,
}

/// Whether `path` names an ONNX file rather than a checkpoint directory.
pub fn is_onnx(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads a checkpoint directory, or imports an `.onnx` file with `options`.
pub fn load_classifier(
    path: &std::path::Path,
    options: &crate::onnx::ImportOptions,
    device: &burn::tensor::Device,
) -> anyhow::Result<Classifier> {
    use anyhow::Context;
    use sha2::{Digest, Sha256};
    if crate::models::safetensors::is_safetensors(path) {
        let spec = options
            .spec
            .as_deref()
            .map(crate::models::resolve_spec)
            .transpose()
            .context("--spec")?;
        let loaded =
            crate::models::safetensors::load(path, spec.as_ref(), options.expected_input, device)?;
        let outputs = loaded
            .spec
            .num_outputs(loaded.input)
            .with_context(|| format!("model spec of {}", path.display()))?;
        return Ok(Classifier {
            outputs,
            classes: loaded.classes,
            input: loaded.input,
            spec: Some(loaded.spec),
            engine: Engine::Native(loaded.network),
            hash: loaded.sha256,
            origin: Origin::Safetensors,
        });
    }
    if crate::models::pytorch::is_pytorch(path) {
        let Some(spec) = options.spec.as_deref() else {
            anyhow::bail!(
                "{} is a PyTorch checkpoint: give the architecture its state dict follows with --spec (a zoo name such as resnet56 or resnet56-proj, or a spec .toml)",
                path.display()
            );
        };
        let spec = crate::models::resolve_spec(spec).context("--spec")?;
        let Some(input) = options.expected_input else {
            anyhow::bail!(
                "{}: a PyTorch checkpoint does not record its input shape; it comes from the data (--data)",
                path.display()
            );
        };
        let loaded =
            crate::models::pytorch::load(path, &spec, input, options.normalize.as_ref(), device)?;
        let hash = match &options.normalize {
            None => loaded.sha256,
            Some(norm) => {
                let mut hasher = Sha256::new();
                hasher.update(loaded.sha256.as_bytes());
                hasher.update(format!("normalize {:?} {:?}", norm.mean, norm.std).as_bytes());
                format!("{:x}", hasher.finalize())
            }
        };
        return Ok(Classifier {
            outputs: loaded.classes,
            classes: None,
            input,
            spec: Some(loaded.spec),
            engine: Engine::Native(loaded.network),
            hash,
            origin: Origin::PyTorch,
        });
    }
    if !is_onnx(path) {
        let loaded = crate::models::checkpoint::load(path, device)?;
        return Ok(Classifier {
            outputs: loaded.meta.classes.len(),
            classes: Some(loaded.meta.classes),
            input: loaded.meta.input,
            spec: Some(loaded.spec),
            engine: Engine::Native(loaded.network),
            hash: crate::models::checkpoint::weights_hash(path)?,
            origin: Origin::Checkpoint,
        });
    }
    let onnx = load_onnx(path, options, device)?;
    // the file's SHA-256 keys the caches; the same file read another way (a normalisation, a
    // forced layout) is another function of the pixels, so those are mixed in
    let hash = if options.normalize.is_none() && options.layout.is_none() {
        onnx.header.sha256.clone()
    } else {
        let mut hasher = Sha256::new();
        hasher.update(onnx.header.sha256.as_bytes());
        if let Some(norm) = &options.normalize {
            hasher.update(format!("normalize {:?} {:?}", norm.mean, norm.std).as_bytes());
        }
        hasher.update(onnx.header.layout.name().as_bytes());
        format!("{:x}", hasher.finalize())
    };
    Ok(Classifier {
        spec: onnx.spec,
        engine: onnx.engine,
        input: onnx.header.input,
        classes: onnx
            .header
            .classes
            .filter(|c| c.len() == onnx.header.outputs),
        outputs: onnx.header.outputs,
        hash,
        origin: Origin::Onnx {
            engine: onnx.engine_used,
            layout: onnx.header.layout,
            output_kind: onnx.header.output_kind,
            params: onnx.header.params,
            native_failure: onnx.native_failure,
        },
    })
}

/// An ONNX file loaded by one of the two engines.
struct LoadedOnnx {
    spec: Option<ModelSpec>,
    engine: Engine,
    engine_used: crate::onnx::EngineChoice,
    header: crate::onnx::import::GraphHeader,
    native_failure: Option<String>,
}

/// Imports an ONNX file natively when its graph maps onto our layers, and otherwise (or when
/// asked) runs it on tract.
fn load_onnx(
    path: &std::path::Path,
    options: &crate::onnx::ImportOptions,
    device: &burn::tensor::Device,
) -> anyhow::Result<LoadedOnnx> {
    use crate::onnx::{import, EngineChoice};
    use anyhow::Context;
    let (bytes, name) = import::read_file(path)?;
    let context = || format!("ONNX model {}", path.display());
    let model = import::decode(&bytes).with_context(context)?;
    let mut header = import::read_header(&model, &bytes, options).with_context(context)?;
    let native_failure = if options.engine == EngineChoice::Tract {
        None
    } else {
        match import::import_model(&model, &header, &name, options, device) {
            Ok(imported) => {
                header.outputs = imported.outputs;
                header.output_kind = imported.output_kind;
                return Ok(LoadedOnnx {
                    spec: Some(imported.spec),
                    engine: Engine::Native(imported.network),
                    engine_used: EngineChoice::Native,
                    header,
                    native_failure: None,
                });
            }
            Err(e) if options.engine == EngineChoice::Native || !cfg!(feature = "tract") => {
                return Err(e).with_context(context);
            }
            Err(e) => Some(format!("{e:#}")),
        }
    };
    run_on_tract(&bytes, header, options, native_failure).with_context(context)
}

#[cfg(feature = "tract")]
fn run_on_tract(
    bytes: &[u8],
    header: crate::onnx::import::GraphHeader,
    options: &crate::onnx::ImportOptions,
    native_failure: Option<String>,
) -> anyhow::Result<LoadedOnnx> {
    let model = crate::onnx::tract::TractModel::load(bytes, header, options).map_err(|e| {
        match &native_failure {
            Some(native) => e.context(format!(
                "the native importer cannot map it ({native}), and tract cannot run it either"
            )),
            None => e,
        }
    })?;
    Ok(LoadedOnnx {
        spec: None,
        header: model.header().clone(),
        engine: Engine::Tract(std::sync::Arc::new(model)),
        engine_used: crate::onnx::EngineChoice::Tract,
        native_failure,
    })
}

#[cfg(not(feature = "tract"))]
fn run_on_tract(
    _bytes: &[u8],
    _header: crate::onnx::import::GraphHeader,
    _options: &crate::onnx::ImportOptions,
    _native_failure: Option<String>,
) -> anyhow::Result<LoadedOnnx> {
    anyhow::bail!("this build has no tract engine (build with `--features tract`)")
}

impl Classifier {
    /// Parameters and weight bytes (a graph run by tract: the sum of its initializers, FLOPs
    /// not counted).
    pub fn stats(&self) -> anyhow::Result<ModelStats> {
        match (&self.spec, &self.origin) {
            (Some(spec), _) => Ok(spec.stats(self.input)?),
            (None, Origin::Onnx { params, .. }) => Ok(ModelStats {
                params: *params,
                trainable: *params,
                flops: 0,
                bytes: params * 4,
            }),
            (None, _) => anyhow::bail!("a classifier without a spec must come from an ONNX file"),
        }
    }

    /// Dropout rates of its dropout layers (none for a graph run by tract).
    pub fn dropout_rates(&self) -> Vec<f64> {
        self.spec
            .as_ref()
            .map(ModelSpec::dropout_rates)
            .unwrap_or_default()
    }

    /// Logits for `[batch, C, H, W]` images in `[0, 1]`, in inference mode.
    pub fn forward(&self, images: Tensor<4>) -> anyhow::Result<Tensor<2>> {
        self.engine.forward(images)
    }

    /// Mean cross-entropy and accuracy on `split`.
    pub fn evaluate(
        &self,
        split: &crate::data::Split,
        device: &burn::tensor::Device,
        batch_size: usize,
    ) -> anyhow::Result<(f64, f64)> {
        match &self.engine {
            Engine::Native(network) => {
                Ok(crate::train::evaluate(network, split, device, batch_size))
            }
            #[cfg(feature = "tract")]
            Engine::Tract(_) => {
                crate::train::evaluate_images_with(split, device, batch_size, |images| {
                    self.forward(images)
                })
            }
        }
    }

    /// One line on an ONNX file: its layout, size, output and the engine that runs it (`None`
    /// for other files).
    pub fn onnx_note(&self, path: &std::path::Path) -> Option<String> {
        let Origin::Onnx {
            engine,
            layout,
            output_kind,
            params,
            native_failure,
        } = &self.origin
        else {
            return None;
        };
        let output = match output_kind {
            crate::onnx::OutputKind::Logits => "logits",
            crate::onnx::OutputKind::SoftmaxDropped => {
                "logits (the final softmax was dropped: its input is the logits)"
            }
            crate::onnx::OutputKind::Probabilities => {
                "probabilities (a final softmax), taken as log-probabilities"
            }
        };
        let how = match (engine, native_failure) {
            (crate::onnx::EngineChoice::Tract, Some(why)) => {
                format!("run on tract (the native importer cannot map it: {why})")
            }
            (crate::onnx::EngineChoice::Tract, None) => "run on tract".to_string(),
            _ => "imported natively".to_string(),
        };
        Some(format!(
            "{}: ONNX, {} input {:?}, {params} parameters, {} outputs, {output}; {how}",
            path.display(),
            layout.name(),
            self.input,
            self.outputs
        ))
    }
}
