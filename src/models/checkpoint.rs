//! Model checkpoints: a directory holding the spec (`spec.toml`), the weights (`model.bpk`, burn's
//! burnpack format) and metadata (`meta.json`), so a saved model reloads without knowing its
//! architecture in advance.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ModelSpec, Network};

/// File holding the model spec inside a checkpoint directory.
pub const SPEC_FILE: &str = "spec.toml";
/// File holding the weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// File holding [`ModelMeta`] inside a checkpoint directory.
pub const META_FILE: &str = "meta.json";
/// File holding the SHA-256 of the other files of a checkpoint directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The files of a model checkpoint.
pub const MODEL_FILES: [&str; 3] = [SPEC_FILE, WEIGHTS_FILE, META_FILE];

/// What a checkpoint records besides the spec and the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// Checkpoint layout version.
    pub format: u32,
    /// Input shape (C, H, W) the network was built for.
    pub input: [usize; 3],
    /// Class names of the dataset it was trained on (index = logit).
    pub classes: Vec<String>,
    /// Parameter count, for a quick consistency check.
    pub params: usize,
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Saves a model checkpoint into `dir` (created if needed).
pub fn save(
    dir: &Path,
    spec: &ModelSpec,
    meta: &ModelMeta,
    network: &Network,
) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create checkpoint directory {}", dir.display()))?;
    write_weights(&dir.join(WEIGHTS_FILE), network)?;
    write_atomic(&dir.join(SPEC_FILE), spec.to_toml_string().as_bytes())?;
    write_atomic(
        &dir.join(META_FILE),
        serde_json::to_string_pretty(meta)?.as_bytes(),
    )?;
    write_manifest(dir, &MODEL_FILES)
}

