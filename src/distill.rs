//! Distillation: a frozen teacher's logits for the student's loss, live or from the teacher-logit
//! cache.
//!
//! The teacher always runs in inference mode (`Module::valid`: dropout off, no autodiff), so it
//! receives no gradients and its weights never change. Without augmentation the training images
//! are the same every epoch, so the teacher runs once over the training split and its logits are
//! reused every epoch, and across the runs of a sweep through a cache on disk keyed by the teacher
//! checkpoint's hash and the dataset's fingerprint. This is the main speed lever over the Keras
//! reference, which re-runs the teacher at every step.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::Module;
use burn::tensor::{f16, Device, Tensor, TensorData};
use sha2::{Digest, Sha256};

use crate::classifier::Engine;
use crate::data::{batch_order, Augmentation, Split};
use crate::models::checkpoint::{self, write_atomic};
use crate::models::{ModelSpec, Network};
use crate::onnx::ImportOptions;

/// Magic bytes at the start of a logit-cache file.
const CACHE_MAGIC: &[u8; 8] = b"DLOGIT01";
/// Magic bytes at the start of an augmented-view logit-cache file.
const VIEWS_MAGIC: &[u8; 8] = b"DVIEWS01";
/// Largest tolerated difference between a cached f16 logit and the live one, relative to the
/// logit's size (f16 keeps 11 significant bits: a relative rounding error below 2^-11).
pub const VIEWS_RELATIVE_TOLERANCE: f32 = 1e-3;
/// How many cached rows are re-computed live before a disk cache is trusted.
pub const VERIFY_SAMPLE: usize = 64;
/// Largest tolerated difference between cached and live logits.
pub const VERIFY_TOLERANCE: f32 = 1e-5;

/// A teacher loaded for distillation.
#[derive(Debug)]
pub struct Teacher {
    /// What computes its logits: our network in inference mode on a non-autodiff device, or
    /// tract.
    pub engine: Engine,
    /// Identifies the checkpoint (SHA-256 of its weights file).
    pub hash: String,
    /// Input shape the teacher was trained on.
    pub input: [usize; 3],
    /// Its number of output classes.
    pub classes: usize,
    /// What was found when importing an ONNX teacher, for the run's log.
    pub note: Option<String>,
    /// Its architecture, when known (feature methods find its taps there).
    pub spec: Option<ModelSpec>,
}

impl Teacher {
    /// Loads the teacher checkpoint in `dir` onto `device`, in inference mode.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        Self::load_with(dir, &ImportOptions::default(), device)
    }

    /// Loads a teacher from a checkpoint directory, a `.safetensors` file or an `.onnx` file
    /// (imported natively or run on tract, as `options` say), in inference mode.
    pub fn load_with(
        path: &Path,
        options: &ImportOptions,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let plain = device.clone().without_autodiff();
        let model = crate::classifier::load_classifier(path, options, &plain)
            .with_context(|| format!("cannot load the teacher from {}", path.display()))?;
        let note = model.onnx_note(path).map(|n| format!("teacher {n}"));
        Ok(Teacher {
            engine: model.engine.valid(),
            hash: model.hash,
            input: model.input,
            classes: model.outputs,
            note,
            spec: model.spec.clone(),
        })
    }

    /// Rejects data this teacher cannot serve: other image shape or number of classes.
    pub fn check_fits(&self, shape: [usize; 3], classes: usize) -> anyhow::Result<()> {
        if self.input != shape {
            bail!(
                "the teacher was trained on {:?} images but the data has {:?}",
                self.input,
                shape
            );
        }
        if self.classes != classes {
            bail!(
                "the teacher predicts {} classes but the data has {classes}",
                self.classes
            );
        }
        Ok(())
    }

    /// Wraps an in-memory network (already trained) as a teacher.
    pub fn from_network(network: &Network, input: [usize; 3], classes: usize) -> Self {
        let mut hasher = Sha256::new();
        if let Ok(bytes) = network.clone().into_record().into_bytes() {
            hasher.update(&bytes[..]);
        }
        Teacher {
            engine: Engine::Native(network.valid()),
            hash: format!("{:x}", hasher.finalize()),
            input,
            classes,
            note: None,
            spec: None,
        }
    }

    /// The same teacher with its architecture known.
    pub fn with_spec(mut self, spec: ModelSpec) -> Self {
        self.spec = Some(spec);
        self
    }

    /// Logits for `[batch, C, H, W]` images, in inference mode.
    pub fn forward(&self, images: Tensor<4>) -> anyhow::Result<Tensor<2>> {
        self.engine.forward(images.without_autodiff())
    }

    /// Logits for the images of `split` at `indices`, computed now.
    pub fn logits_for(
        &self,
        split: &Split,
        indices: &[usize],
        device: &Device,
    ) -> anyhow::Result<Tensor<2>> {
        let (images, _) = split.batch(indices, device, None);
        self.forward(images)
    }

    /// Logits for the whole split, in index order, as a row-major `[len, classes]` buffer.
    pub fn logits_all(
        &self,
        split: &Split,
        device: &Device,
        progress: bool,
    ) -> anyhow::Result<Vec<f32>> {
        let order = batch_order(split.len(), 256, false, 0, 0);
        let bar = crate::progress::bar(
            crate::distributed::own_share(&order).len() as u64,
            "Teacher logits",
            progress && crate::distributed::is_root(),
        );
        // under MPI each rank runs its share of the batches (see `compute_sharded`)
        let values = crate::distributed::compute_sharded(
            &order,
            |indices| indices.len() * self.classes,
            |indices, values| {
                let data = self.logits_for(split, indices, device)?.into_data();
                values.extend(data.iter::<f32>());
                bar.inc(1);
                Ok(())
            },
            "the teacher logits",
        )?;
        bar.finish_and_clear();
        Ok(values)
    }
}

