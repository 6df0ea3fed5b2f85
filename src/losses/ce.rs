//! Cross-entropy from the labels.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

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
    if label_smoothing == 0.0 {
        return true_class.neg();
    }
    let uniform = log_probs.sum_dim(1).mean().div_scalar(classes as f64);
    (true_class.mul_scalar(1.0 - label_smoothing) + uniform.mul_scalar(label_smoothing)).neg()
}