/// Bytes free for an unprivileged writer on the file system holding `dir` (which must exist).
#[cfg(unix)]
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` a properly sized out-parameter.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

/// Free space is not checked where there is no `statvfs`.
#[cfg(not(unix))]
pub fn available_bytes(_dir: &Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Fails early, before any training, when `dir` cannot hold `needed` more bytes: a run that would
/// die at its first checkpoint should say so before it spends an epoch.
pub fn ensure_room(dir: &Path, needed: u64, what: &str) -> anyhow::Result<()> {
    let free = available_bytes(dir)
        .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    if free < needed {
        anyhow::bail!(
            "{} has {} free but {what} needs about {}; free some space or choose another --out",
            dir.display(),
            human_bytes(free),
            human_bytes(needed)
        );
    }
    Ok(())
}

/// Bytes as a short human-readable size ("12.3 MB").
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Records the SHA-256 of `files` (names inside `dir`) in `dir/manifest.json`.
pub fn write_manifest(dir: &Path, files: &[&str]) -> anyhow::Result<()> {
    let mut entries = std::collections::BTreeMap::new();
    for name in files {
        entries.insert(name.to_string(), sha256_file(&dir.join(name))?);
    }
    write_atomic(
        &dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&entries)?.as_bytes(),
    )
}

/// Checks every file listed in `dir/manifest.json` against its checksum; the error names the
/// first missing or corrupt file. A directory without a manifest (older layout) passes.
pub fn verify_manifest(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(MANIFEST_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let entries: std::collections::BTreeMap<String, String> = serde_json::from_str(&text)
        .with_context(|| format!("checkpoint manifest {} is corrupt", path.display()))?;
    for (name, expected) in entries {
        let file = dir.join(&name);
        if !file.is_file() {
            anyhow::bail!(
                "checkpoint file {} is missing (listed in {})",
                file.display(),
                path.display()
            );
        }
        if sha256_file(&file)? != expected {
            anyhow::bail!(
                "checkpoint file {} is corrupt: its SHA-256 differs from the one recorded in {}",
                file.display(),
                path.display()
            );
        }
    }
    Ok(())
}

fn require(dir: &Path, file: &str) -> anyhow::Result<PathBuf> {
    if !dir.is_dir() {
        anyhow::bail!("checkpoint directory {} does not exist", dir.display());
    }
    let path = dir.join(file);
    if !path.is_file() {
        anyhow::bail!(
            "{} is not a model checkpoint: {} is missing",
            dir.display(),
            path.display()
        );
    }
    Ok(path)
}

/// Reads the spec of the checkpoint in `dir`.
pub fn read_spec(dir: &Path) -> anyhow::Result<ModelSpec> {
    ModelSpec::from_file(&require(dir, SPEC_FILE)?)
}

/// Reads the metadata of the checkpoint in `dir`.
pub fn read_meta(dir: &Path) -> anyhow::Result<ModelMeta> {
    let path = require(dir, META_FILE)?;
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid checkpoint metadata", path.display()))
}

/// SHA-256 (hex) of the checkpoint's weights file: identifies a trained model.
pub fn weights_hash(dir: &Path) -> anyhow::Result<String> {
    let path = require(dir, WEIGHTS_FILE)?;
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Writes a module's weights as a burnpack file (atomically).
pub fn write_weights<M: Module>(path: &Path, model: &M) -> anyhow::Result<()> {
    let weights = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot serialise weights for {}: {e}", path.display()))?;
    write_atomic(path, &weights)
}

/// Loads weights from a burnpack file into a module of the same architecture (a network built
/// from its spec, a text classifier built from its config). Shape disagreements name the tensor
/// and both shapes.
pub fn load_weights<M: Module>(path: &Path, model: M) -> anyhow::Result<M> {
    let record = ModuleRecord::load(path)
        .map_err(|e| anyhow::anyhow!("cannot read weights {}: {e}", path.display()))?;
    model
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("weights {} do not fit the model spec: {e}", path.display()))
}

/// A model loaded from a checkpoint directory.
#[derive(Debug)]
pub struct LoadedModel {
    /// Its architecture.
    pub spec: ModelSpec,
    /// Its metadata.
    pub meta: ModelMeta,
    /// The network with the saved weights, on the requested device.
    pub network: Network,
}

/// Loads the checkpoint in `dir` onto `device`.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<LoadedModel> {
    let spec = read_spec(dir)?;
    verify_manifest(dir)?;
    let meta = read_meta(dir)?;
    let network = Network::init(&spec, meta.input, 0, device)
        .with_context(|| format!("model spec in {}", dir.display()))?;
    let network = load_weights(&require(dir, WEIGHTS_FILE)?, network)?;
    Ok(LoadedModel {
        spec,
        meta,
        network,
    })
}

/// Loads the weights of the checkpoint in `dir` into `network` (built from `spec` for `input`
/// images and `classes` classes) to warm-start a new training run. Refuses a checkpoint of
/// another architecture, naming the first differing layer, or one made for other data; dropout
/// rates may differ (they hold no weights). `dir` may also be a `.safetensors` file whose tensor
/// names follow `spec` (weights trained in PyTorch, or written by `distill export`).
pub fn load_for_warm_start(
    dir: &Path,
    spec: &ModelSpec,
    input: [usize; 3],
    classes: usize,
    network: Network,
) -> anyhow::Result<Network> {
    let context = || format!("--init-from {}", dir.display());
    if super::safetensors::is_safetensors(dir) {
        return super::safetensors::load_weights_into(dir, spec, network).with_context(context);
    }
    if super::pytorch::is_pytorch(dir) {
        let device = network.devices().first().cloned().unwrap_or_default();
        let loaded = super::pytorch::load(dir, spec, input, None, &device).with_context(context)?;
        if loaded.classes != classes {
            anyhow::bail!(
                "--init-from {}: the checkpoint predicts {} classes, but the data has {classes}",
                dir.display(),
                loaded.classes
            );
        }
        return Ok(loaded.network);
    }
    if !dir.is_dir() {
        anyhow::bail!(
            "--init-from {}: checkpoint directory does not exist; expected the --out of an earlier train or distill run",
            dir.display()
        );
    }
    verify_manifest(dir).with_context(context)?;
    let saved = read_spec(dir).with_context(context)?;
    if let Some(difference) = spec.first_weight_difference(&saved) {
        anyhow::bail!(
            "--init-from {}: the checkpoint's model `{}` differs from `{}`: {difference} (\"here\" is the model being trained)",
            dir.display(),
            saved.name,
            spec.name
        );
    }
    let meta = read_meta(dir).with_context(context)?;
    if meta.input != input || meta.classes.len() != classes {
        anyhow::bail!(
            "--init-from {}: the checkpoint takes {:?} images and predicts {} classes, but the data has {:?} images and {classes} classes",
            dir.display(),
            meta.input,
            meta.classes.len(),
            input
        );
    }
    load_weights(&require(dir, WEIGHTS_FILE)?, network).with_context(context)
}
