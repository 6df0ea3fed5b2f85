//! Decoupled knowledge distillation, DKD (Zhao et al., "Decoupled Knowledge Distillation", CVPR
//! 2022; reference implementation mdistiller `mdistiller/distillers/DKD.py`).
//!
//! With `p = softmax(z / T)` for the student (`z = s`) and the teacher (`z = t`), and `g` the
//! ground-truth class of a sample, KD splits into
//!
//! - `TCKD = T² · mean_i KL([p^t_g, 1 - p^t_g] || [p^s_g, 1 - p^s_g])`: target versus the rest;
//! - `NCKD = T² · mean_i KL(p̂^t || p̂^s)`, `p̂ = softmax` over the non-target classes only
//!   (mdistiller: `log_softmax(z / T - 1000 · onehot(g))`);
//!
//! and `DKD = alpha · TCKD + beta · NCKD`. The loss that is trained is
//! `ce_weight · CE + min(epoch / warmup_epochs, 1) · DKD` (see [`super::DistillLoss::Dkd`]).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use super::kd::kl_from_log_probs;

/// What mdistiller subtracts from the target class's scaled logit to leave it out of a softmax
/// (`exp(-1000)` is 0 in any float format).
const GT_MASK_OFFSET: f64 = 1000.0;

/// Target-class knowledge distillation: `T² · KL` between the binary distributions
/// `[p_g, 1 - p_g]` of teacher and student, summed over the two entries and averaged over the batch.
///
/// Computed from log-sum-exps (`log(1 - p_g) = logsumexp_{c≠g}(z/T) - logsumexp_c(z/T)`), so it
/// stays finite where mdistiller's `log(sum of probabilities)` would give `-inf`.
pub fn tckd(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    labels: Tensor<1, Int>,
    temperature: f64,
) -> Tensor<1> {
    let teacher = binary_log_probs(teacher_logits.div_scalar(temperature), labels.clone());
    let student = binary_log_probs(student_logits.div_scalar(temperature), labels);
    kl_from_log_probs(teacher, student).mul_scalar(temperature * temperature)
}

/// Non-target-class knowledge distillation: `T² · KL(p̂^t || p̂^s)` with `p̂` the softmax of
/// `z / T` over the classes other than the label, summed over classes and averaged over the batch.
pub fn nckd(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    labels: Tensor<1, Int>,
    temperature: f64,
) -> Tensor<1> {
    let teacher = non_target_log_probs(teacher_logits.div_scalar(temperature), labels.clone());
    let student = non_target_log_probs(student_logits.div_scalar(temperature), labels);
    kl_from_log_probs(teacher, student).mul_scalar(temperature * temperature)
}

/// The DKD term's weight in `epoch` (1-based): `min(epoch / warmup_epochs, 1)`, and 1 when
/// `warmup_epochs` is 0 (no warm-up).
pub fn dkd_warmup(epoch: usize, warmup_epochs: usize) -> f64 {
    if warmup_epochs == 0 {
        1.0
    } else {
        (epoch as f64 / warmup_epochs as f64).min(1.0)
    }
}

/// One-hot of the labels, `[batch, classes]`, as floats.
fn target_mask(labels: Tensor<1, Int>, classes: usize) -> Tensor<2> {
    labels.one_hot::<2>(classes).float()
}

/// `log_softmax(scaled - 1000 · onehot(label))`: the log-distribution over the non-target classes
/// (the target entry is about -1000 and carries no probability).
fn non_target_log_probs(scaled: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<2> {
    let [_, classes] = scaled.dims();
    let mask = target_mask(labels, classes);
    log_softmax(scaled - mask.mul_scalar(GT_MASK_OFFSET), 1)
}

/// `[log p_g, log(1 - p_g)]` per row, `[batch, 2]`, for `p = softmax(scaled)`.
fn binary_log_probs(scaled: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<2> {
    let [batch, classes] = scaled.dims();
    let mask = target_mask(labels.clone(), classes);
    let all = log_sum_exp(scaled.clone());
    let rest = log_sum_exp(scaled.clone() - mask.mul_scalar(GT_MASK_OFFSET));
    let target = scaled.gather(1, labels.reshape([batch, 1]));
    Tensor::cat(vec![target - all.clone(), rest - all], 1)
}

/// `log sum_c exp(x_c)` per row, `[batch, 1]`, shifted by the (untracked) row maximum.
fn log_sum_exp(x: Tensor<2>) -> Tensor<2> {
    let max = x.clone().max_dim(1).detach();
    (x - max.clone()).exp().sum_dim(1).log() + max
}
