//! A trained classifier from any of the files `distill` reads: a checkpoint directory, an ONNX
//! model (imported natively) or a safetensors file written by `distill export`. Teachers, `eval`
//! and `predict` load through here.

/// Where a loaded classifier came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A `distill` checkpoint directory.
    Checkpoint,
    /// A safetensors file written by `distill export`.
    Safetensors,
    /// An ONNX file, imported natively.
    Onnx {
        /// The input layout found (or given).
        layout: crate::onnx::Layout,
        /// Whether a final softmax was dropped.
        output_kind: crate::onnx::OutputKind,
        /// Parameters: the sum of the file's initializers.
        params: usize,
    },
}

/// A trained classifier from a checkpoint directory or an `.onnx` file.
#[derive(Debug)]
pub struct Classifier {
    /// Its architecture (for an ONNX file: the equivalent spec).
    pub spec: crate::models::ModelSpec,
    /// The network with its weights.
    pub network: crate::models::Network,
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
            spec: loaded.spec,
            network: loaded.network,
            hash: loaded.sha256,
            origin: Origin::Safetensors,
        });
    }
    if !is_onnx(path) {
        let loaded = crate::models::checkpoint::load(path, device)?;
        return Ok(Classifier {
            outputs: loaded.meta.classes.len(),
            classes: Some(loaded.meta.classes),
            input: loaded.meta.input,
            spec: loaded.spec,
            network: loaded.network,
            hash: crate::models::checkpoint::weights_hash(path)?,
            origin: Origin::Checkpoint,
        });
    }
    let imported = crate::onnx::import_file(path, options, device)?;
    // the file's SHA-256 keys the caches; the same file read another way (a normalisation, a
    // forced layout) is another function of the pixels, so those are mixed in
    let hash = if options.normalize.is_none() && options.layout.is_none() {
        imported.sha256.clone()
    } else {
        let mut hasher = Sha256::new();
        hasher.update(imported.sha256.as_bytes());
        if let Some(norm) = &options.normalize {
            hasher.update(format!("normalize {:?} {:?}", norm.mean, norm.std).as_bytes());
        }
        hasher.update(imported.layout.name().as_bytes());
        format!("{:x}", hasher.finalize())
    };
    Ok(Classifier {
        spec: imported.spec,
        network: imported.network,
        input: imported.input,
        classes: imported.classes,
        outputs: imported.outputs,
        hash,
        origin: Origin::Onnx {
            layout: imported.layout,
            output_kind: imported.output_kind,
            params: imported.params,
        },
    })
}
