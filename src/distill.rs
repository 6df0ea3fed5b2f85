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
use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha256};

use crate::data::{batch_order, Split};
use crate::models::checkpoint::{self, write_atomic, LoadedModel};
use crate::models::Network;

/// Magic bytes at the start of a logit-cache file.
const CACHE_MAGIC: &[u8; 8] = b"DLOGIT01";
/// How many cached rows are re-computed live before a disk cache is trusted.
pub const VERIFY_SAMPLE: usize = 64;
/// Largest tolerated difference between cached and live logits.
pub const VERIFY_TOLERANCE: f32 = 1e-5;

/// A teacher loaded for distillation.
#[derive(Debug)]
pub struct Teacher {
    /// The network in inference mode on a non-autodiff device.
    pub network: Network,
    /// Identifies the checkpoint (SHA-256 of its weights file).
    pub hash: String,
    /// Input shape the teacher was trained on.
    pub input: [usize; 3],
    /// Its number of output classes.
    pub classes: usize,
}

impl Teacher {
    /// Loads the teacher checkpoint in `dir` onto `device`, in inference mode.
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let plain = device.clone().without_autodiff();
        let LoadedModel { meta, network, .. } = checkpoint::load(dir, &plain)
            .with_context(|| format!("cannot load the teacher from {}", dir.display()))?;
        Ok(Teacher {
            network: network.valid(),
            hash: checkpoint::weights_hash(dir)?,
            input: meta.input,
            classes: meta.classes.len(),
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
            network: network.valid(),
            hash: format!("{:x}", hasher.finalize()),
            input,
            classes,
        }
    }

    /// Logits for the images of `split` at `indices`, computed now.
    pub fn logits_for(&self, split: &Split, indices: &[usize], device: &Device) -> Tensor<2> {
        let (images, _) = split.batch(indices, device, None);
        self.network.forward(images)
    }