/// Where a distilled student's teacher logits come from.
pub enum TeacherLogits {
    /// Run the teacher on every batch (needed with augmentation: each epoch sees new images).
    Live(Teacher),
    /// Logits precomputed for every training image, in dataset order.
    Cached {
        /// The teacher checkpoint's hash (for resume checks and reports).
        teacher_hash: String,
        /// Number of classes (row length).
        classes: usize,
        /// `[len, classes]` row-major.
        values: Vec<f32>,
    },
    /// Logits precomputed for each of the fixed augmented views of every training image.
    Views(ViewLogits),
}

/// The teacher's logits for `K` fixed augmented views of every training image (see
/// [`Augmentation::views`]), stored as f16: consistent teaching at the cost of a cache lookup.
#[derive(Debug, Clone)]
pub struct ViewLogits {
    /// The teacher checkpoint's hash.
    pub teacher_hash: String,
    /// Number of classes (row length).
    pub classes: usize,
    /// Views per image (`K`).
    pub views: usize,
    /// The augmentation the views were drawn with.
    pub augmentation: Augmentation,
    /// `[len, K, classes]` row-major.
    pub values: Vec<f16>,
    /// Seconds spent running the teacher over all views (`None` when read from disk).
    pub build_seconds: Option<f64>,
}

impl ViewLogits {
    /// Number of training images covered.
    pub fn len(&self) -> usize {
        self.values.len() / (self.views * self.classes).max(1)
    }

    /// True when no image is covered.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The logits of view `view` of image `index`, as f32.
    pub fn row(&self, index: usize, view: usize) -> impl Iterator<Item = f32> + '_ {
        let start = (index * self.views + view) * self.classes;
        self.values[start..start + self.classes]
            .iter()
            .map(|v| v.to_f32())
    }
}

impl TeacherLogits {
    /// Identifies the teacher (for checkpoint compatibility checks).
    pub fn teacher_id(&self) -> &str {
        match self {
            TeacherLogits::Live(teacher) => &teacher.hash,
            TeacherLogits::Cached { teacher_hash, .. } => teacher_hash,
            TeacherLogits::Views(cache) => &cache.teacher_hash,
        }
    }

    /// Rejects a teacher that cannot serve this training split.
    pub fn check_compatible(&self, train: &Split, classes: usize) -> anyhow::Result<()> {
        let teacher_classes = match self {
            TeacherLogits::Live(teacher) => return teacher.check_fits(train.shape, classes),
            TeacherLogits::Cached {
                classes, values, ..
            } => {
                if values.len() != train.len() * classes {
                    bail!(
                        "the teacher-logit cache holds {} values, expected {} ({} images x {classes} classes)",
                        values.len(),
                        train.len() * classes,
                        train.len()
                    );
                }
                *classes
            }
            TeacherLogits::Views(cache) => {
                if cache.len() != train.len() {
                    bail!(
                        "the augmented-view teacher-logit cache covers {} images, but the training split has {}",
                        cache.len(),
                        train.len()
                    );
                }
                cache.classes
            }
        };
        if teacher_classes != classes {
            bail!("the teacher predicts {teacher_classes} classes but the data has {classes}");
        }
        Ok(())
    }

