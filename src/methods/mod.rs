//! Feature distillation methods: what a student learns from a teacher's hidden layers, beyond
//! its logits. One file per method, each reading like its formula:
//!
//! | method | file | reads (student / teacher) | trainable heads | default weight |
//! |---|---|---|---|---|
//! | FitNets | [`fitnets`] | `stage2` / `stage2` | 1×1 conv + BN + ReLU regressor | 100 |
//! | AT | [`at`] | `stage1..3` / the same, as attention maps | none | β = 1000 |
//! | RKD | [`rkd`] | `embedding` / `embedding` | none | 1 (25 distance, 50 angle) |
//! | CRD | [`crd`] | `embedding` / `embedding` | two linear heads to 128-d | 0.8 |
//!
//! Taps ([`crate::models::taps`]) are taken after the stage's ReLU, as mdistiller's `feats`. The
//! objective is `ce_weight · CE + Σ weighted method terms`, or, with KD alongside
//! (`logits = { kind = "kd", … }`), KD's `alpha · CE + (1 - alpha) · T² · KL` plus the method terms: the
//! combinations the papers use (CRD+KD).
//!
//! Adding a method: its file (settings struct, `validate`, the formula), a variant of
//! [`FeatureMethod`], and its arms in the `match`es below.

pub mod at;
pub mod crd;
pub mod fitnets;
pub mod rkd;
pub mod run;
pub mod teacher;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::models::taps::Tap;
use crate::models::Feature;

pub use run::MethodRun;
pub use teacher::{TeacherFeatures, TeacherRead, TeacherTap};

/// `eps²` for `x / max(|x|, eps)` written as `x / sqrt(max(|x|², eps²))` (PyTorch's
/// `F.normalize` floor, `eps = 1e-12`).
pub(crate) fn norm_floor_sq() -> f64 {
    1e-24
}

/// `Err` naming `field` unless `value` is finite and `>= 0`.
pub(crate) use crate::losses::non_negative as check_weight;

/// `x / |x|` per row (PyTorch's `F.normalize`: a zero row stays zero, with a zero gradient
/// rather than NaN).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .clamp_min(norm_floor_sq())
        .sqrt();
    x / norm
}

/// A feature method and its settings: `kind = "fitnets" | "at" | "rkd" | "crd"` in a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureMethod {
    /// See [`fitnets`].
    Fitnets(fitnets::FitNets),
    /// See [`at`].
    At(at::AttentionTransfer),
    /// See [`rkd`].
    Rkd(rkd::Rkd),
    /// See [`crd`].
    Crd(crd::Crd),
}

/// The trainable modules a method adds on the student's side (trained with it, by the same
/// optimizer settings, and saved with its checkpoints).
#[derive(Module, Debug, Default)]
pub struct MethodHeads {
    /// FitNets' regressor.
    pub regressor: Option<fitnets::Regressor>,
    /// CRD's embedding heads.
    pub embeds: Option<crd::Embeds>,
}

/// A method's state that is not trained by gradient (CRD's memory banks), and what it samples from.
#[derive(Debug, Clone)]
pub struct MethodState {
    /// CRD's memory.
    pub memory: Option<crd::Memory>,
    /// The class of every training example (CRD draws negatives from the other classes).
    pub labels: Vec<usize>,
}

/// One batch as a method sees it.
pub struct MethodBatch<'a> {
    /// The student's taps, in [`FeatureMethod::student_taps`] order (autodiff).
    pub student: Vec<Feature>,
    /// The teacher's reads, in [`FeatureMethod::teacher_taps`] order (no gradient).
    pub teacher: Vec<Tensor<2>>,
    /// Dataset indices of the batch's examples.
    pub indices: &'a [usize],
    /// Seeds what the method samples in this step (CRD's negatives).
    pub step_seed: u64,
}

