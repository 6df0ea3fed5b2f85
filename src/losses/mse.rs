//! Logit matching.

use burn::tensor::Tensor;

/// Mean squared difference between student and teacher logits (over classes and batch):
/// `mean_i,c (s_i,c - t_i,c)²`.
pub fn logit_mse(student_logits: Tensor<2>, teacher_logits: Tensor<2>) -> Tensor<1> {
    (student_logits - teacher_logits).powi_scalar(2).mean()
}