    /// The teacher's logits for the training images at `indices` (`images` is that batch, used
    /// when running live). The result is a plain (non-autodiff) tensor on `device`.
    pub fn logits(
        &self,
        indices: &[usize],
        images: Tensor<4>,
        device: &Device,
    ) -> anyhow::Result<Tensor<2>> {
        self.logits_at(indices, None, images, device)
    }

    /// As [`TeacherLogits::logits`], for a batch whose image `indices[j]` shows its fixed view
    /// `views[j]` (required by the augmented-view cache, ignored otherwise).
    pub fn logits_at(
        &self,
        indices: &[usize],
        views: Option<&[usize]>,
        images: Tensor<4>,
        device: &Device,
    ) -> anyhow::Result<Tensor<2>> {
        Ok(match self {
            TeacherLogits::Live(teacher) => teacher.forward(images)?,
            TeacherLogits::Views(cache) => {
                let Some(views) = views else {
                    bail!(
                        "the augmented-view teacher-logit cache needs the batch's views: train with `augmentation.views` = {} ({})",
                        cache.views,
                        cache.augmentation.describe()
                    );
                };
                let mut rows = Vec::with_capacity(indices.len() * cache.classes);
                for (&i, &v) in indices.iter().zip(views) {
                    rows.extend(cache.row(i, v));
                }
                Tensor::from_data(
                    TensorData::new(rows, [indices.len(), cache.classes]),
                    device,
                )
            }
            TeacherLogits::Cached {
                classes, values, ..
            } => cached_rows(values, *classes, indices, device),
        })
    }
}

/// The rows `indices` of a row-major `[len, classes]` logit buffer, as a `[indices, classes]` tensor.
pub fn cached_rows(
    values: &[f32],
    classes: usize,
    indices: &[usize],
    device: &Device,
) -> Tensor<2> {
    let mut rows = Vec::with_capacity(indices.len() * classes);
    for &i in indices {
        rows.extend_from_slice(&values[i * classes..(i + 1) * classes]);
    }
    Tensor::from_data(TensorData::new(rows, [indices.len(), classes]), device)
}

/// The cache file for a teacher and a training split.
pub fn cache_path(cache_dir: &Path, teacher_hash: &str, data_fingerprint: &str) -> PathBuf {
    cache_dir.join(format!(
        "logits-{}-{}.bin",
        &teacher_hash[..16.min(teacher_hash.len())],
        &data_fingerprint[..16.min(data_fingerprint.len())]
    ))
}

/// A cache file: magic bytes, string keys (each must match on load), dimensions, the payload,
/// then the SHA-256 of everything before it.
fn encode_container(magic: &[u8; 8], keys: &[&str], dims: &[usize], payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + 8 * dims.len() + payload.len());
    bytes.extend_from_slice(magic);
    for key in keys {
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
    }
    for &d in dims {
        bytes.extend_from_slice(&(d as u64).to_le_bytes());
    }
    bytes.extend_from_slice(payload);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    bytes
}

/// What one key of a cache file identifies, for the error when it differs.
struct CacheKey<'a> {
    value: &'a str,
    mismatch: String,
}

