//! Losses on logits: cross-entropy for training from labels, and the distillation losses that also
//! pull the student towards a teacher.
//!
//! All take raw logits (`[batch, classes]`) and return a scalar (shape `[1]`) averaged over the batch.
//! One file per method: [`ce`](cross_entropy), [`kd`](soft_kl), [`mse`](logit_mse) and `dkd`
//! ([`tckd`], [`nckd`]); [`DistillLoss`] picks and weights them. For text students,
//! [`cosine`](hidden_cosine) compares hidden states (DistilBERT's cosine loss).

mod ce;
mod cosine;
mod dkd;
mod kd;
mod mse;

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

pub use ce::{cross_entropy, mixup_cross_entropy};
pub use cosine::{hidden_cosine, layer_map, mapped_hidden_cosine, HiddenStates, HiddenTerm};
pub use dkd::{dkd_warmup, nckd, tckd};
pub use kd::soft_kl;
pub use mse::logit_mse;

/// A loss that combines the labels with a teacher's logits. New kinds (feature-based ones, say)
/// plug in here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DistillLoss {
    /// Hinton et al.: `alpha * CE + (1 - alpha) * s * KL(softmax(t/T) || softmax(s/T))`,
    /// `s = T²` with `t2_scaling`, else 1.
    Kd {
        /// Weight of the label cross-entropy, in [0, 1].
        alpha: f64,
        /// Softening temperature, > 0.
        temperature: f64,
        /// Multiply the KL term by T² (keeps its gradient scale independent of T).
        t2_scaling: bool,
    },
    /// `alpha * CE + (1 - alpha) * MSE(student_logits, teacher_logits)`.
    Mse {
        /// Weight of the label cross-entropy, in [0, 1].
        alpha: f64,
    },
    /// Decoupled KD (Zhao et al. 2022, as in mdistiller):
    /// `ce_weight * CE + min(epoch / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD)`, with
    /// [`tckd`] and [`nckd`] both scaled by T². mdistiller's defaults: `ce_weight = 1`, `alpha = 1`,
    /// `beta = 8`, `temperature = 4`, `warmup_epochs = 20`.
    Dkd {
        /// Weight of the label cross-entropy, >= 0.
        ce_weight: f64,
        /// Weight of the target-class term (TCKD), >= 0.
        alpha: f64,
        /// Weight of the non-target-class term (NCKD), >= 0.
        beta: f64,
        /// Softening temperature, > 0.
        temperature: f64,
        /// Epochs over which the DKD term ramps up linearly from `1 / warmup_epochs`; 0 = none.
        warmup_epochs: usize,
    },
}

/// The parts of a distillation loss, for logging.
#[derive(Debug, Clone)]
pub struct DistillLossParts {
    /// The weighted total that is minimised.
    pub total: Tensor<1>,
    /// The label cross-entropy (unweighted).
    pub hard: Tensor<1>,
    /// The teacher term (unweighted: KL, MSE, or for DKD `alpha * TCKD + beta * NCKD` before the
    /// warm-up factor).
    pub soft: Tensor<1>,
}

/// `Err` naming `field` unless `value` is finite and `>= 0` (also the feature methods' weight
/// check).
pub(crate) fn non_negative(field: &str, value: f64) -> Result<(), String> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(format!("{field} must be a finite number >= 0, got {value}"))
    }
}

/// `Err` naming `field` unless `value` is finite and `> 0`.
fn positive(field: &str, value: f64) -> Result<(), String> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(format!("{field} must be a finite number > 0, got {value}"))
    }
}

impl DistillLoss {
    /// Checks the hyper-parameters; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        let alpha = match *self {
            DistillLoss::Kd {
                alpha, temperature, ..
            } => {
                positive("temperature", temperature)?;
                alpha
            }
            DistillLoss::Mse { alpha } => alpha,
            DistillLoss::Dkd {
                ce_weight,
                alpha,
                beta,
                temperature,
                warmup_epochs: _,
            } => {
                non_negative("dkd ce_weight", ce_weight)?;
                non_negative("dkd alpha", alpha)?;
                non_negative("dkd beta", beta)?;
                return positive("dkd temperature", temperature);
            }
        };
        if !(0.0..=1.0).contains(&alpha) {
            return Err(format!("alpha must be in [0, 1], got {alpha}"));
        }
        Ok(())
    }

    /// Weight of the label term: `alpha` for KD and MSE, `ce_weight` for DKD (whose `alpha`
    /// weighs TCKD instead).
    pub fn alpha(&self) -> f64 {
        match *self {
            DistillLoss::Kd { alpha, .. } | DistillLoss::Mse { alpha } => alpha,
            DistillLoss::Dkd { ce_weight, .. } => ce_weight,
        }
    }

    /// True when the loss reads the teacher alone: KD or MSE with `alpha = 0` (DKD's two terms
    /// split the classes at the label, so it always reads it).
    pub fn ignores_labels(&self) -> bool {
        !matches!(self, DistillLoss::Dkd { .. }) && self.alpha() == 0.0
    }

    /// `KD with alpha 0.1`, `MSE with alpha 0`, `DKD`: the loss and its label weight, for messages.
    pub fn name(&self) -> String {
        match self {
            DistillLoss::Kd { alpha, .. } => format!("KD with alpha {alpha}"),
            DistillLoss::Mse { alpha } => format!("MSE with alpha {alpha}"),
            DistillLoss::Dkd { .. } => "DKD".to_string(),
        }
    }

    /// The loss for one batch. `epoch` is the 1-based epoch being trained; only DKD's warm-up
    /// uses it.
    pub fn forward(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        labels: Tensor<1, Int>,
        label_smoothing: f64,
        epoch: usize,
    ) -> DistillLossParts {
        // The teacher is frozen: whatever device its logits come from, none of the gradient of
        // this loss flows back into it.
        let teacher_logits = teacher_logits.detach();
        let hard = cross_entropy(student_logits.clone(), labels.clone(), label_smoothing);
        let (soft, hard_weight, soft_weight) = match *self {
            DistillLoss::Kd {
                alpha,
                temperature,
                t2_scaling,
            } => {
                let scale = if t2_scaling {
                    temperature * temperature
                } else {
                    1.0
                };
                let kl = soft_kl(student_logits, teacher_logits, temperature);
                (kl, alpha, (1.0 - alpha) * scale)
            }
            DistillLoss::Mse { alpha } => (
                logit_mse(student_logits, teacher_logits),
                alpha,
                1.0 - alpha,
            ),
            DistillLoss::Dkd {
                ce_weight,
                alpha,
                beta,
                temperature,
                warmup_epochs,
            } => {
                let target = tckd(
                    student_logits.clone(),
                    teacher_logits.clone(),
                    labels.clone(),
                    temperature,
                );
                let non_target = nckd(student_logits, teacher_logits, labels, temperature);
                let dkd = target.mul_scalar(alpha) + non_target.mul_scalar(beta);
                (dkd, ce_weight, dkd_warmup(epoch, warmup_epochs))
            }
        };
        let total = hard.clone().mul_scalar(hard_weight) + soft.clone().mul_scalar(soft_weight);
        DistillLossParts { total, hard, soft }
    }
}
