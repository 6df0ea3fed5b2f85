//! Contrastive representation distillation, CRD (Tian et al., "Contrastive Representation
//! Distillation", ICLR 2020; reference implementation RepDistiller `crd/` and mdistiller
//! `mdistiller/distillers/CRD.py`).
//!
//! Linear heads map the student's and the teacher's embeddings to `feat_dim` (128) and L2-normalise
//! them: `v_s = n(W_s e_s)`, `v_t = n(W_t e_t)`. Two memory banks hold one vector per training
//! example, `M_s` (student side) and `M_t` (teacher side). For anchor `i` and its `K` negatives
//! `j_1..j_K` (examples of other classes, drawn with replacement), with `j_0 = i`:
//!
//! - `P_t(k) = exp(<M_s[j_k], v_t> / τ) / Z_t` and `P_s(k) = exp(<M_t[j_k], v_s> / τ) / Z_s`, the
//!   `Z` fixed at the first batch to `N · mean exp(...)` (`N` examples in the bank);
//! - NCE with noise `P_n = 1/N`: `L(P) = -(Σ_i log(P(0) / (P(0) + K/N + ε))
//!   + Σ_{i,k≥1} log((K/N) / (P(k) + K/N + ε))) / B`;
//! - `CRD = L(P_s) + L(P_t)`, trained as `ce_weight · CE + weight · CRD` (mdistiller: 0.8),
//!   optionally with KD (the paper's CRD+KD).
//!
//! After each step the anchors' rows move: `M[i] ← n(m · M[i] + (1 - m) · v_i)`, momentum
//! `m = 0.5`. `τ = 0.07` and `K = 16,384` as in the paper's code.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::check_weight;
use crate::models::spec::Shape;
use crate::models::taps::Tap;

/// RepDistiller's `eps` in the NCE loss.
const NCE_EPSILON: f64 = 1e-7;

/// CRD's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Crd {
    /// Weight of the contrastive term (mdistiller: 0.8).
    pub weight: f64,
    /// Width of the embedding heads (128).
    pub feat_dim: usize,
    /// Negatives per anchor (16,384).
    pub negatives: usize,
    /// Softmax temperature τ (0.07).
    pub temperature: f64,
    /// Memory bank momentum (0.5).
    pub momentum: f64,
    /// The tap read on both networks.
    pub tap: String,
}

impl Default for Crd {
    fn default() -> Self {
        Crd {
            weight: 0.8,
            feat_dim: 128,
            negatives: 16_384,
            temperature: 0.07,
            momentum: 0.5,
            tap: "embedding".into(),
        }
    }
}

impl Crd {
    /// Rejects impossible settings, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        check_weight("crd weight", self.weight)?;
        if self.feat_dim == 0 {
            return Err("crd feat_dim must be at least 1".into());
        }
        if self.negatives == 0 {
            return Err("crd negatives must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "crd temperature must be a finite number > 0, got {}",
                self.temperature
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!(
                "crd momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        Ok(())
    }

    /// Rejects a bank that would need more negatives than the training set has examples.
    pub fn check_bank(&self, examples: usize) -> Result<(), String> {
        if self.negatives >= examples {
            return Err(format!(
                "crd negatives {} must be smaller than the training set ({examples} examples): each anchor draws its negatives from the other examples",
                self.negatives
            ));
        }
        Ok(())
    }
}

/// The two embedding heads (trained with the student).
#[derive(Module, Debug)]
pub struct Embeds {
    /// Student embedding → `feat_dim`.
    pub student: Linear,
    /// Teacher embedding → `feat_dim`.
    pub teacher: Linear,
}

impl Embeds {
    /// Heads from the two taps (flattened) to `feat_dim`.
    pub fn init(student: &Tap, teacher: &Tap, feat_dim: usize, device: &Device) -> Self {
        let width = |shape: Shape| shape.numel();
        Embeds {
            student: LinearConfig::new(width(student.shape), feat_dim).init(device),
            teacher: LinearConfig::new(width(teacher.shape), feat_dim).init(device),
        }
    }
}

pub use super::l2_normalize;

/// The two memory banks, `[N, feat_dim]` row-major, and the normalising constants once fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Rows per bank (training examples).
    pub examples: usize,
    /// Row width.
    pub feat_dim: usize,
    /// `M_s`: the student's embeddings.
    pub student: Vec<f32>,
    /// `M_t`: the teacher's embeddings.
    pub teacher: Vec<f32>,
    /// `Z_s`, set at the first batch.
    pub z_student: Option<f64>,
    /// `Z_t`, set at the first batch.
    pub z_teacher: Option<f64>,
}

impl Memory {
    /// RepDistiller's initialisation: uniform in `±1/sqrt(feat_dim / 3)`, drawn from `seed`.
    pub fn init(examples: usize, feat_dim: usize, seed: u64) -> Self {
        let bound = 1.0 / (feat_dim as f64 / 3.0).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |_| (rng.random::<f64>() * 2.0 * bound - bound) as f32;
        let student = (0..examples * feat_dim).map(&mut draw).collect();
        let teacher = (0..examples * feat_dim).map(&mut draw).collect();
        Memory {
            examples,
            feat_dim,
            student,
            teacher,
            z_student: None,
            z_teacher: None,
        }
    }