/// Reads a cache file written by [`encode_container`], checking its checksum, that every key
/// matches and that its dimensions are `dims`; returns the payload.
/// Decodes the bytes of a cache file written by [`encode_container`] (read from `path`, which
/// the errors name), checking its checksum, that every key matches, that its dimensions are
/// `dims` and that nothing follows the payload; returns the payload.
fn decode_container(
    bytes: &[u8],
    path: &Path,
    magic: &[u8; 8],
    keys: &[CacheKey],
    dims: &[usize],
    element_bytes: usize,
) -> anyhow::Result<Vec<u8>> {
    let corrupt =
        |what: &str| anyhow::anyhow!("teacher-logit cache {} is unusable: {what}", path.display());
    if bytes.len() < magic.len() + 32 || &bytes[..8] != magic {
        return Err(corrupt("not a logit-cache file (bad magic bytes)"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body)[..] != digest[..] {
        return Err(corrupt("checksum mismatch (truncated or corrupted)"));
    }
    let mut pos: usize = 8;
    let mut take = |n: usize| -> anyhow::Result<&[u8]> {
        let slice = body
            .get(pos..pos.saturating_add(n))
            .ok_or_else(|| corrupt("header truncated"))?;
        pos += n;
        Ok(slice)
    };
    for key in keys {
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        let value = String::from_utf8_lossy(take(len)?).into_owned();
        if value != key.value {
            return Err(corrupt(&key.mismatch.replace("{found}", &value)));
        }
    }
    let mut file_dims = Vec::new();
    for _ in dims {
        file_dims.push(u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize);
    }
    if file_dims != dims {
        let show = |d: &[usize]| d.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
        return Err(corrupt(&format!(
            "it holds {} logits, expected {}",
            show(&file_dims),
            show(dims)
        )));
    }
    let len = dims.iter().product::<usize>() * element_bytes;
    let payload = take(len)?.to_vec();
    if pos != body.len() {
        return Err(corrupt(&format!(
            "{} bytes follow the {len}-byte payload",
            body.len() - pos
        )));
    }
    Ok(payload)
}

fn read_cache_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read teacher-logit cache {}", path.display()))
}

fn encode_cache(
    teacher_hash: &str,
    data_fingerprint: &str,
    rows: usize,
    classes: usize,
    values: &[f32],
) -> Vec<u8> {
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode_container(
        CACHE_MAGIC,
        &[teacher_hash, data_fingerprint],
        &[rows, classes],
        &payload,
    )
}

/// The keys every cache file starts with: the teacher and the training split.
fn teacher_and_data_keys<'a>(
    teacher_hash: &'a str,
    data_fingerprint: &'a str,
) -> [CacheKey<'a>; 2] {
    [
        CacheKey {
            value: teacher_hash,
            mismatch: "it was made by another teacher".into(),
        },
        CacheKey {
            value: data_fingerprint,
            mismatch: "it was made for another dataset".into(),
        },
    ]
}