/// A method's terms for one batch: the weighted sum that is added to the objective, and each
/// part by name (unweighted) for the log.
pub struct MethodLoss {
    /// `Σ weight · part`.
    pub total: Tensor<1>,
    /// `(name, value)` of each part, unweighted.
    pub parts: Vec<(&'static str, Tensor<1>)>,
}

impl FeatureMethod {
    /// Short name, for labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            FeatureMethod::Fitnets(_) => "fitnets",
            FeatureMethod::At(_) => "at",
            FeatureMethod::Rkd(_) => "rkd",
            FeatureMethod::Crd(_) => "crd",
        }
    }

    /// Whether the method can train data-parallel over MPI ranks: its heads are averaged like
    /// the student, but CRD's memory bank, updated by every batch, is not shared across ranks.
    pub fn trains_data_parallel(&self) -> bool {
        !matches!(self, FeatureMethod::Crd(_))
    }

    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            FeatureMethod::Fitnets(m) => m.validate(),
            FeatureMethod::At(m) => m.validate(),
            FeatureMethod::Rkd(m) => m.validate(),
            FeatureMethod::Crd(m) => m.validate(),
        }
    }

    /// The student taps the method reads, in the order [`MethodBatch::student`] holds them.
    pub fn student_taps(&self) -> Vec<String> {
        match self {
            FeatureMethod::Fitnets(m) => vec![m.student_tap.clone()],
            FeatureMethod::At(m) => m.taps.clone(),
            FeatureMethod::Rkd(m) => vec![m.tap.clone()],
            FeatureMethod::Crd(m) => vec![m.tap.clone()],
        }
    }

    /// The student taps the method reads, found among `all` (the taps of `owner`, "the
    /// student", say); an unknown name is an error listing the taps that exist.
    pub fn pick_student_taps(&self, all: &[Tap], owner: &str) -> anyhow::Result<Vec<Tap>> {
        self.student_taps()
            .iter()
            .map(|name| crate::models::taps::pick_tap(all, owner, name))
            .collect()
    }

    /// What the method reads from the teacher, in the order [`MethodBatch::teacher`] holds it.
    pub fn teacher_taps(&self) -> Vec<TeacherTap> {
        let raw = |tap: &str| TeacherTap {
            tap: tap.to_string(),
            read: TeacherRead::Features,
        };
        match self {
            FeatureMethod::Fitnets(m) => vec![raw(&m.teacher_tap)],
            FeatureMethod::At(m) => m
                .taps
                .iter()
                .map(|tap| TeacherTap {
                    tap: tap.clone(),
                    read: TeacherRead::Attention { p: m.p },
                })
                .collect(),
            FeatureMethod::Rkd(m) => vec![raw(&m.tap)],
            FeatureMethod::Crd(m) => vec![raw(&m.tap)],
        }
    }

    /// Checks that the resolved taps fit together, and builds the heads (weights drawn from
    /// `seed`) and the state. `labels` is every training example's class.
    pub fn prepare(
        &self,
        student: &[Tap],
        teacher: &[Tap],
        labels: Vec<usize>,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<(MethodHeads, MethodState)> {
        device.seed(seed);
        let mut heads = MethodHeads::default();
        let mut state = MethodState {
            memory: None,
            labels,
        };
        match self {
            FeatureMethod::Fitnets(_) => {
                heads.regressor = Some(fitnets::Regressor::init(&student[0], &teacher[0], device)?);
            }
            FeatureMethod::At(_) => {
                for (s, t) in student.iter().zip(teacher) {
                    at::check_pair(s, t)?;
                }
            }
            FeatureMethod::Rkd(_) => {}
            FeatureMethod::Crd(m) => {
                m.check_bank(state.labels.len())
                    .map_err(anyhow::Error::msg)?;
                if state.labels.iter().all(|&l| l == state.labels[0]) {
                    anyhow::bail!(
                        "crd: every training example has the same class, so there are no negatives to draw"
                    );
                }
                heads.embeds = Some(crd::Embeds::init(
                    &student[0],
                    &teacher[0],
                    m.feat_dim,
                    device,
                ));
                state.memory = Some(crd::Memory::init(state.labels.len(), m.feat_dim, seed));
            }
        }
        Ok((heads, state))
    }

    /// The method's terms for one batch. CRD also moves its memory banks towards this batch's
    /// embeddings (after using them, as the reference code does).
    pub fn loss(
        &self,
        heads: &MethodHeads,
        state: &mut MethodState,
        batch: MethodBatch,
    ) -> anyhow::Result<MethodLoss> {
        let MethodBatch {
            student,
            teacher,
            indices,
            step_seed,
        } = batch;
        Ok(match self {
            FeatureMethod::Fitnets(m) => {
                let regressor = heads.regressor.as_ref().expect("prepared");
                let student = student.into_iter().next().expect("one tap").map()?;
                let regressed = regressor.forward(student);
                let dims = regressed.dims();
                let guided = teacher.into_iter().next().expect("one tap").reshape(dims);
                let hint = fitnets::hint_loss(regressed, guided);
                MethodLoss {
                    total: hint.clone().mul_scalar(m.weight),
                    parts: vec![("hint", hint)],
                }
            }
            FeatureMethod::At(m) => {
                let maps = student
                    .into_iter()
                    .map(Feature::map)
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let attention = at::attention_loss(&maps, &teacher, m.p);
                MethodLoss {
                    total: attention.clone().mul_scalar(m.beta),
                    parts: vec![("attention", attention)],
                }
            }
            FeatureMethod::Rkd(m) => {
                let s = student.into_iter().next().expect("one tap").flat();
                let t = teacher.into_iter().next().expect("one tap");
                let parts = rkd::rkd_parts(s, t);
                let total = (parts.distance.clone().mul_scalar(m.distance_weight)
                    + parts.angle.clone().mul_scalar(m.angle_weight))
                .mul_scalar(m.weight);
                MethodLoss {
                    total,
                    parts: vec![("distance", parts.distance), ("angle", parts.angle)],
                }
            }
            FeatureMethod::Crd(m) => {
                let embeds = heads.embeds.as_ref().expect("prepared");
                let memory = state.memory.as_mut().expect("prepared");
                let s = student.into_iter().next().expect("one tap").flat();
                let t = teacher.into_iter().next().expect("one tap");
                let v_student = crd::l2_normalize(embeds.student.forward(s));
                let v_teacher = crd::l2_normalize(embeds.teacher.forward(t));
                let mut rng = ChaCha8Rng::seed_from_u64(step_seed);
                let ids = crd::sample_candidates(indices, &state.labels, m.negatives, &mut rng);
                let ids: Tensor<2, Int> = Tensor::from_data(
                    TensorData::new(ids, [indices.len(), m.negatives + 1]),
                    &v_student.device(),
                );
                let parts = crd::crd_parts(
                    memory,
                    v_student.clone(),
                    v_teacher.clone(),
                    ids,
                    m.temperature,
                );
                let values =
                    |v: Tensor<2>| v.detach().into_data().try_to_vec::<f32>().expect("f32");
                memory.update(indices, &values(v_student), &values(v_teacher), m.momentum);
                let contrast = parts.student.clone() + parts.teacher.clone();
                MethodLoss {
                    total: contrast.mul_scalar(m.weight),
                    parts: vec![
                        ("crd_student", parts.student),
                        ("crd_teacher", parts.teacher),
                    ],
                }
            }
        })
    }
}
