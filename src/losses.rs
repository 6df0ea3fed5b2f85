//! Losses on logits: cross-entropy for training from labels, and the distillation losses that also
//! pull the student towards a teacher.
//!
//! All take raw logits (`[batch, classes]`) and return a scalar (shape `[1]`) averaged over the batch.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// Sparse categorical cross-entropy on logits, averaged over the batch, with optional label
/// smoothing `eps` (the target is `1 - eps` on the true class plus `eps / classes` everywhere).
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>, label_smoothing: f64) -> Tensor<1> {
    let [batch, classes] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let true_class = log_probs
        .clone()
        .gather(1, labels.reshape([batch, 1]))
        .mean();
    if label_smoothing == 0.0 {
        return true_class.neg();
    }
    let uniform = log_probs.sum_dim(1).mean().div_scalar(classes as f64);
    (true_class.mul_scalar(1.0 - label_smoothing) + uniform.mul_scalar(label_smoothing)).neg()
}

/// `KL(softmax(teacher / T) || softmax(student / T))`, summed over classes and averaged over the
/// batch (Keras' `KLDivergence`). Both log-distributions come from `log_softmax`, so it stays finite
/// for any logits.
pub fn soft_kl(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    temperature: f64,
) -> Tensor<1> {
    let teacher_log_probs = log_softmax(teacher_logits.div_scalar(temperature), 1);
    let teacher_probs = teacher_log_probs.clone().exp();
    let student_log_probs = log_softmax(student_logits.div_scalar(temperature), 1);
    (teacher_probs * (teacher_log_probs - student_log_probs))
        .sum_dim(1)
        .mean()
}

/// Mean squared difference between student and teacher logits (over classes and batch).
pub fn logit_mse(student_logits: Tensor<2>, teacher_logits: Tensor<2>) -> Tensor<1> {
    (student_logits - teacher_logits).powi_scalar(2).mean()
}

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
}

/// The parts of a distillation loss, for logging.
#[derive(Debug, Clone)]
pub struct DistillLossParts {
    /// The weighted total that is minimised.
    pub total: Tensor<1>,
    /// The label cross-entropy (unweighted).
    pub hard: Tensor<1>,
    /// The teacher term (unweighted: KL or MSE).
    pub soft: Tensor<1>,
}

impl DistillLoss {
    /// Checks the hyper-parameters; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        let alpha = match *self {
            DistillLoss::Kd {
                alpha, temperature, ..
            } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(format!(
                        "temperature must be a finite number > 0, got {temperature}"
                    ));
                }
                alpha
            }
            DistillLoss::Mse { alpha } => alpha,
        };
        if !(0.0..=1.0).contains(&alpha) {
            return Err(format!("alpha must be in [0, 1], got {alpha}"));
        }
        Ok(())
    }

    /// Weight of the label term.
    pub fn alpha(&self) -> f64 {
        match *self {
            DistillLoss::Kd { alpha, .. } | DistillLoss::Mse { alpha } => alpha,
        }
    }

    /// The loss for one batch.
    pub fn forward(
        &self,
        student_logits: Tensor<2>,
        teacher_logits: Tensor<2>,
        labels: Tensor<1, Int>,
        label_smoothing: f64,
    ) -> DistillLossParts {
        let hard = cross_entropy(student_logits.clone(), labels, label_smoothing);
        let (soft, scale) = match *self {
            DistillLoss::Kd {
                temperature,
                t2_scaling,
                ..
            } => (
                soft_kl(student_logits, teacher_logits, temperature),
                if t2_scaling {
                    temperature * temperature
                } else {
                    1.0
                },
            ),
            DistillLoss::Mse { .. } => (logit_mse(student_logits, teacher_logits), 1.0),
        };
        let alpha = self.alpha();
        let total = hard.clone().mul_scalar(alpha) + soft.clone().mul_scalar((1.0 - alpha) * scale);
        DistillLossParts { total, hard, soft }
    }
}