/// Decodes the bytes of a plain teacher-logit cache file (`path` only names it in errors),
/// checking its checksum and that it holds `rows × classes` logits of this teacher and split.
pub fn decode_logits(
    bytes: &[u8],
    path: &Path,
    teacher_hash: &str,
    data_fingerprint: &str,
    rows: usize,
    classes: usize,
) -> anyhow::Result<Vec<f32>> {
    let payload = decode_container(
        bytes,
        path,
        CACHE_MAGIC,
        &teacher_and_data_keys(teacher_hash, data_fingerprint),
        &[rows, classes],
        4,
    )?;
    Ok(payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Where teacher logits are kept between runs.
#[derive(Debug, Clone, Copy)]
pub enum CacheLocation<'a> {
    /// Computed in memory for this run only.
    Memory,
    /// The default cache directory: the file's name derives from the teacher and the data, and a
    /// file that does not fit this run (corrupt, other teacher, split or augmentation) is derived
    /// data, reported and rebuilt.
    Dir(&'a Path),
    /// A file the user named: used when it fits, created when missing, and an error naming both
    /// settings when it was made for something else.
    File(&'a Path),
}

/// Where the student's teacher logits come from.
#[derive(Debug, Clone, Copy)]
pub enum LogitSource<'a> {
    /// The teacher runs on every batch.
    Live,
    /// Precomputed once and replayed.
    Cache(CacheLocation<'a>),
}

/// The teacher logits a distillation run replays: the live teacher when asked for, or when the
/// augmentation draws fresh transforms every epoch (nothing to cache); the augmented-view cache
/// when the augmentation has fixed `views`; otherwise the plain cache of the un-augmented split.
pub fn teacher_logits(
    teacher: Teacher,
    train: &Split,
    augmentation: Option<&Augmentation>,
    source: LogitSource<'_>,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    let augmentation = augmentation.filter(|aug| !aug.is_identity());
    match (source, augmentation) {
        (LogitSource::Live, _) => Ok(TeacherLogits::Live(teacher)),
        (LogitSource::Cache(location), Some(aug)) if aug.views.is_some() => {
            view_logits(&teacher, train, aug, location, device, progress)
        }
        (LogitSource::Cache(_), Some(_)) => Ok(TeacherLogits::Live(teacher)),
        (LogitSource::Cache(location), None) => {
            cached_logits(&teacher, train, location, device, progress)
        }
    }
}

/// Teacher logits for every un-augmented image of `train`, from `location` when a valid file is
/// there (re-checked on a sample of [`VERIFY_SAMPLE`] images against the live teacher), else
/// computed and written there.
pub fn cached_logits(
    teacher: &Teacher,
    train: &Split,
    location: CacheLocation<'_>,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    let plain = device.clone().without_autodiff();
    let values = load_or_compute_logits(
        LogitKey {
            teacher_hash: &teacher.hash,
            // one SHA-256 pass over the whole split: computed once, passed down
            data_fingerprint: &train.fingerprint(),
            rows: train.len(),
            classes: teacher.classes,
        },
        location,
        |sample| {
            Ok(teacher
                .logits_for(train, sample, &plain)?
                .into_data()
                .iter::<f32>()
                .collect())
        },
        || teacher.logits_all(train, &plain, progress),
    )?;
    Ok(TeacherLogits::Cached {
        teacher_hash: teacher.hash.clone(),
        classes: teacher.classes,
        values,
    })
}

/// What a plain logit cache is made for: one teacher on one training split.
#[derive(Debug, Clone, Copy)]
pub struct LogitKey<'a> {
    /// Identifies the teacher (the SHA-256 of its weights).
    pub teacher_hash: &'a str,
    /// Identifies the examples, in order.
    pub data_fingerprint: &'a str,
    /// Examples.
    pub rows: usize,
    /// Logits per example.
    pub classes: usize,
}

/// The `[rows, classes]` logits `key` names, for any modality: from `location` when a valid file
/// is there (its checksum and keys checked, and [`VERIFY_SAMPLE`] rows re-computed by `live_rows`
/// within [`VERIFY_TOLERANCE`]), else computed by `compute_all` and written there.
pub fn load_or_compute_logits(
    key: LogitKey<'_>,
    location: CacheLocation<'_>,
    live_rows: impl Fn(&[usize]) -> anyhow::Result<Vec<f32>>,
    compute_all: impl FnOnce() -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<Vec<f32>> {
    let path = match location {
        CacheLocation::Memory => None,
        CacheLocation::Dir(dir) => Some(cache_path(dir, key.teacher_hash, key.data_fingerprint)),
        CacheLocation::File(file) => Some(file.to_path_buf()),
    };
    if let Some(path) = path.as_ref().filter(|p| p.is_file()) {
        match read_verified(path, key, &live_rows) {
            Ok(values) => return Ok(values),
            Err(err) if matches!(location, CacheLocation::File(_)) => {
                return Err(err.context(named_cache_mismatch(path, key.teacher_hash, "")))
            }
            Err(err) => eprintln!("warning: {err:#}; recomputing"),
        }
    }
    let values = compute_all()?;
    // under MPI every rank holds the gathered logits; rank 0 writes them
    if let Some(path) = path.filter(|_| crate::distributed::is_root()) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create cache directory {}", parent.display()))?;
        }
        let bytes = encode_cache(
            key.teacher_hash,
            key.data_fingerprint,
            key.rows,
            key.classes,
            &values,
        );
        write_atomic(&path, &bytes)?;
    }
    Ok(values)
}

/// The paragraph for a named cache file that belongs to another run.
fn named_cache_mismatch(path: &Path, teacher_hash: &str, settings: &str) -> String {
    format!(
        "--teacher-logits {} cannot be used with teacher {}{settings}; delete it or name a new file to recompute",
        path.display(),
        &teacher_hash[..16.min(teacher_hash.len())]
    )
}

/// Decodes a cache file and re-checks [`VERIFY_SAMPLE`] of its rows against the live teacher.
fn read_verified(
    path: &Path,
    key: LogitKey<'_>,
    live_rows: &dyn Fn(&[usize]) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<Vec<f32>> {
    let classes = key.classes;
    let bytes = read_cache_file(path)?;
    let values = decode_logits(
        &bytes,
        path,
        key.teacher_hash,
        key.data_fingerprint,
        key.rows,
        classes,
    )?;
    let sample: Vec<usize> = (0..key.rows)
        .step_by((key.rows / VERIFY_SAMPLE).max(1))
        .take(VERIFY_SAMPLE)
        .collect();
    let live = live_rows(&sample)?;
    let max_diff = sample
        .iter()
        .flat_map(|&i| values[i * classes..(i + 1) * classes].iter())
        .zip(live.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    if max_diff > VERIFY_TOLERANCE {
        anyhow::bail!(
            "teacher-logit cache {} differs from the live teacher by {max_diff:.2e} (> {VERIFY_TOLERANCE:.0e})",
            path.display()
        );
    }
    Ok(values)
}

/// The augmented-view cache file for a teacher and a training split. The augmentation settings
/// are inside the file, not in its name, so a run with other settings finds the old file and
/// says why it rebuilds it.
pub fn views_cache_path(cache_dir: &Path, teacher_hash: &str, data_fingerprint: &str) -> PathBuf {
    cache_dir.join(format!(
        "views-{}-{}.bin",
        &teacher_hash[..16.min(teacher_hash.len())],
        &data_fingerprint[..16.min(data_fingerprint.len())]
    ))
}

/// How a cache file's augmentation settings are recorded (and compared).
fn augmentation_key(aug: &Augmentation) -> String {
    aug.describe()
}

/// The teacher's logits for every fixed view of every image of `train` under `aug` (which must
/// have `views`), from `location` when it holds them (re-checked on a sample against the live
/// teacher), else computed and written there.
pub fn view_logits(
    teacher: &Teacher,
    train: &Split,
    aug: &Augmentation,
    location: CacheLocation<'_>,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    aug.validate().map_err(|e| anyhow::anyhow!(e))?;
    let Some(views) = aug.views else {
        bail!(
            "the augmented-view teacher-logit cache needs `augmentation.views` (K views per image)"
        );
    };
    // one SHA-256 pass over the whole split: computed once, passed down
    let fingerprint = train.fingerprint();
    let strict = matches!(location, CacheLocation::File(_));
    let file = match location {
        CacheLocation::Memory => None,
        CacheLocation::Dir(dir) => Some(views_cache_path(dir, &teacher.hash, &fingerprint)),
        CacheLocation::File(file) => Some(file.to_path_buf()),
    };
    let file = file.as_deref();
    if let Some(path) = file.filter(|p| p.is_file()) {
        match read_views_verified(path, teacher, train, &fingerprint, aug, device) {
            Ok(values) => {
                return Ok(TeacherLogits::Views(ViewLogits {
                    teacher_hash: teacher.hash.clone(),
                    classes: teacher.classes,
                    views,
                    augmentation: aug.clone(),
                    values,
                    build_seconds: None,
                }))
            }
            Err(err) if strict => {
                return Err(err.context(named_cache_mismatch(
                    path,
                    &teacher.hash,
                    " and these augmentation settings",
                )))
            }
            Err(err) => eprintln!("warning: {err:#}; rebuilding it"),
        }
    }
    let bytes = (train.len() as u64) * (views as u64) * (teacher.classes as u64) * 2;
    if let Some(dir) = file
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
    {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        checkpoint::ensure_room(
            dir,
            bytes + (1 << 20),
            "the augmented-view teacher-logit cache",
        )?;
    }
    let started = std::time::Instant::now();
    let plain = device.clone().without_autodiff();
    let order = batch_order(train.len(), 256, false, 0, 0);
    let classes = teacher.classes;
    // Every (view, batch) pair, in one process's order; under MPI each rank runs its share (see
    // `compute_sharded`), so the file is the one a single process writes.
    let pairs: Vec<(usize, &Vec<usize>)> = (0..views)
        .flat_map(|view| order.iter().map(move |indices| (view, indices)))
        .collect();
    let bar = crate::progress::bar(
        crate::distributed::own_share(&pairs).len() as u64,
        &format!("Teacher logits, {views} views"),
        progress && crate::distributed::is_root(),
    );
    let rows = crate::distributed::compute_sharded(
        &pairs,
        |(_, indices)| indices.len() * classes,
        |(view, indices), rows| {
            let images = train.view_batch(indices, &vec![*view; indices.len()], aug, &plain);
            rows.extend(teacher.forward(images)?.into_data().iter::<f32>());
            bar.inc(1);
            Ok(())
        },
        "the teacher's view logits",
    )?;
    bar.finish_and_clear();
    let mut values = vec![f16::ZERO; train.len() * views * classes];
    let mut chunks = rows.chunks_exact(classes);
    for (view, indices) in &pairs {
        for &i in indices.iter() {
            let start = (i * views + view) * classes;
            let chunk = chunks.next().expect("one row per image and view");
            for (slot, &v) in values[start..start + classes].iter_mut().zip(chunk) {
                *slot = f16::from_f32(v);
            }
        }
    }
    let build_seconds = started.elapsed().as_secs_f64();
    if let Some(path) = file.filter(|_| crate::distributed::is_root()) {
        let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let aug_key = augmentation_key(aug);
        write_atomic(
            path,
            &encode_container(
                VIEWS_MAGIC,
                &[&teacher.hash, &fingerprint, &aug_key],
                &[train.len(), views, classes],
                &payload,
            ),
        )?;
    }
    Ok(TeacherLogits::Views(ViewLogits {
        teacher_hash: teacher.hash.clone(),
        classes,
        views,
        augmentation: aug.clone(),
        values,
        build_seconds: Some(build_seconds),
    }))
}

/// Decodes the bytes of an augmented-view cache file (`path` only names it in errors), checking
/// its checksum and that it holds `rows × K × classes` f16 logits of this teacher, split and
/// augmentation (`K` = `aug.views`).
pub fn decode_view_logits(
    bytes: &[u8],
    path: &Path,
    teacher_hash: &str,
    data_fingerprint: &str,
    aug: &Augmentation,
    rows: usize,
    classes: usize,
) -> anyhow::Result<Vec<f16>> {
    let views = aug.views.unwrap_or(1);
    let aug_key = augmentation_key(aug);
    let [teacher_key, data_key] = teacher_and_data_keys(teacher_hash, data_fingerprint);
    let keys = [
        teacher_key,
        data_key,
        CacheKey {
            value: &aug_key,
            mismatch: format!(
                "it was made with other augmentation settings ({{found}}); this run uses {aug_key}"
            ),
        },
    ];
    let payload = decode_container(bytes, path, VIEWS_MAGIC, &keys, &[rows, views, classes], 2)?;
    Ok(payload
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Decodes an augmented-view cache file and re-checks [`VERIFY_SAMPLE`] (image, view) pairs
/// against the live teacher, within the f16 rounding of [`VIEWS_RELATIVE_TOLERANCE`].
fn read_views_verified(
    path: &Path,
    teacher: &Teacher,
    train: &Split,
    fingerprint: &str,
    aug: &Augmentation,
    device: &Device,
) -> anyhow::Result<Vec<f16>> {
    let views = aug.views.unwrap_or(1);
    let classes = teacher.classes;
    let bytes = read_cache_file(path)?;
    let values = decode_view_logits(
        &bytes,
        path,
        &teacher.hash,
        fingerprint,
        aug,
        train.len(),
        classes,
    )?;
    let cache = ViewLogits {
        teacher_hash: teacher.hash.clone(),
        classes,
        views,
        augmentation: aug.clone(),
        values,
        build_seconds: None,
    };
    let step = (train.len() / VERIFY_SAMPLE).max(1);
    let sample: Vec<usize> = (0..train.len()).step_by(step).take(VERIFY_SAMPLE).collect();
    let sample_views: Vec<usize> = sample.iter().map(|&i| (i / step) % views).collect();
    let plain = device.clone().without_autodiff();
    let live = teacher
        .forward(train.view_batch(&sample, &sample_views, aug, &plain))?
        .into_data();
    let live = live.as_slice::<f32>().expect("f32 logits");
    for (j, (&i, &v)) in sample.iter().zip(&sample_views).enumerate() {
        for (cached, &fresh) in cache.row(i, v).zip(&live[j * classes..(j + 1) * classes]) {
            if (cached - fresh).abs() > VIEWS_RELATIVE_TOLERANCE * fresh.abs().max(1.0) {
                bail!(
                    "teacher-logit cache {} differs from the live teacher on view {v} of image {i}: {cached} vs {fresh}",
                    path.display()
                );
            }
        }
    }
    Ok(cache.values)
}
