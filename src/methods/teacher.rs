//! The teacher's side of a feature method: its taps, read live on each batch or cached for the
//! whole training split.
//!
//! Caching is exact only when the batch shows the stored images themselves (no augmentation), so
//! the cache is filled from the un-augmented split and used only then; with augmentation every
//! batch runs the teacher. What is kept per tap is what the method reads: the flattened features,
//! or for AT the attention map (`H·W` values instead of `C·H·W`).

use anyhow::{bail, Context};
use burn::tensor::{Device, Tensor, TensorData};

use super::at::attention_map;
use crate::classifier::Engine;
use crate::data::{batch_order, Split};
use crate::distill::Teacher;
use crate::models::spec::Shape;
use crate::models::taps::{find_tap, Tap};
use crate::models::{Feature, Network};

/// What is kept of a teacher tap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TeacherRead {
    /// The features, flattened per example.
    Features,
    /// The attention map `normalize(mean_c f^p)` ([`attention_map`]).
    Attention {
        /// The power.
        p: f64,
    },
}

/// One tap a method reads from the teacher, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherTap {
    /// The tap's name.
    pub tap: String,
    /// What is kept.
    pub read: TeacherRead,
}

/// A teacher network and the reads a method takes from it.
pub struct TeacherFeatures {
    teacher_id: String,
    network: Network,
    taps: Vec<Tap>,
    reads: Vec<TeacherRead>,
    /// Values per example of each read.
    widths: Vec<usize>,
    /// Per read, `[examples, width]` row-major, when cached.
    cache: Option<Vec<Vec<f32>>>,
}

impl TeacherFeatures {
    /// Resolves `reads` on `teacher`, which must be one of our networks with a spec (a checkpoint,
    /// a PyTorch or safetensors file with `--spec`, or an ONNX file imported natively).
    pub fn new(teacher: &Teacher, reads: &[TeacherTap]) -> anyhow::Result<Self> {
        let network = match &teacher.engine {
            Engine::Native(network) => network.clone(),
            #[allow(unreachable_patterns)]
            _ => bail!(
                "feature methods read the teacher's hidden layers, which tract does not expose: import the ONNX teacher natively (teacher_engine = \"native\", which needs every node to map onto our layers) or give the teacher as a PyTorch checkpoint with its spec"
            ),
        };
        let Some(spec) = &teacher.spec else {
            bail!("feature methods need the teacher's architecture (its spec) to find its taps");
        };
        let taps = reads
            .iter()
            .map(|r| find_tap(spec, teacher.input, &r.tap).context("the teacher"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let widths = taps
            .iter()
            .zip(reads)
            .map(|(tap, read)| match (read.read, tap.shape) {
                (TeacherRead::Attention { .. }, Shape::Image([_, h, w])) => h * w,
                _ => tap.shape.numel(),
            })
            .collect();
        Ok(TeacherFeatures {
            teacher_id: teacher.hash.clone(),
            network,
            taps,
            reads: reads.iter().map(|r| r.read).collect(),
            widths,
            cache: None,
        })
    }

    /// Identifies the teacher (its checkpoint hash).
    pub fn teacher_id(&self) -> &str {
        &self.teacher_id
    }

    /// Whether the reads are answered from memory ([`TeacherFeatures::cache_split`]).
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// The resolved taps, in the order of the reads.
    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }

    /// Runs the teacher over the un-augmented `split` once and keeps every read, so that
    /// [`TeacherFeatures::at`] answers from memory.
    pub fn cache_split(&mut self, split: &Split, device: &Device, progress: bool) {
        let order = batch_order(split.len(), 256, false, 0, 0);
        let bar = crate::progress::bar(order.len() as u64, "Teacher features", progress);
        let mut cache: Vec<Vec<f32>> = vec![Vec::new(); self.reads.len()];
        for indices in order {
            let (images, _) = split.batch(&indices, device, None);
            for (rows, read) in cache.iter_mut().zip(self.compute(images)) {
                rows.extend(read.into_data().iter::<f32>());
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        self.cache = Some(cache);
    }

    /// The reads for the examples at `indices`, which `images` shows: from the cache when there
    /// is one (then `images` must be the un-augmented examples), else computed now. Plain tensors
    /// on `device`, `[batch, width]` each.
    pub fn at(&self, indices: &[usize], images: Tensor<4>, device: &Device) -> Vec<Tensor<2>> {
        match &self.cache {
            None => self.compute(images.without_autodiff()),
            Some(cache) => cache
                .iter()
                .zip(&self.widths)
                .map(|(rows, &width)| {
                    let mut picked = Vec::with_capacity(indices.len() * width);
                    for &i in indices {
                        picked.extend_from_slice(&rows[i * width..(i + 1) * width]);
                    }
                    Tensor::from_data(TensorData::new(picked, [indices.len(), width]), device)
                })
                .collect(),
        }
    }

    fn compute(&self, images: Tensor<4>) -> Vec<Tensor<2>> {
        let layers: Vec<usize> = self.taps.iter().map(|t| t.layer).collect();
        let (_, features) = self.network.forward_tapped(images, &layers);
        features
            .into_iter()
            .zip(&self.reads)
            .map(|(feature, read)| match (read, feature) {
                (TeacherRead::Attention { p }, Feature::Map(map)) => attention_map(map, *p),
                (_, feature) => feature.flat(),
            })
            .collect()
    }
}
