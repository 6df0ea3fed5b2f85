//! Hinton et al.'s knowledge distillation term: the KL divergence between softened distributions.

use burn::tensor::activation::log_softmax;
use burn::tensor::Tensor;

/// `KL(softmax(teacher / T) || softmax(student / T))`, summed over classes and averaged over the
/// batch (Keras' `KLDivergence`). Both log-distributions come from `log_softmax`, so it stays finite
/// for any logits.
pub fn soft_kl(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    temperature: f64,
) -> Tensor<1> {
    kl_from_log_probs(
        log_softmax(teacher_logits.div_scalar(temperature), 1),
        log_softmax(student_logits.div_scalar(temperature), 1),
    )
}

/// `mean_i sum_c q_i,c (log q_i,c - log p_i,c)` from the log-probabilities `log q` (target,
/// teacher) and `log p` (student), both `[batch, classes]`.
pub(crate) fn kl_from_log_probs(
    teacher_log_probs: Tensor<2>,
    student_log_probs: Tensor<2>,
) -> Tensor<1> {
    let teacher_probs = teacher_log_probs.clone().exp();
    (teacher_probs * (teacher_log_probs - student_log_probs))
        .sum_dim(1)
        .mean()
}
