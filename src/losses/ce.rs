//! Cross-entropy from the labels.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::data::LabelMix;

/// Sparse categorical cross-entropy on logits, averaged over the batch, with optional label
/// smoothing `eps` (the target is `1 - eps` on the true class plus `eps / classes` everywhere):
///
/// `CE = -mean_i [ (1 - eps) log p_i,y_i + eps / C * sum_c log p_i,c ]`, `p_i = softmax(z_i)`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>, label_smoothing: f64) -> Tensor<1> {
    let [batch, classes] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let true_class = log_probs
        .clone()
        .gather(1, labels.reshape([batch, 1]))
        .mean();
    smoothed(true_class, log_probs, classes, label_smoothing)
}

/// `-[(1 - eps) · target + eps / C · mean_i sum_c log p_i,c]`: the label term `target` (the mean
/// log-probability of the target) with label smoothing `eps` over `C` classes.
fn smoothed(target: Tensor<1>, log_probs: Tensor<2>, classes: usize, eps: f64) -> Tensor<1> {
    if eps == 0.0 {
        return target.neg();
    }
    let uniform = log_probs.sum_dim(1).mean().div_scalar(classes as f64);
    (target.mul_scalar(1.0 - eps) + uniform.mul_scalar(eps)).neg()
}

/// Cross-entropy against a blend of two labels (mixup, Zhang et al. 2018), averaged over the
/// batch, each label smoothed as in [`cross_entropy`]:
///
/// `CE = -mean_i [ (1 - eps) (λ_i log p_i,y_i + (1 - λ_i) log p_i,y'_i) + eps / C * sum_c log p_i,c ]`
///
/// with `y'` the partners' labels and `λ` the examples' own weights from `mix`. With every `λ = 1`
/// it is [`cross_entropy`].
pub fn mixup_cross_entropy(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    mix: &LabelMix,
    label_smoothing: f64,
) -> Tensor<1> {
    let [batch, classes] = logits.dims();
    let device = logits.device();
    let log_probs = log_softmax(logits, 1);
    let own = log_probs.clone().gather(1, labels.reshape([batch, 1]));
    let other = log_probs
        .clone()
        .gather(1, mix.partner_labels(&device).reshape([batch, 1]));
    let lambda = mix.lambdas(&device).reshape([batch, 1]);
    let blended = (own * lambda.clone() + other * (lambda.neg() + 1.0)).mean();
    smoothed(blended, log_probs, classes, label_smoothing)
}