    /// Logits for the whole split, in index order, as a row-major `[len, classes]` buffer.
    pub fn logits_all(&self, split: &Split, device: &Device, progress: bool) -> Vec<f32> {
        let order = batch_order(split.len(), 256, false, 0, 0);
        let bar = crate::progress::bar(order.len() as u64, "Teacher logits", progress);
        let mut values = Vec::with_capacity(split.len() * self.classes);
        for indices in order {
            let data = self.logits_for(split, &indices, device).into_data();
            values.extend(data.iter::<f32>());
            bar.inc(1);
        }
        bar.finish_and_clear();
        values
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
}

impl TeacherLogits {
    /// Identifies the teacher (for checkpoint compatibility checks).
    pub fn teacher_id(&self) -> &str {
        match self {
            TeacherLogits::Live(teacher) => &teacher.hash,
            TeacherLogits::Cached { teacher_hash, .. } => teacher_hash,
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
        Ok(match self {
            TeacherLogits::Live(teacher) => teacher.network.forward(images.without_autodiff()),
            TeacherLogits::Cached {
                classes, values, ..
            } => {
                let mut rows = Vec::with_capacity(indices.len() * classes);
                for &i in indices {
                    rows.extend_from_slice(&values[i * classes..(i + 1) * classes]);
                }
                Tensor::from_data(TensorData::new(rows, [indices.len(), *classes]), device)
            }
        })
    }
}

/// The cache file for a teacher and a training split.
pub fn cache_path(cache_dir: &Path, teacher_hash: &str, data_fingerprint: &str) -> PathBuf {
    cache_dir.join(format!(
        "logits-{}-{}.bin",
        &teacher_hash[..16.min(teacher_hash.len())],
        &data_fingerprint[..16.min(data_fingerprint.len())]
    ))
}

fn encode_cache(
    teacher_hash: &str,
    data_fingerprint: &str,
    rows: usize,
    classes: usize,
    values: &[f32],
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(80 + values.len() * 4);
    bytes.extend_from_slice(CACHE_MAGIC);
    for key in [teacher_hash, data_fingerprint] {
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
    }
    bytes.extend_from_slice(&(rows as u64).to_le_bytes());
    bytes.extend_from_slice(&(classes as u64).to_le_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    bytes
}

/// Reads a cache file, checking its checksum and that it belongs to this teacher and split.
fn decode_cache(
    path: &Path,
    teacher_hash: &str,
    data_fingerprint: &str,
    rows: usize,
    classes: usize,
) -> anyhow::Result<Vec<f32>> {
    let bytes = fs::read(path)
        .with_context(|| format!("cannot read teacher-logit cache {}", path.display()))?;
    let corrupt =
        |what: &str| anyhow::anyhow!("teacher-logit cache {} is unusable: {what}", path.display());
    if bytes.len() < CACHE_MAGIC.len() + 32 || &bytes[..8] != CACHE_MAGIC {
        return Err(corrupt("not a logit-cache file (bad magic bytes)"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body)[..] != digest[..] {
        return Err(corrupt("checksum mismatch (truncated or corrupted)"));
    }
    let mut pos = 8;
    let mut take = |n: usize| -> anyhow::Result<&[u8]> {
        let slice = body
            .get(pos..pos + n)
            .ok_or_else(|| corrupt("header truncated"))?;
        pos += n;
        Ok(slice)
    };
    let mut keys = Vec::new();
    for _ in 0..2 {
        let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        keys.push(String::from_utf8_lossy(take(len)?).into_owned());
    }
    if keys[0] != teacher_hash {
        return Err(corrupt("it was made by another teacher"));
    }
    if keys[1] != data_fingerprint {
        return Err(corrupt("it was made for another dataset"));
    }
    let file_rows = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
    let file_classes = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
    if (file_rows, file_classes) != (rows, classes) {
        return Err(corrupt(&format!(
            "it holds {file_rows}x{file_classes} logits, expected {rows}x{classes}"
        )));
    }
    let payload = take(rows * classes * 4)?;
    Ok(payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Teacher logits for every image of `train`, from the disk cache in `cache_dir` when a valid one
/// exists (re-checked on a sample of [`VERIFY_SAMPLE`] images against the live teacher), else
/// computed and written there. With `cache_dir = None`, computed in memory only. A cache file that
/// is corrupt or belongs to another teacher or split is derived data: it is reported and rebuilt.
pub fn cached_logits(
    teacher: &Teacher,
    train: &Split,
    cache_dir: Option<&Path>,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    // one SHA-256 pass over the whole split: computed once, passed down
    let fingerprint = train.fingerprint();
    let path = cache_dir.map(|dir| cache_path(dir, &teacher.hash, &fingerprint));
    if let Some(path) = path.as_ref().filter(|p| p.is_file()) {
        match read_verified(path, teacher, train, &fingerprint, device) {
            Ok(values) => return Ok(cached(teacher, values)),
            Err(err) => eprintln!("warning: {err:#}; recomputing"),
        }
    }
    compute_and_store(
        teacher,
        train,
        &fingerprint,
        path.as_deref(),
        device,
        progress,
    )
}

/// Teacher logits read from exactly `file` (the user named it, so a file that does not belong to
/// this teacher and training split is an error, not a cache miss), or computed and written there
/// when it does not exist yet.
pub fn logits_from_file(
    teacher: &Teacher,
    train: &Split,
    file: &Path,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    let fingerprint = train.fingerprint();
    if file.exists() {
        let values = read_verified(file, teacher, train, &fingerprint, device).with_context(|| {
            format!(
                "--teacher-logits {} cannot be used with teacher {}; delete it or name a new file to recompute",
                file.display(),
                &teacher.hash[..16.min(teacher.hash.len())]
            )
        })?;
        return Ok(cached(teacher, values));
    }
    compute_and_store(teacher, train, &fingerprint, Some(file), device, progress)
}

fn cached(teacher: &Teacher, values: Vec<f32>) -> TeacherLogits {
    TeacherLogits::Cached {
        teacher_hash: teacher.hash.clone(),
        classes: teacher.classes,
        values,
    }
}

/// Decodes a cache file and re-checks [`VERIFY_SAMPLE`] of its rows against the live teacher.
fn read_verified(
    path: &Path,
    teacher: &Teacher,
    train: &Split,
    fingerprint: &str,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    let classes = teacher.classes;
    let values = decode_cache(path, &teacher.hash, fingerprint, train.len(), classes)?;
    let sample: Vec<usize> = (0..train.len())
        .step_by((train.len() / VERIFY_SAMPLE).max(1))
        .take(VERIFY_SAMPLE)
        .collect();
    let plain = device.clone().without_autodiff();
    let live = teacher.logits_for(train, &sample, &plain).into_data();
    let max_diff = sample
        .iter()
        .flat_map(|&i| values[i * classes..(i + 1) * classes].iter())
        .zip(live.iter::<f32>())
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

fn compute_and_store(
    teacher: &Teacher,
    train: &Split,
    fingerprint: &str,
    path: Option<&Path>,
    device: &Device,
    progress: bool,
) -> anyhow::Result<TeacherLogits> {
    let plain = device.clone().without_autodiff();
    let values = teacher.logits_all(train, &plain, progress);
    if let Some(path) = path {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create cache directory {}", parent.display()))?;
        }
        let bytes = encode_cache(
            &teacher.hash,
            fingerprint,
            train.len(),
            teacher.classes,
            &values,
        );
        write_atomic(path, &bytes)?;
    }
    Ok(cached(teacher, values))
}