    /// `M[i] ← n(m · M[i] + (1 - m) · v)` for each anchor `i` of the batch (rows of `v`).
    pub fn update(&mut self, anchors: &[usize], student: &[f32], teacher: &[f32], momentum: f64) {
        let d = self.feat_dim;
        for (bank, values) in [(&mut self.student, student), (&mut self.teacher, teacher)] {
            for (row, &i) in anchors.iter().enumerate() {
                let slot = &mut bank[i * d..(i + 1) * d];
                let new = &values[row * d..(row + 1) * d];
                let mut square = 0.0f64;
                for (m, &v) in slot.iter_mut().zip(new) {
                    *m = (*m as f64 * momentum + v as f64 * (1.0 - momentum)) as f32;
                    square += (*m as f64) * (*m as f64);
                }
                let norm = square.sqrt() as f32;
                slot.iter_mut().for_each(|m| *m /= norm);
            }
        }
    }
}

/// `exp(<M[j_k], v> / τ)` for each anchor's row of `v` (`[B, D]`) and its candidates `ids`
/// (`[B, K+1]`, the anchor first): `[B, K+1]`. The bank carries no gradient.
///
/// Scores every bank row against the batch (`v · Mᵀ`, one matrix product) and picks the
/// candidates from it: the same dot products as gathering `K+1` rows per anchor, without
/// materialising `B · (K+1)` copies of the rows.
pub fn candidate_scores(
    bank: &[f32],
    feat_dim: usize,
    v: Tensor<2>,
    ids: Tensor<2, Int>,
    temperature: f64,
) -> Tensor<2> {
    let examples = bank.len() / feat_dim;
    let memory: Tensor<2> = Tensor::from_data(
        TensorData::new(bank.to_vec(), [examples, feat_dim]),
        &v.device(),
    );
    let all = v.matmul(memory.transpose()); // [B, N]
    all.gather(1, ids).div_scalar(temperature).exp()
}

/// RepDistiller's `ContrastLoss` on `P` (`[B, K+1]`, the positive first), with `N` examples.
pub fn nce_loss(probabilities: Tensor<2>, examples: usize) -> Tensor<1> {
    let [batch, candidates] = probabilities.dims();
    let negatives = candidates - 1;
    let noise = negatives as f64 / examples as f64;
    let positive = probabilities.clone().slice([0..batch, 0..1]);
    let log_d1 = (positive.clone() / (positive + (noise + NCE_EPSILON))).log();
    let negative = probabilities.slice([0..batch, 1..candidates]);
    let log_d0 = (negative + (noise + NCE_EPSILON))
        .recip()
        .mul_scalar(noise)
        .log();
    (log_d1.sum() + log_d0.sum())
        .neg()
        .div_scalar(batch as f64)
        .reshape([1])
}

/// The anchors and `negatives` examples of other classes for each, drawn uniformly with
/// replacement: `[B, K+1]` dataset indices, the anchor first (RepDistiller's `mode = "exact"`).
/// `labels` holds every training example's class; some example must have another class than
/// each anchor's.
pub fn sample_candidates(
    anchors: &[usize],
    labels: &[usize],
    negatives: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<i64> {
    let mut ids = Vec::with_capacity(anchors.len() * (negatives + 1));
    for &anchor in anchors {
        ids.push(anchor as i64);
        let mut drawn = 0;
        while drawn < negatives {
            // Uniform over the whole set, redrawn when the class matches: uniform over the
            // other classes' examples.
            let j = rng.random_range(0..labels.len());
            if labels[j] != labels[anchor] {
                ids.push(j as i64);
                drawn += 1;
            }
        }
    }
    ids
}

/// The parts of CRD for one batch.
#[derive(Debug, Clone)]
pub struct CrdParts {
    /// `L(P_s)`: the student's embedding against the teacher's bank.
    pub student: Tensor<1>,
    /// `L(P_t)`: the teacher's embedding against the student's bank.
    pub teacher: Tensor<1>,
}

/// CRD for one batch: `v_s`, `v_t` are the normalised head outputs (`[B, D]`), `ids` the
/// candidates ([`sample_candidates`]). Fixes the `Z`s at the first call; the banks are updated
/// separately ([`Memory::update`]) once the step is taken.
pub fn crd_parts(
    memory: &mut Memory,
    v_student: Tensor<2>,
    v_teacher: Tensor<2>,
    ids: Tensor<2, Int>,
    temperature: f64,
) -> CrdParts {
    let d = memory.feat_dim;
    let n = memory.examples;
    let p_student = candidate_scores(&memory.teacher, d, v_student, ids.clone(), temperature);
    let p_teacher = candidate_scores(&memory.student, d, v_teacher, ids, temperature);
    let fix = |z: &mut Option<f64>, p: &Tensor<2>| {
        *z.get_or_insert_with(|| p.clone().mean().into_scalar::<f32>() as f64 * n as f64)
    };
    let z_student = fix(&mut memory.z_student, &p_student);
    let z_teacher = fix(&mut memory.z_teacher, &p_teacher);
    CrdParts {
        student: nce_loss(p_student.div_scalar(z_student), n),
        teacher: nce_loss(p_teacher.div_scalar(z_teacher), n),
    }
}
